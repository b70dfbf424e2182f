// Pictures out of tensors: PNG encoding and decoding, labelled contact sheets
// (grids), and .npy files. Images are float tensors in [0, 1], [C, H, W] with
// C = 1 (grayscale) or 3 (RGB); values outside [0, 1] are clamped. Images of
// other channel counts (bands) go through core/bands.h first.
#ifndef FEATVIZ_CORE_IMAGE_H_
#define FEATVIZ_CORE_IMAGE_H_

#include <cstdint>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace featviz::core {

// 8-bit PNG bytes (gray or RGB) for a [C, H, W] image.
absl::StatusOr<std::string> EncodePng(const at::Tensor& image);
absl::Status WritePng(const at::Tensor& image, const std::string& path);

// Decodes 8-bit gray/RGB/RGBA PNG bytes to a [C, H, W] float tensor in [0, 1]
// (alpha dropped).
absl::StatusOr<at::Tensor> DecodePng(absl::string_view png_bytes);
absl::StatusOr<at::Tensor> ReadPng(const std::string& path);

struct GridOptions {
  // Images per row; 0 picks ceil(sqrt(n)).
  int64_t columns = 0;
  // Nearest-neighbour magnification, so a 28x28 digit is big enough to see.
  int64_t scale = 1;
  // Pixels between cells and around the sheet (after scaling).
  int64_t padding = 4;
  // One label per image drawn under it (may be empty: no label row), all in
  // one font size: the largest (up to 1 per 64 pixels of cell width, at most
  // 4) at which the longest label fits its cell less a margin on each side.
  // A label too long even at size 1 is cut and ends in "...". Labels never
  // reach past their margins, so neighbours never touch.
  std::vector<std::string> labels;
  // Sheet background gray level in [0, 1].
  float background = 1.0f;
};

// A contact sheet of `images` ([N, C, H, W]; C = 1 or 3, all the same size)
// as one [3, H', W'] RGB image, with labels under the cells when given.
absl::StatusOr<at::Tensor> MakeGrid(const at::Tensor& images,
                                    const GridOptions& options = {});

// NumPy .npy (format 1.0, little-endian float32/float64/int64/int32/uint8, C
// order).
absl::StatusOr<std::string> EncodeNpy(const at::Tensor& tensor);
absl::Status WriteNpy(const at::Tensor& tensor, const std::string& path);

}  // namespace featviz::core

#endif  // FEATVIZ_CORE_IMAGE_H_
