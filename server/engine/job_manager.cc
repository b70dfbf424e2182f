#include "server/engine/job_manager.h"

#include <algorithm>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "server/engine/heap_bytes.h"
#include "server/engine/page_token.h"
#include "spdlog/spdlog.h"

namespace featviz::server {
namespace {

constexpr int32_t kDefaultPageSize = 100;
constexpr int32_t kMaxPageSize = 1000;
// ListJobs pages run from the newest job down: a token holds the sequence
// number of the last job listed.
constexpr absl::string_view kPageList = "jobs";
// How often ExpireQueued also drops expired results.
constexpr absl::Duration kSweepEvery = absl::Seconds(1);

std::string Outcome(const absl::Status& status, bool cached) {
  if (status.ok()) return cached ? "OK (cached)" : "OK";
  return absl::StrCat(absl::StatusCodeToString(status.code()), " (",
                      status.message(), ")");
}

// The heap a job record takes once its job is over (its tensors dropped),
// with its entries in records_ and finished_: an estimate from the sizes of
// what it holds (server/engine/heap_bytes.h).
int64_t RecordBytes(const JobRecord& job) {
  int64_t total = HeapChunk(static_cast<int64_t>(sizeof(JobRecord)) + 16) +
                  MapNodeBytes(sizeof(std::pair<const uint64_t, JobRecordPtr>)) +
                  static_cast<int64_t>(sizeof(uint64_t));
  for (const std::string* text :
       {&job.id, &job.owner, &job.model, &job.objective, &job.cache_key,
        &job.plan.model_name, &job.plan.model_version, &job.plan.model_hash,
        &job.plan.linear_mode, &job.plan.owner,
        &job.plan.options.param.magnitude_source}) {
    total += HeapBytes(*text);
  }
  const auto& terms = job.plan.objective.terms();
  total += HeapChunk(
      static_cast<int64_t>(terms.capacity() * sizeof(terms.front())));
  for (const auto& weighted : terms) {
    const core::Term& term = weighted.term;
    total += HeapBytes(term.layer) + HeapBytes(term.output) +
             HeapBytes(term.vector) + HeapBytes(term.reference.dataset);
  }
  if (job.plan.options.transforms.has_value()) {
    total += HeapBytes(*job.plan.options.transforms);
    for (const core::Transform& t : *job.plan.options.transforms) {
      total += HeapBytes(t.values);
    }
  }
  total += HeapBytes(job.plan.display.composite) +
           HeapBytes(job.plan.display.names);
  return total;
}

}  // namespace

JobRecord::JobRecord(uint64_t seq, std::string id, std::string owner,
                     RenderPlan plan, std::string cache_key,
                     absl::Time create_time, absl::Time queue_deadline)
    : seq(seq),
      id(std::move(id)),
      owner(std::move(owner)),
      plan(std::move(plan)),
      model(this->plan.model_name),
      objective(this->plan.objective.ToString()),
      cache_key(std::move(cache_key)),
      create_time(create_time),
      queue_deadline(queue_deadline) {}

JobManager::JobManager(JobManagerOptions options)
    : options_(options),
      scheduler_(options.scheduler),
      results_(options.results) {}

// ------------------------------------------------------------ clients

absl::StatusOr<JobRecordPtr> JobManager::Submit(RenderPlan plan,
                                                std::string cache_key,
                                                std::string owner,
                                                JobWatcherPtr watcher,
                                                OwnerQuota quota) {
  const absl::Time now = absl::Now();
  {
    absl::MutexLock lock(&mu_);
    if (closed_) return absl::UnavailableError("server is shutting down");
  }
  // A model whose images' bits depend on their batch in this precision
  // (ModelSummary::batch_variance) never shares one: a job's pictures do
  // not depend on who else is rendering.
  bool runs_alone = false;
  if (plan.model != nullptr) {
    const auto it = plan.model->batch_variance.find(plan.precision);
    runs_alone = it != plan.model->batch_variance.end() && !it->second.empty();
  }
  // The record outlives the job: it keeps the model's identity, never the
  // model, so that unloading it frees its memory.
  plan.model_ref.reset();
  plan.model = nullptr;
  if (!cache_key.empty()) {
    if (std::optional<std::string> id = results_.Lookup(cache_key, now)) {
      absl::StatusOr<JobResultPtr> result = results_.Get(*id, now);
      if (result.ok()) {
        return SubmitCached(*id, *std::move(result), std::move(plan),
                            std::move(owner), std::move(cache_key), watcher);
      }
    }
    cache_misses_.fetch_add(1);
  }

  absl::Duration timeout = options_.default_queue_timeout;
  if (plan.queue_timeout.has_value()) {
    timeout = std::min(timeout, *plan.queue_timeout);
  }
  const int64_t images = plan.options.param.batch;
  const int64_t steps = plan.options.steps;
  JobRecordPtr job;
  {
    absl::MutexLock lock(&mu_);
    const uint64_t seq = next_seq_++;
    job = std::make_shared<JobRecord>(seq, JobId(seq), std::move(owner),
                                      std::move(plan), std::move(cache_key),
                                      now, now + timeout);
  }
  if (watcher != nullptr) {
    absl::MutexLock lock(&job->mu_);
    job->watchers_.push_back(watcher);
  }
  // In the registry before the queue: a worker may take it at once.
  AddRecord(job);
  QueuedJob queued;
  queued.id = job->id;
  queued.owner = job->owner;
  queued.priority = job->plan.priority;
  queued.enqueue_time = now;
  queued.deadline = job->queue_deadline;
  // Sessions of one model take inputs of the model's size, whatever their
  // parameterisation or image size, so they can share a step, if they ask
  // for the same arithmetic.
  queued.batch_key = absl::StrCat(job->model, "@", job->plan.model_version,
                                  "#", job->plan.model_hash, "/",
                                  core::PrecisionName(job->plan.precision));
  if (runs_alone) absl::StrAppend(&queued.batch_key, "/alone:", job->id);
  queued.images = images;
  queued.cost = images * steps;
  queued.quota = quota;
  const absl::Status added = scheduler_.Add(std::move(queued));
  if (!added.ok()) {
    record_bytes_.fetch_sub(RecordBytes(*job));
    absl::MutexLock lock(&mu_);
    records_.erase(job->seq);
    return added;
  }
  submitted_.fetch_add(1);
  return job;
}

absl::StatusOr<JobRecordPtr> JobManager::SubmitCached(
    const std::string& cached_id, JobResultPtr result, RenderPlan plan,
    std::string owner, std::string cache_key, const JobWatcherPtr& watcher) {
  const absl::Time now = absl::Now();
  JobRecordPtr job;
  {
    absl::MutexLock lock(&mu_);
    const uint64_t seq = next_seq_++;
    job = std::make_shared<JobRecord>(seq, JobId(seq), std::move(owner),
                                      std::move(plan), std::move(cache_key),
                                      now, now);
  }
  {
    absl::MutexLock lock(&job->mu_);
    job->state_ = JobState::kSucceeded;
    job->cached_ = true;
    job->start_time_ = now;
    job->end_time_ = now;
    job->steps_done_ = job->plan.options.steps;
  }
  // Stored under the new id as well, so that the new job's result lives as
  // long as any other result (the bytes are shared, the accounting is not).
  results_.Put(job->id, job->owner, result, result->bytes(), now);
  AddRecord(job);
  Retire(*job);
  cache_hits_.fetch_add(1);
  submitted_.fetch_add(1);
  succeeded_.fetch_add(1);
  spdlog::info(
      "job={} owner={} model={} objective=\"{}\" steps={}/{} seconds=0.000 "
      "outcome={} device=- cached_from={}",
      job->id, job->owner, job->model, job->objective, job->plan.options.steps,
      job->plan.options.steps, Outcome(absl::OkStatus(), true), cached_id);
  if (watcher != nullptr) watcher->OnFinished(absl::OkStatus(), result);
  return job;
}

void JobManager::SetReplica(std::string replica) {
  absl::MutexLock lock(&mu_);
  replica_ = std::move(replica);
}

std::string JobManager::JobId(uint64_t seq) const {
  if (replica_.empty()) return absl::StrCat(seq);
  return absl::StrCat(seq, "@", replica_);
}

absl::StatusOr<JobRecordPtr> JobManager::Find(absl::string_view id) const {
  const size_t at = id.find('@');
  if (at != absl::string_view::npos) {
    std::string replica;
    {
      absl::MutexLock lock(&mu_);
      replica = replica_;
    }
    if (id.substr(at + 1) != replica) {
      // A client that balances over replicas sends a job's calls to the
      // replica its id names; saying which one helps when it did not.
      return absl::NotFoundError(absl::StrCat(
          "job '", id, "' is held by replica ", id.substr(at + 1),
          ", not by this one (",
          replica.empty() ? "no --advertise_address" : replica, ")"));
    }
  }
  uint64_t seq = 0;
  if (absl::SimpleAtoi(id.substr(0, at), &seq)) {
    absl::MutexLock lock(&mu_);
    auto it = records_.find(seq);
    if (it != records_.end() && it->second->id == id) return it->second;
  }
  return absl::NotFoundError(absl::StrCat("job '", id, "' not found"));
}

JobSnapshot JobManager::Snapshot(const JobRecord& job) const {
  JobSnapshot out;
  out.id = job.id;
  out.owner = job.owner;
  out.priority = job.plan.priority;
  out.model = job.model;
  out.model_version = job.plan.model_version;
  out.model_hash = job.plan.model_hash;
  out.objective = job.objective;
  out.total_steps = job.plan.options.steps;
  out.create_time = job.create_time;
  absl::MutexLock lock(&job.mu_);
  out.state = job.state_;
  out.steps_done = job.steps_done_;
  if (job.start_time_ != absl::InfinitePast()) out.start_time = job.start_time_;
  if (job.end_time_ != absl::InfinitePast()) out.end_time = job.end_time_;
  out.status = job.status_;
  out.cached = job.cached_;
  out.device = job.device_;
  return out;
}

absl::StatusOr<JobResultPtr> JobManager::Result(const JobRecord& job) {
  JobState state;
  {
    absl::MutexLock lock(&job.mu_);
    state = job.state_;
  }
  if (state != JobState::kSucceeded) {
    return absl::FailedPreconditionError(
        absl::StrCat("job ", job.id, " is ", JobStateName(state),
                     "; only a succeeded job has a result"));
  }
  return results_.Get(job.id, absl::Now());
}

void JobManager::Watch(JobRecord& job, JobWatcherPtr watcher) {
  JobState state;
  absl::Status status;
  {
    absl::MutexLock lock(&job.mu_);
    state = job.state_;
    status = job.status_;
    if (!IsFinal(state)) {
      job.watchers_.push_back(std::move(watcher));
      return;
    }
  }
  if (state != JobState::kSucceeded) {
    watcher->OnFinished(status, nullptr);
    return;
  }
  absl::StatusOr<JobResultPtr> result = results_.Get(job.id, absl::Now());
  if (result.ok()) {
    watcher->OnFinished(absl::OkStatus(), *result);
  } else {
    watcher->OnFinished(result.status(), nullptr);
  }
}

bool JobManager::Unwatch(JobRecord& job, const JobWatcher* watcher) {
  absl::MutexLock lock(&job.mu_);
  std::vector<JobWatcherPtr>& watchers = job.watchers_;
  auto it =
      std::find_if(watchers.begin(), watchers.end(),
                   [&](const JobWatcherPtr& w) { return w.get() == watcher; });
  if (it == watchers.end()) return false;
  watchers.erase(it);
  return true;
}

void JobManager::Cancel(const JobRecordPtr& job, StopReason reason) {
  bool queued = false;
  {
    absl::MutexLock lock(&job->mu_);
    if (IsFinal(job->state_)) return;
    if (job->stop_ == StopReason::kNone) job->stop_ = reason;
    queued = job->state_ == JobState::kQueued;
  }
  // When Remove fails a worker has just taken the job; it sees the stop
  // request when it starts it.
  if (queued && scheduler_.Remove(job->id)) {
    End(*job, JobState::kCancelled, StopStatus(*job, reason, 0), nullptr);
  }
}

absl::StatusOr<JobPage> JobManager::List(const JobQuery& query) const {
  if (query.page_size < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("page_size must be >= 0 (0 means ", kDefaultPageSize,
                     "), got ", query.page_size));
  }
  const int32_t page_size = query.page_size == 0
                                ? kDefaultPageSize
                                : std::min(query.page_size, kMaxPageSize);
  uint64_t before = UINT64_MAX;
  if (!query.page_token.empty()) {
    absl::StatusOr<std::string> position =
        PagePosition(kPageList, query.page_token);
    if (!position.ok()) return position.status();
    if (!absl::SimpleAtoi(*position, &before)) {
      return absl::InvalidArgumentError(
          absl::StrCat("page_token '", query.page_token.substr(0, 80),
                       "' is not a token this server issued for ", kPageList));
    }
  }
  std::vector<JobRecordPtr> page;
  bool more = false;
  {
    absl::MutexLock lock(&mu_);
    for (auto it = std::make_reverse_iterator(records_.lower_bound(before));
         it != records_.rend(); ++it) {
      const JobRecordPtr& job = it->second;
      if (!query.owner.empty() && job->owner != query.owner) continue;
      if (query.state.has_value()) {
        absl::MutexLock job_lock(&job->mu_);
        if (job->state_ != *query.state) continue;
      }
      if (static_cast<int32_t>(page.size()) == page_size) {
        more = true;
        break;
      }
      page.push_back(job);
    }
  }
  JobPage response;
  for (const JobRecordPtr& job : page) response.jobs.push_back(Snapshot(*job));
  if (more && !page.empty()) {
    response.next_page_token =
        PageToken(kPageList, absl::StrCat(page.back()->seq));
  }
  return response;
}

