#include "server/upload.h"

#include <filesystem>
#include <fstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/model_card.h"
#include "core/status_macros.h"
#include "server/convert.h"
#include "server/engine/names.h"
#include "server/engine/staging.h"

namespace featviz::server {
namespace fs = std::filesystem;

namespace {

class UploadReactor final : public ChunkedUpload<v1::UploadModelRequest> {
 public:
  UploadReactor(UploadContext context, Identity caller, std::string peer,
                v1::UploadModelResponse* response, absl::Status refused)
      : ChunkedUpload({"UploadModel", context.ledger, context.max_bytes,
                       "max_upload_bytes", std::move(context.run_detached)},
                      std::move(caller), std::move(peer)),
        models_(context.models),
        response_(response) {
    Start(refused);
  }

 private:
  absl::Status Accept(const Header& header) override {
    if (static_cast<int64_t>(header.card_json().size()) > kMaxUploadCardBytes) {
      return absl::InvalidArgumentError(absl::StrCat(
          "UploadModel: header.card_json has ", header.card_json().size(),
          " bytes; at most ", kMaxUploadCardBytes));
    }
    name_ = header.name();
    sha256_ = header.sha256();  // Compared with the bytes before Publish.
    if (!header.card_json().empty()) {
      absl::StatusOr<core::ModelCard> card =
          core::ModelCard::Parse(header.card_json());
      if (!card.ok()) {
        return Prefixed("UploadModel: header.card_json", card.status());
      }
      if (name_.empty()) name_ = card->name;
    }
    if (name_.empty()) {
      return absl::InvalidArgumentError(
          "UploadModel: header.name is empty and no card names the model");
    }
    FEATVIZ_RETURN_IF_ERROR(CheckName("UploadModel: the model name", name_));
    card_json_ = header.card_json();
    return absl::OkStatus();
  }

  absl::StatusOr<fs::path> Stage() override {
    FEATVIZ_ASSIGN_OR_RETURN(staged_, models_->NewStagingDir());
    staging_parent_ = staged_.parent_path();
    if (!card_json_.empty()) {
      std::ofstream card(staged_ / "model.card.json", std::ios::binary);
      card << card_json_;
      if (!card) {
        return absl::InternalError("UploadModel: cannot write the staged card");
      }
    }
    return staged_ / "model.pt";
  }

  absl::Status Publish(const fs::path&) override {
    absl::StatusOr<ModelRegistry::Published> published =
        models_->Publish(name_, staged_, sha256_);
    staged_.clear();  // Published or removed by Publish.
    if (!published.ok()) return Prefixed("UploadModel", published.status());
    *response_->mutable_model() = ModelToProto(published->model);
    response_->set_already_present(published->already_present);
    if (published->already_present) KeptNothing();
    return absl::OkStatus();
  }

  void Discard() override {
    if (!staged_.empty()) {
      RemoveStagingDir(staged_);
      staged_.clear();
    } else if (!staging_parent_.empty()) {
      // Published: the shared parent goes when no other upload uses it.
      std::error_code ignored;
      fs::remove(staging_parent_, ignored);
      staging_parent_.clear();
    }
  }

  ModelRegistry* const models_;
  v1::UploadModelResponse* const response_;
  std::string card_json_;
  std::string sha256_;
  fs::path staged_;
  fs::path staging_parent_;
};

}  // namespace

grpc::ServerReadReactor<v1::UploadModelRequest>* StartUpload(
    UploadContext context, Identity caller, std::string peer,
    v1::UploadModelResponse* response, absl::Status refused) {
  return new UploadReactor(std::move(context), std::move(caller),
                           std::move(peer), response, std::move(refused));
}

}  // namespace featviz::server
