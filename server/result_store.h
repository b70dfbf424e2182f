// Finished results kept for GetJob/WatchJob, plus the result cache: a map
// from a canonical request key to the job whose result answers it. Results
// are kept for a while (`ttl`) and within a size budget (`max_bytes`, oldest
// results go first); once a result is gone, Get says which of the two took
// it, and the cache stops pointing at it.
//
// Time is passed in (`now`) rather than read from a clock, so that callers
// decide what "now" is and tests need not sleep.
#ifndef FEATVIZ_SERVER_RESULT_STORE_H_
#define FEATVIZ_SERVER_RESULT_STORE_H_

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
#include "server/engine_types.h"

namespace featviz::server {

struct ResultStoreOptions {
  absl::Duration ttl = absl::Hours(1);   // Results older than this expire.
  int64_t max_bytes = 512ll << 20;       // Oldest results go first past this.
  // How many removed results Get remembers, to say whether one expired or
  // was evicted; older removals read as "no result".
  int64_t max_remembered_removals = 16384;
  // How many jobs may have cache keys remembered before their result is
  // Put (see Remember); the oldest such jobs are forgotten first.
  int64_t max_pending_jobs = 4096;
};

// Thread-safe.
class ResultStore {
 public:
  explicit ResultStore(ResultStoreOptions options);

  ResultStore(const ResultStore&) = delete;
  ResultStore& operator=(const ResultStore&) = delete;

  // Stores `job_id`'s result, replacing any it had, as the newest result.
  // `bytes` is the result's size (JobResult::bytes). Then evicts the oldest results
  // (this one last) until the total is at most max_bytes. Expired results
  // stay until Sweep() or eviction removes them.
  void Put(const std::string& job_id,
           JobResultPtr result,
           int64_t bytes, absl::Time now);

  // `job_id`'s result while it is stored and less than `ttl` old. NotFound
  // otherwise: "the result of job X expired (results are kept 1h)", "the
  // result of job X was evicted to keep results under N bytes", or "no
  // result for job X".
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
  // Sum of their `bytes`.
  int64_t bytes() const;

 private:
  enum class Removal { kExpired, kEvicted };
  struct Stored {
    JobResultPtr result;
    int64_t bytes = 0;
    absl::Time stored_at;
    uint64_t seq = 0;               // Position in order_.
    std::vector<std::string> keys;  // Cache keys that point at this job.
  };

  bool Expired(const Stored& stored, absl::Time now) const;
  // Removes `job_id`'s stored result and its cache keys, remembering why.
  void RemoveLocked(const std::string& job_id, Removal why)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Points `key` at stored `job_id`, unlinking it from any other job.
  void LinkLocked(const std::string& key, const std::string& job_id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void UnlinkLocked(const std::string& key) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const ResultStoreOptions options_;

  mutable absl::Mutex mu_;
  uint64_t next_seq_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t bytes_ ABSL_GUARDED_BY(mu_) = 0;
  std::unordered_map<std::string, Stored> results_ ABSL_GUARDED_BY(mu_);
  // seq -> job id of every stored result: oldest first.
  std::map<uint64_t, std::string> order_ ABSL_GUARDED_BY(mu_);
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
  std::unordered_map<std::string, std::pair<Removal, uint64_t>> removed_
      ABSL_GUARDED_BY(mu_);
  std::deque<std::pair<std::string, uint64_t>> removed_order_
      ABSL_GUARDED_BY(mu_);
};

}  // namespace featviz::server

#endif  // FEATVIZ_SERVER_RESULT_STORE_H_
