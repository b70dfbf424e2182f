#include "server/job_manager.h"

#include <openssl/evp.h>

#include <algorithm>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"
#include "spdlog/spdlog.h"

namespace featviz::server {
namespace {

constexpr int32_t kDefaultPageSize = 100;
constexpr int32_t kMaxPageSize = 1000;
constexpr absl::string_view kPageTokenPrefix = "jobs-before:";
// How often ExpireQueued also drops expired results.
constexpr absl::Duration kSweepEvery = absl::Seconds(1);

bool IsFinal(v1::JobState state) {
  return state == v1::JOB_STATE_SUCCEEDED || state == v1::JOB_STATE_FAILED ||
         state == v1::JOB_STATE_CANCELLED || state == v1::JOB_STATE_EXPIRED;
}

// Deterministic bytes of `message`: equal messages, equal bytes.
std::string DeterministicBytes(const google::protobuf::Message& message) {
  std::string bytes;
  {
    google::protobuf::io::StringOutputStream stream(&bytes);
    google::protobuf::io::CodedOutputStream coded(&stream);
    coded.SetSerializationDeterministic(true);
    message.SerializeToCodedStream(&coded);
  }
  return bytes;
}

std::string Sha256Hex(const std::string& bytes) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  EVP_Digest(bytes.data(), bytes.size(), digest, &length, EVP_sha256(),
             nullptr);
  return absl::BytesToHexString(absl::string_view(
      reinterpret_cast<const char*>(digest), static_cast<size_t>(length)));
}

// The result cache's key of a request: only requests that give a seed are
// reproducible, so only they have one.
std::string CacheKey(const v1::RenderRequest& request, const RenderPlan& plan) {
  if (!plan.seed.has_value()) return "";
  return absl::StrCat(
      plan.model_hash, "/",
      Sha256Hex(DeterministicBytes(CanonicalRequest(request, plan))), "/",
      *plan.seed);
}

void SetTime(absl::Time time, google::protobuf::Timestamp* out) {
  const int64_t seconds = absl::ToUnixSeconds(time);
  out->set_seconds(seconds);
  out->set_nanos(static_cast<int32_t>(
      absl::ToInt64Nanoseconds(time - absl::FromUnixSeconds(seconds))));
}

std::string Outcome(const absl::Status& status, bool cached) {
  if (status.ok()) return cached ? "OK (cached)" : "OK";
  return absl::StrCat(absl::StatusCodeToString(status.code()), " (",
                      status.message(), ")");
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

absl::StatusOr<JobRecordPtr> JobManager::Submit(
    const v1::RenderRequest& request, RenderPlan plan, std::string owner,
    JobWatcherPtr watcher, OwnerQuota quota) {
  const absl::Time now = absl::Now();
  {
    absl::MutexLock lock(&mu_);
    if (closed_) return absl::UnavailableError("server is shutting down");
  }
  std::string cache_key = CacheKey(request, plan);
  // The record outlives the job: it keeps the model's identity, never the
  // model, so that unloading it frees its memory.
  plan.model_ref.reset();
  plan.model = nullptr;
  if (!cache_key.empty()) {
    if (std::optional<std::string> id = results_.Lookup(cache_key, now)) {
      absl::StatusOr<std::shared_ptr<const v1::RenderResult>> result =
          results_.Get(*id, now);
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
  // parameterisation or image size, so they can share a step.
  queued.batch_key = absl::StrCat(job->model, "@", job->plan.model_version,
                                  "#", job->plan.model_hash);
  queued.images = images;
  queued.cost = images * steps;
  queued.quota = quota;
  const absl::Status added = scheduler_.Add(std::move(queued));
  if (!added.ok()) {
    absl::MutexLock lock(&mu_);
    records_.erase(job->seq);
    return added;
  }
  submitted_.fetch_add(1);
  return job;
}

absl::StatusOr<JobRecordPtr> JobManager::SubmitCached(
    const std::string& cached_id,
    std::shared_ptr<const v1::RenderResult> result, RenderPlan plan,
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
    job->state_ = v1::JOB_STATE_SUCCEEDED;
    job->cached_ = true;
    job->start_time_ = now;
    job->end_time_ = now;
    job->steps_done_ = job->plan.options.steps;
  }
  // Stored under the new id as well, so that the new job's result lives as
  // long as any other result (the bytes are shared, the accounting is not).
  results_.Put(job->id, result, static_cast<int64_t>(result->ByteSizeLong()),
               now);
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

absl::StatusOr<v1::Job> JobManager::Describe(const JobRecord& job,
                                             bool include_result) {
  v1::Job out;
  out.set_id(job.id);
  out.set_owner(job.owner);
  out.set_priority(job.plan.priority);
  out.set_model(job.model);
  out.set_model_version(job.plan.model_version);
  out.set_model_hash(job.plan.model_hash);
  out.set_objective(job.objective);
  out.set_total_steps(job.plan.options.steps);
  SetTime(job.create_time, out.mutable_create_time());
  {
    absl::MutexLock lock(&job.mu_);
    out.set_state(job.state_);
    out.set_steps_done(job.steps_done_);
    if (job.start_time_ != absl::InfinitePast()) {
      SetTime(job.start_time_, out.mutable_start_time());
    }
    if (job.end_time_ != absl::InfinitePast()) {
      SetTime(job.end_time_, out.mutable_end_time());
    }
    if (!job.status_.ok()) {
      out.set_error_code(static_cast<int32_t>(job.status_.code()));
      out.set_error_message(std::string(job.status_.message()));
    }
    out.set_cached(job.cached_);
    out.set_device(job.device_);
  }
  if (include_result && out.state() == v1::JOB_STATE_SUCCEEDED) {
    absl::StatusOr<std::shared_ptr<const v1::RenderResult>> result =
        results_.Get(job.id, absl::Now());
    if (!result.ok()) return result.status();
    *out.mutable_result() = **result;
  }
  return out;
}

void JobManager::Watch(JobRecord& job, JobWatcherPtr watcher) {
  v1::JobState state;
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
  if (state != v1::JOB_STATE_SUCCEEDED) {
    watcher->OnFinished(status, nullptr);
    return;
  }
  absl::StatusOr<std::shared_ptr<const v1::RenderResult>> result =
      results_.Get(job.id, absl::Now());
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
    queued = job->state_ == v1::JOB_STATE_QUEUED;
  }
  // When Remove fails a worker has just taken the job; it sees the stop
  // request when it starts it.
  if (queued && scheduler_.Remove(job->id)) {
    End(*job, v1::JOB_STATE_CANCELLED, StopStatus(*job, reason, 0), nullptr);
  }
}

absl::StatusOr<v1::ListJobsResponse> JobManager::List(
    const v1::ListJobsRequest& request) {
  if (request.page_size() < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("page_size must be >= 0 (0 means ", kDefaultPageSize,
                     "), got ", request.page_size()));
  }
  if (!v1::JobState_IsValid(request.state())) {
    return absl::InvalidArgumentError(
        absl::StrCat("state has unknown value ", request.state()));
  }
  const int32_t page_size = request.page_size() == 0
                                ? kDefaultPageSize
                                : std::min(request.page_size(), kMaxPageSize);
  uint64_t before = UINT64_MAX;
  if (!request.page_token().empty()) {
    std::string decoded;
    if (!absl::WebSafeBase64Unescape(request.page_token(), &decoded) ||
        !absl::StartsWith(decoded, kPageTokenPrefix) ||
        !absl::SimpleAtoi(absl::StripPrefix(decoded, kPageTokenPrefix),
                          &before)) {
      return absl::InvalidArgumentError(
          absl::StrCat("page_token '", request.page_token(),
                       "' is not a token this server issued"));
    }
  }
  std::vector<JobRecordPtr> page;
  bool more = false;
  {
    absl::MutexLock lock(&mu_);
    for (auto it = std::make_reverse_iterator(records_.lower_bound(before));
         it != records_.rend(); ++it) {
      const JobRecordPtr& job = it->second;
      if (!request.owner().empty() && job->owner != request.owner()) continue;
      if (request.state() != v1::JOB_STATE_UNSPECIFIED) {
        absl::MutexLock job_lock(&job->mu_);
        if (job->state_ != request.state()) continue;
      }
      if (static_cast<int32_t>(page.size()) == page_size) {
        more = true;
        break;
      }
      page.push_back(job);
    }
  }
  v1::ListJobsResponse response;
  for (const JobRecordPtr& job : page) {
    absl::StatusOr<v1::Job> described = Describe(*job, false);
    if (described.ok()) *response.add_jobs() = *std::move(described);
  }
  if (more && !page.empty()) {
    response.set_next_page_token(absl::WebSafeBase64Escape(
        absl::StrCat(kPageTokenPrefix, page.back()->seq)));
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

void JobManager::FillStats(v1::ServerStats& stats) const {
  for (const auto& [priority, jobs] : scheduler_.DepthByPriority()) {
    v1::QueueDepth* depth = stats.add_queue_depth();
    depth->set_priority(priority);
    depth->set_jobs(jobs);
  }
  stats.set_queued_jobs(scheduler_.size());
  stats.set_running_jobs(running());
  stats.set_cache_hits(cache_hits_.load());
  stats.set_cache_misses(cache_misses_.load());
  stats.set_results_stored(results_.size());
  stats.set_result_bytes(results_.bytes());
  stats.set_jobs_submitted(submitted_.load());
  stats.set_jobs_succeeded(succeeded_.load());
  stats.set_jobs_failed(failed_.load());
  stats.set_jobs_cancelled(cancelled_.load());
  stats.set_jobs_expired(expired_.load());
}

// ------------------------------------------------------------ workers

void JobManager::ExpireQueued(absl::Time now) {
  for (const QueuedJob& queued : scheduler_.TakeExpired(now)) {
    absl::StatusOr<JobRecordPtr> job = Find(queued.id);
    if (!job.ok()) continue;
    End(**job, v1::JOB_STATE_EXPIRED,
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
    if (job->state_ != v1::JOB_STATE_QUEUED) {
      scheduler_.Done(queued.id);
      return nullptr;
    }
    job->state_ = v1::JOB_STATE_RUNNING;
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

void JobManager::Publish(JobRecord& job, const v1::RenderProgress& progress) {
  std::vector<JobWatcherPtr> watchers;
  {
    absl::MutexLock lock(&job.mu_);
    watchers = job.watchers_;
  }
  for (const JobWatcherPtr& watcher : watchers) watcher->OnProgress(progress);
}

void JobManager::Finish(JobRecord& job, const absl::Status& status,
                        std::shared_ptr<const v1::RenderResult> result) {
  if (status.ok() && result != nullptr) {
    const absl::Time now = absl::Now();
    results_.Put(job.id, result, static_cast<int64_t>(result->ByteSizeLong()),
                 now);
    if (!job.cache_key.empty()) results_.Remember(job.cache_key, job.id);
    End(job, v1::JOB_STATE_SUCCEEDED, status, std::move(result));
    return;
  }
  const absl::Status error =
      status.ok() ? absl::InternalError("job ended without a result") : status;
  const bool stopped = StopRequested(job) != StopReason::kNone;
  End(job, stopped ? v1::JOB_STATE_CANCELLED : v1::JOB_STATE_FAILED, error,
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
    End(**job, v1::JOB_STATE_CANCELLED,
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

void JobManager::End(JobRecord& job, v1::JobState state,
                     const absl::Status& status,
                     std::shared_ptr<const v1::RenderResult> result) {
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
    if (state == v1::JOB_STATE_SUCCEEDED)
      job.steps_done_ = job.plan.options.steps;
    steps_done = job.steps_done_;
    device = job.device_;
    watchers.swap(job.watchers_);
  }
  switch (state) {
    case v1::JOB_STATE_SUCCEEDED:
      succeeded_.fetch_add(1);
      break;
    case v1::JOB_STATE_FAILED:
      failed_.fetch_add(1);
      break;
    case v1::JOB_STATE_EXPIRED:
      expired_.fetch_add(1);
      break;
    default:
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
  absl::MutexLock lock(&mu_);
  records_[job->seq] = job;
}

void JobManager::Retire(const JobRecord& job) {
  absl::MutexLock lock(&mu_);
  finished_.push_back(job.seq);
  while (static_cast<int64_t>(records_.size()) > options_.max_job_records &&
         !finished_.empty()) {
    records_.erase(finished_.front());
    finished_.pop_front();
  }
}

}  // namespace featviz::server
