// Finished results kept for GetJob/WatchJob, plus the result cache: a map
// from a canonical request key to the job whose result answers it. Results
// are kept for a while (`ttl`) and within a size budget (`max_bytes`) shared
// fairly between their owners: no owner keeps more than `max_owner_share` of
// it, and when the budget is full the oldest result of the owner holding the
// most goes first, so that one busy owner pushes out its own results, never
// those of an owner holding less. Once a result is gone, Get says what took
// it, and the cache stops pointing at it.
//
// What is budgeted is what a result really takes: its own heap
// (JobResult::bytes) plus this store's bookkeeping for it (its entries in
// the maps below, its cache keys).
//
// Time is passed in (`now`) rather than read from a clock, so that callers
// decide what "now" is and tests need not sleep.
#ifndef FEATVIZ_SERVER_ENGINE_RESULT_STORE_H_
#define FEATVIZ_SERVER_ENGINE_RESULT_STORE_H_

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/engine/engine_types.h"

namespace featviz::server {

struct ResultStoreOptions {
  absl::Duration ttl = absl::Hours(1);   // Results older than this expire.
  int64_t max_bytes = 512ll << 20;       // Oldest results go first past this.
  // The most of max_bytes one owner's results may take, in (0, 1].
  double max_owner_share = 0.5;
  // How many removed results Get remembers, to say whether one expired or
  // was evicted; older removals read as "no result".
  int64_t max_remembered_removals = 16384;
  // How many jobs may have cache keys remembered before their result is
  // Put (see Remember); the oldest such jobs are forgotten first.
  int64_t max_pending_jobs = 4096;
};

// Why a result left the store.
enum class ResultRemoval {
  kExpired,     // Older than the ttl.
  kEvicted,     // The budget was full (oldest of the largest owner first).
  kOwnerShare,  // Its owner held more than max_owner_share of the budget.
  kForgotten,   // Its job record was forgotten (JobManager's max_job_records).
};
constexpr int kResultRemovals = 4;
// "expired", "evicted", "owner_share", "forgotten": for metric labels.
const char* ResultRemovalName(ResultRemoval why);

// One owner's share of the store.
struct OwnerResults {
  std::string owner;
  int64_t results = 0;
  int64_t bytes = 0;
};

struct ResultStoreStats {
  int64_t results = 0;  // Stored, expired ones not yet swept included.
  int64_t bytes = 0;    // What they take, bookkeeping included.
  // What remembering removed results and keys waiting for theirs takes:
  // bounded by max_remembered_removals and max_pending_jobs, not max_bytes.
  int64_t bookkeeping_bytes = 0;
  int64_t max_bytes = 0;
  int64_t owner_max_bytes = 0;  // max_owner_share of max_bytes.
  // Results removed since start, by ResultRemoval.
  int64_t removed[kResultRemovals] = {};
  // The owners holding the most bytes, most first (at most `top_owners`).
  std::vector<OwnerResults> owners;
};

// Thread-safe.
class ResultStore {
 public:
  explicit ResultStore(ResultStoreOptions options);

  ResultStore(const ResultStore&) = delete;
  ResultStore& operator=(const ResultStore&) = delete;

  // Stores `job_id`'s result, replacing any it had, as `owner`'s newest
  // result. `bytes` is the result's size (JobResult::bytes); the store adds
  // its bookkeeping (EntryBytes). Then, while `owner` holds more than its
  // share, evicts its oldest results (this one last); while the total is
  // over max_bytes, the oldest result of the owner holding the most. Expired
  // results stay until Sweep() or eviction removes them.
  void Put(const std::string& job_id, const std::string& owner,
           JobResultPtr result, int64_t bytes, absl::Time now);

  // Removes `job_id`'s result (Get then says its record was forgotten).
  // Nothing happens when none is stored.
  void Forget(const std::string& job_id);

  // `job_id`'s result while it is stored and less than `ttl` old. NotFound
  // otherwise: "the result of job X expired (results are kept 1h)", "the
  // result of job X was evicted to keep results under N bytes", "... was
  // evicted: owner O's results reached its share (N bytes)", "the job
  // record of X was forgotten...", or "no result for job X".
  absl::StatusOr<JobResultPtr> Get(
      const std::string& job_id, absl::Time now);

  // The job id whose stored, unexpired result answers `key`; nullopt
  // otherwise.
  std::optional<std::string> Lookup(const std::string& key, absl::Time now);

