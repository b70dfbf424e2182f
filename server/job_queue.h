// The render worker pool: a bounded queue of accepted jobs and a fixed number
// of worker threads that run them one each. Full means full: Submit refuses
// at once instead of letting work pile up, and a job cancelled while it waits
// can be taken back out, so it does not hold a place.
#ifndef FEATVIZ_SERVER_JOB_QUEUE_H_
#define FEATVIZ_SERVER_JOB_QUEUE_H_

#include <deque>
#include <memory>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace featviz::server {

// What the pool runs. A job is shared: the pool holds it while it is queued
// or running, its submitter for as long as it may cancel it.
class Job {
 public:
  virtual ~Job() = default;
  // Does the work, on a worker thread.
  virtual void Run() = 0;
  // Ends a job that will never run because the pool is draining.
  virtual void Drop(const absl::Status& why) = 0;
  // Asks a running job to stop soon (the pool is draining and its grace
  // period is over). Thread-safe, idempotent; called while Run() runs.
  virtual void Stop() = 0;
};
using JobPtr = std::shared_ptr<Job>;

class JobQueue;
using JobQueuePtr = std::unique_ptr<JobQueue>;

class JobQueue {
 public:
  // `workers` threads, at most `capacity` jobs waiting. InvalidArgument
  // unless workers >= 1 and capacity >= 0.
  static absl::StatusOr<JobQueuePtr> Create(int workers, int capacity);

  // Drains with no grace period and joins the workers.
  ~JobQueue();

  JobQueue(const JobQueue&) = delete;
  JobQueue& operator=(const JobQueue&) = delete;

  // Queues `job`. ResourceExhausted naming the limit when `capacity` jobs
  // already wait; Unavailable once draining. On success, exactly one of
  // Run() and Drop() will be called, unless Remove() takes the job back.
  absl::Status Submit(JobPtr job);

  // Takes a job that has not started back out of the queue. True when it
  // was still waiting: then neither Run() nor Drop() will be called.
  bool Remove(const Job* job);

  // Stops taking jobs, drops the waiting ones with `why`, lets running jobs
  // go on until `grace_deadline`, then Stop()s them and waits for them to
  // return. Calling it again only waits.
  void Drain(absl::Time grace_deadline, const absl::Status& why);

  int capacity() const { return capacity_; }
  int waiting() const;
  int running() const;

 private:
  JobQueue(int capacity) : capacity_(capacity) {}
  void Work();

  const int capacity_;
  mutable absl::Mutex mu_;
  std::deque<JobPtr> waiting_ ABSL_GUARDED_BY(mu_);
  std::vector<JobPtr> running_ ABSL_GUARDED_BY(mu_);
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> workers_;
};

}  // namespace featviz::server

#endif  // FEATVIZ_SERVER_JOB_QUEUE_H_
