// Bytes each client has uploaded (or is uploading) while the server runs,
// models and datasets together, against its max_upload_bytes quota.
#ifndef FEATVIZ_SERVER_UPLOAD_LEDGER_H_
#define FEATVIZ_SERVER_UPLOAD_LEDGER_H_

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"

namespace featviz::server {

// Thread-safe.
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
  // Every client that has uploaded, with its bytes, most first.
  std::vector<std::pair<std::string, int64_t>> Usage() const;

 private:
  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, int64_t> used_ ABSL_GUARDED_BY(mu_);
};

}  // namespace featviz::server

#endif  // FEATVIZ_SERVER_UPLOAD_LEDGER_H_
