#include "server/engine/result_store.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "server/engine/heap_bytes.h"

namespace featviz::server {

const char* ResultRemovalName(ResultRemoval why) {
  switch (why) {
    case ResultRemoval::kExpired:
      return "expired";
    case ResultRemoval::kEvicted:
      return "evicted";
    case ResultRemoval::kOwnerShare:
      return "owner_share";
    case ResultRemoval::kForgotten:
      return "forgotten";
  }
  return "unknown";
}

ResultStore::ResultStore(ResultStoreOptions options) : options_(options) {}

int64_t ResultStore::EntryBytes(const std::string& job_id,
                                const std::string& owner) {
  // results_'s node (with the Stored and its copy of the owner), order_'s
  // and the owner's order entries (each with a copy of the id).
  return HashNodeBytes(sizeof(std::pair<const std::string, Stored>)) +
         HeapBytes(job_id) + HeapBytes(owner) +
         2 * (MapNodeBytes(sizeof(std::pair<const uint64_t, std::string>)) +
              HeapBytes(job_id));
}

int64_t ResultStore::KeyBytes(const std::string& key,
                              const std::string& job_id) {
  // cache_'s node (key and id), and the key's copy in Stored::keys (with a
  // slot of that vector).
  return HashNodeBytes(sizeof(std::pair<const std::string, std::string>)) +
         2 * HeapBytes(key) + HeapBytes(job_id) +
         static_cast<int64_t>(sizeof(std::string));
}

namespace {

// An entry of removed_order_ or pending_order_ (deques of id and seq).
int64_t OrderEntryBytes(const std::string& job_id) {
  return static_cast<int64_t>(sizeof(std::pair<std::string, uint64_t>)) +
         HeapBytes(job_id);
}

}  // namespace

int64_t ResultStore::RemovedBytes(const std::string& job_id,
                                  const Removed& removed) {
  return HashNodeBytes(sizeof(std::pair<const std::string, Removed>)) +
         HeapBytes(job_id) + HeapBytes(removed.owner);
}

int64_t ResultStore::PendingBytes(const std::string& job_id,
                                  const Pending& pending) {
  return HashNodeBytes(sizeof(std::pair<const std::string, Pending>)) +
         HeapBytes(job_id) + HeapBytes(pending.keys);
}

bool ResultStore::Expired(const Stored& stored, absl::Time now) const {
  return now - stored.stored_at >= options_.ttl;
}

void ResultStore::AddBytesLocked(const std::string& owner, int64_t delta) {
  bytes_ += delta;
  owners_[owner].bytes += delta;
}

void ResultStore::Put(const std::string& job_id, const std::string& owner,
                      JobResultPtr result, int64_t bytes, absl::Time now) {
  absl::MutexLock lock(&mu_);
  std::vector<std::string> keys;
  if (results_.count(job_id) != 0) {
    // A replacement keeps the keys that point at the job.
    keys = results_.at(job_id).keys;
    EraseLocked(job_id);
  }
  if (auto it = removed_.find(job_id); it != removed_.end()) {
    bookkeeping_ -= RemovedBytes(job_id, it->second);
    removed_.erase(it);
  }

  const uint64_t seq = next_seq_++;
  Stored& stored = results_[job_id];
  stored.result = std::move(result);
  stored.owner = owner;
  stored.bytes = std::max<int64_t>(bytes, 0) + EntryBytes(job_id, owner);
  stored.stored_at = now;
  stored.seq = seq;
  order_.emplace(seq, job_id);
  owners_[owner].order.emplace(seq, job_id);
  AddBytesLocked(owner, stored.bytes);
  for (const std::string& key : keys) LinkLocked(key, job_id);

  if (auto it = pending_.find(job_id); it != pending_.end()) {
    bookkeeping_ -= PendingBytes(job_id, it->second);
    std::vector<std::string> waiting = std::move(it->second.keys);
    pending_.erase(it);
    for (const std::string& key : waiting) LinkLocked(key, job_id);
  }

  const double share = std::clamp(options_.max_owner_share, 0.0, 1.0);
  const auto owner_max =
      static_cast<int64_t>(std::floor(share * static_cast<double>(options_.max_bytes)));
  // (With a share of 1 the budget alone decides, below.)
  while (owner_max < options_.max_bytes && owners_.count(owner) != 0 &&
         owners_.at(owner).bytes > owner_max) {
    // Copied: RemoveLocked erases the entry it refers to.
    const std::string oldest = owners_.at(owner).order.begin()->second;
    RemoveLocked(oldest, Removal::kOwnerShare);
  }
  while (bytes_ > options_.max_bytes && !owners_.empty()) {
    auto largest = owners_.begin();
    for (auto it = owners_.begin(); it != owners_.end(); ++it) {
      if (it->second.bytes > largest->second.bytes) largest = it;
    }
    const std::string oldest = largest->second.order.begin()->second;
    RemoveLocked(oldest, Removal::kEvicted);
  }
}

void ResultStore::Forget(const std::string& job_id) {
  absl::MutexLock lock(&mu_);
  RemoveLocked(job_id, Removal::kForgotten);
}

absl::StatusOr<JobResultPtr>
ResultStore::Get(const std::string& job_id, absl::Time now) {
  absl::MutexLock lock(&mu_);
  auto it = results_.find(job_id);
  if (it != results_.end() && !Expired(it->second, now)) {
    return it->second.result;
  }
  auto removed = removed_.find(job_id);
  const bool expired =
      it != results_.end() ||
      (removed != removed_.end() && removed->second.why == Removal::kExpired);
  if (expired) {
    return absl::NotFoundError(
        absl::StrCat("the result of job ", job_id,
                     " expired (results are kept ",
                     absl::FormatDuration(options_.ttl), ")"));
  }
  if (removed == removed_.end()) {
    return absl::NotFoundError(absl::StrCat("no result for job ", job_id));
  }
  switch (removed->second.why) {
    case Removal::kOwnerShare:
      return absl::NotFoundError(absl::StrCat(
          "the result of job ", job_id, " was evicted: owner '",
          removed->second.owner, "''s results reached its share of the "
          "result store (", options_.max_owner_share * 100, "% of ",
          options_.max_bytes, " bytes)"));
    case Removal::kForgotten:
      return absl::NotFoundError(absl::StrCat(
          "the result of job ", job_id,
          " was dropped with its job record (the server keeps a bounded "
          "number of finished jobs)"));
    case Removal::kExpired:
    case Removal::kEvicted:
      break;
  }
  return absl::NotFoundError(
      absl::StrCat("the result of job ", job_id,
                   " was evicted to keep results under ", options_.max_bytes,
                   " bytes"));
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
    bookkeeping_ += OrderEntryBytes(job_id);
  } else {
    bookkeeping_ -= PendingBytes(job_id, it->second);
  }
  if (std::find(it->second.keys.begin(), it->second.keys.end(), key) ==
      it->second.keys.end()) {
    it->second.keys.push_back(key);
  }
  bookkeeping_ += PendingBytes(job_id, it->second);
  while (static_cast<int64_t>(pending_order_.size()) >
         std::max<int64_t>(options_.max_pending_jobs, 0)) {
    const auto& [oldest, seq] = pending_order_.front();
    if (auto old = pending_.find(oldest);
        old != pending_.end() && old->second.seq == seq) {
      bookkeeping_ -= PendingBytes(oldest, old->second);
      pending_.erase(old);
    }
    bookkeeping_ -= OrderEntryBytes(oldest);
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

ResultStoreStats ResultStore::Stats(int top_owners) const {
  ResultStoreStats out;
  const double share = std::clamp(options_.max_owner_share, 0.0, 1.0);
  out.max_bytes = options_.max_bytes;
  out.owner_max_bytes = static_cast<int64_t>(
      std::floor(share * static_cast<double>(options_.max_bytes)));
  absl::MutexLock lock(&mu_);
  out.results = static_cast<int64_t>(results_.size());
  out.bytes = bytes_;
  out.bookkeeping_bytes = bookkeeping_;
  std::copy(std::begin(removed_counts_), std::end(removed_counts_),
            std::begin(out.removed));
  for (const auto& [owner, held] : owners_) {
    out.owners.push_back(OwnerResults{
        owner, static_cast<int64_t>(held.order.size()), held.bytes});
  }
  std::sort(out.owners.begin(), out.owners.end(),
            [](const OwnerResults& a, const OwnerResults& b) {
              return a.bytes != b.bytes ? a.bytes > b.bytes : a.owner < b.owner;
            });
  if (static_cast<int64_t>(out.owners.size()) > std::max(top_owners, 0)) {
    out.owners.resize(static_cast<size_t>(std::max(top_owners, 0)));
  }
  return out;
}

std::optional<std::string> ResultStore::EraseLocked(const std::string& job_id) {
  auto it = results_.find(job_id);
  if (it == results_.end()) return std::nullopt;
  for (const std::string& key : it->second.keys) cache_.erase(key);
  std::string owner = it->second.owner;
  AddBytesLocked(owner, -it->second.bytes);
  order_.erase(it->second.seq);
  Owner& held = owners_.at(owner);
  held.order.erase(it->second.seq);
  if (held.order.empty()) owners_.erase(owner);
  results_.erase(it);
  return owner;
}

void ResultStore::RemoveLocked(const std::string& job_id, Removal why) {
  std::optional<std::string> owner = EraseLocked(job_id);
  if (!owner.has_value()) return;
  ++removed_counts_[static_cast<int>(why)];

  const uint64_t seq = next_seq_++;
  auto [entry, inserted] = removed_.try_emplace(job_id);
  Removed& removed = entry->second;
  if (!inserted) bookkeeping_ -= RemovedBytes(job_id, removed);
  removed = Removed{why, seq, *std::move(owner)};
  bookkeeping_ += RemovedBytes(job_id, removed) + OrderEntryBytes(job_id);
  removed_order_.emplace_back(job_id, seq);
  while (static_cast<int64_t>(removed_order_.size()) >
         std::max<int64_t>(options_.max_remembered_removals, 0)) {
    const auto& [oldest, oldest_seq] = removed_order_.front();
    if (auto old = removed_.find(oldest);
        old != removed_.end() && old->second.seq == oldest_seq) {
      bookkeeping_ -= RemovedBytes(oldest, old->second);
      removed_.erase(old);
    }
    bookkeeping_ -= OrderEntryBytes(oldest);
    removed_order_.pop_front();
  }
}

void ResultStore::LinkLocked(const std::string& key,
                             const std::string& job_id) {
  UnlinkLocked(key);
  cache_[key] = job_id;
  Stored& stored = results_.at(job_id);
  stored.keys.push_back(key);
  const int64_t cost = KeyBytes(key, job_id);
  stored.bytes += cost;
  AddBytesLocked(stored.owner, cost);
}

void ResultStore::UnlinkLocked(const std::string& key) {
  auto it = cache_.find(key);
  if (it == cache_.end()) return;
  Stored& stored = results_.at(it->second);
  std::vector<std::string>& keys = stored.keys;
  keys.erase(std::remove(keys.begin(), keys.end(), key), keys.end());
  const int64_t cost = KeyBytes(key, it->second);
  stored.bytes -= cost;
  AddBytesLocked(stored.owner, -cost);
  cache_.erase(it);
}

}  // namespace featviz::server
