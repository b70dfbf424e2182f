// UploadModel: a researcher sends a TorchScript file (and its card) in
// chunks; the server checks the declared size against its limit and the
// caller's quota before taking any bytes, hashes what arrives, and on a
// matching SHA-256 publishes the file as the next version of the model in
// its repository (ModelRegistry::Publish), which loads it as LoadModel does.
// Whatever fails, nothing of the upload stays in the repository.
//
// Trust: a TorchScript file is code (its forward runs inside the server's
// process, with the server's rights), so only clients with the uploader or
// admin role may call this; docs/models.md says what that means.
#ifndef FEATVIZ_SERVER_UPLOAD_H_
#define FEATVIZ_SERVER_UPLOAD_H_

#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "featviz/v1/featviz.pb.h"
#include "server/auth.h"
#include "server/model_registry.h"

namespace featviz::server {

// Bytes each client has uploaded (or is uploading) while the server runs,
// against its max_upload_bytes quota. Thread-safe.
class UploadLedger {
 public:
  // Books `bytes` for `client`. ResourceExhausted naming the quota, the bytes
  // already used and `bytes` when `quota` would be passed; nothing is booked
  // then.
  absl::Status Reserve(const std::string& client,
                       std::optional<int64_t> quota, int64_t bytes);
  // Gives back bytes of an upload that failed.
  void Release(const std::string& client, int64_t bytes);
  int64_t Used(const std::string& client) const;

 private:
  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, int64_t> used_ ABSL_GUARDED_BY(mu_);
};

// What an upload needs from the service.
struct UploadContext {
  ModelRegistry* models = nullptr;
  UploadLedger* ledger = nullptr;
  // Largest model file accepted (--max_upload_bytes).
  int64_t max_bytes = 0;
  // Runs the final check and load away from gRPC's callback threads; the
  // service counts such work so that its shutdown waits for it.
  std::function<void(std::function<void()>)> run_detached;
};

// Largest chunk one message may carry.
inline constexpr int64_t kMaxUploadChunkBytes = int64_t{4} << 20;
// Largest card JSON a header may carry.
inline constexpr int64_t kMaxUploadCardBytes = int64_t{1} << 20;

// The reactor of one UploadModel call by `caller` (peer `peer`, for logs).
// When `refused` is not OK (the caller may not upload) it finishes at once
// with that status.
grpc::ServerReadReactor<v1::UploadModelRequest>* StartUpload(
    UploadContext context, Identity caller, std::string peer,
    v1::UploadModelResponse* response, absl::Status refused);

}  // namespace featviz::server

#endif  // FEATVIZ_SERVER_UPLOAD_H_
