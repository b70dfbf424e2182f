#include "server/result_store.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"

namespace featviz::server {

ResultStore::ResultStore(ResultStoreOptions options) : options_(options) {}

bool ResultStore::Expired(const Stored& stored, absl::Time now) const {
  return now - stored.stored_at >= options_.ttl;
}

void ResultStore::Put(const std::string& job_id,
                      JobResultPtr result,
                      int64_t bytes, absl::Time now) {
  absl::MutexLock lock(&mu_);
  bytes = std::max<int64_t>(bytes, 0);
  std::vector<std::string> keys;
  if (auto it = results_.find(job_id); it != results_.end()) {
    // A replacement keeps the keys that point at the job.
    keys = std::move(it->second.keys);
    bytes_ -= it->second.bytes;
    order_.erase(it->second.seq);
    results_.erase(it);
  }
  removed_.erase(job_id);

  const uint64_t seq = next_seq_++;
  Stored& stored = results_[job_id];
  stored.result = std::move(result);
  stored.bytes = bytes;
  stored.stored_at = now;
  stored.seq = seq;
  stored.keys = std::move(keys);
  order_.emplace(seq, job_id);
  bytes_ += bytes;

  if (auto it = pending_.find(job_id); it != pending_.end()) {
    std::vector<std::string> waiting = std::move(it->second.keys);
    pending_.erase(it);
    for (const std::string& key : waiting) LinkLocked(key, job_id);
  }

  while (bytes_ > options_.max_bytes && !order_.empty()) {
    // Copied: RemoveLocked erases the order_ entry it refers to.
    const std::string oldest = order_.begin()->second;
    RemoveLocked(oldest, Removal::kEvicted);
  }
}

absl::StatusOr<JobResultPtr>
ResultStore::Get(const std::string& job_id, absl::Time now) {
  absl::MutexLock lock(&mu_);
  auto it = results_.find(job_id);
  if (it != results_.end() && !Expired(it->second, now)) {
    return it->second.result;
  }
  const bool expired =
      it != results_.end() ||
      (removed_.count(job_id) != 0 &&
       removed_.at(job_id).first == Removal::kExpired);
  if (expired) {
    return absl::NotFoundError(
        absl::StrCat("the result of job ", job_id,
                     " expired (results are kept ",
                     absl::FormatDuration(options_.ttl), ")"));
  }
  if (removed_.count(job_id) != 0) {
    return absl::NotFoundError(
        absl::StrCat("the result of job ", job_id,
                     " was evicted to keep results under ",
                     options_.max_bytes, " bytes"));
  }
  return absl::NotFoundError(absl::StrCat("no result for job ", job_id));
}

std::optional<std::string> ResultStore::Lookup(const std::string& key,
                                               absl::Time now) {
  absl::MutexLock lock(&mu_);
  auto it = cache_.find(key);
  if (it == cache_.end()) return std::nullopt;
  // cache_ only points at stored results; an expired one waits for Sweep.
  if (Expired(results_.at(it->second), now)) return std::nullopt;
  return it->second;
}

void ResultStore::Remember(const std::string& key, const std::string& job_id) {
  absl::MutexLock lock(&mu_);
  if (results_.count(job_id) != 0) {
    LinkLocked(key, job_id);
    return;
  }
  if (removed_.count(job_id) != 0) return;
  auto [it, inserted] = pending_.try_emplace(job_id);
  if (inserted) {
    it->second.seq = next_seq_++;
    pending_order_.emplace_back(job_id, it->second.seq);
  }
  if (std::find(it->second.keys.begin(), it->second.keys.end(), key) ==
      it->second.keys.end()) {
    it->second.keys.push_back(key);
  }
  while (static_cast<int64_t>(pending_order_.size()) >
         std::max<int64_t>(options_.max_pending_jobs, 0)) {
    const auto& [oldest, seq] = pending_order_.front();
    if (auto old = pending_.find(oldest);
        old != pending_.end() && old->second.seq == seq) {
      pending_.erase(old);
    }
    pending_order_.pop_front();
  }
}

std::vector<std::string> ResultStore::Sweep(absl::Time now) {
  absl::MutexLock lock(&mu_);
  std::vector<std::string> expired;
  // Every result is checked, not just a prefix of order_: `now` need not
  // grow from one Put to the next.
  for (const auto& [seq, job_id] : order_) {
    if (Expired(results_.at(job_id), now)) expired.push_back(job_id);
  }
  for (const std::string& job_id : expired) {
    RemoveLocked(job_id, Removal::kExpired);
  }
  return expired;
}

int64_t ResultStore::size() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int64_t>(results_.size());
}

int64_t ResultStore::bytes() const {
  absl::MutexLock lock(&mu_);
  return bytes_;
}

void ResultStore::RemoveLocked(const std::string& job_id, Removal why) {
  auto it = results_.find(job_id);
  if (it == results_.end()) return;
  for (const std::string& key : it->second.keys) cache_.erase(key);
  bytes_ -= it->second.bytes;
  order_.erase(it->second.seq);
  results_.erase(it);

  const uint64_t seq = next_seq_++;
  removed_[job_id] = {why, seq};
  removed_order_.emplace_back(job_id, seq);
  while (static_cast<int64_t>(removed_order_.size()) >
         std::max<int64_t>(options_.max_remembered_removals, 0)) {
    const auto& [oldest, oldest_seq] = removed_order_.front();
    if (auto old = removed_.find(oldest);
        old != removed_.end() && old->second.second == oldest_seq) {
      removed_.erase(old);
    }
    removed_order_.pop_front();
  }
}

void ResultStore::LinkLocked(const std::string& key,
                             const std::string& job_id) {
  UnlinkLocked(key);
  cache_[key] = job_id;
  results_.at(job_id).keys.push_back(key);
}

void ResultStore::UnlinkLocked(const std::string& key) {
  auto it = cache_.find(key);
  if (it == cache_.end()) return;
  std::vector<std::string>& keys = results_.at(it->second).keys;
  keys.erase(std::remove(keys.begin(), keys.end(), key), keys.end());
  cache_.erase(it);
}

}  // namespace featviz::server
