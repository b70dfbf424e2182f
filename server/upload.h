// UploadModel: a researcher sends a TorchScript file (and its card) in
// chunks (chunked_upload.h: size and quota checked before any byte is taken,
// SHA-256 checked at the end); the server publishes the file as the next
// version of the model in its repository (ModelRegistry::Publish), which
// loads it as LoadModel does; a file and card that a served version of the
// name already has are answered with that version (already_present), not
// published again. Whatever fails, nothing of the upload stays in the
// repository.
//
// Trust: a TorchScript file is code (its forward runs inside the server's
// process, with the server's rights), so only clients with the uploader or
// admin role may call this; docs/models.md says what that means.
#ifndef FEATVIZ_SERVER_UPLOAD_H_
#define FEATVIZ_SERVER_UPLOAD_H_

#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/status.h"
#include "featviz/v1/featviz.pb.h"
#include "server/auth.h"
#include "server/chunked_upload.h"
#include "server/engine/model_registry.h"
#include "server/upload_ledger.h"

namespace featviz::server {

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
