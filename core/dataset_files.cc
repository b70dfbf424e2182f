#include "core/dataset_files.h"

#include <filesystem>
#include <algorithm>
#include <map>
#include <memory>
#include <system_error>
#include <utility>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/files.h"
#include "core/image.h"
#include "core/mnist.h"
#include "core/npy.h"
#include "core/status_macros.h"

namespace featviz::core {
namespace {

namespace fs = std::filesystem;

constexpr char kImagesFile[] = "images.npy";
constexpr char kLabelsFile[] = "labels.npy";
constexpr char kMetaFile[] = "dataset.json";

std::string Shape(const at::Tensor& t) {
  return absl::StrCat("[", absl::StrJoin(t.sizes(), ", "), "]");
}

// uint8 pixels as the floats every loader makes of them (ReadIdxImages
// too), so that a dataset kept as uint8 reads back bit for bit.
at::Tensor PixelsToFloat(const at::Tensor& bytes) {
  return bytes.to(at::kFloat) / 255.0;
}

bool IsChannelCount(int64_t size) {
  return size >= 1 && size <= kMaxDatasetChannels;
}

// `status` with "<field>: " before its message.
absl::Status In(absl::string_view field, const absl::Status& status) {
  if (status.ok()) return status;
  return absl::Status(status.code(),
                      absl::StrCat(field, ": ", status.message()));
}

absl::Status CheckClassNames(const std::vector<std::string>& names) {
  if (static_cast<int64_t>(names.size()) > kMaxDatasetClasses) {
    return absl::InvalidArgumentError(absl::StrCat(
        "class_names: ", names.size(), " names; at most ", kMaxDatasetClasses));
  }
  for (size_t i = 0; i < names.size(); ++i) {
    const std::string& name = names[i];
    bool printable = true;
    for (char c : name) printable = printable && static_cast<unsigned char>(c) >= 0x20;
    if (name.empty() || name.size() > kMaxClassNameBytes || !printable) {
      return absl::InvalidArgumentError(absl::StrCat(
          "class_names[", i, "]: '", name.substr(0, 40), "' must be 1 to ",
          kMaxClassNameBytes, " bytes without control characters"));
    }
  }
  return absl::OkStatus();
}

// `labels` as [n] int64 class indices, and the class names they index
// (`names` given, or numbered up to the largest label).
absl::StatusOr<at::Tensor> CheckLabels(const at::Tensor& labels, int64_t n,
                                       std::vector<std::string>& names) {
  const at::ScalarType type = labels.scalar_type();
  if (type != at::kLong && type != at::kInt && type != at::kByte) {
    return absl::InvalidArgumentError(absl::StrCat(
        "labels: dtype ", NumpyTypeName(type),
        " is not a label type; send int64, int32 or uint8"));
  }
  if (labels.dim() != 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "labels: shape ", Shape(labels), " must be [N], one label per image"));
  }
  if (labels.size(0) != n) {
    return absl::InvalidArgumentError(absl::StrCat(
        "labels: ", labels.size(0), " labels for ", n, " images"));
  }
  at::Tensor out = labels.to(at::kLong).contiguous();
  const int64_t* label = out.data_ptr<int64_t>();
  const int64_t classes = static_cast<int64_t>(names.size());
  int64_t largest = -1;
  for (int64_t i = 0; i < n; ++i) {
    if (label[i] < 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "labels: label ", label[i], " of image ", i, " is negative"));
    }
    if (classes > 0 && label[i] >= classes) {
      return absl::InvalidArgumentError(absl::StrCat(
          "labels: label ", label[i], " of image ", i,
          " is out of range for the ", classes, " class_names"));
    }
    if (label[i] >= kMaxDatasetClasses) {
      return absl::InvalidArgumentError(absl::StrCat(
          "labels: label ", label[i], " of image ", i, " is beyond the ",
          kMaxDatasetClasses, " classes a dataset may have"));
    }
    largest = std::max(largest, label[i]);
  }
  if (names.empty()) {
    for (int64_t c = 0; c <= largest; ++c) names.push_back(absl::StrCat(c));
  }
  return out;
}

// Images, labels and names into a dataset; `labels` may be undefined.
absl::StatusOr<std::shared_ptr<Dataset>> Assemble(const at::Tensor& images,
                                    const at::Tensor& labels,
                                    std::vector<std::string> class_names) {
  auto dataset = std::make_shared<Dataset>();
  FEATVIZ_ASSIGN_OR_RETURN(dataset->images, ImagesFromArray(images));
  const int64_t n = dataset->images.size(0);
  FEATVIZ_RETURN_IF_ERROR(CheckClassNames(class_names));
  if (labels.defined()) {
    FEATVIZ_ASSIGN_OR_RETURN(dataset->labels,
                             CheckLabels(labels, n, class_names));
    dataset->class_names = std::move(class_names);
  } else {
    if (!class_names.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "class_names: ", class_names.size(),
          " names given, but the dataset has no labels"));
    }
    dataset->labels = at::full({n}, -1, at::kLong);
  }
  return dataset;
}

}  // namespace

