#include "server/engine/worker.h"

#include <algorithm>
#include <deque>
#include <optional>
#include <utility>

#include <ATen/Parallel.h>

#include "absl/strings/str_cat.h"
#include "core/batch.h"
#include "core/torch_status.h"
#include "server/engine/engine_types.h"
#include "server/engine/trust.h"
#include "spdlog/spdlog.h"

namespace featviz::server {
namespace {

// How long an idle worker waits for work before it looks at the queue's
// deadlines again.
constexpr absl::Duration kIdleWait = absl::Milliseconds(100);
// The window of the throughput figures.
constexpr absl::Duration kStatsWindow = absl::Seconds(60);

}  // namespace

absl::StatusOr<WorkerPtr> Worker::Create(size_t device_index,
                                         const ModelRegistry* models,
                                         JobManager* jobs,
                                         WorkerOptions options) {
  if (options.max_batch_images < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max_batch_images must be >= 1, got ", options.max_batch_images));
  }
  if (device_index >= models->devices().size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("the model registry has no device ", device_index));
  }
  WorkerPtr worker(new Worker(device_index, models, jobs, options));
  Worker* self = worker.get();
  worker->thread_ = std::thread([self] { self->Loop(); });
  return worker;
}

Worker::Worker(size_t device_index, const ModelRegistry* models,
               JobManager* jobs, WorkerOptions options)
    : device_index_(device_index),
      device_(models->devices()[device_index].str()),
      models_(*models),
      jobs_(*jobs),
      options_(options),
      unit_values_(options.unit_values != nullptr
                       ? options.unit_values
                       : std::make_shared<UnitValuesCache>()),
      started_(absl::Now()),
      memory_cap_(options.max_batch_images) {}

Worker::~Worker() { Stop(); }

void Worker::Stop() {
  stop_.store(true);
  if (thread_.joinable()) thread_.join();
}

void Worker::Loop() {
  // OpenMP's thread count is per calling thread: this sets the worker's own.
  if (options_.step.intra_op_threads > 0) {
    at::set_num_threads(options_.step.intra_op_threads);
  }
  spdlog::info("device={} worker: {} intra-op threads", device_,
               at::get_num_threads());
  // Every kernel of this worker goes to its own stream (CUDA only).
  std::optional<core::WorkerStream> stream;
  try {
    stream.emplace(c10::Device(device_));
  } catch (const std::exception& e) {
    spdlog::error("device={} has no stream of its own: {}", device_, e.what());
  }
  while (!stop_.load()) {
    jobs_.ExpireQueued(absl::Now());
    // The last line of defence: Admit and Step catch LibTorch's exceptions
    // where they run it, per job; anything that still escapes ends the
    // running jobs with its message instead of the process.
    const absl::Status iteration = core::CatchAtBoundary(
        absl::StrCat("device ", device_), [this]() -> absl::Status {
          Admit();
          {
            absl::MutexLock lock(&stats_mu_);
            running_jobs_ = static_cast<int64_t>(running_.size());
          }
          if (running_.empty()) {
            ReleaseIfIdle();
            jobs_.scheduler().WaitForWork(kIdleWait);
            return absl::OkStatus();
          }
          Step();
          return absl::OkStatus();
        });
    if (!iteration.ok()) FailRunning(iteration);
  }
  // Nothing is ever dropped silently: what still runs ends here.
  for (Running& running : running_) {
    End(running,
        JobManager::StopStatus(*running.job, StopReason::kShutdown,
                               running.session->steps_done()),
        nullptr);
  }
  running_.clear();
  ReleaseIfIdle();
  absl::MutexLock lock(&stats_mu_);
  running_jobs_ = 0;
}

void Worker::FailRunning(const absl::Status& status) {
  spdlog::error("device={} failing {} running jobs: {}", device_,
                running_.size(), status.ToString());
  for (Running& running : running_) End(running, status, nullptr);
  running_.clear();
  ReleaseIfIdle();
}

void Worker::ReleaseIfIdle() {
  if (!running_.empty()) return;
  const bool was_busy = model_ != nullptr;
  stepper_.reset();
  model_.reset();
  // The host memory the steps kept (core::KeepFreedHostMemory) goes back
  // once, when the worker runs out of work.
  if (was_busy) core::ReleaseCachedMemory(c10::Device(c10::kCPU));
  batch_key_.clear();
  images_ = 0;
  memory_cap_ = options_.max_batch_images;
}

