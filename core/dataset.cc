#include "core/dataset.h"

#include <algorithm>
#include <filesystem>
#include <system_error>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "core/dataset_files.h"
#include "core/image.h"
#include "core/mnist.h"
#include "spdlog/spdlog.h"

namespace featviz::core {
namespace {

namespace fs = std::filesystem;

constexpr absl::string_view kImagesSuffix = "-images-idx3-ubyte";
constexpr absl::string_view kLabelsSuffix = "-labels-idx1-ubyte";

// Sorted entries of `dir` (following symlinks) that satisfy `keep`.
std::vector<fs::path> SortedEntries(const fs::path& dir,
                                    bool (*keep)(const fs::directory_entry&)) {
  std::vector<fs::path> out;
  std::error_code error;
  for (const fs::directory_entry& entry : fs::directory_iterator(dir, error)) {
    if (keep(entry)) out.push_back(entry.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

// Directories, but not hidden ones: uploads stage under ".uploads".
bool IsDirectory(const fs::directory_entry& entry) {
  std::error_code error;
  return fs::is_directory(entry.path(), error) &&
         !absl::StartsWith(entry.path().filename().string(), ".");
}

bool IsPng(const fs::directory_entry& entry) {
  std::error_code error;
  return fs::is_regular_file(entry.path(), error) &&
         absl::EndsWithIgnoreCase(entry.path().filename().string(), ".png");
}

bool IsIdxImages(const fs::directory_entry& entry) {
  const std::string name = entry.path().filename().string();
  return absl::StrContains(name, kImagesSuffix);
}

// The IDX image file of `dir` and its label file when there is one.
absl::StatusOr<DatasetPtr> LoadIdx(const fs::path& images_path,
                                   std::string name) {
  auto dataset = std::make_shared<Dataset>();
  dataset->name = std::move(name);
  dataset->source = "idx";
  absl::StatusOr<at::Tensor> images = ReadIdxImages(images_path.string());
  if (!images.ok()) return images.status();
  dataset->images = *std::move(images);
  const int64_t n = dataset->images.size(0);

  std::string labels_name = images_path.filename().string();
  labels_name.replace(labels_name.find(std::string(kImagesSuffix)),
                      kImagesSuffix.size(), std::string(kLabelsSuffix));
  const fs::path labels_path = images_path.parent_path() / labels_name;
  std::error_code error;
  if (fs::exists(labels_path, error)) {
    absl::StatusOr<at::Tensor> labels = ReadIdxLabels(labels_path.string());
    if (!labels.ok()) return labels.status();
    if (labels->size(0) != n) {
      return absl::InvalidArgumentError(
          absl::StrCat(labels_path.string(), " holds ", labels->size(0),
                       " labels for ", n, " images"));
    }
    dataset->labels = *std::move(labels);
    const int64_t classes =
        n == 0 ? 0 : dataset->labels.max().item<int64_t>() + 1;
    for (int64_t c = 0; c < classes; ++c) {
      dataset->class_names.push_back(absl::StrCat(c));
    }
  } else {
    dataset->labels = at::full({n}, -1, at::kLong);
  }
  return dataset;
}

// PNG files, all of one shape, stacked; `label` for every one of them.
absl::Status AppendPngs(const std::vector<fs::path>& files, int64_t label,
                        std::vector<at::Tensor>& images,
                        std::vector<int64_t>& labels) {
  for (const fs::path& file : files) {
    absl::StatusOr<at::Tensor> image = ReadPng(file.string());
    if (!image.ok()) return image.status();
    if (!images.empty() && image->sizes() != images.front().sizes()) {
      return absl::InvalidArgumentError(absl::StrCat(
          file.string(), " is ", image->size(0), "x", image->size(1), "x",
          image->size(2), " but the dataset's images are ",
          images.front().size(0), "x", images.front().size(1), "x",
          images.front().size(2), " (channels x height x width)"));
    }
    images.push_back(*std::move(image));
    labels.push_back(label);
  }
  return absl::OkStatus();
}

absl::StatusOr<DatasetPtr> LoadPngs(const fs::path& dir, std::string name) {
  auto dataset = std::make_shared<Dataset>();
  dataset->name = std::move(name);
  dataset->source = "png";
  std::vector<at::Tensor> images;
  std::vector<int64_t> labels;
  std::vector<fs::path> classes = SortedEntries(dir, IsDirectory);
  // Class folders named 0..9 sort numerically, so "10" follows "9".
  std::stable_sort(classes.begin(), classes.end(),
                   [](const fs::path& a, const fs::path& b) {
                     int64_t x, y;
                     const bool ax = absl::SimpleAtoi(a.filename().string(), &x);
                     const bool by = absl::SimpleAtoi(b.filename().string(), &y);
                     if (ax && by) return x < y;
                     return ax && !by;
                   });
  for (const fs::path& class_dir : classes) {
    const int64_t label = dataset->class_names.size();
    dataset->class_names.push_back(class_dir.filename().string());
    if (absl::Status s =
            AppendPngs(SortedEntries(class_dir, IsPng), label, images, labels);
        !s.ok()) {
      return s;
    }
  }
  if (absl::Status s = AppendPngs(SortedEntries(dir, IsPng), -1, images, labels);
      !s.ok()) {
    return s;
  }
  if (images.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        dir.string(), " holds no images (expected *-images-idx3-ubyte[.gz] "
                      "or PNG files, optionally in one folder per class)"));
  }
  if (std::count(labels.begin(), labels.end(), -1) ==
      static_cast<int64_t>(labels.size())) {
    dataset->class_names.clear();
  }
  dataset->images = at::stack(images);
  dataset->labels = at::tensor(labels, at::kLong);
  return dataset;
}

void LogLoaded(const Dataset& d) {
  spdlog::info("dataset {}: {} images {}x{}x{} ({}{}{})", d.name, d.size(),
               d.images.size(1), d.images.size(2), d.images.size(3), d.source,
               d.labelled()
                   ? absl::StrCat(", ", d.class_names.size(), " classes")
                   : std::string(", unlabelled"),
               d.uploaded ? absl::StrCat(", uploaded by ", d.owner) : "");
}

}  // namespace

std::vector<int64_t> Dataset::IndicesOfClass(int64_t class_index) const {
  std::vector<int64_t> out;
  const int64_t* label = labels.data_ptr<int64_t>();
  for (int64_t i = 0; i < size(); ++i) {
    if (label[i] == class_index) out.push_back(i);
  }
  return out;
}

absl::StatusOr<DatasetPtr> LoadDataset(const std::string& dir,
                                       std::string name) {
  std::error_code error;
  if (!fs::is_directory(dir, error)) {
    return absl::NotFoundError(
        absl::StrCat("dataset directory ", dir, " does not exist"));
  }
  if (IsArrayDatasetDir(dir)) return ReadDatasetDir(dir, std::move(name));
  std::vector<fs::path> idx = SortedEntries(dir, IsIdxImages);
  if (!idx.empty()) return LoadIdx(idx.front(), std::move(name));
  return LoadPngs(dir, std::move(name));
}

bool HoldsOneDataset(const std::string& dir) {
  return IsArrayDatasetDir(dir) || !SortedEntries(dir, IsIdxImages).empty();
}

absl::StatusOr<std::vector<DatasetPtr>> LoadDatasetDir(const std::string& dir) {
  std::error_code error;
  if (!fs::is_directory(dir, error)) {
    return absl::NotFoundError(
        absl::StrCat("dataset directory ", dir, " does not exist"));
  }
  std::vector<DatasetPtr> out;
  if (HoldsOneDataset(dir)) {
    const std::string name =
        fs::weakly_canonical(fs::path(dir)).filename().string();
    absl::StatusOr<DatasetPtr> dataset = LoadDataset(dir, name);
    if (!dataset.ok()) return dataset.status();
    LogLoaded(**dataset);
    out.push_back(*std::move(dataset));
    return out;
  }
  for (const fs::path& sub : SortedEntries(dir, IsDirectory)) {
    absl::StatusOr<DatasetPtr> dataset =
        LoadDataset(sub.string(), sub.filename().string());
    if (!dataset.ok()) {
      spdlog::error("skipping dataset {}: {}", sub.string(),
                    std::string(dataset.status().message()));
      continue;
    }
    LogLoaded(**dataset);
    out.push_back(*std::move(dataset));
  }
  return out;
}

}  // namespace featviz::core
