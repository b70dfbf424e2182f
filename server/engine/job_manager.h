// The job registry: every render is a job with an id, an owner, a priority
// and a queue deadline, and goes through
//
//   QUEUED -> RUNNING -> SUCCEEDED | FAILED | CANCELLED
//   QUEUED -> EXPIRED | CANCELLED
//
// The JobManager owns the fair queue (Scheduler), the finished results and
// the result cache (ResultStore), and the watchers of each job. Clients
// (the service's RPCs) submit, look up, watch, cancel and list jobs; workers
// (worker.h) take queued jobs, report their progress and end them. A job's
// watchers hear its progress events and exactly one final call.
//
// Result cache: a request that gives a seed is keyed by its plan
// (CacheKey, engine_types.h: the model's content hash and the SHA-256 of
// everything in the plan that shapes the result), so an equivalent request
// is answered with the stored result of the first, without running.
#ifndef FEATVIZ_SERVER_ENGINE_JOB_MANAGER_H_
#define FEATVIZ_SERVER_ENGINE_JOB_MANAGER_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/engine/engine_types.h"
#include "server/engine/result_store.h"
#include "server/engine/scheduler.h"

namespace featviz::server {

// Hears one job's events. The JobManager holds a reference until the final
// call, so a watcher may outlive whatever it reports to; it must then ignore
// late calls. Calls are made without the manager's locks held; they must be
// quick and must not call back into the JobManager.
class JobWatcher {
 public:
  virtual ~JobWatcher() = default;
  // A progress event of the running job (on the worker's thread).
  virtual void OnProgress(const JobProgress& progress) = 0;
  // The last call: OK with the job's result, or the job's error status.
  virtual void OnFinished(const absl::Status& status, JobResultPtr result) = 0;
};
using JobWatcherPtr = std::shared_ptr<JobWatcher>;

// Why a job is asked to stop; the first reason given wins.
enum class StopReason { kNone, kClient, kDeadline, kShutdown };

class JobManager;

// One job. What never changes is public; the rest is the manager's.
class JobRecord {
 public:
  JobRecord(uint64_t seq, std::string id, std::string owner, RenderPlan plan,
            std::string cache_key, absl::Time create_time,
            absl::Time queue_deadline);

  JobRecord(const JobRecord&) = delete;
  JobRecord& operator=(const JobRecord&) = delete;

  const uint64_t seq;    // Order of submission.
  const std::string id;  // "<seq>", or "<seq>@<replica>" (SetReplica).
  const std::string owner;
  // Fixed once submitted, except that the manager drops its tensors
  // (reference images, initial image, MaCo magnitude) when the job ends:
  // nothing reads them then, and a record outlives its job.
  RenderPlan plan;
  const std::string model;      // The model's name.
  const std::string objective;  // Canonical text.
  const std::string cache_key;  // Empty when the request is not cacheable.
  const absl::Time create_time;
  const absl::Time queue_deadline;

 private:
  friend class JobManager;

  mutable absl::Mutex mu_;
  JobState state_ ABSL_GUARDED_BY(mu_) = JobState::kQueued;
  absl::Time start_time_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  absl::Time end_time_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  int64_t steps_done_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Status status_ ABSL_GUARDED_BY(mu_);  // Of a finished job.
  bool cached_ ABSL_GUARDED_BY(mu_) = false;
  std::string device_ ABSL_GUARDED_BY(mu_);
  StopReason stop_ ABSL_GUARDED_BY(mu_) = StopReason::kNone;
  std::vector<JobWatcherPtr> watchers_ ABSL_GUARDED_BY(mu_);
};
using JobRecordPtr = std::shared_ptr<JobRecord>;

// A job's end, as monitoring sees it (JobManagerOptions::on_end).
struct JobEnd {
  const JobRecord& job;
  JobState state;
  bool started;             // It ran (or was taken by a worker).
  absl::Duration queued;    // Creation to start, or to its end if never run.
  absl::Duration total;     // Creation to end.
};

struct JobManagerOptions {
  // Queue bounds, total and per owner.
  SchedulerOptions scheduler;
  // Result lifetime and size budget.
  ResultStoreOptions results;
  // Longest wait in the queue; a request may ask for less, never more.
  absl::Duration default_queue_timeout = absl::Seconds(600);
  // Job records kept; the oldest finished ones are forgotten beyond this,
  // and their results with them, so that this also bounds the results kept.
  int64_t max_job_records = 100000;
  // Told of every job's end (not of cached answers), without locks held;
  // must be quick and thread-safe. May be empty.
  std::function<void(const JobEnd&)> on_end;
};

class JobManager {
 public:
  explicit JobManager(JobManagerOptions options);