void Worker::Admit() {
  ReleaseIfIdle();
  while (!stop_.load()) {
    const std::string& batch_key = batch_key_;
    const bool empty = running_.empty();
    const int64_t images = images_;
    // Below the size that last ran out of memory, until the worker idles.
    const int64_t cap = std::min(options_.max_batch_images, memory_cap_);
    // Runs under the scheduler's lock: only reads the worker's own state and
    // the manager's records.
    std::optional<QueuedJob> next =
        jobs_.scheduler().PopNext([&](const QueuedJob& job) {
          if (empty) return true;
          return job.batch_key == batch_key && images + job.images <= cap;
        });
    if (!next.has_value()) return;
    JobRecordPtr job = jobs_.Start(*next, device_);
    if (job == nullptr) continue;
    const StopReason stop = jobs_.StopRequested(*job);
    if (stop != StopReason::kNone) {
      jobs_.Finish(*job, JobManager::StopStatus(*job, stop, 0), nullptr);
      continue;
    }
    // The version the job was accepted with, or FAILED_PRECONDITION when
    // it has been unloaded since.
    absl::StatusOr<SharedModel> model =
        models_.Acquire(job->plan.model_name, job->plan.model_version,
                        job->plan.model_hash, device_index_);
    if (!model.ok()) {
      jobs_.Finish(*job, model.status(), nullptr);
      continue;
    }
    absl::StatusOr<std::unique_ptr<core::RenderSession>> session =
        core::RenderSession::Create(**model, job->plan.objective,
                                    job->plan.options);
    if (!session.ok()) {
      jobs_.Finish(*job, session.status(), nullptr);
      continue;
    }
    if (running_.empty()) {
      model_ = *model;
      batch_key_ = next->batch_key;
      // The batch's arithmetic is its first job's: the batch key keeps
      // jobs of other precisions out.
      core::StepOptions step = options_.step;
      step.precision = job->plan.precision;
      stepper_ = std::make_unique<core::BatchStepper>(**model, step);
    }
    images_ += (*session)->batch();
    running_.push_back(Running{*std::move(model), std::move(job),
                               *std::move(session), absl::Now()});
  }
}

void Worker::DropStopped() {
  std::vector<Running> kept;
  kept.reserve(running_.size());
  for (Running& running : running_) {
    const StopReason stop = jobs_.StopRequested(*running.job);
    if (stop == StopReason::kNone) {
      kept.push_back(std::move(running));
      continue;
    }
    End(running,
        JobManager::StopStatus(*running.job, stop,
                               running.session->steps_done()),
        nullptr);
  }
  running_ = std::move(kept);
  ReleaseIfIdle();
}

void Worker::Step() {
  DropStopped();
  if (running_.empty()) return;
  std::vector<core::RenderSession*> sessions;
  sessions.reserve(running_.size());
  int64_t images = 0;
  for (Running& running : running_) {
    sessions.push_back(running.session.get());
    images += running.session->batch();
  }
  const std::vector<absl::Status> stepped = StepInGroups(sessions);
  RecordStep(absl::Now(), images);

  std::vector<Running> kept;
  kept.reserve(running_.size());
  for (size_t i = 0; i < running_.size(); ++i) {
    Running& running = running_[i];
    if (!stepped[i].ok()) {
      End(running, stepped[i], nullptr);
      continue;
    }
    // Progress, results and their conversion run LibTorch (copies, PNG
    // grids): an exception there ends this job, not the others.
    bool goes_on = false;
    const absl::Status reported = core::CatchAtBoundary(
        absl::StrCat("job ", running.job->id), [&]() -> absl::Status {
          goes_on = ReportStep(running);
          return absl::OkStatus();
        });
    if (!reported.ok()) {
      End(running, reported, nullptr);
    } else if (goes_on) {
      kept.push_back(std::move(running));
    }
  }
  running_ = std::move(kept);
  images_ = 0;
  for (const Running& running : running_) images_ += running.session->batch();
  ReleaseIfIdle();
}

bool Worker::ReportStep(Running& running) {
  core::RenderSession& session = *running.session;
  const RenderPlan& plan = running.job->plan;
  const int64_t done = session.steps_done();
  const bool watched = jobs_.Advance(*running.job, done);
  const int64_t every = plan.options.progress_every;
  if (watched && every > 0 && (done % every == 0 || session.done())) {
    absl::StatusOr<JobProgress> progress =
        MakeJobProgress(session.Progress(plan.options.progress_images),
                        plan.options.steps, plan.preview_png,
                        plan.display.composite);
    if (!progress.ok()) {
      End(running, progress.status(), nullptr);
      return false;
    }
    jobs_.Publish(*running.job, *progress);
  }
  if (!session.done()) return true;
  absl::StatusOr<core::RenderResult> result = session.Finish();
  if (!result.ok()) {
    End(running, result.status(), nullptr);
    return false;
  }
  const absl::Time now = absl::Now();
  absl::StatusOr<JobResult> host = MakeJobResult(
      *result, plan,
      absl::ToDoubleSeconds(running.start - running.job->create_time),
      absl::ToDoubleSeconds(now - running.start));
  if (!host.ok()) {
    End(running, host.status(), nullptr);
    return false;
  }
  // After the steps, on the job's own model copy; a render that does not
  // ask (plan.trust) gets nothing of it.
  if (plan.trust.asked()) {
    const absl::Status trusted =
        AddTrust(*running.model, plan, result->images, *unit_values_, *host);
    if (!trusted.ok()) {
      End(running, trusted, nullptr);
      return false;
    }
  }
  End(running, absl::OkStatus(),
      std::make_shared<const JobResult>(*std::move(host)));
  return false;
}

