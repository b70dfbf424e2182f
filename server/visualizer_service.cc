#include "server/visualizer_service.h"

#include <malloc.h>

#include <algorithm>
#include <chrono>
#include <deque>
#include <functional>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "core/status_macros.h"
#include "core/torch_status.h"
#include "server/convert.h"
#include "spdlog/spdlog.h"

namespace featviz::server {
namespace {

// Progress events waiting for a slow reader beyond this are dropped (the
// stream stays in step order; the result is never dropped), so a client that
// does not read cannot make the server hold every preview PNG.
constexpr size_t kMaxPendingEvents = 64;
constexpr absl::Duration kStatsLogEvery = absl::Seconds(30);
// How often freed heap pages are handed back to the system (malloc_trim).
constexpr absl::Duration kTrimEvery = absl::Seconds(5);
constexpr absl::string_view kMethodPrefix = "/featviz.v1.Visualizer/";

uint64_t RandomSeed() {
  std::random_device device;
  return (static_cast<uint64_t>(device()) << 32) | device();
}

// Hears a job's end and hands it to `done`; ignores progress.
class EndWatcher final : public JobWatcher {
 public:
  explicit EndWatcher(std::function<void()> done) : done_(std::move(done)) {}
  void OnProgress(const JobProgress&) override {}
  void OnFinished(const absl::Status&, JobResultPtr) override {
    done_();
  }