  JobManager(const JobManager&) = delete;
  JobManager& operator=(const JobManager&) = delete;

  // ------------------------------------------------------------ clients

  // Accepts `plan` (a validated request) as a job of `owner`. `watcher` (may
  // be null) hears the job from the start. `cache_key` names the result in
  // the result cache ("" when the request is not reproducible). Returns the
  // job, QUEUED, or SUCCEEDED (cached) when an earlier job with the same
  // cache key has its result stored. `quota` is the owner's own
  // (authenticated clients'). Errors: Unavailable "server is shutting down"
  // after Close(); ResourceExhausted naming the queue limit or quota.
  absl::StatusOr<JobRecordPtr> Submit(RenderPlan plan, std::string cache_key,
                                      std::string owner, JobWatcherPtr watcher,
                                      OwnerQuota quota = {});

  // The address clients reach this replica at (featviz-server's
  // --advertise_address, known once the server has bound its port). From
  // then on job ids are "<seq>@<replica>", so that a client balancing its
  // calls over several replicas can send GetJob, WatchJob and CancelJob to
  // the replica that holds the job; before, and when empty, "<seq>".
  void SetReplica(std::string replica);

  // The job with `id`; NotFound "job X not found" for ids never issued or
  // forgotten, and NotFound naming the replica for an id another replica
  // issued.
  absl::StatusOr<JobRecordPtr> Find(absl::string_view id) const;

  // The job as it is now.
  JobSnapshot Snapshot(const JobRecord& job) const;
  // A succeeded job's result: FailedPrecondition naming the state for a job
  // that has not succeeded; NotFound, saying "expired" or "evicted", when
  // the result is gone.
  absl::StatusOr<JobResultPtr> Result(const JobRecord& job);

  // Adds `watcher` to `job`: progress from now on, then the end. For a
  // finished job the end (with its stored result) is delivered at once, on
  // this thread; a succeeded job whose result is gone ends with NotFound.
  void Watch(JobRecord& job, JobWatcherPtr watcher);
  // Takes `watcher` off `job`. True when it was still on it: then it hears
  // nothing more; false when its final call has been (or is being) made.
  bool Unwatch(JobRecord& job, const JobWatcher* watcher);

  // Cancels `job`: a queued job leaves the queue and ends CANCELLED at once;
  // a running one is told to stop, and its worker ends it within one step;
  // a finished one is left as it is. `reason` picks the status.
  void Cancel(const JobRecordPtr& job, StopReason reason);

  // Jobs newest first, filtered by owner and state, paged.
  // InvalidArgument for a negative page size or a token this server did not
  // issue.
  absl::StatusOr<JobPage> List(const JobQuery& query) const;

  // Queue, cache, result and job counter figures (not the devices').
  void FillStats(EngineStats& stats) const;
  // Jobs queued and running now, per owner that has any.
  struct OwnerLoad {
    int64_t queued = 0;
    int64_t running = 0;
  };
  std::map<std::string, OwnerLoad> LoadByOwner() const;

  // ------------------------------------------------------------ workers

