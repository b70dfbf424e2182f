// One device's worker: a thread that runs jobs with continuous batching.
// It keeps a set of running jobs of one model, each a core::RenderSession,
// and loops:
//
//   1. end queued jobs past their queue deadline;
//   2. admit queued jobs, in the scheduler's fair order, while they fit:
//      any job when none runs, else a job of the same model whose images
//      keep the batch within max_batch_images;
//   3. stop the jobs asked to stop (CANCELLED within one step);
//   4. ONE core::StepTogether over all running sessions (in groups, after
//      the device has run out of memory: see below);
//   5. per job: progress events at its progress_every, and the result once
//      it has done its steps.
//
// A job joins a batch between any two steps and leaves it when done, so the
// batch stays full while work is queued. A job's images are the same whoever
// shares its steps (core/batch.h). An error of the batched step fails every
// job of that step; the worker goes on serving.
//
// Out of memory: a batched step that runs out of device memory is split in
// two halves (by job) and each is retried, recursively, after the cached
// device memory is released; the worker then keeps its batches below the
// size that failed until it next goes idle. A job that runs out of memory
// alone fails with RESOURCE_EXHAUSTED; the others go on.
//
// The worker runs on its own CUDA stream (core::WorkerStream) and copies
// results back through pinned memory (core::HostCopies).
#ifndef FEATVIZ_SERVER_ENGINE_WORKER_H_
#define FEATVIZ_SERVER_ENGINE_WORKER_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "core/device.h"
#include "core/render.h"
#include "core/step_graph.h"
#include "server/engine/job_manager.h"
#include "server/engine/model_registry.h"
#include "server/engine/unit_values_cache.h"

namespace featviz::server {

struct WorkerOptions {
  // Most images stepped together; a larger job runs alone.
  int64_t max_batch_images = 256;
  // Precision, CUDA graphs and fault injection of the batched step.
  core::StepOptions step;
  // The dataset passes of renders that ask for exemplars or path similarity
  // (RenderPlan::trust), shared by the server's workers; null: the worker's
  // own.
  std::shared_ptr<UnitValuesCache> unit_values;
};

class Worker;
using WorkerPtr = std::unique_ptr<Worker>;

class Worker {
 public:
  // Starts the worker of the registry's device number `device_index`,
  // running the jobs of `jobs` on that device's copies of `models`. A job
  // holds its model while it runs; one whose model version was unloaded
  // after it was accepted ends FAILED (FAILED_PRECONDITION). Both must
  // outlive the worker. InvalidArgument when max_batch_images < 1 or the
  // registry has no such device.
  static absl::StatusOr<WorkerPtr> Create(size_t device_index,
                                          const ModelRegistry* models,
                                          JobManager* jobs,
                                          WorkerOptions options);

  // Stop()s.
  ~Worker();

  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  // Ends the loop after the current step; jobs still running end CANCELLED
  // ("server shut down before the render finished"). Joins the thread.
  void Stop();

  const std::string& device() const { return device_; }
  // Running jobs, batch occupancy, steps per second and images x steps per
  // second over the last minute, steps since start.
  DeviceStats Stats(absl::Time now) const;

 private:
  struct Running {
    // First, so that it goes last: the session refers to the model.
    SharedModel model;
    JobRecordPtr job;
    std::unique_ptr<core::RenderSession> session;
    absl::Time start;
  };

  Worker(size_t device_index, const ModelRegistry* models, JobManager* jobs,
         WorkerOptions options);
  // Forgets the batch's model once nothing runs, so that an unloaded model
  // is freed at once.
  void ReleaseIfIdle();
  void Loop();
  // Takes queued jobs that fit into the current batch.
  void Admit();
  // Ends the running jobs asked to stop.
  void DropStopped();
  // One batched step of every running job, then progress and results.
  void Step();
  // After a step: `running`'s progress event and, once its steps are done,
  // its result. True while it goes on; false once it has ended.
  bool ReportStep(Running& running);
  // Ends every running job with `status` (an exception escaped a step).
  void FailRunning(const absl::Status& status);
  // Ends running job `i` with `status` (and `result`) and forgets it.
  void End(Running& running, const absl::Status& status,
           JobResultPtr result);
  void RecordStep(absl::Time now, int64_t images);
  // Steps `sessions` in groups below the memory cap, splitting a group that
  // runs out of memory; one status per session.
  std::vector<absl::Status> StepInGroups(
      const std::vector<core::RenderSession*>& sessions);

  const size_t device_index_;
  const std::string device_;
  const ModelRegistry& models_;
  JobManager& jobs_;
  const WorkerOptions options_;
  const std::shared_ptr<UnitValuesCache> unit_values_;
  const absl::Time started_;

  // The worker thread's own state.
  std::vector<Running> running_;
  SharedModel model_;    // Of the running jobs.
  std::string batch_key_;  // Their model's name@version#hash.
  // Steps model_'s batches (and holds its CUDA graph, when on); after
  // model_, so that it goes first.
  std::unique_ptr<core::BatchStepper> stepper_;
  int64_t images_ = 0;                  // Their images.
  // Most images a step may hold since the device last ran out of memory
  // (max_batch_images until then; reset when the worker goes idle).
  int64_t memory_cap_ = 0;

  std::atomic<bool> stop_{false};
  std::thread thread_;

  mutable absl::Mutex stats_mu_;
  // (time, images) of each step in the last minute.
  std::deque<std::pair<absl::Time, int64_t>> window_ ABSL_GUARDED_BY(stats_mu_);
  int64_t steps_total_ ABSL_GUARDED_BY(stats_mu_) = 0;
  int64_t running_jobs_ ABSL_GUARDED_BY(stats_mu_) = 0;
};

}  // namespace featviz::server

#endif  // FEATVIZ_SERVER_ENGINE_WORKER_H_