std::map<std::string, JobManager::OwnerLoad> JobManager::LoadByOwner() const {
  std::map<std::string, OwnerLoad> load;
  for (const auto& [owner, queued] : scheduler_.QueuedByOwner()) {
    load[owner].queued = queued;
  }
  absl::MutexLock lock(&mu_);
  for (const auto& [seq, job] : running_) ++load[job->owner].running;
  return load;
}

void JobManager::FillStats(EngineStats& stats) const {
  stats.queue_depth = scheduler_.DepthByPriority();
  stats.queued_jobs = scheduler_.size();
  stats.running_jobs = running();
  stats.cache_hits = cache_hits_.load();
  stats.cache_misses = cache_misses_.load();
  const ResultStoreStats results = results_.Stats();
  stats.results_stored = results.results;
  stats.result_bytes = results.bytes + results.bookkeeping_bytes;
  stats.result_max_bytes = results.max_bytes;
  stats.result_owner_max_bytes = results.owner_max_bytes;
  for (int why = 0; why < kResultRemovals; ++why) {
    stats.results_removed[ResultRemovalName(static_cast<ResultRemoval>(why))] =
        results.removed[why];
  }
  for (const OwnerResults& owner : results.owners) {
    stats.result_owners.push_back(
        EngineStats::OwnerUsage{owner.owner, owner.results, owner.bytes});
  }
  {
    absl::MutexLock lock(&mu_);
    stats.job_records = static_cast<int64_t>(records_.size());
  }
  stats.job_record_bytes = record_bytes_.load();
  stats.max_job_records = options_.max_job_records;
  stats.job_records_forgotten = records_forgotten_.load();
  stats.jobs_submitted = submitted_.load();
  stats.jobs_succeeded = succeeded_.load();
  stats.jobs_failed = failed_.load();
  stats.jobs_cancelled = cancelled_.load();
  stats.jobs_expired = expired_.load();
}