  Scheduler& scheduler() { return scheduler_; }
  // Ends the queued jobs past their queue deadline (EXPIRED,
  // DEADLINE_EXCEEDED) and drops expired results.
  void ExpireQueued(absl::Time now);
  // Marks job `queued` (just taken from the scheduler) RUNNING on `device`.
  // Null when the job is unknown or already over.
  JobRecordPtr Start(const QueuedJob& queued, const std::string& device);
  // Why `job` was asked to stop; kNone while it may go on.
  StopReason StopRequested(const JobRecord& job) const;
  // The status of `job` stopped for `reason` after `steps_done` steps.
  static absl::Status StopStatus(const JobRecord& job, StopReason reason,
                                 int64_t steps_done);
  // Records that `job` has done `steps_done` steps; true when someone
  // watches it (so that progress events are worth making).
  bool Advance(JobRecord& job, int64_t steps_done);
  // Sends a progress event to `job`'s watchers.
  void Publish(JobRecord& job, const JobProgress& progress);
  // Ends a running `job`: SUCCEEDED with `result` when `status` is OK
  // (stored, and remembered in the cache when the request was cacheable);
  // otherwise CANCELLED for a Cancelled status, FAILED for any other.
  void Finish(JobRecord& job, const absl::Status& status, JobResultPtr result);

  // ----------------------------------------------------------- shutdown

  // Refuses new jobs from now on and ends every queued one CANCELLED with
  // Unavailable "server is shutting down; the render had not started".
  void Close();
  // Asks every running job to stop (their workers end them within a step).
  void StopRunning(StopReason reason);
  // Waits until no job runs or `deadline` passes; true when none runs.
  bool WaitUntilNoneRunning(absl::Time deadline);
  // Jobs running now.
  int64_t running() const;

 private:
  // Puts `job` in its final state and hands its watchers their last call.
  void End(JobRecord& job, JobState state, const absl::Status& status,
           JobResultPtr result);
  // Registers a new record, forgetting old finished ones beyond the limit.
  void AddRecord(const JobRecordPtr& job);
  // A finished job's seq, for forgetting the oldest first.
  void Retire(const JobRecord& job);
  // A new job answered at once with job `cached_id`'s stored `result`.
  absl::StatusOr<JobRecordPtr> SubmitCached(
      const std::string& cached_id, JobResultPtr result, RenderPlan plan,
      std::string owner, std::string cache_key, const JobWatcherPtr& watcher);

  // The id of the job numbered `seq`: "<seq>" or "<seq>@<replica>".
  std::string JobId(uint64_t seq) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const JobManagerOptions options_;
  Scheduler scheduler_;
  ResultStore results_;

  mutable absl::Mutex mu_;
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t next_seq_ ABSL_GUARDED_BY(mu_) = 1;
  std::string replica_ ABSL_GUARDED_BY(mu_);
  std::map<uint64_t, JobRecordPtr> records_ ABSL_GUARDED_BY(mu_);
  std::deque<uint64_t> finished_ ABSL_GUARDED_BY(mu_);  // Oldest first.
  absl::flat_hash_map<uint64_t, JobRecordPtr> running_ ABSL_GUARDED_BY(mu_);
  absl::Time last_sweep_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();

  std::atomic<int64_t> submitted_{0};
  std::atomic<int64_t> succeeded_{0};
  std::atomic<int64_t> failed_{0};
  std::atomic<int64_t> cancelled_{0};
  std::atomic<int64_t> expired_{0};
  std::atomic<int64_t> cache_hits_{0};
  // Heap of the records kept (RecordBytes), and records forgotten.
  std::atomic<int64_t> record_bytes_{0};
  std::atomic<int64_t> records_forgotten_{0};
  std::atomic<int64_t> cache_misses_{0};
};
using JobManagerPtr = std::unique_ptr<JobManager>;

}  // namespace featviz::server

#endif  // FEATVIZ_SERVER_ENGINE_JOB_MANAGER_H_