 private:
  std::function<void()> done_;
};

}  // namespace

// The reactor of one Render or WatchJob call, and the job's watcher. Events
// are queued and written one at a time, each StartWrite only after the
// previous OnWriteDone; the stream ends with Finish once the job has ended
// and every queued event is written. gRPC operations are started outside
// mu_ because their reactions may run inline on the calling thread.
//
// The job manager holds the stream (as a watcher) by shared_ptr until the
// job's final call, so the object may outlive OnDone: once finished_, it
// starts no more gRPC operations and only collects late calls.
class EventStream final : public grpc::ServerWriteReactor<v1::RenderEvent>,
                          public JobWatcher {
 public:
  static EventStream* New(VisualizerService* service,
                          grpc::CallbackServerContext* context) {
    std::shared_ptr<EventStream> stream(new EventStream(service, context));
    stream->self_ = stream;
    return stream.get();
  }

  // Render: validates and submits the request, then streams the job; the
  // client's cancel or deadline cancels the job.
  void StartRender(const Identity& caller, const v1::RenderRequest& request);
  // WatchJob: streams job `id`; the client's cancel only stops watching.
  void StartWatch(const Identity& caller, const std::string& id);
  // Ends the call with `status` at once (an unauthorised caller).
  void Refuse(const absl::Status& status) {
    Begin(false, ToGrpcStatus(status));
  }

  void OnProgress(const JobProgress& progress) override;
  void OnFinished(const absl::Status& status, JobResultPtr result) override;

  void OnSendInitialMetadataDone(bool ok) override { OpDone(ok); }
  void OnWriteDone(bool ok) override { OpDone(ok); }
  void OnCancel() override;
  void OnDone() override {
    // The last reference may be the manager's; this may be deleted here.
    std::shared_ptr<EventStream> self = std::move(self_);
  }

 private:
  EventStream(VisualizerService* service, grpc::CallbackServerContext* context)
      : service_(*service), context_(context), peer_(context->peer()) {}

  // Lets Pump() start operations; `status`, when set, is the call's end.
  void Begin(bool send_metadata, std::optional<grpc::Status> status);
  // The client is gone or stopped reading: stop the job (Render) or stop
  // watching it (WatchJob).
  void LetGo(StopReason reason);
  void OpDone(bool ok);
  // Starts the next gRPC operation, if one is due and none is in flight.
  void Pump();

  VisualizerService& service_;
  grpc::CallbackServerContext* const context_;  // Valid until OnDone.
  const std::string peer_;
  std::shared_ptr<EventStream> self_;  // Until OnDone.
  bool render_ = false;                // Set before Begin(), then read only.
  JobRecordPtr job_;                   // Likewise.

  absl::Mutex mu_;
  bool started_ ABSL_GUARDED_BY(mu_) = false;
  std::deque<v1::RenderEvent> pending_ ABSL_GUARDED_BY(mu_);
  bool send_metadata_ ABSL_GUARDED_BY(mu_) = false;
  bool metadata_sent_ ABSL_GUARDED_BY(mu_) = false;
  bool op_in_flight_ ABSL_GUARDED_BY(mu_) = false;
  bool broken_ ABSL_GUARDED_BY(mu_) = false;  // A write failed.
  std::optional<grpc::Status> final_ ABSL_GUARDED_BY(mu_);
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  // The event gRPC is writing; touched only by whoever set op_in_flight_.
  v1::RenderEvent writing_;
};

// ----------------------------------------------------------- EventStream

void EventStream::StartRender(const Identity& caller,
                              const v1::RenderRequest& request) {
  render_ = true;
  absl::StatusOr<JobRecordPtr> job =
      service_.Submit(context_, caller, request, self_);
  if (!job.ok()) {
    spdlog::info("render refused model={} client={} peer={} outcome={} ({})",
                 request.model(), caller.name, peer_,
                 absl::StatusCodeToString(job.status().code()),
                 std::string(job.status().message()));
    Begin(false, ToGrpcStatus(job.status()));
    return;
  }
  job_ = *std::move(job);
  // Sent once the job is accepted, so a client can tell "accepted and
  // waiting" from "not yet looked at".
  context_->AddInitialMetadata("featviz-job-id", job_->id);
  Begin(true, std::nullopt);
}

void EventStream::StartWatch(const Identity& caller, const std::string& id) {
  absl::StatusOr<JobRecordPtr> job = service_.jobs_->Find(id);
  if (!job.ok()) {
    Begin(false, ToGrpcStatus(job.status()));
    return;
  }
  if (absl::Status owns = service_.CheckOwns(caller, **job); !owns.ok()) {
    Begin(false, ToGrpcStatus(owns));
    return;
  }
  job_ = *std::move(job);
  // Watching before the stream starts (events wait until Begin), so that
  // the initial metadata tells the client its watch is in place.
  context_->AddInitialMetadata("featviz-job-id", job_->id);
  service_.jobs_->Watch(*job_, self_);
  Begin(true, std::nullopt);
}

void EventStream::Begin(bool send_metadata,
                        std::optional<grpc::Status> status) {
  {
    absl::MutexLock lock(&mu_);
    started_ = true;
    send_metadata_ = send_metadata;
    if (status.has_value()) final_ = *std::move(status);
  }
  Pump();
}

void EventStream::OnProgress(const JobProgress& progress) {
  {
    absl::MutexLock lock(&mu_);
    if (broken_ || finished_ || pending_.size() >= kMaxPendingEvents) return;
    *pending_.emplace_back().mutable_progress() = ProgressToProto(progress);
  }
  Pump();
}

void EventStream::OnFinished(const absl::Status& status,
                             JobResultPtr result) {
  {
    absl::MutexLock lock(&mu_);
    if (final_.has_value()) return;
    if (status.ok() && result != nullptr && !broken_) {
      *pending_.emplace_back().mutable_result() = ResultToProto(*result);
    }
    final_ = ToGrpcStatus(status);
  }
  Pump();
}

void EventStream::OnCancel() {
  const bool deadline =
      context_->deadline() <= std::chrono::system_clock::now();
  LetGo(deadline ? StopReason::kDeadline : StopReason::kClient);
}

void EventStream::LetGo(StopReason reason) {
  if (job_ == nullptr) return;  // Ended before there was a job.
  if (render_) {
    // The job's end (within a step) finishes the call.
    service_.jobs_->Cancel(job_, reason);
    return;
  }
  if (service_.jobs_->Unwatch(*job_, this)) {
    {
      absl::MutexLock lock(&mu_);
      if (!final_.has_value()) {
        final_ = grpc::Status(grpc::StatusCode::CANCELLED,
                              absl::StrCat("stopped watching job ", job_->id));
      }
    }
    Pump();
  }
}

void EventStream::OpDone(bool ok) {
  {
    absl::MutexLock lock(&mu_);
    op_in_flight_ = false;
    if (!ok) broken_ = true;
  }
  // The client is gone: nothing more can reach it.
  if (!ok) LetGo(StopReason::kClient);
  Pump();
}

void EventStream::Pump() {
  enum class Op { kNone, kMetadata, kWrite, kFinish };
  Op op = Op::kNone;
  grpc::Status status;
  {
    absl::MutexLock lock(&mu_);
    if (!started_ || op_in_flight_ || finished_) return;
    if (broken_) pending_.clear();
    if (send_metadata_ && !metadata_sent_ && !broken_) {
      metadata_sent_ = true;
      op_in_flight_ = true;
      op = Op::kMetadata;
    } else if (!pending_.empty()) {
      writing_ = std::move(pending_.front());
      pending_.pop_front();
      metadata_sent_ = true;  // Goes with the first write.
      op_in_flight_ = true;
      op = Op::kWrite;
    } else if (final_.has_value()) {
      finished_ = true;
      status = *final_;
      op = Op::kFinish;
    }
  }
  // After Finish, OnDone may run at any moment: touch nothing gRPC owns.
  switch (op) {
    case Op::kMetadata:
      StartSendInitialMetadata();
      break;
    case Op::kWrite:
      StartWrite(&writing_);
      break;
    case Op::kFinish:
      Finish(status);
      break;
    case Op::kNone:
      break;
  }
}

// ----------------------------------------------------- VisualizerService

absl::StatusOr<VisualizerServicePtr> VisualizerService::Create(
    ModelRegistry* models, const Limits& limits, ServiceOptions options) {
  if (models == nullptr || models->devices().empty()) {
    return absl::InvalidArgumentError("at least one device is needed");
  }
  auto positive = [](absl::string_view name, double value) {
    return value > 0 ? absl::OkStatus()
                     : absl::InvalidArgumentError(absl::StrCat(
                           name, " must be positive, got ", value));
  };
  for (const absl::Status& status :
       {positive("max_image_side", limits.max_image_side),
        positive("max_steps", limits.max_steps),
        positive("max_batch", limits.max_batch),
        positive("max_message_bytes", limits.max_message_bytes),
        positive("default_progress_every", limits.default_progress_every),
        positive("max_batch_images", limits.max_batch_images),
        positive("max_job_records", limits.max_job_records),
        positive("default_queue_timeout_seconds",
                 limits.default_queue_timeout_seconds),
        positive("result_ttl_seconds", limits.result_ttl_seconds)}) {
    if (!status.ok()) return status;
  }
  for (const auto& [name, value] :
       {std::pair<const char*, int64_t>{"max_queued_jobs",
                                        limits.max_queued_jobs},
        {"max_queued_per_owner", limits.max_queued_per_owner},
        {"result_store_bytes", limits.result_store_bytes}}) {
    if (value < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, " must be >= 0, got ", value));
    }
  }
  // Also refuses NaN.
  if (!(limits.result_owner_share > 0 && limits.result_owner_share <= 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("result_owner_share must be in (0, 1], got ",
                     limits.result_owner_share));
  }
  VisualizerServicePtr service(
      new VisualizerService(models, limits, std::move(options)));
  // One cache of dataset passes for every device's renders (their values
  // are on the host whatever device computed them).
  service->unit_values_ = std::make_shared<UnitValuesCache>();
  const std::shared_ptr<UnitValuesCache>& unit_values = service->unit_values_;
  for (size_t device = 0; device < models->devices().size(); ++device) {
    WorkerOptions options;
    options.max_batch_images = limits.max_batch_images;
    options.step = limits.step;
    options.unit_values = unit_values;
    absl::StatusOr<WorkerPtr> worker =
        Worker::Create(device, models, service->jobs_.get(), options);
    if (!worker.ok()) return worker.status();
    service->workers_.push_back(*std::move(worker));
  }
  VisualizerService* self = service.get();
  service->log_thread_ = std::thread([self] { self->LogStatsLoop(); });
  return service;
}

