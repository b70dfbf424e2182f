// Image parameterisations: how the optimiser's variables become images.
// Pixel: the image is sigmoid(v) of a per-pixel variable. FFT: the variable is
// a 2-D spectrum scaled by 1/f^decay (so the optimiser moves low frequencies
// as easily as high ones), turned into an image by an inverse real FFT and a
// sigmoid. RGB images go through a decorrelated colour space (the square root
// of ImageNet's colour covariance) first; grayscale images need none.
// MaCo (Fel et al., "Unlocking Feature Visualization for Deeper Networks with
// MAgnitude Constrained Optimization", NeurIPS 2023): the spectrum's
// magnitude is fixed (natural images' average magnitude) and only its phase
// is optimised; the inverse FFT is standardised per image, then coloured and
// squashed as above. Keeping the magnitude of real pictures keeps their
// energy at every frequency, so the optimiser cannot pile energy into the
// high frequencies that make FFT pictures look like checkerboards.
#ifndef FEATVIZ_CORE_PARAM_H_
#define FEATVIZ_CORE_PARAM_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace featviz::core {

enum class ParamKind { kPixel, kFft, kMaco };

const char* ParamKindName(ParamKind kind);
// "pixel", "fft" or "maco"; InvalidArgument otherwise.
absl::StatusOr<ParamKind> ParseParamKind(absl::string_view name);

struct ParamOptions {
  ParamKind kind = ParamKind::kFft;
  int64_t batch = 1;
  // Image size; 0 means "the model's input size" (filled in by the render).
  int64_t channels = 0;
  int64_t height = 0;
  int64_t width = 0;
  // FFT: spectrum amplitude falls as 1/f^decay_power. 1 is Lucid's choice.
  double decay_power = 1.0;
  // RGB only: optimise in a decorrelated colour space.
  bool decorrelate = true;
  // Standard deviation of the random initial variables.
  double init_std = 0.01;
  // Optional start image, [C, H, W] or [1 or batch, C, H, W] in [0, 1].
  // MaCo keeps only its phase.
  at::Tensor init_image;
  // MaCo: the fixed magnitude spectrum, [C or 1, H, W/2 + 1] (float, any
  // device; see MacoMagnitudeFromImages). Undefined: DefaultMacoMagnitude.
  // Sessions share a batched parameterisation call only when they hold the
  // very same tensor (is_same), so a server hands out one cached tensor per
  // (source, size).
  at::Tensor magnitude;
  // MaCo: where `magnitude` came from, for the result ("1/f" or
  // "dataset mnist (10000 images)"); informational.
  std::string magnitude_source;
  // MaCo: the tone of real pictures (see MacoTone). The standardised image
  // is multiplied by `tone_gain` and, after the colour matrix, `tone_offset`
  // ([C] float, any device; undefined: 0) is added before the sigmoid.
  // Sessions share a parameterisation call only with the same gain and the
  // very same offset tensor.
  double tone_gain = 1.0;
  at::Tensor tone_offset;
};

// MaCo's tone: the standardised MaCo image has unit RMS, which after the
// sigmoid is a mid-gray picture of modest contrast, whatever the pictures
// the model was trained on look like. A dataset's tone makes a MaCo
// picture's pixels as bright and as contrasted as the dataset's images:
// `offset` moves each channel's mean to the dataset's mean pixel, and
// `gain` scales the image so that its pixels' standard deviation per channel
// is the dataset's (over all its pixels): the first two moments of each
// channel's pixel histogram are the dataset's. Without a dataset the tone
// is the neutral one (gain 1, no offset).
struct MacoTone {
  double gain = 1.0;
  at::Tensor offset;  // [C] float CPU, in logit space after the colour matrix.
};

// The tone of real images ([N, C, H, W] in [0, 1]; at most kMacoMaxImages
// of them), for MaCo images with the parameterisation's colour matrix (RGB
// and `decorrelate`). Gain within [0.25, 8], offsets within [-6, 6].
// InvalidArgument for an empty or wrongly shaped tensor.
absl::StatusOr<MacoTone> MacoToneFromImages(const at::Tensor& images,
                                            bool decorrelate = true);

// MaCo's default magnitude when no dataset is at hand: 1 / max(f, 1 / side)
// at spatial frequency f (cycles per pixel), the same for every channel.
// Natural photographs' amplitude spectra fall off close to 1/f (Field 1987;
// van der Schaaf and van Hateren 1996), which is also what Lucid's FFT
// parameterisation scales by. [channels, height, width/2 + 1] float CPU.
at::Tensor DefaultMacoMagnitude(int64_t channels, int64_t height,
                                int64_t width);

// Images MacoMagnitudeFromImages reads at most (the first ones): the mean
// spectrum of two thousand images no longer moves visibly.
inline constexpr int64_t kMacoMaxImages = 2000;

// MaCo's magnitude estimated from real images ([N, C, h, w] in [0, 1], any
// size: resized to height x width; at most kMacoMaxImages of them): the
// mean over the images of |rfft2| of
// each image minus its per-channel mean, in the colour space the
// parameterisation optimises in (decorrelated for RGB when `decorrelate`).
// [C, height, width/2 + 1] float CPU. InvalidArgument for an empty or
// wrongly shaped tensor.
absl::StatusOr<at::Tensor> MacoMagnitudeFromImages(const at::Tensor& images,
                                                   int64_t height,
                                                   int64_t width,
                                                   bool decorrelate = true);

class ImageParam {
 public:
  // InvalidArgument for non-positive sizes, a bad decay or init image shape.
  static absl::StatusOr<std::unique_ptr<ImageParam>> Create(
      const ParamOptions& options, uint64_t seed, const c10::Device& device);

  ImageParam(const ImageParam&) = delete;
  ImageParam& operator=(const ImageParam&) = delete;

  // The leaf tensors the optimiser updates.
  const std::vector<at::Tensor>& parameters() const { return parameters_; }
  // Replaces the variable: a new leaf of the same shape, or a view of rows
  // of a ParamPack's shared variable, which then optimises it.
  void SetVariable(at::Tensor variable) { parameters_[0] = std::move(variable); }
  // The images, [B, C, H, W] in (0, 1), differentiable w.r.t. parameters().
  at::Tensor Image() const { return ImageFrom(parameters_[0]); }
  // The images for a variable of this parameterisation's shape, or for
  // several such variables concatenated along the batch: params whose
  // SameShape() is true can be turned into images in one call.
  at::Tensor ImageFrom(const at::Tensor& variable) const;
  // True when `other` makes images from variables of the same shape and
  // with the same spectrum scale and colour space.
  bool SameShape(const ImageParam& other) const;
  const ParamOptions& options() const { return options_; }

 private:
  ImageParam(ParamOptions options, const c10::Device& device);
  // Pre-sigmoid values in the (possibly decorrelated) colour space -> image.
  at::Tensor ToImage(const at::Tensor& pre) const;
  // Inverse of ToImage, for start images.
  at::Tensor FromImage(const at::Tensor& image) const;

  ParamOptions options_;
  std::vector<at::Tensor> parameters_;
  // FFT: [H, W/2 + 1]; MaCo: the magnitude, [C or 1, H, W/2 + 1].
  at::Tensor spectrum_scale_;
  at::Tensor colour_;          // RGB decorrelation matrix [3, 3], or undefined
  at::Tensor tone_offset_;     // MaCo: [1, C, 1, 1] on the device, or undefined
};

using ImageParamPtr = std::unique_ptr<ImageParam>;

}  // namespace featviz::core

#endif  // FEATVIZ_CORE_PARAM_H_
