#include "server/engine/scheduler.h"

#include <algorithm>
#include <limits>
#include <tuple>
#include <utility>

#include "absl/strings/str_cat.h"

namespace featviz::server {

Scheduler::Scheduler(SchedulerOptions options) : options_(options) {}

absl::Status Scheduler::Add(QueuedJob job) {
  absl::MutexLock lock(&mu_);
  if (closed_) return absl::UnavailableError("server is shutting down");
  if (by_id_.count(job.id) != 0) {
    return absl::AlreadyExistsError(
        absl::StrCat("job ", job.id, " is already queued"));
  }
  if (size_ >= options_.max_queued) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the queue holds ", size_,
                     " jobs, the server's max_queued_jobs"));
  }
  auto owner_it = owners_.find(job.owner);
  const int64_t owner_queued =
      owner_it == owners_.end() ? 0 : owner_it->second.queued;
  if (owner_queued >= options_.max_queued_per_owner) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "owner '", job.owner, "' already has ", owner_queued,
        " queued jobs, the server's max_queued_per_owner"));
  }
  if (job.quota.max_queued.has_value() &&
      owner_queued >= *job.quota.max_queued) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "client '", job.owner, "' already has ", owner_queued,
        " queued jobs, its quota max_queued"));
  }
  if (owner_it == owners_.end()) {
    // A (re)joining owner starts level with the least-served owner that is
    // waiting: what it did not use while away is not owed to it.
    int64_t least = 0;
    bool any = false;
    for (const auto& [name, owner] : owners_) {
      if (!any || owner.service < least) least = owner.service;
      any = true;
    }
    owner_it = owners_.emplace(job.owner, Owner{least, 0}).first;
  }
  ++owner_it->second.queued;
  ++size_;

  const uint64_t seq = next_seq_++;
  if (job.deadline != absl::InfiniteFuture()) {
    deadlines_.emplace(std::make_pair(job.deadline, seq), job.id);
  }
  by_id_.emplace(job.id, Location{job.priority, job.owner, seq});
  const int priority = job.priority;
  std::string owner = job.owner;
  queues_[priority][owner].emplace(seq, std::move(job));
  return absl::OkStatus();
}

bool Scheduler::Remove(absl::string_view id) {
  absl::MutexLock lock(&mu_);
  auto it = by_id_.find(std::string(id));
  if (it == by_id_.end()) return false;
  const Location location = it->second;
  EraseLocked(location);
  return true;
}

const QueuedJob* Scheduler::PeekLocked() const {
  // The highest priority with a job that may run; every owner queue is
  // non-empty. An owner at its max_running quota is passed over, so its
  // jobs wait without holding up anyone else's.
  for (const auto& [priority, by_owner] : queues_) {
    const QueuedJob* best = nullptr;
    std::pair<int64_t, uint64_t> best_rank;
    for (const auto& [name, jobs] : by_owner) {
      const auto& [seq, job] = *jobs.begin();
      if (job.quota.max_running.has_value()) {
        auto taken = taken_by_owner_.find(name);
        const int64_t running =
            taken == taken_by_owner_.end() ? 0 : taken->second;
        if (running >= *job.quota.max_running) continue;
      }
      const std::pair<int64_t, uint64_t> rank(owners_.at(name).service, seq);
      if (best == nullptr || rank < best_rank) {
        best = &job;
        best_rank = rank;
      }
    }
    if (best != nullptr) return best;
  }
  return nullptr;
}

QueuedJob Scheduler::EraseLocked(const Location& location) {
  auto priority_it = queues_.find(location.priority);
  auto owner_queue_it = priority_it->second.find(location.owner);
  auto job_it = owner_queue_it->second.find(location.seq);
  QueuedJob job = std::move(job_it->second);
  owner_queue_it->second.erase(job_it);
  if (owner_queue_it->second.empty()) {
    priority_it->second.erase(owner_queue_it);
    if (priority_it->second.empty()) queues_.erase(priority_it);
  }
  if (job.deadline != absl::InfiniteFuture()) {
    deadlines_.erase(std::make_pair(job.deadline, location.seq));
  }
  by_id_.erase(job.id);
  auto owner_it = owners_.find(location.owner);
  if (--owner_it->second.queued == 0) owners_.erase(owner_it);
  --size_;
  return job;
}

