// `featviz units MODEL`: automatic unit labels (Circuits.LabelUnits). For
// each unit, the classes of its top dataset examples ("fires on 7s: 82 % of
// its top 100"), a class selectivity index in [0, 1], and the classes whose
// logits it feeds most by attribution; with --label K, the units most
// selective for class K across the layers. docs/trust.md ("Unit labels")
// says how to read them.
#ifndef FEATVIZ_CLIENT_LABEL_COMMANDS_H_
#define FEATVIZ_CLIENT_LABEL_COMMANDS_H_

#include <cstdint>
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "client/visualizer_client.h"
#include "featviz/v1/featviz.pb.h"

namespace featviz::client {

struct UnitsCommandOptions {
  std::string model;
  // Empty: every layer UnitLayers names.
  std::string layer;
  // Only the units most selective for this class index, sorted by their
  // share of it across the layers.
  std::optional<int64_t> label;
  int64_t top_n = 0;  // Top examples per unit; 0: the server's (100).
  int64_t limit = 0;  // With `label`: at most this many units; 0: all.
  std::string dataset;  // Empty: the one labelled dataset that fits.
  bool json = false;
};

// The layers `featviz units` labels without --layer: every tappable
// convolution and linear layer with channels (as the atlas renders), less
// the class logits (the last of them as wide as the model's classes, when
// the model has logits): a logit unit's label would only restate its
// class.
std::vector<std::string> UnitLayers(const featviz::v1::Model& model);

// Prints a table per layer (channel, label, selectivity, classes by
// attribution), or with `label` one table of the units most selective for
// it; with `json` one JSON document. Errors are the server's, naming the
// layer asked.
absl::Status RunUnits(VisualizerClient& client,
                      const UnitsCommandOptions& options, std::FILE* out);

}  // namespace featviz::client

#endif  // FEATVIZ_CLIENT_LABEL_COMMANDS_H_
