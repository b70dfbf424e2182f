// What every client-streaming upload (UploadModel, UploadDataset) does the
// same way, whatever it carries: the first message holds a header with the
// declared size and SHA-256, which are checked against the server's limit
// and the caller's max_upload_bytes quota before any byte is taken; the
// chunks that follow are written to a staged file and hashed as they arrive;
// once the client is done, the size and hash are compared and the subclass
// publishes the file, on a thread of its own (never on gRPC's). Whatever
// fails, the subclass's Discard() runs before the call finishes, so a client
// that hears of the failure finds the server as it was.
//
// A subclass supplies Accept (its own header checks), Stage (where the bytes
// go), Publish (what the bytes become) and Discard, and calls Start() at the
// end of its constructor.
#ifndef FEATVIZ_SERVER_CHUNKED_UPLOAD_H_
#define FEATVIZ_SERVER_CHUNKED_UPLOAD_H_

#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "core/sha256.h"
#include "core/status_macros.h"
#include "server/auth.h"
#include "server/convert.h"
#include "server/upload_ledger.h"
#include "spdlog/spdlog.h"

namespace featviz::server {

// Largest chunk one message may carry.
inline constexpr int64_t kMaxUploadChunkBytes = int64_t{4} << 20;

// What the service lends an upload.
struct ChunkedUploadContext {
  // The RPC's name for messages and logs ("UploadModel").
  std::string method;
  // Bytes each client has sent; the caller's max_upload_bytes bounds them.
  UploadLedger* ledger = nullptr;
  // Largest upload accepted, and the flag that sets it (for messages).
  int64_t max_bytes = 0;
  std::string max_bytes_flag;
  // Runs the final check and Publish away from gRPC's callback threads; the
  // service counts such work so that its shutdown waits for it.
  std::function<void(std::function<void()>)> run_detached;
};

template <typename Request>
class ChunkedUpload : public grpc::ServerReadReactor<Request> {
 public:
  using Header = typename Request::Header;