std::optional<QueuedJob> Scheduler::PopNext(
    const std::function<bool(const QueuedJob&)>& accept) {
  absl::MutexLock lock(&mu_);
  const QueuedJob* next = PeekLocked();
  if (next == nullptr || !accept(*next)) return std::nullopt;
  // Charged before the job leaves, while its owner is still in owners_: the
  // charge then counts against the owner's later jobs still queued. An owner
  // whose last job this was leaves, and rejoins level with the others.
  Owner& owner = owners_.at(next->owner);
  const int64_t cost = std::max<int64_t>(next->cost, 1);
  owner.service = owner.service > std::numeric_limits<int64_t>::max() - cost
                      ? std::numeric_limits<int64_t>::max()
                      : owner.service + cost;
  const Location location = by_id_.at(next->id);
  QueuedJob job = EraseLocked(location);
  if (taken_.emplace(job.id, job.owner).second) ++taken_by_owner_[job.owner];
  return job;
}

void Scheduler::Done(absl::string_view id) {
  absl::MutexLock lock(&mu_);
  auto it = taken_.find(std::string(id));
  if (it == taken_.end()) return;
  auto owner_it = taken_by_owner_.find(it->second);
  if (owner_it != taken_by_owner_.end() && --owner_it->second <= 0) {
    taken_by_owner_.erase(owner_it);
  }
  taken_.erase(it);
}

bool Scheduler::WaitForWork(absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  // Jobs of owners at their max_running do not count: a worker would only
  // spin on them.
  auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return PeekLocked() != nullptr || closed_;
  };
  mu_.AwaitWithTimeout(absl::Condition(&ready), timeout);
  return PeekLocked() != nullptr;
}

std::vector<QueuedJob> Scheduler::TakeExpired(absl::Time now) {
  absl::MutexLock lock(&mu_);
  std::vector<QueuedJob> expired;
  while (!deadlines_.empty() && deadlines_.begin()->first.first <= now) {
    const Location location = by_id_.at(deadlines_.begin()->second);
    expired.push_back(EraseLocked(location));
  }
  return expired;
}

std::vector<QueuedJob> Scheduler::Close() {
  absl::MutexLock lock(&mu_);
  closed_ = true;
  std::vector<QueuedJob> all;
  all.reserve(size_);
  // queues_ runs highest priority first; within one, arrival order.
  for (auto& [priority, by_owner] : queues_) {
    std::vector<std::pair<uint64_t, QueuedJob*>> at_priority;
    for (auto& [name, jobs] : by_owner) {
      for (auto& [seq, job] : jobs) at_priority.emplace_back(seq, &job);
    }
    std::sort(at_priority.begin(), at_priority.end(),
              [](const auto& a, const auto& b) { return a.first < b.first; });
    for (auto& [seq, job] : at_priority) all.push_back(std::move(*job));
  }
  queues_.clear();
  owners_.clear();
  by_id_.clear();
  deadlines_.clear();
  size_ = 0;
  return all;
}

int64_t Scheduler::size() const {
  absl::MutexLock lock(&mu_);
  return size_;
}

int64_t Scheduler::QueuedFor(absl::string_view owner) const {
  absl::MutexLock lock(&mu_);
  auto it = owners_.find(owner);
  return it == owners_.end() ? 0 : it->second.queued;
}

std::map<std::string, int64_t> Scheduler::QueuedByOwner() const {
  absl::MutexLock lock(&mu_);
  std::map<std::string, int64_t> queued;
  for (const auto& [name, owner] : owners_) queued[name] = owner.queued;
  return queued;
}

std::map<int, int64_t, std::greater<int>> Scheduler::DepthByPriority() const {
  absl::MutexLock lock(&mu_);
  std::map<int, int64_t, std::greater<int>> depth;
  for (const auto& [priority, by_owner] : queues_) {
    int64_t jobs = 0;
    for (const auto& [name, queue] : by_owner) jobs += queue.size();
    depth[priority] = jobs;
  }
  return depth;
}

}  // namespace featviz::server
