// Protobuf meets core/ for the Circuits service, as convert.h does for the
// Visualizer: image inputs (client tensors or dataset slices) are resolved
// and checked against the model and the hosted datasets, and core's analysis
// results become featviz.v1 messages. Error messages name the field.
#ifndef FEATVIZ_SERVER_CIRCUITS_CONVERT_H_
#define FEATVIZ_SERVER_CIRCUITS_CONVERT_H_

#include <cstdint>
#include <string>
#include <vector>

#include <torch/script.h>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/analysis.h"
#include "core/dataset.h"
#include "core/model.h"
#include "featviz/v1/circuits.pb.h"
#include "server/engine/dataset_registry.h"

namespace featviz::server {

// What fits `model`'s input: its [C, H, W] exactly.
DatasetNeed NeedOf(const core::Model& model);

// Images an analysis runs on, with where they came from.
struct ResolvedImages {
  at::Tensor images;             // [B, C, H, W] in [0, 1], CPU float
  std::vector<int64_t> indices;  // Dataset indices; empty for client images.
  std::vector<int64_t> labels;   // Their labels; empty for client images.
};

// `input` as images `model` takes, at most `max_images` of them; a slice
// that names no dataset reads the one that fits the model
// (DatasetRegistry::Pick). `field` prefixes error messages ("input").
// NotFound: unknown dataset; OutOfRange: an index or range outside the
// dataset (or its class); FailedPrecondition: no dataset named and none
// fits; InvalidArgument: no source, wrong shape, too many images, several
// datasets fit.
absl::StatusOr<ResolvedImages> ResolveImages(const v1::ImageInput& input,
                                             const core::Model& model,
                                             const DatasetRegistry& datasets,
                                             int64_t max_images,
                                             absl::string_view field);

// `count` images of class `label` from `dataset` (fewer when the class has
// fewer), for FindCircuit.
ResolvedImages ClassImages(const core::Dataset& dataset, int64_t label,
                           int64_t count);

v1::Dataset DatasetToProto(const core::Dataset& dataset);

// The model's identity fields of a response.
template <typename Response>
void SetModelIdentity(const core::Model& model, Response& response) {
  response.set_model(model.card().name);
  response.set_model_version(model.card().version);
  response.set_model_hash(model.content_hash());
}

// Maps, statistics and (for spatial layers, when `overlay_png`) one PNG per
// image and channel over `images`.
absl::StatusOr<v1::LayerActivations> ActivationsToProto(
    const core::LayerActivations& layer, const at::Tensor& images,
    bool overlay_png);

// Scores sorted highest first, per-image scores, GradCAM maps and PNGs.
absl::StatusOr<v1::AttributeResponse> AttributionToProto(
    const core::Attribution& attribution, const at::Tensor& images,
    bool gradcam_png);

}  // namespace featviz::server

#endif  // FEATVIZ_SERVER_CIRCUITS_CONVERT_H_
