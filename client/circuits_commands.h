// `featviz circuits` and `featviz atlas`: the seed's figures, made by a
// remote server.
//
//   circuits MODEL --layer L --top K --out DIR
//       For each class: the class's visualisation (logit), then for each of
//       its top-K detector channels in L the channel's visualisation and its
//       activation map over an example digit of the class, with the
//       attribution score. Writes DIR/circuits.png (every class),
//       DIR/class_<c>.png (one row each) and DIR/circuits.json.
//   atlas MODEL --out DIR
//       Renders every channel of every convolutional layer and every neuron
//       of every fully connected layer (through the job engine, batched) and
//       writes a static site: DIR/index.html, a page per layer with its
//       contact sheet, and a page per unit with its visualisation, top
//       dataset examples, activation statistics and the loss curve. With a
//       dataset every unit page also says how far to believe its picture
//       (docs/trust.md): the examples' activation maps, the picture's
//       path-similarity score, the unit's label (a labelled dataset) and its
//       top example accentuated.
#ifndef FEATVIZ_CLIENT_CIRCUITS_COMMANDS_H_
#define FEATVIZ_CLIENT_CIRCUITS_COMMANDS_H_

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "client/visualizer_client.h"

namespace featviz::client {

struct CircuitsCommandOptions {
  std::string model;
  std::string layer;
  int64_t top = 3;
  // A labelled dataset the server hosts; empty: the first that fits.
  std::string dataset;
  int64_t examples = 64;  // Images of each class the scores average over.
  int64_t steps = 0;      // Render steps; 0: the server's default (256).
  int64_t seed = 0;       // Render seed; negative: the server picks.
  std::vector<int64_t> classes;  // Empty: every class.
  std::string out_dir;
  bool json = false;  // Print circuits.json to `out` instead of a table.
};

absl::Status RunCircuits(VisualizerClient& client,
                         const CircuitsCommandOptions& options, std::FILE* out,
                         std::FILE* err);

struct AtlasCommandOptions {
  std::string model;
  std::string out_dir;
  std::string dataset;    // For top examples; empty: the first that fits.
  int64_t examples = 8;   // Top dataset examples per unit.
  int64_t steps = 0;      // Render steps; 0: the server's default (256).
  int64_t seed = 0;       // Render seed; negative: the server picks.
  std::vector<std::string> layers;  // Empty: every conv and linear layer.
  int64_t window = 64;    // Jobs in flight at once.
};

absl::Status RunAtlas(VisualizerClient& client,
                      const AtlasCommandOptions& options, std::FILE* out,
                      std::FILE* err);

}  // namespace featviz::client

#endif  // FEATVIZ_CLIENT_CIRCUITS_COMMANDS_H_