absl::string_view DatasetFormatName(DatasetFormat format) {
  switch (format) {
    case DatasetFormat::kNpy:
      return "npy";
    case DatasetFormat::kNpz:
      return "npz";
    case DatasetFormat::kIdx:
      return "idx";
  }
  return "?";
}

absl::StatusOr<at::Tensor> ImagesFromArray(const at::Tensor& array) {
  const at::ScalarType type = array.scalar_type();
  if (type != at::kByte && type != at::kFloat) {
    return absl::InvalidArgumentError(absl::StrCat(
        "images: dtype ", NumpyTypeName(type),
        " is not an image type; send uint8 (0 to 255) or float32 (0 to 1)"));
  }
  at::Tensor images;
  if (array.dim() == 3) {
    images = array.unsqueeze(1);
  } else if (array.dim() == 4) {
    const bool first = IsChannelCount(array.size(1));
    const bool last = IsChannelCount(array.size(3));
    if (!first && !last) {
      return absl::InvalidArgumentError(absl::StrCat(
          "images: shape ", Shape(array), " has no channel count in 1..",
          kMaxDatasetChannels, " second ([N, C, H, W]) or last ([N, H, W, C])"));
    }
    // Both could be: the smaller is the channel count, NCHW on a tie.
    const bool channels_last =
        last && (!first || array.size(3) < array.size(1));
    images = channels_last ? array.permute({0, 3, 1, 2}) : array;
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "images: shape ", Shape(array),
        " is not [N, H, W], [N, C, H, W] or [N, H, W, C]"));
  }
  if (images.size(0) == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("images: shape ", Shape(array), " holds no images"));
  }
  if (images.size(2) < 1 || images.size(2) > kMaxDatasetSide ||
      images.size(3) < 1 || images.size(3) > kMaxDatasetSide) {
    return absl::InvalidArgumentError(absl::StrCat(
        "images: shape ", Shape(array), " makes ", images.size(2), "x",
        images.size(3), " images; each side must be 1 to ", kMaxDatasetSide,
        " pixels"));
  }
  if (type == at::kByte) return PixelsToFloat(images).contiguous();
  images = images.contiguous();
  const at::Tensor finite = at::isfinite(images).flatten(1).all(1);
  if (!finite.all().item<bool>()) {
    const int64_t first = at::logical_not(finite).nonzero()[0][0].item<int64_t>();
    return absl::InvalidArgumentError(absl::StrCat(
        "images: image ", first, " holds NaN or infinity; float32 pixels must "
        "be finite, in [0, 1]"));
  }
  const at::Tensor in_range =
      at::logical_and(images >= 0, images <= 1).flatten(1).all(1);
  if (!in_range.all().item<bool>()) {
    const int64_t first =
        at::logical_not(in_range).nonzero()[0][0].item<int64_t>();
    return absl::InvalidArgumentError(absl::StrCat(
        "images: image ", first, " holds values from ",
        images[first].min().item<float>(), " to ",
        images[first].max().item<float>(),
        "; float32 pixels must be in [0, 1] (send uint8 for 0 to 255)"));
  }
  return images;
}

absl::StatusOr<DatasetPtr> DecodeDataset(const DatasetUpload& upload,
                                         std::string name, std::string owner,
                                         int64_t max_decoded_bytes) {
  at::Tensor images;
  at::Tensor labels;
  switch (upload.format) {
    case DatasetFormat::kNpy: {
      if (!upload.labels.empty()) {
        return absl::InvalidArgumentError(
            "labels: an npy upload holds images only; send labels in an npz "
            "(images.npy, labels.npy) or as an IDX1 file");
      }
      absl::StatusOr<at::Tensor> array = DecodeNpy(upload.images);
      if (!array.ok()) return In("images", array.status());
      images = *std::move(array);
      break;
    }
    case DatasetFormat::kNpz: {
      if (!upload.labels.empty()) {
        return absl::InvalidArgumentError(
            "labels: an npz upload carries its labels inside, as labels.npy");
      }
      absl::StatusOr<std::map<std::string, at::Tensor>> arrays =
          DecodeNpz(upload.images, max_decoded_bytes);
      if (!arrays.ok()) return In("the npz archive", arrays.status());
      std::vector<std::string> held;
      for (const auto& [key, array] : *arrays) {
        held.push_back(absl::StrCat(key, ".npy"));
        if (key == "images") {
          images = array;
        } else if (key == "labels") {
          labels = array;
        } else {
          return absl::InvalidArgumentError(absl::StrCat(
              "the npz archive holds '", key.substr(0, 64),
              ".npy'; only images.npy and labels.npy are read"));
        }
      }
      if (!images.defined()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "the npz archive holds no images.npy (it holds: ",
            held.empty() ? "no arrays" : absl::StrJoin(held, ", "), ")"));
      }
      break;
    }
    case DatasetFormat::kIdx: {
      absl::StatusOr<at::Tensor> pixels =
          DecodeIdxImages(upload.images, "images (IDX3)", max_decoded_bytes);
      if (!pixels.ok()) return pixels.status();
      images = *std::move(pixels);
      if (!upload.labels.empty()) {
        absl::StatusOr<at::Tensor> read =
            DecodeIdxLabels(upload.labels, "labels (IDX1)", max_decoded_bytes);
        if (!read.ok()) return read.status();
        labels = *std::move(read);
      }
      break;
    }
  }
  FEATVIZ_ASSIGN_OR_RETURN(std::shared_ptr<Dataset> dataset,
                           Assemble(images, labels, upload.class_names));
  dataset->name = std::move(name);
  dataset->source = std::string(DatasetFormatName(upload.format));
  dataset->owner = std::move(owner);
  dataset->uploaded = true;
  return dataset;
}