namespace {

JobManagerOptions ManagerOptions(const Limits& limits,
                                 std::function<void(const JobEnd&)> on_end) {
  JobManagerOptions options;
  options.on_end = std::move(on_end);
  options.scheduler.max_queued = limits.max_queued_jobs;
  options.scheduler.max_queued_per_owner = limits.max_queued_per_owner;
  options.results.ttl = absl::Seconds(limits.result_ttl_seconds);
  options.results.max_bytes = limits.result_store_bytes;
  options.results.max_owner_share = limits.result_owner_share;
  options.default_queue_timeout =
      absl::Seconds(limits.default_queue_timeout_seconds);
  options.max_job_records = limits.max_job_records;
  return options;
}

}  // namespace

VisualizerService::VisualizerService(ModelRegistry* models,
                                     const Limits& limits,
                                     ServiceOptions options)
    : models_(*models),
      limits_(limits),
      auth_(options.authenticator != nullptr ? *options.authenticator
                                             : open_access_),
      jobs_(std::make_unique<JobManager>(
          ManagerOptions(limits, std::move(options.on_job_end)))),
      datasets_(options.datasets),
      fitting_datasets_(
          options.datasets == nullptr
              ? FittingDatasets()
              : [datasets = options.datasets](const DatasetNeed& need) {
                  return datasets->Fitting(need);
                }),
      inputs_(std::make_unique<RenderInputs>(options.datasets)) {}