// ------------------------------------------------------------ workers

void JobManager::ExpireQueued(absl::Time now) {
  for (const QueuedJob& queued : scheduler_.TakeExpired(now)) {
    absl::StatusOr<JobRecordPtr> job = Find(queued.id);
    if (!job.ok()) continue;
    End(**job, JobState::kExpired,
        absl::DeadlineExceededError(absl::StrFormat(
            "job %s waited %.1f s in the queue, past its queue deadline",
            queued.id, absl::ToDoubleSeconds(now - (*job)->create_time))),
        nullptr);
  }
  bool sweep = false;
  {
    absl::MutexLock lock(&mu_);
    if (now - last_sweep_ >= kSweepEvery) {
      last_sweep_ = now;
      sweep = true;
    }
  }
  if (sweep) results_.Sweep(now);
}

JobRecordPtr JobManager::Start(const QueuedJob& queued,
                               const std::string& device) {
  absl::StatusOr<JobRecordPtr> found = Find(queued.id);
  if (!found.ok()) {
    scheduler_.Done(queued.id);
    return nullptr;
  }
  JobRecordPtr job = *std::move(found);
  {
    absl::MutexLock lock(&job->mu_);
    if (job->state_ != JobState::kQueued) {
      scheduler_.Done(queued.id);
      return nullptr;
    }
    job->state_ = JobState::kRunning;
    job->start_time_ = absl::Now();
    job->device_ = device;
  }
  absl::MutexLock lock(&mu_);
  running_[job->seq] = job;
  return job;
}

