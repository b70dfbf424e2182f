// Datasets a server hosts beside its models: real images the circuit tools
// read (activation maps, attribution, top examples). A dataset directory
// holds one dataset per subdirectory, named after it (a symlink to the MNIST
// folder works), or is itself one dataset named after the directory:
//
//   <dir>/mnist/t10k-images-idx3-ubyte.gz     MNIST-format IDX files: images,
//   <dir>/mnist/t10k-labels-idx1-ubyte.gz     with labels when the pair exists
//   <dir>/digits/3/0001.png                   PNGs in one folder per class
//   <dir>/scans/a.png                         PNGs in one folder, unlabelled
//   <dir>/faces/images.npy                    NumPy arrays (dataset_files.h),
//   <dir>/faces/labels.npy                    as uploads are kept, with
//   <dir>/faces/dataset.json                  owner and class names
//
// Names starting with '.' are skipped (uploads stage there). Every image of
// a dataset has the same [C, H, W]; pixels are floats in [0, 1], the space
// the models' cards describe.
#ifndef FEATVIZ_CORE_DATASET_H_
#define FEATVIZ_CORE_DATASET_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <torch/script.h>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace featviz::core {

struct Dataset {
  std::string name;
  // Where the images came from: "idx", "png", "npy" (an operator's arrays)
  // or, for uploads, the format sent ("npy", "npz", "idx").
  std::string source;
  at::Tensor images;   // [N, C, H, W] float32 in [0, 1]
  // [N] int64 class index per image; -1 where the dataset has no labels.
  at::Tensor labels;
  // Name of each class index (the IDX labels' digits, or the PNG folders).
  std::vector<std::string> class_names;
  // Sent with UploadDataset by `owner` (who, with an admin, may delete it);
  // false for the operator's datasets, which the API cannot delete.
  bool uploaded = false;
  std::string owner;

  int64_t size() const { return images.size(0); }
  bool labelled() const { return !class_names.empty(); }
  // Bytes the images and labels take in memory.
  int64_t bytes() const {
    return static_cast<int64_t>(images.nbytes() + labels.nbytes());
  }
  // Images of `class_index`, in dataset order.
  std::vector<int64_t> IndicesOfClass(int64_t class_index) const;
};

using DatasetPtr = std::shared_ptr<const Dataset>;

// One dataset from a directory of IDX files, PNGs or arrays (see above),
// named `name`. NotFound when the directory does not exist; InvalidArgument when
// it holds no images, mixes image shapes, or a file is corrupt (the message
// names the file).
absl::StatusOr<DatasetPtr> LoadDataset(const std::string& dir,
                                       std::string name);

// True when `dir` is itself one dataset (IDX image files or images.npy at
// its top) rather than a directory of datasets.
bool HoldsOneDataset(const std::string& dir);

// Every dataset of a dataset directory, sorted by name (or the directory
// alone, named after it, when HoldsOneDataset). A subdirectory that
// fails to load is logged and skipped. NotFound when `dir` does not exist.
absl::StatusOr<std::vector<DatasetPtr>> LoadDatasetDir(const std::string& dir);

}  // namespace featviz::core

#endif  // FEATVIZ_CORE_DATASET_H_