absl::StatusOr<Identity> VisualizerService::Caller(
    grpc::CallbackServerContext* context, absl::string_view method) const {
  return auth_.Authenticate(context, absl::StrCat(kMethodPrefix, method));
}

absl::Status VisualizerService::CheckOwns(const Identity& caller,
                                          const JobRecord& job) const {
  return auth_.CheckOwns(caller, job.owner, job.id);
}

VisualizerService::~VisualizerService() { Shutdown(absl::Now()); }

void VisualizerService::Shutdown(absl::Time grace_deadline) {
  shutting_down_.store(true);
  jobs_->Close();
  if (!jobs_->WaitUntilNoneRunning(grace_deadline)) {
    jobs_->StopRunning(StopReason::kShutdown);
    jobs_->WaitUntilNoneRunning(absl::InfiniteFuture());
  }
  // A job taken from the queue just before it closed may have started late:
  // stopping its worker ends it.
  for (WorkerPtr& worker : workers_) worker->Stop();
  {
    // An unload waits for the jobs that hold its model: all have ended now.
    absl::MutexLock lock(&admin_mu_);
    admin_mu_.Await(absl::Condition(
        +[](int* calls) { return *calls == 0; }, &admin_calls_));
  }
  {
    absl::MutexLock lock(&log_mu_);
    log_stop_ = true;
  }
  if (log_thread_.joinable()) log_thread_.join();
}

absl::StatusOr<VisualizerService::Admitted> VisualizerService::Admit(
    const Identity& caller, const v1::RenderRequest& request) {
  if (shutting_down_.load()) {
    return absl::UnavailableError("server is shutting down");
  }
  // The plan holds the model until the job is queued: an unload in
  // between makes the job fail when it starts, never use a freed model.
  // With tokens the owner is the authenticated client: a user cannot queue
  // work under another name (and so dodge its quotas or fair share); an
  // admin may.
  Admitted admitted;
  FEATVIZ_ASSIGN_OR_RETURN(admitted.owner,
                           auth_.OwnerOf(caller, request.owner()));
  FEATVIZ_ASSIGN_OR_RETURN(admitted.plan,
                           PlanRender(request, models_, limits_, fitting_datasets_));
  RenderPlan& plan = admitted.plan;
  FEATVIZ_RETURN_IF_ERROR(inputs_->Resolve(plan));
  if (auth_.checks_tokens()) {
    const Quotas& quotas = caller.quotas;
    if (quotas.max_image_steps.has_value()) {
      const int64_t images = plan.options.param.batch;
      const int64_t steps = plan.options.steps;
      if (images * steps > *quotas.max_image_steps) {
        return absl::ResourceExhaustedError(absl::StrCat(
            "the render's ", images, " images x ", steps, " steps = ",
            images * steps, " is over client '", caller.name,
            "''s quota max_image_steps (", *quotas.max_image_steps, ")"));
      }
    }
    admitted.quota.max_queued = quotas.max_queued;
    admitted.quota.max_running = quotas.max_running;
  }
  return admitted;
}

