// The `featviz` commands that give every RPC family of the server a command
// of its own: datasets, activations, attribute, top (Circuits); jobs,
// submit, watch, stats (the job API); load, unload, reload (admin). Each
// writes a table or a line to `out`, or with `json` exactly one JSON
// document, and returns the server's status or a local file error.
#ifndef FEATVIZ_CLIENT_RPC_COMMANDS_H_
#define FEATVIZ_CLIENT_RPC_COMMANDS_H_

#include <cstdint>
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "client/commands.h"
#include "client/visualizer_client.h"
#include "featviz/v1/featviz.pb.h"

namespace featviz::client {

// `featviz datasets`: name, size, image shape, classes, source, who
// uploaded it (or "(operator)"), bytes in the server's memory.
absl::Status RunDatasets(VisualizerClient& client, bool json, std::FILE* out);

// The images of an analysis: a slice of a hosted dataset.
struct DatasetSliceOptions {
  std::string dataset;  // Empty: the one dataset that fits the model.
  std::vector<int64_t> indices;  // These images; else `count` from `start`.
  int64_t start = 0;
  int64_t count = 0;             // 0: the server's (1).
  std::optional<int64_t> label;  // Only images of this class.
};

struct ActivationsCommandOptions {
  std::string model;
  std::string layer;
  std::vector<int64_t> channels;  // Empty: every channel.
  DatasetSliceOptions images;
  std::string npy;      // float32 maps [B, K, h, w] (or [B, K]); empty: none.
  std::string out_dir;  // One overlay PNG per image and channel; empty: none.
  bool json = false;
};

// `featviz activations MODEL --layer L`: per channel its mean, max and
// fraction active over the images; the maps to --npy, overlays to --out_dir.
absl::Status RunActivations(VisualizerClient& client,
                            const ActivationsCommandOptions& options,
                            std::FILE* out);

struct AttributeCommandOptions {
  std::string model;
  std::string target;  // Objective syntax: "logit(3)".
  std::string layer;
  DatasetSliceOptions images;
  int64_t top_k = 10;   // Channels printed (JSON has every channel).
  std::string out_dir;  // GradCAM PNGs, one per image; empty: none.
  bool json = false;
};

// `featviz attribute MODEL TARGET --layer L`: the channels of L ranked by
// their contribution (gradient x activation) to TARGET.
absl::Status RunAttribute(VisualizerClient& client,
                          const AttributeCommandOptions& options,
                          std::FILE* out);

struct TopCommandOptions {
  std::string model;
  std::string layer;
  std::vector<int64_t> channels;  // Empty: every channel.
  std::string dataset;  // Empty: the one dataset that fits the model.
  int64_t top_n = 9;              // Dataset examples per unit.
  // DIR/<layer>_<channel>_top<rank>.png, and the contact sheet of them all,
  // DIR/<layer>_top.png; empty: none.
  std::string out_dir;
  bool json = false;
};

// `featviz top MODEL --layer L`: the dataset images that excite each unit
// most, with their values and labels; with an out_dir, each image and a
// contact sheet labelled with each one's dataset index, label and value (a
// row per unit when there are several).
absl::Status RunTop(VisualizerClient& client, const TopCommandOptions& options,
                    std::FILE* out);

// `featviz jobs [--owner O] [--state S]`: id, state, model, objective,
// steps, device. `state` is a JobState name without its prefix ("running"),
// any case; empty: every state. InvalidArgument for an unknown state.
absl::Status RunJobs(VisualizerClient& client, const std::string& owner,
                     const std::string& state, bool json, std::FILE* out);

// `featviz submit MODEL OBJECTIVE [render options]`: queues the render as a
// job (tensors and PNGs in its result, for `featviz watch`) and prints its
// id, or the job as JSON.
absl::Status RunSubmit(VisualizerClient& client,
                       featviz::v1::RenderRequest request,
                       const std::string& owner, int32_t priority, bool json,
                       std::FILE* out);

// `featviz watch ID [--out ...]`: follows the job to its end with progress
// on `err`, then writes what `options` ask for, like `featviz render`.
absl::Status RunWatch(VisualizerClient& client, const std::string& id,
                      RenderCommandOptions options, std::FILE* out,
                      std::FILE* err);

// `featviz stats`: queue, workers, cache and job counts.
absl::Status RunStats(VisualizerClient& client, bool json, std::FILE* out);

// `featviz load PATH`, `featviz unload NAME [--version V]`, `featviz reload
// [NAME]`: one line per model version loaded or unloaded (and per file that
// failed to load).
absl::Status RunLoad(VisualizerClient& client, const std::string& path,
                     bool json, std::FILE* out);
absl::Status RunUnload(VisualizerClient& client, const std::string& name,
                       const std::string& version, bool json, std::FILE* out);
absl::Status RunReload(VisualizerClient& client, const std::string& name,
                       bool json, std::FILE* out);

}  // namespace featviz::client

#endif  // FEATVIZ_CLIENT_RPC_COMMANDS_H_
