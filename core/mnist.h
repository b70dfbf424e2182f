// MNIST-format IDX files (optionally gzip'd): the real digits the tests,
// benchmarks and demo measure against.
#ifndef FEATVIZ_CORE_MNIST_H_
#define FEATVIZ_CORE_MNIST_H_

#include <string>

#include <ATen/ATen.h>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace featviz::core {

struct LabelledImages {
  at::Tensor images;  // [N, 1, H, W] float32 in [0, 1]
  at::Tensor labels;  // [N] int64
};

// An IDX3 image file (magic 0x00000803) as [N, 1, H, W] floats in [0, 1].
absl::StatusOr<at::Tensor> ReadIdxImages(const std::string& path);
// An IDX1 label file (magic 0x00000801) as [N] int64.
absl::StatusOr<at::Tensor> ReadIdxLabels(const std::string& path);

// The same from a file's bytes (gzip'd or not, at most `max_bytes` once
// gunzipped): the images as [N, 1, H, W] uint8 as stored, the labels as
// [N] int64. `what` names the file in errors.
absl::StatusOr<at::Tensor> DecodeIdxImages(absl::string_view bytes,
                                           absl::string_view what,
                                           int64_t max_bytes);
absl::StatusOr<at::Tensor> DecodeIdxLabels(absl::string_view bytes,
                                           absl::string_view what,
                                           int64_t max_bytes);
// `dir`/t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz.
absl::StatusOr<LabelledImages> LoadMnistTestSet(const std::string& dir);

}  // namespace featviz::core

#endif  // FEATVIZ_CORE_MNIST_H_