absl::StatusOr<JobRecordPtr> VisualizerService::Submit(
    grpc::CallbackServerContext* /*context*/, const Identity& caller,
    const v1::RenderRequest& request, JobWatcherPtr watcher) {
  FEATVIZ_ASSIGN_OR_RETURN(Admitted admitted, Admit(caller, request));
  RenderPlan& plan = admitted.plan;
  if (!plan.seed.has_value()) plan.options.seed = RandomSeed();
  std::string cache_key = CacheKey(plan);
  return jobs_->Submit(std::move(plan), std::move(cache_key),
                       std::move(admitted.owner), std::move(watcher),
                       admitted.quota);
}

EngineStats VisualizerService::Stats() const {
  EngineStats stats;
  jobs_->FillStats(stats);
  const struct mallinfo2 heap = mallinfo2();
  stats.heap_in_use_bytes = static_cast<int64_t>(heap.uordblks + heap.hblkhd);
  stats.heap_held_bytes = static_cast<int64_t>(heap.arena + heap.hblkhd);
  for (const auto& [client, bytes] : uploads_.Usage()) {
    stats.uploads.push_back(EngineStats::OwnerUsage{client, 0, bytes});
  }
  const absl::Time now = absl::Now();
  for (const WorkerPtr& worker : workers_) {
    stats.devices.push_back(worker->Stats(now));
  }
  stats.model_memory = models_.MemoryStats();
  if (datasets_ != nullptr) {
    const DatasetMemory memory = datasets_->Memory();
    stats.datasets = memory.datasets;
    stats.dataset_bytes = memory.bytes;
    stats.dataset_budget_bytes = memory.budget_bytes;
  }
  return stats;
}

void VisualizerService::LogStatsLoop() {
  absl::MutexLock lock(&log_mu_);
  absl::Time next_log = absl::Now() + kStatsLogEvery;
  while (!log_mu_.AwaitWithTimeout(absl::Condition(&log_stop_), kTrimEvery)) {
    // Results and records come and go in many sizes from several threads'
    // arenas; glibc keeps what they free and returns only the top of each
    // heap. Trimming hands every free page back, so that what the server
    // holds follows its budgets rather than its busiest moment.
    malloc_trim(0);
    if (absl::Now() < next_log) continue;
    next_log = absl::Now() + kStatsLogEvery;
    const EngineStats stats = Stats();
    bool busy = stats.queued_jobs > 0 || stats.running_jobs > 0;
    std::string devices;
    for (const DeviceStats& d : stats.devices) {
      busy = busy || d.steps_per_second > 0;
      absl::StrAppend(
          &devices, " ", d.device, ":{jobs=", d.running_jobs,
          " occupancy=", absl::StrFormat("%.2f", d.batch_occupancy),
          " steps/s=", absl::StrFormat("%.1f", d.steps_per_second),
          " image_steps/s=",
          absl::StrFormat("%.1f", d.image_steps_per_second), "}");
    }
    if (!busy) continue;
    spdlog::info(
        "stats queued={} running={} submitted={} succeeded={} failed={} "
        "cancelled={} expired={} cache_hits={} cache_misses={} results={} "
        "result_bytes={}{}",
        stats.queued_jobs, stats.running_jobs, stats.jobs_submitted,
        stats.jobs_succeeded, stats.jobs_failed, stats.jobs_cancelled,
        stats.jobs_expired, stats.cache_hits, stats.cache_misses,
        stats.results_stored, stats.result_bytes, devices);
  }
}

absl::Status VisualizerService::ListModelsPage(
    const v1::ListModelsRequest& request,
    v1::ListModelsResponse& response) const {
  FEATVIZ_ASSIGN_OR_RETURN(const ModelPage page,
                           models_.Page(ModelQueryFromProto(request)));
  response = ModelPageToProto(page);
  return absl::OkStatus();
}

