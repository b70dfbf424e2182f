#include "client/dataset_commands.h"

#include <filesystem>
#include <map>
#include <system_error>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "client/circuits_client.h"
#include "client/json.h"
#include "core/dataset.h"
#include "core/files.h"
#include "core/npy.h"
#include "core/status_macros.h"

namespace featviz::client {
namespace {

namespace fs = std::filesystem;
namespace v1 = featviz::v1;

constexpr absl::string_view kImagesSuffix = "-images-idx3-ubyte";
constexpr absl::string_view kLabelsSuffix = "-labels-idx1-ubyte";

// A folder as core reads a server's datasets, packed as images.npy (+
// labels.npy) in an .npz.
absl::StatusOr<PackedDataset> PackFolder(const fs::path& dir) {
  absl::StatusOr<core::DatasetPtr> loaded =
      core::LoadDataset(dir.string(), dir.filename().string());
  if (!loaded.ok()) return loaded.status();
  const core::Dataset& dataset = **loaded;
  std::map<std::string, at::Tensor> arrays;
  const at::Tensor bytes =
      (dataset.images * 255).round().clamp(0, 255).to(at::kByte);
  // uint8 when that loses nothing (PNGs always): a quarter of the bytes.
  arrays["images"] = at::equal(bytes.to(at::kFloat) / 255.0, dataset.images)
                         ? bytes
                         : dataset.images;
  PackedDataset packed;
  if (dataset.labelled()) {
    arrays["labels"] = dataset.labels;
    packed.class_names = dataset.class_names;
  }
  FEATVIZ_ASSIGN_OR_RETURN(packed.bytes, core::EncodeNpz(arrays));
  packed.format = v1::DATASET_FORMAT_NPZ;
  return packed;
}

}  // namespace

absl::StatusOr<PackedDataset> PackDataset(const std::string& path) {
  const fs::path p(path);
  std::error_code error;
  if (!fs::exists(p, error)) {
    return absl::NotFoundError(absl::StrCat(path, " does not exist"));
  }
  if (fs::is_directory(p, error)) {
    try {
      return PackFolder(p);
    } catch (const std::exception& e) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot pack ", path, ": ", e.what()));
    }
  }
  const std::string file = p.filename().string();
  PackedDataset packed;
  if (absl::EndsWithIgnoreCase(file, ".npy")) {
    packed.format = v1::DATASET_FORMAT_NPY;
  } else if (absl::EndsWithIgnoreCase(file, ".npz")) {
    packed.format = v1::DATASET_FORMAT_NPZ;
  } else if (absl::StrContains(file, kImagesSuffix)) {
    packed.format = v1::DATASET_FORMAT_IDX;
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "cannot tell the format of ", path,
        ": give an .npy or .npz file, an IDX3 image file (*",
        kImagesSuffix, "[.gz]) or a folder of PNGs (one subfolder per class)"));
  }
  FEATVIZ_ASSIGN_OR_RETURN(packed.bytes, core::ReadFile(path));
  if (packed.format == v1::DATASET_FORMAT_IDX) {
    std::string labels_name = file;
    labels_name.replace(labels_name.find(std::string(kImagesSuffix)),
                        kImagesSuffix.size(), std::string(kLabelsSuffix));
    const fs::path labels = p.parent_path() / labels_name;
    if (fs::exists(labels, error)) {
      FEATVIZ_ASSIGN_OR_RETURN(std::string label_bytes,
                               core::ReadFile(labels.string()));
      packed.labels_bytes = static_cast<int64_t>(label_bytes.size());
      packed.bytes += label_bytes;
    }
  }
  return packed;
}

absl::StatusOr<v1::Dataset> UploadDataset(VisualizerClient& client,
                                          const DatasetUploadOptions& options) {
  FEATVIZ_ASSIGN_OR_RETURN(PackedDataset packed, PackDataset(options.path));
  v1::UploadDatasetRequest::Header header;
  header.set_name(options.name);
  header.set_format(packed.format);
  header.set_labels_bytes(packed.labels_bytes);
  for (const std::string& name : options.class_names.empty()
                                     ? packed.class_names
                                     : options.class_names) {
    header.add_class_names(name);
  }
  CircuitsClient circuits(client);
  return circuits.UploadDataset(std::move(header), packed.bytes,
                                options.chunk_bytes);
}

namespace {

absl::Status PrintDataset(const char* what, const v1::Dataset& d, bool json,
                          std::FILE* out) {
  std::string text;
  if (json) {
    FEATVIZ_ASSIGN_OR_RETURN(nlohmann::ordered_json doc, MessageToJson(d));
    text = doc.dump() + "\n";
  } else {
    text = absl::StrCat(
        what, " ", d.name(), ": ", d.size(), " images ",
        absl::StrJoin(d.image_shape(), "x"), ", ",
        d.class_names_size() > 0
            ? absl::StrCat(d.class_names_size(), " classes")
            : std::string("unlabelled"),
        " (", d.source(), ", ", d.size_bytes(), " bytes, owner ", d.owner(),
        ")\n");
  }
  std::fputs(text.c_str(), out);
  return absl::OkStatus();
}

}  // namespace

absl::Status RunDatasetUpload(VisualizerClient& client,
                              const DatasetUploadOptions& options, bool json,
                              std::FILE* out) {
  FEATVIZ_ASSIGN_OR_RETURN(v1::Dataset dataset, UploadDataset(client, options));
  return PrintDataset("uploaded", dataset, json, out);
}

absl::Status RunDatasetRemove(VisualizerClient& client, const std::string& name,
                              bool json, std::FILE* out) {
  CircuitsClient circuits(client);
  FEATVIZ_ASSIGN_OR_RETURN(v1::DeleteDatasetResponse removed,
                           circuits.DeleteDataset(name));
  return PrintDataset("deleted", removed.dataset(), json, out);
}

}  // namespace featviz::client
