#include "server/upload.h"

#include <openssl/evp.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "core/model_card.h"
#include "core/status_macros.h"
#include "server/convert.h"
#include "spdlog/spdlog.h"

namespace featviz::server {
namespace fs = std::filesystem;

absl::Status UploadLedger::Reserve(const std::string& client,
                                   std::optional<int64_t> quota,
                                   int64_t bytes) {
  absl::MutexLock lock(&mu_);
  int64_t& used = used_[client];
  if (quota.has_value() && bytes > *quota - used) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "client '", client, "' may upload ", *quota,
        " bytes (max_upload_bytes) and has used ", used, "; this upload of ",
        bytes, " bytes would pass that"));
  }
  used += bytes;
  return absl::OkStatus();
}

void UploadLedger::Release(const std::string& client, int64_t bytes) {
  absl::MutexLock lock(&mu_);
  used_[client] -= bytes;
}

int64_t UploadLedger::Used(const std::string& client) const {
  absl::MutexLock lock(&mu_);
  auto it = used_.find(client);
  return it == used_.end() ? 0 : it->second;
}

namespace {

std::string Hex(const unsigned char* bytes, unsigned int length) {
  static const char kHex[] = "0123456789abcdef";
  std::string hex;
  for (unsigned int i = 0; i < length; ++i) {
    hex.push_back(kHex[bytes[i] >> 4]);
    hex.push_back(kHex[bytes[i] & 15]);
  }
  return hex;
}

bool IsSha256Hex(const std::string& text) {
  if (text.size() != 64) return false;
  for (char c : text) {
    if (!absl::ascii_isdigit(c) && !(c >= 'a' && c <= 'f')) return false;
  }
  return true;
}

class UploadReactor final
    : public grpc::ServerReadReactor<v1::UploadModelRequest> {
 public:
  UploadReactor(UploadContext context, Identity caller, std::string peer,
                v1::UploadModelResponse* response, absl::Status refused)
      : context_(std::move(context)),
        caller_(std::move(caller)),
        peer_(std::move(peer)),
        response_(response),
        digest_(EVP_MD_CTX_new(), &EVP_MD_CTX_free) {
    if (!refused.ok()) {
      End(refused);
      return;
    }
    StartRead(&request_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      // The client has sent everything (or gone away: then Finish is a
      // no-op and OnDone cleans up).
      if (!header_seen_) {
        End(absl::InvalidArgumentError(
            "UploadModel: the stream ended without a header"));
        return;
      }
      context_.run_detached([this] { Complete(); });
      return;
    }
    const absl::Status taken = Take();
    if (!taken.ok()) {
      End(taken);
      return;
    }
    StartRead(&request_);
  }

  void OnDone() override {
    CleanUp();
    delete this;
  }

 private:
  // Takes one message: the header first, then chunks.
  absl::Status Take() {
    if (!header_seen_) {
      if (!request_.has_header()) {
        return absl::InvalidArgumentError(
            "UploadModel: the first message must carry the header (name, "
            "size_bytes, sha256, card_json)");
      }
      header_seen_ = true;
      FEATVIZ_RETURN_IF_ERROR(Begin(request_.header()));
    } else if (request_.has_header()) {
      return absl::InvalidArgumentError(
          "UploadModel: header may only be in the first message");
    }
    const std::string& chunk = request_.chunk();
    if (static_cast<int64_t>(chunk.size()) > kMaxUploadChunkBytes) {
      return absl::InvalidArgumentError(absl::StrCat(
          "UploadModel: chunk of ", chunk.size(), " bytes; at most ",
          kMaxUploadChunkBytes, " per message"));
    }
    if (static_cast<int64_t>(chunk.size()) > size_ - received_) {
      return absl::InvalidArgumentError(absl::StrCat(
          "UploadModel: more bytes arrived than header.size_bytes ", size_));
    }
    if (chunk.empty()) return absl::OkStatus();
    file_.write(chunk.data(), static_cast<std::streamsize>(chunk.size()));
    if (!file_) {
      return absl::InternalError("UploadModel: cannot write the staged file");
    }
    EVP_DigestUpdate(digest_.get(), chunk.data(), chunk.size());
    received_ += static_cast<int64_t>(chunk.size());
    return absl::OkStatus();
  }

  absl::Status Begin(const v1::UploadModelRequest::Header& header) {
    if (header.size_bytes() <= 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "UploadModel: header.size_bytes must be positive, got ",
          header.size_bytes()));
    }
    if (header.size_bytes() > context_.max_bytes) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "UploadModel: header.size_bytes ", header.size_bytes(),
          " is more than this server accepts (--max_upload_bytes ",
          context_.max_bytes, ")"));
    }
    if (!IsSha256Hex(header.sha256())) {
      return absl::InvalidArgumentError(absl::StrCat(
          "UploadModel: header.sha256 must be 64 lowercase hex digits, got '",
          header.sha256().substr(0, 80), "'"));
    }
    if (static_cast<int64_t>(header.card_json().size()) > kMaxUploadCardBytes) {
      return absl::InvalidArgumentError(absl::StrCat(
          "UploadModel: header.card_json has ", header.card_json().size(),
          " bytes; at most ", kMaxUploadCardBytes));
    }
    name_ = header.name();
    if (!header.card_json().empty()) {
      absl::StatusOr<core::ModelCard> card =
          core::ModelCard::Parse(header.card_json());
      if (!card.ok()) return Prefixed("UploadModel: header.card_json", card.status());
      if (name_.empty()) name_ = card->name;
    }
    if (name_.empty()) {
      return absl::InvalidArgumentError(
          "UploadModel: header.name is empty and no card names the model");
    }
    bool name_ok = name_.size() <= 64;
    for (char c : name_) {
      name_ok = name_ok && (absl::ascii_isalnum(c) || c == '_' || c == '-');
    }
    if (!name_ok) {
      return absl::InvalidArgumentError(absl::StrCat(
          "UploadModel: the model name '", name_.substr(0, 80),
          "' must be 1 to 64 of [A-Za-z0-9_-]"));
    }
    size_ = header.size_bytes();
    sha256_ = header.sha256();
    FEATVIZ_RETURN_IF_ERROR(context_.ledger->Reserve(
        caller_.name, caller_.quotas.max_upload_bytes, size_));
    reserved_ = size_;
    FEATVIZ_ASSIGN_OR_RETURN(staged_, context_.models->NewStagingDir());
    staging_parent_ = staged_.parent_path();
    if (!header.card_json().empty()) {
      std::ofstream card(staged_ / "model.card.json", std::ios::binary);
      card << header.card_json();
      if (!card) {
        return absl::InternalError("UploadModel: cannot write the staged card");
      }
    }
    file_.open(staged_ / "model.pt", std::ios::binary);
    if (!file_) {
      return absl::InternalError("UploadModel: cannot stage the model file");
    }
    if (digest_ == nullptr ||
        EVP_DigestInit_ex(digest_.get(), EVP_sha256(), nullptr) != 1) {
      return absl::InternalError("UploadModel: cannot start SHA-256");
    }
    return absl::OkStatus();
  }

  // After the last chunk: sizes and hash, then publish and load.
  void Complete() {
    file_.close();
    if (received_ != size_) {
      End(absl::InvalidArgumentError(absl::StrCat(
          "UploadModel: received ", received_, " bytes, but header.size_bytes "
          "says ", size_)));
      return;
    }
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int length = 0;
    EVP_DigestFinal_ex(digest_.get(), digest, &length);
    const std::string actual = Hex(digest, length);
    if (actual != sha256_) {
      End(absl::InvalidArgumentError(absl::StrCat(
          "UploadModel: the SHA-256 of the received file is ", actual,
          ", but header.sha256 says ", sha256_,
          "; the file was changed or cut on the way")));
      return;
    }
    absl::StatusOr<ModelSummary> model =
        context_.models->Publish(name_, staged_);
    staged_.clear();  // Published or removed by Publish.
    if (!model.ok()) {
      End(Prefixed("UploadModel", model.status()));
      return;
    }
    reserved_ = 0;  // Kept: the bytes count against the quota.
    *response_->mutable_model() = ModelToProto(*model);
    End(absl::OkStatus());
  }

  // Removes what a failed upload staged and gives its bytes back to the
  // quota; idempotent. Done before Finish, so that a client that hears of
  // the failure finds the repository and its quota as they were.
  void CleanUp() {
    std::error_code ignored;
    file_.close();
    if (!staged_.empty()) {
      fs::remove_all(staged_, ignored);
      staged_.clear();
    }
    if (!staging_parent_.empty()) {
      // Shared by uploads: removed only when empty (fails otherwise).
      fs::remove(staging_parent_, ignored);
    }
    if (reserved_ > 0) {
      context_.ledger->Release(caller_.name, reserved_);
      reserved_ = 0;
    }
  }

  // Cleans up, logs and finishes; the last thing any path does (OnDone may
  // follow at once on another thread).
  void End(const absl::Status& status) {
    CleanUp();
    spdlog::info("upload client={} peer={} name={} bytes={} outcome={}{}",
                 caller_.name, peer_, name_, received_,
                 absl::StatusCodeToString(status.code()),
                 status.ok() ? ""
                             : absl::StrCat(" (", status.message(), ")"));
    Finish(ToGrpcStatus(status));
  }

  const UploadContext context_;
  const Identity caller_;
  const std::string peer_;
  v1::UploadModelResponse* const response_;
  v1::UploadModelRequest request_;
  bool header_seen_ = false;
  std::string name_;
  int64_t size_ = 0;
  std::string sha256_;
  int64_t received_ = 0;
  int64_t reserved_ = 0;
  fs::path staged_;
  fs::path staging_parent_;
  std::ofstream file_;
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> digest_;
};

}  // namespace

grpc::ServerReadReactor<v1::UploadModelRequest>* StartUpload(
    UploadContext context, Identity caller, std::string peer,
    v1::UploadModelResponse* response, absl::Status refused) {
  return new UploadReactor(std::move(context), std::move(caller),
                           std::move(peer), response, std::move(refused));
}

}  // namespace featviz::server