grpc::ServerUnaryReactor* VisualizerService::ListModels(
    grpc::CallbackServerContext* context, const v1::ListModelsRequest* request,
    v1::ListModelsResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::StatusOr<Identity> caller = Caller(context, "ListModels");
  reactor->Finish(ToGrpcStatus(caller.ok()
                                   ? ListModelsPage(*request, *response)
                                   : caller.status()));
  return reactor;
}

grpc::ServerUnaryReactor* VisualizerService::GetModel(
    grpc::CallbackServerContext* context, const v1::GetModelRequest* request,
    v1::Model* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::Status status;
  if (absl::StatusOr<Identity> caller = Caller(context, "GetModel");
      !caller.ok()) {
    status = caller.status();
  } else if (request->name().empty()) {
    status = absl::InvalidArgumentError(
        absl::StrCat("name must name a hosted model; models are: ",
                     absl::StrJoin(models_.Names(), ", ")));
  } else {
    absl::StatusOr<ModelSummary> model = models_.Describe(request->name());
    if (model.ok()) {
      *response = ModelToProto(*model);
    } else {
      status = model.status();
    }
  }
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

grpc::ServerWriteReactor<v1::RenderEvent>* VisualizerService::Render(
    grpc::CallbackServerContext* context, const v1::RenderRequest* request) {
  EventStream* stream = EventStream::New(this, context);
  absl::StatusOr<Identity> caller = Caller(context, "Render");
  if (caller.ok()) {
    stream->StartRender(*caller, *request);
  } else {
    stream->Refuse(caller.status());
  }
  return stream;
}

grpc::ServerWriteReactor<v1::RenderEvent>* VisualizerService::WatchJob(
    grpc::CallbackServerContext* context, const v1::WatchJobRequest* request) {
  EventStream* stream = EventStream::New(this, context);
  absl::StatusOr<Identity> caller = Caller(context, "WatchJob");
  if (caller.ok()) {
    stream->StartWatch(*caller, request->id());
  } else {
    stream->Refuse(caller.status());
  }
  return stream;
}

grpc::ServerUnaryReactor* VisualizerService::SubmitJob(
    grpc::CallbackServerContext* context, const v1::SubmitJobRequest* request,
    v1::Job* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::StatusOr<Identity> caller = Caller(context, "SubmitJob");
  if (!caller.ok()) {
    reactor->Finish(ToGrpcStatus(caller.status()));
    return reactor;
  }
  absl::Status status;
  if (request->validate_only()) {
    // What would be queued, and nothing queued.
    absl::StatusOr<Admitted> admitted = Admit(*caller, request->request());
    if (admitted.ok()) {
      const RenderPlan& plan = admitted->plan;
      response->set_owner(admitted->owner);
      response->set_priority(plan.priority);
      response->set_model(plan.model_name);
      response->set_model_version(plan.model_version);
      response->set_model_hash(plan.model_hash);
      response->set_objective(plan.objective.ToString());
      response->set_total_steps(plan.options.steps);
    }
    reactor->Finish(ToGrpcStatus(admitted.status()));
    return reactor;
  }
  absl::StatusOr<JobRecordPtr> job =
      Submit(context, *caller, request->request(), nullptr);
  if (job.ok()) {
    *response = JobToProto(jobs_->Snapshot(**job));
  } else {
    status = job.status();
    spdlog::info("submit refused model={} client={} peer={} outcome={} ({})",
                 request->request().model(), caller->name, context->peer(),
                 absl::StatusCodeToString(status.code()),
                 std::string(status.message()));
  }
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

absl::StatusOr<v1::Job> VisualizerService::SubmitRender(
    grpc::CallbackServerContext* context, const v1::RenderRequest& request) {
  FEATVIZ_ASSIGN_OR_RETURN(Identity caller, Caller(context, "SubmitJob"));
  FEATVIZ_ASSIGN_OR_RETURN(JobRecordPtr job,
                           Submit(context, caller, request, nullptr));
  return JobToProto(jobs_->Snapshot(*job));
}

grpc::ServerUnaryReactor* VisualizerService::GetJob(
    grpc::CallbackServerContext* context, const v1::GetJobRequest* request,
    v1::Job* response) {
  return AuthenticatedUnary(
      auth_, context, absl::StrCat(kMethodPrefix, "GetJob"),
      [&](const Identity& caller) -> absl::Status {
        FEATVIZ_ASSIGN_OR_RETURN(JobRecordPtr job, jobs_->Find(request->id()));
        FEATVIZ_RETURN_IF_ERROR(CheckOwns(caller, *job));
        const JobSnapshot snapshot = jobs_->Snapshot(*job);
        v1::Job out = JobToProto(snapshot);
        if (request->include_result() &&
            snapshot.state == JobState::kSucceeded) {
          FEATVIZ_ASSIGN_OR_RETURN(JobResultPtr result, jobs_->Result(*job));
          *out.mutable_result() = ResultToProto(*result);
        }
        *response = std::move(out);
        return absl::OkStatus();
      });
}

grpc::ServerUnaryReactor* VisualizerService::CancelJob(
    grpc::CallbackServerContext* context, const v1::CancelJobRequest* request,
    v1::Job* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::StatusOr<Identity> caller = Caller(context, "CancelJob");
  if (!caller.ok()) {
    reactor->Finish(ToGrpcStatus(caller.status()));
    return reactor;
  }
  absl::StatusOr<JobRecordPtr> found = jobs_->Find(request->id());
  if (!found.ok()) {
    reactor->Finish(ToGrpcStatus(found.status()));
    return reactor;
  }
  if (absl::Status owns = CheckOwns(*caller, **found); !owns.ok()) {
    reactor->Finish(ToGrpcStatus(owns));
    return reactor;
  }
  JobRecordPtr job = *std::move(found);
  jobs_->Cancel(job, StopReason::kClient);
  // Answered once the job has ended: a running job stops within one step.
  JobManager* jobs = jobs_.get();
  jobs_->Watch(
      *job, std::make_shared<EndWatcher>([jobs, job, reactor, response] {
        *response = JobToProto(jobs->Snapshot(*job));
        reactor->Finish(grpc::Status::OK);
      }));
  return reactor;
}

grpc::ServerUnaryReactor* VisualizerService::ListJobs(
    grpc::CallbackServerContext* context, const v1::ListJobsRequest* request,
    v1::ListJobsResponse* response) {
  return AuthenticatedUnary(
      auth_, context, absl::StrCat(kMethodPrefix, "ListJobs"),
      [&](const Identity& caller) -> absl::Status {
        FEATVIZ_ASSIGN_OR_RETURN(JobQuery query, JobQueryFromProto(*request));
        FEATVIZ_ASSIGN_OR_RETURN(query.owner,
                                 auth_.ListScope(caller, request->owner()));
        FEATVIZ_ASSIGN_OR_RETURN(JobPage page, jobs_->List(query));
        *response = JobPageToProto(page);
        return absl::OkStatus();
      });
}

grpc::ServerUnaryReactor* VisualizerService::GetServerStats(
    grpc::CallbackServerContext* context, const v1::GetServerStatsRequest*,
    v1::ServerStats* response) {
  return AuthenticatedUnary(auth_, context,
                            absl::StrCat(kMethodPrefix, "GetServerStats"),
                            [&](const Identity&) {
                              *response = StatsToProto(Stats());
                              response->set_default_precision(
                                  core::PrecisionName(limits_.step.precision));
                              return absl::OkStatus();
                            });
}

grpc::ServerUnaryReactor* VisualizerService::RunAdmin(
    grpc::CallbackServerContext* context, absl::string_view method,
    std::string what, std::function<absl::Status()> work) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  // Admin only (auth.h's role table): checked before anything is touched.
  if (absl::StatusOr<Identity> caller = Caller(context, method); !caller.ok()) {
    reactor->Finish(ToGrpcStatus(caller.status()));
    return reactor;
  }
  {
    absl::MutexLock lock(&admin_mu_);
    if (shutting_down_.load()) {
      reactor->Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE,
                                   "server is shutting down"));
      return reactor;
    }
    ++admin_calls_;
  }
  std::thread([this, reactor, what = std::move(what), peer = context->peer(),
               work = std::move(work)] {
    const absl::Status status = core::CatchAtBoundary(what, work);
    spdlog::info("admin {} peer={} outcome={}{}", what, peer,
                 absl::StatusCodeToString(status.code()),
                 status.ok() ? ""
                             : absl::StrCat(" (", status.message(), ")"));
    reactor->Finish(ToGrpcStatus(status));
    absl::MutexLock lock(&admin_mu_);
    --admin_calls_;
  }).detach();
  return reactor;
}

