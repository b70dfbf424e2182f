#include "server/visualizer_service.h"

#include <chrono>
#include <deque>
#include <optional>
#include <random>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "server/convert.h"
#include "spdlog/spdlog.h"

namespace featviz::server {
namespace {

// Progress events waiting for a slow reader beyond this are dropped (the
// stream stays in step order; the result is never dropped), so a client that
// does not read cannot make the server hold every preview PNG.
constexpr size_t kMaxPendingEvents = 64;
constexpr absl::string_view kPageTokenPrefix = "after:";

uint64_t RandomSeed() {
  std::random_device device;
  return (static_cast<uint64_t>(device()) << 32) | device();
}

// Why a running render was asked to stop; the first reason wins.
enum class StopReason : int { kNone, kClient, kDeadline, kShutdown };

}  // namespace

class RenderStream;

// One accepted render: the plan and the flag that stops it, run by the
// worker pool. It reports to its stream until Complete(), its last call.
class RenderJob final : public Job {
 public:
  RenderJob(RenderStream* stream, RenderPlan plan, absl::Time accepted)
      : stream_(stream), plan_(std::move(plan)), accepted_(accepted) {}

  void Run() override;
  void Drop(const absl::Status& why) override;
  void Stop() override { RequestStop(StopReason::kShutdown); }

  void RequestStop(StopReason reason) {
    int none = static_cast<int>(StopReason::kNone);
    reason_.compare_exchange_strong(none, static_cast<int>(reason));
    cancelled_.store(true);
  }
  // The status of a render stopped after `steps_done` steps.
  absl::Status StopStatus(int64_t steps_done) const;

 private:
  RenderStream* const stream_;  // Valid until stream_->Complete().
  const RenderPlan plan_;
  const absl::Time accepted_;
  // Checked by core::Render before every step.
  std::atomic<bool> cancelled_{false};
  std::atomic<int> reason_{static_cast<int>(StopReason::kNone)};
};

// The reactor of one Render call. Events from the job are queued and written
// one at a time, each StartWrite only after the previous OnWriteDone; the
// stream ends with Finish once the job is complete and every queued event
// is written. gRPC operations are started outside mu_ because their
// reactions may run inline on the calling thread.
class RenderStream final : public grpc::ServerWriteReactor<v1::RenderEvent> {
 public:
  RenderStream(VisualizerService* service, grpc::CallbackServerContext* context)
      : service_(*service),
        context_(context),
        peer_(context->peer()),
        id_(service->next_job_id_.fetch_add(1)),
        accepted_(absl::Now()) {}

  // Validates and queues the request, or finishes the call with the error.
  void Start(const v1::RenderRequest& request);

  // A progress event, written after those before it.
  void Send(v1::RenderEvent event);
  // The job's last call: the result (when OK) is written, then the status.
  void Complete(const absl::Status& status,
                std::optional<v1::RenderEvent> result, int64_t steps_done);

  void OnSendInitialMetadataDone(bool ok) override { OpDone(ok); }
  void OnWriteDone(bool ok) override { OpDone(ok); }
  void OnCancel() override;
  void OnDone() override { delete this; }

 private:
  void OpDone(bool ok);
  // Starts the next gRPC operation, if one is due and none is in flight.
  void Pump();

  VisualizerService& service_;
  grpc::CallbackServerContext* const context_;
  const std::string peer_;
  const uint64_t id_;
  const absl::Time accepted_;
  // For the log line; written by Start() before the job exists.
  std::string model_;
  std::string objective_;
  int64_t steps_ = 0;
  // Set by Start() before the job is queued, then only read.
  std::shared_ptr<RenderJob> job_;

