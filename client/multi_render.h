// Renders that span several units or models.
//
// `featviz render MODEL 'channel(conv2, *)' --units 0-15`: every listed unit
// of a layer rendered as one batched request (client/unit_template.h), with
// one contact sheet labelled by unit ("conv2:5 0.83": the unit and its term's
// value on the final image).
//
// `featviz compare MODEL_A MODEL_B OBJECTIVE`: the same objective, seed and
// options on two models (or two versions of one), one sheet with a labelled
// row per model and a table of their term values and layer statistics.
#ifndef FEATVIZ_CLIENT_MULTI_RENDER_H_
#define FEATVIZ_CLIENT_MULTI_RENDER_H_

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "client/commands.h"
#include "client/unit_template.h"
#include "client/visualizer_client.h"
#include "featviz/v1/featviz.pb.h"

namespace featviz::client {

// A layer's units, checked against the model and split into requests.
struct UnitRenderPlan {
  UnitTemplate unit_template;
  std::vector<int64_t> units;  // In the order listed.
  int64_t channels = 0;        // The layer's.
  std::vector<std::string> class_names;
  // One request per chunk of at most UnitTemplate::UnitsPerRequest() units;
  // request k renders units chunks[k], unit chunks[k][i] on image i.
  std::vector<std::vector<int64_t>> chunks;
  std::vector<featviz::v1::RenderRequest> requests;
};

// The plan for `options` (whose objective has a '*' term) and `units_spec`
// (--units; empty means all). Asks the server for the model (GetModel) to
// check the layer and the units. InvalidArgument and OutOfRange are usage
// errors (a malformed template or units list, an unknown layer, a unit
// beyond the layer's channels); any other error is the server's.
absl::StatusOr<UnitRenderPlan> PlanUnitRender(VisualizerClient& client,
                                              const RenderCommandOptions& options,
                                              const std::string& units_spec);

// Submits the plan's requests together (the server batches them), follows
// them in order, and writes what `options` ask for: --out, one sheet of all
// units labelled "conv2:5 0.83" (and x.bands.png beside it for images with
// bands), --npy ([units, C, H, W]), --png_dir (unit_<u>.png), and the report
// (with `json`, one object with an entry per unit). A failure cancels the
// requests not yet finished.
absl::Status RunUnitRender(VisualizerClient& client,
                           const RenderCommandOptions& options,
                           const UnitRenderPlan& plan, std::FILE* out,
                           std::FILE* err);

// "name/2" -> "name@2": the server's spelling of a model version; anything
// else as it is.
std::string ModelVersionRef(const std::string& model);

// `featviz compare`: renders `options.objective` with the same seed (the
// option's, else one drawn here) and options on `models[0]` and `models[1]`,
// then writes --out (two labelled rows: model@version, objective total, each
// image's top class and probability) and prints a table of the terms' final
// values, the top classes and each objective layer's mean and max
// activation; with `json`, one object with an entry per model.
absl::Status RunCompare(VisualizerClient& client,
                        const RenderCommandOptions& options,
                        const std::vector<std::string>& models, std::FILE* out,
                        std::FILE* err);

}  // namespace featviz::client

#endif  // FEATVIZ_CLIENT_MULTI_RENDER_H_