StopReason JobManager::StopRequested(const JobRecord& job) const {
  absl::MutexLock lock(&job.mu_);
  return job.stop_;
}

absl::Status JobManager::StopStatus(const JobRecord& job, StopReason reason,
                                    int64_t steps_done) {
  const std::string where =
      absl::StrCat("after step ", steps_done, " of ", job.plan.options.steps);
  switch (reason) {
    case StopReason::kShutdown:
      return absl::CancelledError(absl::StrCat(
          "server shut down before the render finished (", where, ")"));
    case StopReason::kDeadline:
      return absl::DeadlineExceededError(
          absl::StrCat("job ", job.id, ": deadline exceeded ", where));
    case StopReason::kClient:
    case StopReason::kNone:
      break;
  }
  return absl::CancelledError(
      absl::StrCat("job ", job.id, " cancelled by the client ", where));
}

bool JobManager::Advance(JobRecord& job, int64_t steps_done) {
  absl::MutexLock lock(&job.mu_);
  job.steps_done_ = steps_done;
  return !job.watchers_.empty();
}

void JobManager::Publish(JobRecord& job, const JobProgress& progress) {
  std::vector<JobWatcherPtr> watchers;
  {
    absl::MutexLock lock(&job.mu_);
    watchers = job.watchers_;
  }
  for (const JobWatcherPtr& watcher : watchers) watcher->OnProgress(progress);
}