  absl::Mutex mu_;
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

// ------------------------------------------------------------- RenderJob

absl::Status RenderJob::StopStatus(int64_t steps_done) const {
  const std::string where =
      absl::StrCat("after step ", steps_done, " of ", plan_.options.steps);
  switch (static_cast<StopReason>(reason_.load())) {
    case StopReason::kShutdown:
      return absl::CancelledError(absl::StrCat(
          "server shut down before the render finished (", where, ")"));
    case StopReason::kDeadline:
      return absl::DeadlineExceededError(
          absl::StrCat("deadline exceeded ", where));
    case StopReason::kClient:
    case StopReason::kNone:
      break;
  }
  return absl::CancelledError(
      absl::StrCat("render cancelled by the client ", where));
}

void RenderJob::Run() {
  const absl::Time start = absl::Now();
  int64_t steps_done = 0;
  absl::Status progress_error;
  auto progress = [&](const core::ProgressEvent& e) {
    steps_done = e.step;
    absl::StatusOr<v1::RenderProgress> proto =
        ProgressToProto(e, plan_.options.steps, plan_.preview_png);
    if (!proto.ok()) {
      progress_error = proto.status();
      return false;
    }
    v1::RenderEvent event;
    *event.mutable_progress() = *std::move(proto);
    stream_->Send(std::move(event));
    return true;
  };
  absl::StatusOr<core::RenderResult> result =
      cancelled_.load() ? absl::CancelledError("stopped before it started")
                        : core::Render(*plan_.model, plan_.objective,
                                       plan_.options, progress, &cancelled_);
  const double compute_seconds = absl::ToDoubleSeconds(absl::Now() - start);
  const double queue_seconds = absl::ToDoubleSeconds(start - accepted_);

  absl::Status status;
  std::optional<v1::RenderEvent> event;
  if (result.ok()) {
    steps_done = result->steps;
    absl::StatusOr<v1::RenderResult> proto =
        ResultToProto(*result, plan_, queue_seconds, compute_seconds);
    if (proto.ok()) {
      event.emplace();
      *event->mutable_result() = *std::move(proto);
    } else {
      status = proto.status();
    }
  } else if (!progress_error.ok()) {
    status = progress_error;
  } else if (absl::IsCancelled(result.status()) && cancelled_.load()) {
    status = StopStatus(steps_done);
  } else {
    status = result.status();
  }
  stream_->Complete(status, std::move(event), steps_done);
}

void RenderJob::Drop(const absl::Status& why) {
  stream_->Complete(why, std::nullopt, 0);
}

// ---------------------------------------------------------- RenderStream

void RenderStream::Start(const v1::RenderRequest& request) {
  model_ = request.model();
  objective_ = request.has_objective_tree()
                   ? absl::StrCat("<tree of ",
                                  request.objective_tree().terms_size(),
                                  " terms>")
                   : request.objective_text();
  steps_ = request.optimizer().steps();
  if (service_.shutting_down_.load()) {
    Complete(absl::UnavailableError("server is shutting down"), std::nullopt,
             0);
    return;
  }
  absl::StatusOr<RenderPlan> plan =
      PlanRender(request, service_.models_, service_.limits_);
  if (!plan.ok()) {
    Complete(plan.status(), std::nullopt, 0);
    return;
  }
  objective_ = plan->objective.ToString();
  steps_ = plan->options.steps;
  if (!plan->seed.has_value()) plan->options.seed = RandomSeed();
  // Sent once the render is queued, so a client can tell "accepted and
  // waiting" from "not yet looked at".
  context_->AddInitialMetadata("featviz-job-id", absl::StrCat(id_));
  job_ = std::make_shared<RenderJob>(this, *std::move(plan), accepted_);
  const absl::Status queued = service_.queue_->Submit(job_);
  if (!queued.ok()) {
    job_.reset();
    Complete(queued, std::nullopt, 0);
    return;
  }
  {
    absl::MutexLock lock(&mu_);
    send_metadata_ = true;
  }
  Pump();
}

void RenderStream::Send(v1::RenderEvent event) {
  {
    absl::MutexLock lock(&mu_);
    if (broken_ || pending_.size() >= kMaxPendingEvents) return;
    pending_.push_back(std::move(event));
  }
  Pump();
}

void RenderStream::Complete(const absl::Status& status,
                            std::optional<v1::RenderEvent> result,
                            int64_t steps_done) {
  spdlog::info(
      "render job={} model={} objective=\"{}\" steps={}/{} seconds={:.3f} "
      "outcome={} peer={}",
      id_, model_, objective_, steps_done, steps_,
      absl::ToDoubleSeconds(absl::Now() - accepted_),
      status.ok() ? std::string("OK")
                  : absl::StrCat(absl::StatusCodeToString(status.code()),
                                 " (", status.message(), ")"),
      peer_);
  {
    absl::MutexLock lock(&mu_);
    if (result.has_value() && !broken_) pending_.push_back(*std::move(result));
    final_ = ToGrpcStatus(status);
  }
  Pump();
}

void RenderStream::OnCancel() {
  if (job_ == nullptr) return;  // Finished before anything was queued.
  const bool deadline = context_->deadline() <= std::chrono::system_clock::now();
  job_->RequestStop(deadline ? StopReason::kDeadline : StopReason::kClient);
  // A job still waiting gives its place back at once.
  if (service_.queue_->Remove(job_.get())) {
    Complete(job_->StopStatus(0), std::nullopt, 0);
  }
}

void RenderStream::OpDone(bool ok) {
  {
    absl::MutexLock lock(&mu_);
    op_in_flight_ = false;
    if (!ok) broken_ = true;
  }
  // The client is gone: nothing more can reach it, so stop the work.
  if (!ok && job_ != nullptr) job_->RequestStop(StopReason::kClient);
  Pump();
}

void RenderStream::Pump() {
  enum class Op { kNone, kMetadata, kWrite, kFinish };
  Op op = Op::kNone;
  grpc::Status status;
  {
    absl::MutexLock lock(&mu_);
    if (op_in_flight_ || finished_) return;
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
  // After Finish, OnDone may delete this at any moment: touch nothing.
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
    const ModelRegistry* models, const Limits& limits) {
  auto positive = [](absl::string_view name, int64_t value) {
    return value >= 1 ? absl::OkStatus()
                      : absl::InvalidArgumentError(absl::StrCat(
                            name, " must be >= 1, got ", value));
  };
  for (const absl::Status& status :
       {positive("max_image_side", limits.max_image_side),
        positive("max_steps", limits.max_steps),
        positive("max_batch", limits.max_batch),
        positive("max_message_bytes", limits.max_message_bytes),
        positive("max_concurrent_renders", limits.max_concurrent_renders),
        positive("default_progress_every", limits.default_progress_every)}) {
    if (!status.ok()) return status;
  }
  if (limits.max_queued_renders < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max_queued_renders must be >= 0, got ", limits.max_queued_renders));
  }
  absl::StatusOr<JobQueuePtr> queue =
      JobQueue::Create(limits.max_concurrent_renders, limits.max_queued_renders);
  if (!queue.ok()) return queue.status();
  return VisualizerServicePtr(
      new VisualizerService(models, limits, *std::move(queue)));
}

VisualizerService::VisualizerService(const ModelRegistry* models,
                                     const Limits& limits, JobQueuePtr queue)
    : models_(*models), limits_(limits), queue_(std::move(queue)) {}

VisualizerService::~VisualizerService() { Shutdown(absl::Now()); }

void VisualizerService::Shutdown(absl::Time grace_deadline) {
  shutting_down_.store(true);
  queue_->Drain(grace_deadline,
                absl::UnavailableError(
                    "server is shutting down; the render had not started"));
}

absl::Status VisualizerService::ListModelsPage(
    const v1::ListModelsRequest& request,
    v1::ListModelsResponse& response) const {
  if (request.page_size() < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "page_size must be >= 0 (0 means all), got ", request.page_size()));
  }
  std::string after;
  if (!request.page_token().empty()) {
    std::string decoded;
    absl::string_view rest;
    if (!absl::WebSafeBase64Unescape(request.page_token(), &decoded) ||
        !absl::StartsWith(decoded, kPageTokenPrefix)) {
      return absl::InvalidArgumentError(
          absl::StrCat("page_token '", request.page_token(),
                       "' is not a token this server issued"));
    }
    rest = decoded;
    rest.remove_prefix(kPageTokenPrefix.size());
    after = std::string(rest);
  }
  for (const v1::Model* model : models_.List()) {
    if (!after.empty() && model->name() <= after) continue;
    if (request.page_size() > 0 &&
        response.models_size() == request.page_size()) {
      response.set_next_page_token(absl::WebSafeBase64Escape(absl::StrCat(
          kPageTokenPrefix,
          response.models(response.models_size() - 1).name())));
      break;
    }
    *response.add_models() = *model;
  }
  return absl::OkStatus();
}

grpc::ServerUnaryReactor* VisualizerService::ListModels(
    grpc::CallbackServerContext* context, const v1::ListModelsRequest* request,
    v1::ListModelsResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(ToGrpcStatus(ListModelsPage(*request, *response)));
  return reactor;
}

grpc::ServerUnaryReactor* VisualizerService::GetModel(
    grpc::CallbackServerContext* context, const v1::GetModelRequest* request,
    v1::Model* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::Status status;
  if (request->name().empty()) {
    status = absl::InvalidArgumentError(
        absl::StrCat("name must name a hosted model; models are: ",
                     absl::StrJoin(models_.Names(), ", ")));
  } else {
    absl::StatusOr<const v1::Model*> model = models_.FindProto(request->name());
    if (model.ok()) {
      *response = **model;
    } else {
      status = model.status();
    }
  }
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

grpc::ServerWriteReactor<v1::RenderEvent>* VisualizerService::Render(
    grpc::CallbackServerContext* context, const v1::RenderRequest* request) {
  auto* stream = new RenderStream(this, context);
  stream->Start(*request);
  return stream;
}

}  // namespace featviz::server
