#include "server/job_queue.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"

namespace featviz::server {

absl::StatusOr<JobQueuePtr> JobQueue::Create(int workers, int capacity) {
  if (workers < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("a job queue needs at least 1 worker, got ", workers));
  }
  if (capacity < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("a job queue's capacity must be >= 0, got ", capacity));
  }
  JobQueuePtr queue(new JobQueue(capacity));
  for (int i = 0; i < workers; ++i) {
    queue->workers_.emplace_back([q = queue.get()] { q->Work(); });
  }
  return queue;
}

JobQueue::~JobQueue() {
  Drain(absl::Now(), absl::UnavailableError("the render queue was destroyed"));
  for (std::thread& worker : workers_) worker.join();
}

absl::Status JobQueue::Submit(JobPtr job) {
  absl::MutexLock lock(&mu_);
  if (draining_) {
    return absl::UnavailableError("server is shutting down");
  }
  if (static_cast<int>(waiting_.size()) >= capacity_) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the render queue is full: ", running_.size(),
        " renders running and ", waiting_.size(),
        " waiting, the server's max_queued_renders is ", capacity_,
        "; try again later"));
  }
  waiting_.push_back(std::move(job));
  return absl::OkStatus();
}

bool JobQueue::Remove(const Job* job) {
  JobPtr removed;  // Released outside the lock.
  absl::MutexLock lock(&mu_);
  auto it = std::find_if(waiting_.begin(), waiting_.end(),
                         [job](const JobPtr& j) { return j.get() == job; });
  if (it == waiting_.end()) return false;
  removed = std::move(*it);
  waiting_.erase(it);
  return true;
}

void JobQueue::Drain(absl::Time grace_deadline, const absl::Status& why) {
  std::deque<JobPtr> dropped;
  {
    absl::MutexLock lock(&mu_);
    draining_ = true;
    dropped.swap(waiting_);
  }
  // Outside the lock: dropping a job finishes its call, and the call's
  // reactions may come back here (Remove) on this thread.
  for (JobPtr& job : dropped) job->Drop(why);
  dropped.clear();

  absl::MutexLock lock(&mu_);
  auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return running_.empty();
  };
  if (mu_.AwaitWithDeadline(absl::Condition(&idle), grace_deadline)) return;
  for (const JobPtr& job : running_) job->Stop();
  mu_.Await(absl::Condition(&idle));
}

int JobQueue::waiting() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(waiting_.size());
}

int JobQueue::running() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(running_.size());
}

void JobQueue::Work() {
  while (true) {
    JobPtr job;
    {
      absl::MutexLock lock(&mu_);
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return draining_ || !waiting_.empty();
      };
      mu_.Await(absl::Condition(&ready));
      if (waiting_.empty()) return;  // Draining, and nothing left to do.
      job = std::move(waiting_.front());
      waiting_.pop_front();
      running_.push_back(job);
    }
    job->Run();
    absl::MutexLock lock(&mu_);
    running_.erase(std::find(running_.begin(), running_.end(), job));
  }
}

}  // namespace featviz::server