void Worker::End(Running& running, const absl::Status& status,
                 JobResultPtr result) {
  jobs_.Finish(*running.job, status, std::move(result));
}

void Worker::RecordStep(absl::Time now, int64_t images) {
  absl::MutexLock lock(&stats_mu_);
  ++steps_total_;
  window_.emplace_back(now, images);
  while (!window_.empty() && now - window_.front().first > kStatsWindow) {
    window_.pop_front();
  }
}

DeviceStats Worker::Stats(absl::Time now) const {
  DeviceStats stats;
  stats.device = device_;
  absl::MutexLock lock(&stats_mu_);
  stats.running_jobs = running_jobs_;
  stats.steps_total = steps_total_;
  int64_t steps = 0;
  int64_t image_steps = 0;
  for (const auto& [time, images] : window_) {
    if (now - time > kStatsWindow) continue;
    ++steps;
    image_steps += images;
  }
  // Over the last minute, or since start when that was less than a minute.
  const double seconds = std::max(
      1e-3, absl::ToDoubleSeconds(std::min(kStatsWindow, now - started_)));
  if (steps > 0) {
    stats.batch_occupancy = static_cast<double>(image_steps) / steps /
                            static_cast<double>(options_.max_batch_images);
  }
  stats.steps_per_second = steps / seconds;
  stats.image_steps_per_second = image_steps / seconds;
  return stats;
}

std::vector<absl::Status> Worker::StepInGroups(
    const std::vector<core::RenderSession*>& sessions) {
  std::vector<absl::Status> statuses(sessions.size());
  // [begin, end) ranges of `sessions`, each stepped as one batch.
  std::deque<std::pair<size_t, size_t>> groups;
  size_t begin = 0;
  int64_t images = 0;
  for (size_t i = 0; i < sessions.size(); ++i) {
    if (i > begin && images + sessions[i]->batch() > memory_cap_) {
      groups.emplace_back(begin, i);
      begin = i;
      images = 0;
    }
    images += sessions[i]->batch();
  }
  groups.emplace_back(begin, sessions.size());
  // One group: the whole batch, through the stepper's graph when on.
  bool whole = groups.size() == 1;
  while (!groups.empty()) {
    const auto [first, last] = groups.front();
    groups.pop_front();
    const std::vector<core::RenderSession*> group(sessions.begin() + first,
                                                  sessions.begin() + last);
    int64_t group_images = 0;
    for (const core::RenderSession* s : group) group_images += s->batch();
    // An exception from the step is that group's error, as a status is.
    absl::Status status = core::CatchAtBoundary(
        absl::StrCat("step on ", device_), [&] {
          return whole ? stepper_->Step(group)
                       : stepper_->StepWithoutGraph(group);
        });
    whole = false;
    if (status.ok()) continue;
    if (core::IsOutOfMemory(status)) {
      core::ReleaseCachedMemory(model_->device());
      memory_cap_ = std::max<int64_t>(
          1, std::min(memory_cap_, group_images - 1));
      if (group.size() > 1) {
        // A failed step advanced no session: both halves retry this step.
        const size_t middle = first + (last - first) / 2;
        groups.emplace_front(middle, last);
        groups.emplace_front(first, middle);
        spdlog::warn(
            "device={} a step of {} jobs ({} images) ran out of memory; "
            "retrying in halves, steps now hold at most {} images",
            device_, group.size(), group_images, memory_cap_);
        continue;
      }
      status = absl::ResourceExhaustedError(absl::StrCat(
          "the render does not fit in the memory of ", device_,
          " even alone (", group_images, " images): ", status.message()));
    }
    spdlog::error("device={} step of {} jobs failed: {}", device_,
                  group.size(), status.ToString());
    for (size_t i = first; i < last; ++i) statuses[i] = status;
  }
  return statuses;
}

}  // namespace featviz::server