  void OnReadDone(bool ok) override {
    if (!ok) {
      // The client has sent everything (or gone away: then Finish is a
      // no-op and OnDone cleans up).
      if (!header_seen_) {
        End(absl::InvalidArgumentError(absl::StrCat(
            context_.method, ": the stream ended without a header")));
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
    this->StartRead(&request_);
  }

  void OnDone() override {
    CleanUp();
    delete this;
  }

 protected:
  ChunkedUpload(ChunkedUploadContext context, Identity caller,
                std::string peer)
      : context_(std::move(context)),
        caller_(std::move(caller)),
        peer_(std::move(peer)) {}

  // The subclass's constructor ends with this: refused (the caller may not
  // upload) finishes the call at once, else the first read starts.
  void Start(const absl::Status& refused) {
    if (!refused.ok()) {
      End(refused);
      return;
    }
    this->StartRead(&request_);
  }

  // The subclass's checks of a header whose size and SHA-256 are well
  // formed; sets `name_` for the logs. It may take resources (a name) that
  // Discard gives back.
  virtual absl::Status Accept(const Header& header) = 0;
  // A fresh file to stage the bytes in, after the quota is booked.
  virtual absl::StatusOr<std::filesystem::path> Stage() = 0;
  // Once every byte arrived and the hash matched: makes the upload what it
  // is (on the detached thread) and fills the response. On error nothing of
  // it may stay.
  virtual absl::Status Publish(const std::filesystem::path& staged) = 0;
  // Frees what Accept and Stage took, unless published; idempotent.
  virtual void Discard() = 0;

  // For Publish, when the upload turned out to be there already: nothing
  // of it is kept, so its bytes go back to the caller's quota.
  void KeptNothing() { kept_ = false; }

  const Identity& caller() const { return caller_; }
  const std::string& method() const { return context_.method; }

  std::string name_;  // What is uploaded, for the logs.

 private:
  // Takes one message: the header first, then chunks.
  absl::Status Take() {
    if (!header_seen_) {
      if (!request_.has_header()) {
        return absl::InvalidArgumentError(absl::StrCat(
            context_.method, ": the first message must carry the header"));
      }
      header_seen_ = true;
      FEATVIZ_RETURN_IF_ERROR(Begin(request_.header()));
    } else if (request_.has_header()) {
      return absl::InvalidArgumentError(absl::StrCat(
          context_.method, ": header may only be in the first message"));
    }
    const std::string& chunk = request_.chunk();
    if (static_cast<int64_t>(chunk.size()) > kMaxUploadChunkBytes) {
      return absl::InvalidArgumentError(
          absl::StrCat(context_.method, ": chunk of ", chunk.size(),
                       " bytes; at most ", kMaxUploadChunkBytes, " per message"));
    }
    if (static_cast<int64_t>(chunk.size()) > size_ - received_) {
      return absl::InvalidArgumentError(
          absl::StrCat(context_.method,
                       ": more bytes arrived than header.size_bytes ", size_));
    }
    if (chunk.empty()) return absl::OkStatus();
    file_.write(chunk.data(), static_cast<std::streamsize>(chunk.size()));
    if (!file_) {
      return absl::InternalError(
          absl::StrCat(context_.method, ": cannot write the staged file"));
    }
    digest_.Update(chunk);
    received_ += static_cast<int64_t>(chunk.size());
    return absl::OkStatus();
  }

  absl::Status Begin(const Header& header) {
    if (header.size_bytes() <= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(context_.method, ": header.size_bytes must be positive, got ",
                       header.size_bytes()));
    }
    if (header.size_bytes() > context_.max_bytes) {
      return absl::ResourceExhaustedError(absl::StrCat(
          context_.method, ": header.size_bytes ", header.size_bytes(),
          " is more than this server accepts (--", context_.max_bytes_flag,
          " ", context_.max_bytes, ")"));
    }
    if (!core::IsSha256Hex(header.sha256())) {
      return absl::InvalidArgumentError(absl::StrCat(
          context_.method,
          ": header.sha256 must be 64 lowercase hex digits, got '",
          header.sha256().substr(0, 80), "'"));
    }
    FEATVIZ_RETURN_IF_ERROR(Accept(header));
    size_ = header.size_bytes();
    sha256_ = header.sha256();
    FEATVIZ_RETURN_IF_ERROR(context_.ledger->Reserve(
        caller_.name, caller_.quotas.max_upload_bytes, size_));
    reserved_ = size_;
    FEATVIZ_ASSIGN_OR_RETURN(const std::filesystem::path staged, Stage());
    staged_file_ = staged;
    file_.open(staged, std::ios::binary);
    if (!file_) {
      return absl::InternalError(
          absl::StrCat(context_.method, ": cannot stage the upload"));
    }
    return absl::OkStatus();
  }

  // After the last chunk: size and hash, then publish.
  void Complete() {
    file_.close();
    if (received_ != size_) {
      End(absl::InvalidArgumentError(absl::StrCat(
          context_.method, ": received ", received_,
          " bytes, but header.size_bytes says ", size_)));
      return;
    }
    const std::string actual = digest_.HexDigest();
    if (actual != sha256_) {
      End(absl::InvalidArgumentError(absl::StrCat(
          context_.method, ": the SHA-256 of the received bytes is ", actual,
          ", but header.sha256 says ", sha256_,
          "; the upload was changed or cut on the way")));
      return;
    }
    const absl::Status published = Publish(staged_file_);
    if (published.ok() && kept_) reserved_ = 0;  // Counts against the quota.
    End(published);
  }

  // Discards what a failed upload took and gives its bytes back to the
  // quota; idempotent. Done before Finish.
  void CleanUp() {
    file_.close();
    Discard();
    if (reserved_ > 0) {
      context_.ledger->Release(caller_.name, reserved_);
      reserved_ = 0;
    }
  }

  // Cleans up, logs and finishes; the last thing any path does (OnDone may
  // follow at once on another thread).
  void End(const absl::Status& status) {
    CleanUp();
    spdlog::info("{} client={} peer={} name={} bytes={} outcome={}{}",
                 context_.method, caller_.name, peer_, name_, received_,
                 absl::StatusCodeToString(status.code()),
                 status.ok() ? ""
                             : absl::StrCat(" (", status.message(), ")"));
    this->Finish(ToGrpcStatus(status));
  }

  const ChunkedUploadContext context_;
  const Identity caller_;
  const std::string peer_;
  Request request_;
  bool header_seen_ = false;
  int64_t size_ = 0;
  std::string sha256_;
  int64_t received_ = 0;
  int64_t reserved_ = 0;
  bool kept_ = true;  // See KeptNothing.
  std::filesystem::path staged_file_;
  std::ofstream file_;
  core::Sha256 digest_;
};

}  // namespace featviz::server

#endif  // FEATVIZ_SERVER_CHUNKED_UPLOAD_H_