grpc::ServerUnaryReactor* VisualizerService::LoadModel(
    grpc::CallbackServerContext* context, const v1::LoadModelRequest* request,
    v1::LoadModelResponse* response) {
  return RunAdmin(
      context, "LoadModel", absl::StrCat("LoadModel path='", request->path(), "'"),
      [this, request, response] {
        absl::StatusOr<ModelSummary> model = models_.Load(request->path());
        if (!model.ok()) return Prefixed("LoadModel", model.status());
        *response->mutable_model() = ModelToProto(*model);
        return absl::OkStatus();
      });
}

grpc::ServerReadReactor<v1::UploadModelRequest>* VisualizerService::UploadModel(
    grpc::CallbackServerContext* context, v1::UploadModelResponse* response) {
  absl::StatusOr<Identity> caller = Caller(context, "UploadModel");
  absl::Status refused = caller.status();
  if (refused.ok() && shutting_down_.load()) {
    refused = absl::UnavailableError("server is shutting down");
  }
  UploadContext upload;
  upload.models = &models_;
  upload.ledger = &uploads_;
  upload.max_bytes = limits_.max_upload_bytes;
  // Counted like the admin calls, so that shutdown waits for a load.
  upload.run_detached = [this](std::function<void()> work) {
    {
      absl::MutexLock lock(&admin_mu_);
      ++admin_calls_;
    }
    std::thread([this, work = std::move(work)] {
      work();
      absl::MutexLock lock(&admin_mu_);
      --admin_calls_;
    }).detach();
  };
  return StartUpload(std::move(upload), caller.ok() ? *caller : Identity{},
                     context->peer(), response, refused);
}

