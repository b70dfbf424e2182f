// Transforms applied to the images before each forward pass, so that the
// optimiser cannot win with patterns that only work at one exact pixel
// alignment, scale or angle ("transformation robustness"). Each draw comes
// from the job's own random stream, so a seed fixes the whole sequence.
//
// Text form: "pad(2), jitter(1), scale(0.9, 1, 1.1), rotate(-10, 0, 10)";
// "default" is the robust set for the image size; "none" is the empty list.
#ifndef FEATVIZ_CORE_TRANSFORM_H_
#define FEATVIZ_CORE_TRANSFORM_H_

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace featviz::core {

struct Transform {
  enum class Kind {
    kPad,     // Reflect-pad every side by `pixels`.
    kJitter,  // Random crop losing up to `pixels` rows and columns.
    kScale,   // Resize by a factor drawn from `values`.
    kRotate,  // Rotate by an angle in degrees drawn from `values`.
  };
  Kind kind = Kind::kPad;
  int64_t pixels = 0;
  std::vector<double> values;

  bool operator==(const Transform& other) const {
    return kind == other.kind && pixels == other.pixels &&
           values == other.values;
  }
  std::string ToString() const;
};

using TransformList = std::vector<Transform>;

// Lucid's robust set (pad, jitter, scale 0.9-1.1, rotate +-10 degrees,
// jitter), with the pixel amounts scaled from 224x224 photos to this size:
// Lucid's 12-pixel pad and 8-pixel jitter would wreck a 28x28 digit.
TransformList DefaultTransforms(int64_t height, int64_t width);

// Parses the text form above ("default" uses height and width). Errors name
// the offending transform and value.
absl::StatusOr<TransformList> ParseTransforms(absl::string_view text,
                                              int64_t height, int64_t width);
std::string TransformsToString(const TransformList& transforms);

// Applies the list to [B, C, H, W] images (one random draw per transform,
// shared by the batch), then resizes the result back to out_height x
// out_width, the model's input size.
at::Tensor ApplyTransforms(const TransformList& transforms,
                           const at::Tensor& images, std::mt19937_64& rng,
                           int64_t out_height, int64_t out_width);

}  // namespace featviz::core

#endif  // FEATVIZ_CORE_TRANSFORM_H_
