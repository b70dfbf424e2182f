// The circuit questions that come after a picture, answered on real images:
//
//   ComputeActivations   where in an input a unit fires: activation maps and
//                        per-channel statistics
//   Attribute            which channels of a layer feed a target (a logit, a
//                        probability, a channel): gradient x activation per
//                        channel, the direct weights when everything between
//                        layer and target is linear, and GradCAM maps
//   UnitValues/TopUnits  which dataset images excite a unit most
//
// Images are [B, C, H, W] in [0, 1] of the model's input shape (the same
// space renders and datasets use); results are on the CPU.
#ifndef FEATVIZ_CORE_ANALYSIS_H_
#define FEATVIZ_CORE_ANALYSIS_H_

#include <cstdint>
#include <string>
#include <vector>

#include <torch/script.h>

#include "absl/status/statusor.h"
#include "core/dataset.h"
#include "core/model.h"
#include "core/objective.h"

namespace featviz::core {

// InvalidArgument naming both shapes unless `images` is [B, C, H, W] with
// the model's C, H, W and B >= 1.
absl::Status CheckImagesFit(const Model& model, const at::Tensor& images);

struct LayerActivations {
  std::string layer;
  std::vector<int64_t> channels;  // Every channel when the request had none.
  // [B, K, h, w] for spatial layers, [B, K] for flat ones (K = channels).
  at::Tensor maps;
  // [K] over every image and position: mean, max, and the fraction of
  // positions where the unit is above zero (fires after a ReLU).
  at::Tensor mean;
  at::Tensor max;
  at::Tensor fraction_active;
};

// The maps of `channels` of each layer (all channels where a list is
// empty) on `images`, computed in chunks without gradients. NotFound for an
// unknown layer, OutOfRange for a channel outside the layer.
absl::StatusOr<std::vector<LayerActivations>> ComputeActivations(
    const Model& model, const at::Tensor& images,
    const std::vector<std::pair<std::string, std::vector<int64_t>>>& layers);

struct Attribution {
  std::string layer;
  // [B, K]: sum over positions of d(target)/d(activation) x activation, for
  // each image and channel of `layer`.
  at::Tensor per_image;
  // [K]: per_image averaged over the images; the channel's contribution to
  // the target, in the target's units.
  at::Tensor scores;
  // True when d(target)/d(layer) is the same for every input, i.e. the
  // layers between are linear. `direct_weights` [K] is then the gradient
  // summed over positions: the weight of the direct path from each channel.
  bool linear_path = false;
  at::Tensor direct_weights;
  // [B, H, W] GradCAM maps at the input's size, each scaled to max 1 (all
  // zero where nothing supports the target), when asked for.
  at::Tensor gradcam;
};

// Attributes `target` (an objective whose terms are per-image: neuron,
// channel, layer, direction, logit, prob, and regularisers; not diversity,
// alignment or batch=) to the channels of `layer` on `images`.
// InvalidArgument for such targets or when the target does not depend on
// `layer` (the layer must come before it); NotFound/OutOfRange as Validate.
absl::StatusOr<Attribution> Attribute(const Model& model,
                                      const Objective& target,
                                      const std::string& layer,
                                      const at::Tensor& images, bool gradcam);

// [N, K] value of every unit of `layer` on every image of `images`: the
// spatial max of each channel for spatial layers, the activation for flat
// ones. One batched pass in chunks of `chunk` images, without gradients.
absl::StatusOr<at::Tensor> UnitValues(const Model& model,
                                      const at::Tensor& images,
                                      const std::string& layer,
                                      int64_t chunk = 512);

struct TopUnitExamples {
  int64_t channel = 0;
  std::vector<int64_t> indices;  // Image indices, highest value first.
  std::vector<float> values;
};

// The `n` images with the highest value of each of `channels` (all when
// empty) in `values` ([N, K] from UnitValues). OutOfRange for a channel >= K.
absl::StatusOr<std::vector<TopUnitExamples>> TopUnits(
    const at::Tensor& values, const std::vector<int64_t>& channels, int64_t n);

struct Detector {
  int64_t channel = 0;
  double score = 0;         // Attribution score for the class's logit.
  at::Tensor example_map;   // [h, w] (or [1]) on the example image.
  double example_max = 0;   // The map's max.
};

struct ClassDetectors {
  int64_t class_index = 0;
  std::vector<Detector> detectors;  // Highest score first.
  // Row of `images` shown as the class's example: the first the model
  // classifies correctly (the first image when none is).
  int64_t example = 0;
};

// The `k` channels of `layer` with the highest attribution to logit(
// `class_index`) averaged over `images` (images of that class), with each
// one's activation map on the example image.
absl::StatusOr<ClassDetectors> FindDetectors(const Model& model,
                                             const at::Tensor& images,
                                             int64_t class_index,
                                             const std::string& layer,
                                             int64_t k);

}  // namespace featviz::core

#endif  // FEATVIZ_CORE_ANALYSIS_H_