grpc::ServerUnaryReactor* VisualizerService::UnloadModel(
    grpc::CallbackServerContext* context,
    const v1::UnloadModelRequest* request, v1::UnloadModelResponse* response) {
  return RunAdmin(
      context, "UnloadModel",
      absl::StrCat("UnloadModel name='", request->name(), "' version='",
                   request->version(), "'"),
      [this, request, response] {
        if (request->name().empty()) {
          return absl::InvalidArgumentError(
              "UnloadModel: name must name a hosted model, got ''");
        }
        absl::StatusOr<std::vector<ModelSummary>> unloaded =
            models_.Unload(request->name(), request->version());
        if (!unloaded.ok()) return Prefixed("UnloadModel", unloaded.status());
        for (const ModelSummary& model : *unloaded) {
          *response->add_models() = ModelToProto(model);
        }
        return absl::OkStatus();
      });
}

grpc::ServerUnaryReactor* VisualizerService::ReloadModel(
    grpc::CallbackServerContext* context,
    const v1::ReloadModelRequest* request, v1::ReloadModelResponse* response) {
  return RunAdmin(
      context, "ReloadModel", absl::StrCat("ReloadModel name='", request->name(), "'"),
      [this, request, response] {
        absl::StatusOr<ModelRegistry::Changes> changes =
            models_.Reload(request->name());
        if (!changes.ok()) return Prefixed("ReloadModel", changes.status());
        for (const ModelSummary& model : changes->loaded) {
          *response->add_loaded() = ModelToProto(model);
        }
        for (const ModelSummary& model : changes->unloaded) {
          *response->add_unloaded() = ModelToProto(model);
        }
        for (std::string& failed : changes->failed) {
          response->add_failed(std::move(failed));
        }
        return absl::OkStatus();
      });
}

}  // namespace featviz::server
