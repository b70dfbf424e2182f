// Transforms applied to the images before each forward pass, so that the
// optimiser cannot win with patterns that only work at one exact pixel
// alignment, scale or angle ("transformation robustness"). Each draw comes
// from the job's own generator, on the job's device, so a seed fixes the
// whole sequence on a given kind of device.
//
// Text form: "pad(2), jitter(1), scale(0.9, 1, 1.1), rotate(-10, 0, 10)";
// "default" is the robust set for the image size; "none" is the empty list.
#ifndef FEATVIZ_CORE_TRANSFORM_H_
#define FEATVIZ_CORE_TRANSFORM_H_

#include <cstdint>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace featviz::core {

struct Transform {
  // Every transform keeps the image size: the whole list becomes one
  // affine map per image, sampled once (bilinear, reflected at the border).
  enum class Kind {
    kPad,     // Zoom out so a reflected border of `pixels` appears.
    kJitter,  // Shift by a whole number of pixels in [-pixels/2, pixels/2].
    kScale,   // Zoom about the centre by a factor drawn from `values`.
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

// A gentler set for models read in tokens (Vision Transformers,
// MLP-mixers: Model::IsTokenModel): a small jitter and scale only, so that
// a patch model's grid is barely moved. The "tokens" preset.
TransformList TokenModelTransforms(int64_t height, int64_t width);

// The default for a model: TokenModelTransforms for a token model (measured
// on a trained ViT, docs/quality.md), else DefaultTransforms.
TransformList DefaultTransformsFor(bool token_model, int64_t height,
                                   int64_t width);

// Parses the text form above, or a preset: "default" (DefaultTransformsFor
// with `token_model`), "cnn" (DefaultTransforms), "tokens"
// (TokenModelTransforms), "none". Presets use height and width. Errors name
// the offending transform and value.
absl::StatusOr<TransformList> ParseTransforms(absl::string_view text,
                                              int64_t height, int64_t width,
                                              bool token_model = false);
std::string TransformsToString(const TransformList& transforms);

// Draws the list's random parameters `count` times from `generator` (one
// draw per transform and row) and composes each draw into an affine matrix:
// [count, 2, 3] float on the generator's device, mapping output coordinates
// to input coordinates (normalised to [-1, 1]) as at::affine_grid_generator
// takes them. `height` and `width` are the input image's size, which the
// pixel amounts refer to. A render draws its whole schedule (count = steps)
// once, so its step loop draws nothing.
at::Tensor TransformMatrices(const TransformList& transforms, int64_t count,
                             int64_t height, int64_t width,
                             at::Generator& generator);

// Samples [B, C, H, W] images through [B, 2, 3] matrices into
// [B, C, out_height, out_width] (bilinear, border reflected). Each image is
// sampled on its own, so the result for an image does not depend on the
// others in the stack.
at::Tensor SampleAffine(const at::Tensor& images, const at::Tensor& matrices,
                        int64_t out_height, int64_t out_width);

// True when the list is empty and the sizes agree: nothing to sample.
bool IsIdentity(const TransformList& transforms, int64_t height,
                int64_t width, int64_t out_height, int64_t out_width);

// The list applied to [B, C, H, W] images, resampled to out_height x
// out_width (the model's input size): one draw of TransformMatrices shared by
// the B images, then SampleAffine; or the images themselves when IsIdentity.
at::Tensor ApplyTransforms(const TransformList& transforms,
                           const at::Tensor& images, at::Generator& generator,
                           int64_t out_height, int64_t out_width);

}  // namespace featviz::core

#endif  // FEATVIZ_CORE_TRANSFORM_H_