absl::Status WriteDatasetDir(const Dataset& dataset, const std::string& dir) {
  const fs::path root(dir);
  // uint8 when that loses nothing: a quarter of the bytes.
  const at::Tensor bytes =
      (dataset.images * 255).round().clamp(0, 255).to(at::kByte);
  const bool exact = at::equal(PixelsToFloat(bytes), dataset.images);
  FEATVIZ_ASSIGN_OR_RETURN(std::string images,
                           EncodeNpy(exact ? bytes : dataset.images));
  FEATVIZ_RETURN_IF_ERROR(WriteFile((root / kImagesFile).string(), images));
  if (dataset.labelled()) {
    FEATVIZ_ASSIGN_OR_RETURN(std::string labels, EncodeNpy(dataset.labels));
    FEATVIZ_RETURN_IF_ERROR(WriteFile((root / kLabelsFile).string(), labels));
  }
  nlohmann::json meta;
  meta["source"] = dataset.source;
  meta["owner"] = dataset.owner;
  meta["uploaded"] = dataset.uploaded;
  meta["class_names"] = dataset.class_names;
  return WriteFile((root / kMetaFile).string(), meta.dump(2) + "\n");
}

bool IsArrayDatasetDir(const std::string& dir) {
  std::error_code error;
  return fs::is_regular_file(fs::path(dir) / kImagesFile, error);
}

absl::StatusOr<DatasetPtr> ReadDatasetDir(const std::string& dir,
                                          std::string name) {
  const fs::path root(dir);
  std::error_code error;
  std::string source = "npy";
  std::string owner;
  bool uploaded = false;
  std::vector<std::string> class_names;
  if (fs::exists(root / kMetaFile, error)) {
    FEATVIZ_ASSIGN_OR_RETURN(std::string text, ReadFile((root / kMetaFile).string()));
    const nlohmann::json meta = nlohmann::json::parse(text, nullptr, false);
    const auto bad = [&](absl::string_view what) {
      return absl::InvalidArgumentError(absl::StrCat(
          (root / kMetaFile).string(), ": ", what));
    };
    if (!meta.is_object()) return bad("not a JSON object");
    if (meta.contains("source")) {
      if (!meta["source"].is_string()) return bad("source must be a string");
      source = meta["source"].get<std::string>();
    }
    if (meta.contains("owner")) {
      if (!meta["owner"].is_string()) return bad("owner must be a string");
      owner = meta["owner"].get<std::string>();
    }
    if (meta.contains("uploaded")) {
      if (!meta["uploaded"].is_boolean()) return bad("uploaded must be true or false");
      uploaded = meta["uploaded"].get<bool>();
    }
    if (meta.contains("class_names")) {
      if (!meta["class_names"].is_array()) return bad("class_names must be a list");
      for (const nlohmann::json& n : meta["class_names"]) {
        if (!n.is_string()) return bad("class_names must be strings");
        class_names.push_back(n.get<std::string>());
      }
    }
  }
  FEATVIZ_ASSIGN_OR_RETURN(std::string image_bytes, ReadFile((root / kImagesFile).string()));
  absl::StatusOr<at::Tensor> images = DecodeNpy(image_bytes);
  if (!images.ok()) return In((root / kImagesFile).string(), images.status());
  image_bytes = std::string();
  at::Tensor labels;
  if (fs::exists(root / kLabelsFile, error)) {
    FEATVIZ_ASSIGN_OR_RETURN(std::string label_bytes,
                             ReadFile((root / kLabelsFile).string()));
    absl::StatusOr<at::Tensor> read = DecodeNpy(label_bytes);
    if (!read.ok()) return In((root / kLabelsFile).string(), read.status());
    labels = *std::move(read);
  }
  absl::StatusOr<std::shared_ptr<Dataset>> assembled =
      Assemble(*images, labels, std::move(class_names));
  if (!assembled.ok()) return In(dir, assembled.status());
  std::shared_ptr<Dataset> dataset = *std::move(assembled);
  dataset->name = std::move(name);
  dataset->source = std::move(source);
  dataset->owner = std::move(owner);
  dataset->uploaded = uploaded;
  return dataset;
}

}  // namespace featviz::core