void JobManager::Finish(JobRecord& job, const absl::Status& status,
                        JobResultPtr result) {
  if (status.ok() && result != nullptr) {
    const absl::Time now = absl::Now();
    results_.Put(job.id, job.owner, result, result->bytes(), now);
    if (!job.cache_key.empty()) results_.Remember(job.cache_key, job.id);
    End(job, JobState::kSucceeded, status, std::move(result));
    return;
  }
  const absl::Status error =
      status.ok() ? absl::InternalError("job ended without a result") : status;
  const bool stopped = StopRequested(job) != StopReason::kNone;
  End(job, stopped ? JobState::kCancelled : JobState::kFailed, error,
      nullptr);
}

// ----------------------------------------------------------- shutdown

void JobManager::Close() {
  {
    absl::MutexLock lock(&mu_);
    closed_ = true;
  }
  for (const QueuedJob& queued : scheduler_.Close()) {
    absl::StatusOr<JobRecordPtr> job = Find(queued.id);
    if (!job.ok()) continue;
    {
      absl::MutexLock lock(&(*job)->mu_);
      if ((*job)->stop_ == StopReason::kNone)
        (*job)->stop_ = StopReason::kShutdown;
    }
    End(**job, JobState::kCancelled,
        absl::UnavailableError(
            "server is shutting down; the render had not started"),
        nullptr);
  }
}

