#include "server/upload_ledger.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace featviz::server {

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

std::vector<std::pair<std::string, int64_t>> UploadLedger::Usage() const {
  std::vector<std::pair<std::string, int64_t>> out;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [client, used] : used_) {
      if (used > 0) out.emplace_back(client, used);
    }
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) {
    return a.second != b.second ? a.second > b.second : a.first < b.first;
  });
  return out;
}

}  // namespace featviz::server