  // Records that `job_id`'s result answers `key` (replacing what `key`
  // pointed at). Meant for after Put; before Put the key waits for the
  // result (within max_pending_jobs). Once the result is removed the key is
  // forgotten; remembering a key for a job whose result is already gone does
  // nothing.
  void Remember(const std::string& key, const std::string& job_id);

  // Drops expired results (and their cache keys); returns their job ids,
  // oldest first.
  std::vector<std::string> Sweep(absl::Time now);

  // Results stored, expired ones not yet swept included.
  int64_t size() const;
  // What they take, their bookkeeping included: what max_bytes bounds.
  int64_t bytes() const;
  // Figures, with the `top_owners` owners holding the most.
  ResultStoreStats Stats(int top_owners = 20) const;

  // The store's bookkeeping for one result of `owner` stored as `job_id`,
  // without cache keys; and for one cache key of it.
  static int64_t EntryBytes(const std::string& job_id,
                            const std::string& owner);
  static int64_t KeyBytes(const std::string& key, const std::string& job_id);

 private:
  using Removal = ResultRemoval;
  struct Stored {
    JobResultPtr result;
    std::string owner;
    int64_t bytes = 0;  // Result and bookkeeping, keys included.
    absl::Time stored_at;
    uint64_t seq = 0;               // Position in order_.
    std::vector<std::string> keys;  // Cache keys that point at this job.
  };
  struct Owner {
    int64_t bytes = 0;
    std::map<uint64_t, std::string> order;  // seq -> job id, oldest first.
  };

  bool Expired(const Stored& stored, absl::Time now) const;
  // Removes `job_id`'s stored result and its cache keys; returns its owner
  // (nullopt when none was stored).
  std::optional<std::string> EraseLocked(const std::string& job_id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The same, remembering why (for Get) and counting it.
  void RemoveLocked(const std::string& job_id, Removal why)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Adds `delta` bytes to `owner`'s and the total.
  void AddBytesLocked(const std::string& owner, int64_t delta)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Points `key` at stored `job_id`, unlinking it from any other job.
  void LinkLocked(const std::string& key, const std::string& job_id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void UnlinkLocked(const std::string& key) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const ResultStoreOptions options_;

  mutable absl::Mutex mu_;
  uint64_t next_seq_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t bytes_ ABSL_GUARDED_BY(mu_) = 0;  // Stored results'.
  // removed_, pending_ and their order deques.
  int64_t bookkeeping_ ABSL_GUARDED_BY(mu_) = 0;
  std::unordered_map<std::string, Stored> results_ ABSL_GUARDED_BY(mu_);
  // seq -> job id of every stored result: oldest first.
  std::map<uint64_t, std::string> order_ ABSL_GUARDED_BY(mu_);
  // Every owner with a stored result.
  std::map<std::string, Owner> owners_ ABSL_GUARDED_BY(mu_);
  int64_t removed_counts_[kResultRemovals] ABSL_GUARDED_BY(mu_) = {};
  // Cache key -> job id with a stored result.
  std::unordered_map<std::string, std::string> cache_ ABSL_GUARDED_BY(mu_);
  // Keys remembered for jobs whose result is not stored yet, with the seq
  // of the job's entry in pending_order_ (oldest first). An entry there whose
  // seq no longer matches is stale; stale entries count towards the bound.
  struct Pending {
    uint64_t seq = 0;
    std::vector<std::string> keys;
  };
  std::unordered_map<std::string, Pending> pending_ ABSL_GUARDED_BY(mu_);
  std::deque<std::pair<std::string, uint64_t>> pending_order_
      ABSL_GUARDED_BY(mu_);
  // Why a job's result is gone, with the seq of its entry in removed_order_
  // (oldest first), kept the same way as pending_.
  struct Removed {
    Removal why = Removal::kExpired;
    uint64_t seq = 0;
    std::string owner;  // For kOwnerShare's message.
  };
  std::unordered_map<std::string, Removed> removed_ ABSL_GUARDED_BY(mu_);
  // What an entry of removed_ or pending_ takes.
  static int64_t RemovedBytes(const std::string& job_id,
                              const Removed& removed);
  static int64_t PendingBytes(const std::string& job_id,
                              const Pending& pending);
  std::deque<std::pair<std::string, uint64_t>> removed_order_
      ABSL_GUARDED_BY(mu_);
};

}  // namespace featviz::server

#endif  // FEATVIZ_SERVER_ENGINE_RESULT_STORE_H_