void JobManager::StopRunning(StopReason reason) {
  std::vector<JobRecordPtr> running;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [seq, job] : running_) running.push_back(job);
  }
  for (const JobRecordPtr& job : running) {
    absl::MutexLock lock(&job->mu_);
    if (job->stop_ == StopReason::kNone) job->stop_ = reason;
  }
}

bool JobManager::WaitUntilNoneRunning(absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  auto none = [this]()
                  ABSL_SHARED_LOCKS_REQUIRED(mu_) { return running_.empty(); };
  return mu_.AwaitWithDeadline(absl::Condition(&none), deadline);
}

int64_t JobManager::running() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int64_t>(running_.size());
}

// ------------------------------------------------------------ private

void JobManager::End(JobRecord& job, JobState state,
                     const absl::Status& status, JobResultPtr result) {
  const absl::Time now = absl::Now();
  std::vector<JobWatcherPtr> watchers;
  int64_t steps_done = 0;
  std::string device;
  absl::Time start_time;
  {
    absl::MutexLock lock(&job.mu_);
    if (IsFinal(job.state_)) return;
    start_time = job.start_time_;
    job.state_ = state;
    job.status_ = status;
    job.end_time_ = now;
    if (state == JobState::kSucceeded)
      job.steps_done_ = job.plan.options.steps;
    steps_done = job.steps_done_;
    device = job.device_;
    watchers.swap(job.watchers_);
  }
  // Nothing reads the plan's tensors once the job is final (the worker has
  // let go of the plan before it calls Finish), and the record outlives it.
  job.plan.options.references.clear();
  job.plan.options.param.init_image = at::Tensor();
  job.plan.options.param.magnitude = at::Tensor();
  switch (state) {
    case JobState::kSucceeded:
      succeeded_.fetch_add(1);
      break;
    case JobState::kFailed:
      failed_.fetch_add(1);
      break;
    case JobState::kExpired:
      expired_.fetch_add(1);
      break;
    case JobState::kQueued:
    case JobState::kRunning:
    case JobState::kCancelled:
      cancelled_.fetch_add(1);
      break;
  }
  {
    absl::MutexLock lock(&mu_);
    running_.erase(job.seq);
  }
  // Frees the owner's max_running slot (a no-op for a job never taken).
  scheduler_.Done(job.id);
  Retire(job);
  if (options_.on_end) {
    const bool started = start_time != absl::InfinitePast();
    options_.on_end(JobEnd{job, state, started,
                           (started ? start_time : now) - job.create_time,
                           now - job.create_time});
  }
  spdlog::info(
      "job={} owner={} model={} objective=\"{}\" steps={}/{} seconds={:.3f} "
      "outcome={} device={}",
      job.id, job.owner, job.model, job.objective, steps_done,
      job.plan.options.steps, absl::ToDoubleSeconds(now - job.create_time),
      Outcome(status, false), device.empty() ? "-" : device);
  for (const JobWatcherPtr& watcher : watchers) {
    watcher->OnFinished(status, result);
  }
}

void JobManager::AddRecord(const JobRecordPtr& job) {
  record_bytes_.fetch_add(RecordBytes(*job));
  absl::MutexLock lock(&mu_);
  records_[job->seq] = job;
}

void JobManager::Retire(const JobRecord& job) {
  std::vector<JobRecordPtr> forgotten;
  {
    absl::MutexLock lock(&mu_);
    finished_.push_back(job.seq);
    while (static_cast<int64_t>(records_.size()) > options_.max_job_records &&
           !finished_.empty()) {
      auto it = records_.find(finished_.front());
      finished_.pop_front();
      if (it == records_.end()) continue;
      forgotten.push_back(std::move(it->second));
      records_.erase(it);
    }
  }
  // A result whose job is forgotten can no longer be asked for by id; the
  // cache's keys go with it.
  for (const JobRecordPtr& record : forgotten) {
    results_.Forget(record->id);
    record_bytes_.fetch_sub(RecordBytes(*record));
    records_forgotten_.fetch_add(1);
  }
}

}  // namespace featviz::server
