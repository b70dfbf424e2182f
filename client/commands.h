// The `featviz` subcommands over a VisualizerClient: list models, list a
// model's layers, render, show or cancel a job (`featviz bench` is in
// client/bench.h). Each writes
// its report to `out` (a table, a summary line, or with `json` exactly one
// JSON document and nothing else) and returns the first error: the server's
// status, or a local file error.
#ifndef FEATVIZ_CLIENT_COMMANDS_H_
#define FEATVIZ_CLIENT_COMMANDS_H_

#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "client/progress_bar.h"
#include "client/visualizer_client.h"
#include "featviz/v1/featviz.pb.h"

namespace featviz::client {

// `featviz models`: name, version, hash (12 characters), input CxHxW,
// classes, layers; with `json`, a JSON array of models.
absl::Status RunModels(VisualizerClient& client, bool json, std::FILE* out);

// `featviz layers MODEL`: path, kind, output shape, channels; with `json`, a
// JSON array of layers.
absl::Status RunLayers(VisualizerClient& client, const std::string& model,
                       bool json, std::FILE* out);

// `featviz render MODEL OBJECTIVE [...]`. Zero and empty values leave the
// choice to the server, whose defaults are noted.
struct RenderCommandOptions {
  std::string model;
  // Objective text, sent as objective_text (the server parses it).
  std::string objective;
  int64_t steps = 0;        // 0: the server's default (256).
  int64_t size = 0;         // 0: the model's input size.
  int64_t height = 0;       // Non-square images; 0: the model's.
  int64_t width = 0;        // Non-square images; 0: the model's.
  bool gray = false;        // Gray stimuli for an RGB model.
  std::string param;        // "fft", "pixel", "maco", or "": the server's (FFT).
  // MaCo: the hosted dataset whose spectrum magnitude the images keep;
  // "": the server's choice (its dataset for the model, else 1/f).
  std::string maco_dataset;
  // PNG files sent as RenderRequest.references: reference(k) of the
  // objective is the k-th.
  std::vector<std::string> references;
  // Feature accentuation (RenderRequest.accentuate): the seed image,
  // "dataset:IDX" (the model's hosted dataset), "dataset:NAME:IDX", or a
  // float32 .npy file of [C, H, W] or [1, C, H, W] in [0, 1] (sent as one
  // more reference tensor); empty: an ordinary render.
  std::string accentuate;
  // Where the picture is kept close to the seed: "" for the pixels, or a
  // layer path; and the keep-close weight, 0 for the server's default.
  std::string accentuate_layer;
  double accentuate_weight = 0;
  int64_t batch = 1;        // Images rendered together.
  int64_t seed = -1;        // Negative: the server picks one and reports it.
  double lr = 0;            // 0: the server's default (0.05).
  std::string precision;    // "fp32", "bf16", "tf32"; empty: the server's.
  double decay = 0;         // FFT decay power; 0: the server's (1.0).
  std::string transforms = "default";  // "default", "none", or a list.
  int64_t progress_every = 0;          // 0: the server's default (16).
  // RenderRequest.trust (docs/trust.md): dataset examples of the unit shown
  // beside the pictures (0: none; at most 64), the path similarity check,
  // and the hosted dataset they come from ("": the one that fits).
  int64_t exemplars = 0;
  bool path_similarity = false;
  std::string trust_dataset;

  // Outputs; empty means not written.
  std::string out;       // Labelled grid PNG of all images.
  std::string npy;       // float32 [B, C, H, W].
  std::string png_dir;   // DIR/image_<b>.png, the server's PNGs.
  std::string previews;  // DIR/step_<NNNNN>.png, one per progress event.
  // MaCo: grid PNG of the transparency maps (error for other renders).
  std::string transparency;
  // Grid labels, one per image; empty: each image's top class and its
  // probability ("7 0.99").
  std::vector<std::string> labels;
  int64_t scale = 0;    // Grid magnification; 0: cells of at least 112 px.
  int64_t columns = 0;  // Grid columns; 0: one row up to 10 images, else square.

  bool json = false;  // One JSON object on `out` instead of a summary.
  // Progress on `err`: a bar on a terminal, a line per 10 % on a pipe.
  ProgressMode progress = ProgressMode::kOff;
};

// One picture's path similarity (docs/trust.md) as a line: "path
// similarity 0.82 (reliable, threshold 0.5): conv1 0.91, conv2 0.73".
std::string PathSimilarityLine(const featviz::v1::PathSimilarity& p);

// The request `options` describe. InvalidArgument naming the option for
// values the server need not see (bad --param, --transforms, --labels count,
// negative sizes): usage errors.
absl::StatusOr<featviz::v1::RenderRequest> BuildRenderRequest(
    const RenderCommandOptions& options);

// Runs `request` (from BuildRenderRequest(options)) and writes the files and
// the report that `options` ask for.
absl::Status RunRender(VisualizerClient& client,
                       const RenderCommandOptions& options,
                       const featviz::v1::RenderRequest& request,
                       std::FILE* out, std::FILE* err);

// A stream of render events, Render's or WatchJob's: passes each progress
// event to the callback and returns the result; `job_id` (may be null)
// receives the job's id.
using RenderStream = std::function<absl::StatusOr<featviz::v1::RenderResult>(
    const VisualizerClient::ProgressCallback&, std::string* job_id)>;

// Follows `stream` with `options`' progress display and writes the files and
// the report that `options` ask for (RunRender and `featviz watch`).
absl::Status FollowRender(VisualizerClient& client,
                          const RenderCommandOptions& options,
                          const RenderStream& stream, std::FILE* out,
                          std::FILE* err);

// `featviz job ID` (GetJob) and `featviz cancel ID` (CancelJob, when
// `cancel`), sent to the replica the id names: one line with the id, state,
// model, objective, steps done, device and any error; with `json`, one JSON
// object with the same fields.
absl::Status RunJob(VisualizerClient& client, const std::string& id,
                    bool cancel, bool json, std::FILE* out);

}  // namespace featviz::client

#endif  // FEATVIZ_CLIENT_COMMANDS_H_
