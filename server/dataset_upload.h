// UploadDataset: a lab's own images, sent in chunks (chunked_upload.h: size
// and quota checked before any byte is taken, SHA-256 checked at the end),
// decoded and checked (core/dataset_files.h) and hosted by the
// DatasetRegistry, which keeps them on disk when it has a dataset directory.
// The name is held from the header on, so two uploads of one name cannot
// both succeed; whatever fails, nothing of the upload stays.
#ifndef FEATVIZ_SERVER_DATASET_UPLOAD_H_
#define FEATVIZ_SERVER_DATASET_UPLOAD_H_

#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/status.h"
#include "featviz/v1/circuits.pb.h"
#include "server/auth.h"
#include "server/engine/dataset_registry.h"
#include "server/upload_ledger.h"

namespace featviz::server {

struct DatasetUploadContext {
  DatasetRegistry* datasets = nullptr;
  UploadLedger* ledger = nullptr;
  // Largest upload accepted (--max_dataset_bytes); an npz archive or gzip
  // stream may inflate to four times this.
  int64_t max_bytes = 0;
  // Runs the decoding and publishing away from gRPC's callback threads;
  // the service counts such work so that its shutdown waits for it.
  std::function<void(std::function<void()>)> run_detached;
};

// The reactor of one UploadDataset call by `caller` (peer `peer`, for logs),
// which fills `response` with the hosted dataset. When `refused` is not OK
// (the caller may not upload) it finishes at once with that status.
grpc::ServerReadReactor<v1::UploadDatasetRequest>* StartDatasetUpload(
    DatasetUploadContext context, Identity caller, std::string peer,
    v1::Dataset* response, absl::Status refused);

}  // namespace featviz::server

#endif  // FEATVIZ_SERVER_DATASET_UPLOAD_H_
