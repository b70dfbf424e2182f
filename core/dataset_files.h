// A dataset from the bytes a client uploads, and the form a server keeps it
// in on disk.
//
// Uploads (DecodeDataset) come in three formats:
//
//   npy   one array of images: uint8 (0..255, divided by 255) or float32
//         (finite, in [0, 1]); [N, H, W] (gray), [N, C, H, W] or
//         [N, H, W, C] with C in 1..16. A 4-D array is NCHW when only its
//         second size is in 1..16, NHWC when only its last is; when both
//         are, the smaller is the channel count (a tie is NCHW, PyTorch's
//         layout): [N, 3, 32, 32] and [N, 32, 32, 3] are both 3x32x32.
//   npz   an archive (numpy.savez or savez_compressed) holding images.npy,
//         as above, and optionally labels.npy: int64, int32 or uint8 [N].
//   idx   MNIST-format IDX3 images (uint8, gray) and optionally IDX1
//         labels, each gzip'd or not.
//
// Labels are class indices >= 0; with class names every label must be
// below their count, without them the names are "0", "1", ... up to the
// largest label. Sides are 1 to 4096 pixels, classes at most 10000.
//
// On disk a dataset is a directory LoadDataset reads back: images.npy
// ([N, C, H, W], uint8 when every pixel is a multiple of 1/255, else
// float32), labels.npy (int64 [N], when labelled) and dataset.json
// ({"source", "owner", "uploaded", "class_names"}). An operator may write
// the same by hand; dataset.json is then optional.
#ifndef FEATVIZ_CORE_DATASET_FILES_H_
#define FEATVIZ_CORE_DATASET_FILES_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/dataset.h"

namespace featviz::core {

enum class DatasetFormat { kNpy, kNpz, kIdx };

// "npy", "npz", "idx".
absl::string_view DatasetFormatName(DatasetFormat format);

// Most channels an image may have, and most pixels on a side.
inline constexpr int64_t kMaxDatasetChannels = 16;
inline constexpr int64_t kMaxDatasetSide = 4096;
inline constexpr int64_t kMaxDatasetClasses = 10000;
inline constexpr size_t kMaxClassNameBytes = 128;

// What a client sends.
struct DatasetUpload {
  DatasetFormat format = DatasetFormat::kNpy;
  // The .npy or .npz file, or the IDX3 image file (the bytes must outlive
  // DecodeDataset).
  absl::string_view images;
  // IDX only: the IDX1 label file; empty for none.
  absl::string_view labels;
  // Name of each class index; empty to number them.
  std::vector<std::string> class_names;
};

// The dataset `upload` holds, named `name`, owned by `owner` and marked
// uploaded. An archive or gzip stream may inflate to at most
// `max_decoded_bytes`. InvalidArgument naming the field ("images",
// "labels", "class_names") and the value for anything the rules above
// refuse: an unreadable file, a dtype, a shape, NaN or a value outside
// [0, 1] (with the image's index), a label count that differs from the
// image count, a label out of range; ResourceExhausted past
// `max_decoded_bytes`.
absl::StatusOr<DatasetPtr> DecodeDataset(const DatasetUpload& upload,
                                         std::string name, std::string owner,
                                         int64_t max_decoded_bytes);

// `images` (a uint8 or float32 array in one of the layouts above) as
// [N, C, H, W] floats in [0, 1], checked as DecodeDataset does.
absl::StatusOr<at::Tensor> ImagesFromArray(const at::Tensor& images);

// Writes `dataset` into the existing directory `dir` in the on-disk form.
absl::Status WriteDatasetDir(const Dataset& dataset, const std::string& dir);

// True when `dir` holds images.npy (the on-disk form).
bool IsArrayDatasetDir(const std::string& dir);

// Reads the on-disk form back, checked as an upload is. The name is
// `name`; source, owner, uploaded and class names come from dataset.json
// when there is one (else "npy", an operator's, numbered classes).
absl::StatusOr<DatasetPtr> ReadDatasetDir(const std::string& dir,
                                          std::string name);

}  // namespace featviz::core

#endif  // FEATVIZ_CORE_DATASET_FILES_H_
