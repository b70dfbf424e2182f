#include "server/dataset_upload.h"

#include <filesystem>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/dataset_files.h"
#include "core/files.h"
#include "core/status_macros.h"
#include "core/torch_status.h"
#include "server/chunked_upload.h"
#include "server/circuits_convert.h"
#include "server/engine/names.h"
#include "server/engine/staging.h"

namespace featviz::server {
namespace fs = std::filesystem;

namespace {

constexpr char kMethod[] = "UploadDataset";

absl::StatusOr<core::DatasetFormat> FormatOf(v1::DatasetFormat format) {
  switch (format) {
    case v1::DATASET_FORMAT_NPY:
      return core::DatasetFormat::kNpy;
    case v1::DATASET_FORMAT_NPZ:
      return core::DatasetFormat::kNpz;
    case v1::DATASET_FORMAT_IDX:
      return core::DatasetFormat::kIdx;
    default:
      break;
  }
  const std::string name = v1::DatasetFormat_IsValid(format)
                               ? v1::DatasetFormat_Name(format)
                               : absl::StrCat(static_cast<int>(format));
  return absl::InvalidArgumentError(absl::StrCat(
      kMethod, ": header.format must be DATASET_FORMAT_NPY, DATASET_FORMAT_NPZ "
      "or DATASET_FORMAT_IDX, got ", name));
}

class DatasetUploadReactor final
    : public ChunkedUpload<v1::UploadDatasetRequest> {
 public:
  DatasetUploadReactor(DatasetUploadContext context, Identity caller,
                       std::string peer, v1::Dataset* response,
                       absl::Status refused)
      : ChunkedUpload({kMethod, context.ledger, context.max_bytes,
                       "max_dataset_bytes", std::move(context.run_detached)},
                      std::move(caller), std::move(peer)),
        datasets_(context.datasets),
        max_decoded_bytes_(context.max_bytes * 4),
        response_(response) {
    Start(refused);
  }

 private:
  absl::Status Accept(const Header& header) override {
    FEATVIZ_RETURN_IF_ERROR(
        CheckName(absl::StrCat(kMethod, ": header.name"), header.name()));
    FEATVIZ_ASSIGN_OR_RETURN(format_, FormatOf(header.format()));
    const int64_t labels = header.labels_bytes();
    if (labels != 0 && format_ != core::DatasetFormat::kIdx) {
      return absl::InvalidArgumentError(absl::StrCat(
          kMethod, ": header.labels_bytes is ", labels,
          ", but only IDX uploads send a label file (an npz holds labels.npy)"));
    }
    if (labels < 0 || labels >= header.size_bytes()) {
      return absl::InvalidArgumentError(absl::StrCat(
          kMethod, ": header.labels_bytes must be in [0, ", header.size_bytes(),
          ") (header.size_bytes, the image file taking the rest), got ",
          labels));
    }
    labels_bytes_ = labels;
    if (header.class_names_size() > core::kMaxDatasetClasses) {
      return absl::InvalidArgumentError(absl::StrCat(
          kMethod, ": header.class_names has ", header.class_names_size(),
          " names; at most ", core::kMaxDatasetClasses));
    }
    class_names_.assign(header.class_names().begin(),
                        header.class_names().end());
    name_ = header.name();
    FEATVIZ_RETURN_IF_ERROR(
        Prefixed(kMethod, datasets_->Reserve(name_, caller().name)));
    reserved_ = true;
    return absl::OkStatus();
  }

  absl::StatusOr<fs::path> Stage() override {
    absl::StatusOr<fs::path> dir = datasets_->NewStagingDir();
    if (!dir.ok()) return Prefixed(kMethod, dir.status());
    staged_ = *std::move(dir);
    return staged_ / "upload";
  }

  absl::Status Publish(const fs::path& file) override {
    return core::CatchAtBoundary(
        absl::StrCat(kMethod, " of dataset ", name_),
        [&]() -> absl::Status {
          absl::StatusOr<core::DatasetPtr> dataset = Decode(file);
          if (!dataset.ok()) return Prefixed(kMethod, dataset.status());
          absl::StatusOr<core::DatasetPtr> hosted =
              datasets_->Publish(*std::move(dataset), staged_);
          if (!hosted.ok()) return Prefixed(kMethod, hosted.status());
          reserved_ = false;
          *response_ = DatasetToProto(**hosted);
          return absl::OkStatus();
        });
  }

  absl::StatusOr<core::DatasetPtr> Decode(const fs::path& file) {
    absl::StatusOr<std::string> read = core::ReadFile(file.string());
    if (!read.ok()) {
      return absl::InternalError(absl::StrCat("the staged upload: ",
                                              read.status().message()));
    }
    std::string bytes = *std::move(read);
    // Only the decoded dataset is kept.
    std::error_code ignored;
    fs::remove(file, ignored);
    const absl::string_view all = bytes;
    core::DatasetUpload upload;
    upload.format = format_;
    upload.images = all.substr(0, all.size() - labels_bytes_);
    upload.labels = all.substr(all.size() - labels_bytes_);
    upload.class_names = class_names_;
    return core::DecodeDataset(upload, name_, caller().name,
                               max_decoded_bytes_);
  }

  void Discard() override {
    if (reserved_) {
      datasets_->Unreserve(name_);
      reserved_ = false;
    }
    if (!staged_.empty()) {
      // Gone already when it was published into place; then only the
      // shared parent may still need to go.
      RemoveStagingDir(staged_);
      staged_.clear();
    }
  }

  DatasetRegistry* const datasets_;
  const int64_t max_decoded_bytes_;
  v1::Dataset* const response_;
  core::DatasetFormat format_ = core::DatasetFormat::kNpy;
  int64_t labels_bytes_ = 0;
  std::vector<std::string> class_names_;
  bool reserved_ = false;
  fs::path staged_;
};

}  // namespace

grpc::ServerReadReactor<v1::UploadDatasetRequest>* StartDatasetUpload(
    DatasetUploadContext context, Identity caller, std::string peer,
    v1::Dataset* response, absl::Status refused) {
  return new DatasetUploadReactor(std::move(context), std::move(caller),
                                  std::move(peer), response, std::move(refused));
}

}  // namespace featviz::server
