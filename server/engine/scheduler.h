// The fair queue between accepted jobs and the workers. Jobs wait here until
// a worker takes one; the order is
//   1. highest priority first;
//   2. within a priority, the owner that has received the least service: the
//      sum of `cost` of its jobs started so far, where an owner that (re)joins
//      the queue starts at the least service of the owners already waiting,
//      so an idle owner cannot bank credit (nor carry a debt) for later;
//      ties go to the owner whose next job has waited longest;
//   3. first in, first out within one owner and priority.
// So one owner's 10,000-job sweep cannot starve another owner's single job,
// and owners with equal costs take turns.
#ifndef FEATVIZ_SERVER_ENGINE_SCHEDULER_H_
#define FEATVIZ_SERVER_ENGINE_SCHEDULER_H_

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace featviz::server {

// One owner's own limits (an authenticated client's quotas); nullopt is
// unlimited. They apply on top of the server-wide SchedulerOptions.
struct OwnerQuota {
  std::optional<int64_t> max_queued;   // Its jobs waiting at once.
  std::optional<int64_t> max_running;  // Its jobs taken by workers at once.
};

// A job waiting for a worker, as the scheduler sees it.
struct QueuedJob {
  std::string id;
  std::string owner;
  int priority = 0;                 // Higher runs first; [-10, 10].
  absl::Time enqueue_time;
  absl::Time deadline = absl::InfiniteFuture();  // Queue deadline.
  std::string batch_key;            // Equal keys may share a batched step.
  int64_t images = 1;               // Its batch: what it adds to a step.
  int64_t cost = 1;                 // images x steps, for fair-share accounting.
  OwnerQuota quota;                 // The owner's, as of this job's submission.
};

struct SchedulerOptions {
  int64_t max_queued = 4096;            // All owners together.
  int64_t max_queued_per_owner = 1024;  // One owner.
};

// The fair queue (thread-safe). See the file comment for the order.
class Scheduler {
 public:
  explicit Scheduler(SchedulerOptions options);

  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Queues `job`. Unavailable "server is shutting down" after Close();
  // AlreadyExists for an id already queued; ResourceExhausted naming the
  // limit ("the queue holds 4096 jobs, the server's max_queued_jobs" /
  // "owner 'alice' already has 1024 queued jobs, the server's
  // max_queued_per_owner" / "client 'alice' already has 8 queued jobs, its
  // quota max_queued"). Any priority is kept as given (the service
  // checks the [-10, 10] range); a cost below 1 is charged as 1.
  absl::Status Add(QueuedJob job);

  // Takes a queued job out (cancellation) without charging its owner.
  // False when it was not queued.
  bool Remove(absl::string_view id);

  // Removes and returns the next job in fair order if `accept(next)` is
  // true; nullopt when the queue is empty or the next job is not accepted
  // (the caller then finishes its current batch before taking other work, so
  // batching never lets a compatible job overtake an incompatible one that
  // is ahead of it). Charges the job's cost to its owner. `accept` runs with
  // the scheduler's lock held: it must be quick and must not call back into
  // this Scheduler. Owners with as many jobs taken (and not yet Done) as
  // their quota's max_running are passed over: their jobs wait.
  std::optional<QueuedJob> PopNext(
      const std::function<bool(const QueuedJob&)>& accept);

  // Job `id`, taken by PopNext, has ended: it no longer counts against its
  // owner's max_running. Ids not taken are ignored.
  void Done(absl::string_view id);

  // Blocks until the queue holds a job PopNext may take, `timeout` passes,
  // or Close() is called. True when there is such work.
  bool WaitForWork(absl::Duration timeout);

  // Removes and returns the jobs whose deadline <= now, earliest deadline
  // first, without charging their owners.
  std::vector<QueuedJob> TakeExpired(absl::Time now);

  // Stops accepting (Add returns Unavailable "server is shutting down"),
  // wakes waiters, removes and returns everything queued: highest priority
  // first, then in the order they were added. Later calls return nothing.
  std::vector<QueuedJob> Close();

  // Jobs queued, all owners together.
  int64_t size() const;
  // Jobs `owner` has queued.
  int64_t QueuedFor(absl::string_view owner) const;
  // Jobs queued at each priority that has any, highest priority first.
  std::map<int, int64_t, std::greater<int>> DepthByPriority() const;
  // Jobs queued per owner that has any.
  std::map<std::string, int64_t> QueuedByOwner() const;

 private:
  // An owner with at least one queued job. Owners leave this map when their
  // last job leaves the queue, which is what "(re)joins" means above.
  struct Owner {
    int64_t service = 0;  // Cost of its jobs started so far (see above).
    int64_t queued = 0;   // Its jobs in the queue, all priorities.
  };
  // One owner's jobs at one priority, keyed by arrival sequence (FIFO).
  using OwnerQueue = std::map<uint64_t, QueuedJob>;
  // Where a queued job is, to find it by id.
  struct Location {
    int priority;
    std::string owner;
    uint64_t seq;
  };

  // The next job in fair order; null when the queue is empty.
  const QueuedJob* PeekLocked() const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // Takes the job at `location` out of every index and returns it.
  QueuedJob EraseLocked(const Location& location)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const SchedulerOptions options_;

  mutable absl::Mutex mu_;
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t next_seq_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t size_ ABSL_GUARDED_BY(mu_) = 0;
  // priority -> owner -> that owner's jobs at that priority. Inner maps are
  // removed when they empty, so every entry holds at least one job.
  std::map<int, std::map<std::string, OwnerQueue>, std::greater<int>> queues_
      ABSL_GUARDED_BY(mu_);
  std::map<std::string, Owner, std::less<>> owners_ ABSL_GUARDED_BY(mu_);
  std::unordered_map<std::string, Location> by_id_ ABSL_GUARDED_BY(mu_);
  // Jobs taken by PopNext and not yet Done: id -> owner, and per owner.
  std::unordered_map<std::string, std::string> taken_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, int64_t, std::less<>> taken_by_owner_
      ABSL_GUARDED_BY(mu_);
  // (deadline, seq) -> id for the jobs with a finite deadline.
  std::map<std::pair<absl::Time, uint64_t>, std::string> deadlines_
      ABSL_GUARDED_BY(mu_);
};

}  // namespace featviz::server

#endif  // FEATVIZ_SERVER_ENGINE_SCHEDULER_H_
