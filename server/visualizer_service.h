// The featviz.v1.Visualizer service over the job engine, with the callback
// API. Every render is a job (job_manager.h) that one device's worker
// (worker.h) runs in a batched step with other jobs of the same model:
//
//   SubmitJob                queue a job; returns it (or its cached result)
//   GetJob/ListJobs          look jobs up
//   WatchJob                 stream a job's progress, then its result
//   CancelJob                cancel in any state; returns once it has ended
//   Render                   SubmitJob + WatchJob in one call; the client's
//                            cancel or deadline cancels the job
//   GetServerStats           queue, worker and cache figures
//   ListModels/GetModel      the hosted models
//   LoadModel/UnloadModel/   the model repository, while serving (admin;
//   ReloadModel              see model_registry.h)
//   UploadModel              a researcher's model, sent in chunks and
//                            published as a new version (uploader; upload.h)
//
// A running job stops within one optimisation step when it is cancelled,
// its Render client goes away, or the server's shutdown grace period ends.
#ifndef FEATVIZ_SERVER_VISUALIZER_SERVICE_H_
#define FEATVIZ_SERVER_VISUALIZER_SERVICE_H_

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "featviz/v1/featviz.grpc.pb.h"
#include "server/auth.h"
#include "server/authenticator.h"
#include "server/engine/dataset_registry.h"
#include "server/engine/job_manager.h"
#include "server/limits.h"
#include "server/engine/model_registry.h"
#include "server/render_inputs.h"
#include "server/upload.h"
#include "server/engine/unit_values_cache.h"
#include "server/engine/worker.h"

namespace featviz::server {

// Who may call, and who hears of jobs ending.
struct ServiceOptions {
  // Who is calling (authenticator.h), shared with the other services.
  // Null: open access (a single-user box): anyone who reaches the port may
  // call anything, and the owner is the request's `owner`, else the client
  // certificate's common name (mTLS), else the caller's address. Must
  // outlive the service.
  const Authenticator* authenticator = nullptr;
  // JobManagerOptions::on_end (metrics).
  std::function<void(const JobEnd&)> on_job_end;
  // The hosted datasets (--dataset_dir and uploads): MaCo's magnitude
  // spectra and the dataset(name, i) reference images of inversion and
  // caricature terms. Null: none. Must outlive the service.
  const DatasetRegistry* datasets = nullptr;
};

class VisualizerService;
using VisualizerServicePtr = std::unique_ptr<VisualizerService>;

class VisualizerService final : public v1::Visualizer::CallbackService {
 public:
  // Serves the models of `models` (which must outlive the service; requests
  // are validated against their kept summaries) within `limits`, and
  // starts one worker per device of the registry. InvalidArgument for limits
  // that make no sense (non-positive sizes).
  static absl::StatusOr<VisualizerServicePtr> Create(
      ModelRegistry* models, const Limits& limits, ServiceOptions options = {});

  // Shuts down with no grace period. The grpc::Server must have been shut
  // down first: reactors point back at the service.
  ~VisualizerService() override;

  VisualizerService(const VisualizerService&) = delete;
  VisualizerService& operator=(const VisualizerService&) = delete;

  grpc::ServerUnaryReactor* ListModels(
      grpc::CallbackServerContext* context,
      const v1::ListModelsRequest* request,
      v1::ListModelsResponse* response) override;
  grpc::ServerUnaryReactor* GetModel(grpc::CallbackServerContext* context,
                                     const v1::GetModelRequest* request,
                                     v1::Model* response) override;
  grpc::ServerWriteReactor<v1::RenderEvent>* Render(
      grpc::CallbackServerContext* context,
      const v1::RenderRequest* request) override;
  grpc::ServerUnaryReactor* SubmitJob(grpc::CallbackServerContext* context,
                                      const v1::SubmitJobRequest* request,
                                      v1::Job* response) override;
  grpc::ServerUnaryReactor* GetJob(grpc::CallbackServerContext* context,
                                   const v1::GetJobRequest* request,
                                   v1::Job* response) override;
  grpc::ServerWriteReactor<v1::RenderEvent>* WatchJob(
      grpc::CallbackServerContext* context,
      const v1::WatchJobRequest* request) override;
  grpc::ServerUnaryReactor* CancelJob(grpc::CallbackServerContext* context,
                                      const v1::CancelJobRequest* request,
                                      v1::Job* response) override;
  grpc::ServerUnaryReactor* ListJobs(grpc::CallbackServerContext* context,
                                     const v1::ListJobsRequest* request,
                                     v1::ListJobsResponse* response) override;
  grpc::ServerUnaryReactor* GetServerStats(
      grpc::CallbackServerContext* context,
      const v1::GetServerStatsRequest* request,
      v1::ServerStats* response) override;
  // The admin RPCs load files and wait for jobs: each runs on its own thread
  // so that no gRPC thread blocks.
  grpc::ServerUnaryReactor* LoadModel(grpc::CallbackServerContext* context,
                                      const v1::LoadModelRequest* request,
                                      v1::LoadModelResponse* response) override;
  grpc::ServerUnaryReactor* UnloadModel(
      grpc::CallbackServerContext* context,
      const v1::UnloadModelRequest* request,
      v1::UnloadModelResponse* response) override;
  grpc::ServerReadReactor<v1::UploadModelRequest>* UploadModel(
      grpc::CallbackServerContext* context,
      v1::UploadModelResponse* response) override;
  grpc::ServerUnaryReactor* ReloadModel(
      grpc::CallbackServerContext* context,
      const v1::ReloadModelRequest* request,
      v1::ReloadModelResponse* response) override;

  // Queues `request` for `context`'s caller exactly as SubmitJob does, for
  // services that render on a client's behalf (Circuits.FindCircuit).
  absl::StatusOr<v1::Job> SubmitRender(grpc::CallbackServerContext* context,
                                       const v1::RenderRequest& request);

  // Begins the drain: new jobs are refused with UNAVAILABLE, queued ones end
  // CANCELLED with UNAVAILABLE ("the render had not started"), running ones
  // may finish until `grace_deadline` and are then cancelled (CANCELLED,
  // "server shut down before the render finished"). Returns when no job
  // runs any more, the workers have stopped and admin calls have ended.
  void Shutdown(absl::Time grace_deadline);

  // The figures GetServerStats returns.
  EngineStats Stats() const;
  // Jobs queued and running per owner (metrics).
  std::map<std::string, JobManager::OwnerLoad> LoadByOwner() const {
    return jobs_->LoadByOwner();
  }

  const Limits& limits() const { return limits_; }
  // Bytes each client has uploaded; the Circuits service books dataset
  // uploads here too.
  UploadLedger* upload_ledger() { return &uploads_; }
  // The dataset passes the workers keep (for renders' exemplars and path
  // similarity), for the circuits service to share.
  std::shared_ptr<UnitValuesCache> unit_values() const { return unit_values_; }
  // The address clients reach this server at: job ids name it from now on
  // (JobManager::SetReplica).
  void SetReplica(std::string replica) {
    jobs_->SetReplica(std::move(replica));
  }

 private:
  friend class EventStream;

  VisualizerService(ModelRegistry* models, const Limits& limits,
                    ServiceOptions options);
  // Checks that the caller may call `method` (an admin RPC), runs `work` on
  // a thread of its own, then finishes `reactor` with its status (logged
  // with `what`).
  grpc::ServerUnaryReactor* RunAdmin(grpc::CallbackServerContext* context,
                                     absl::string_view method, std::string what,
                                     std::function<absl::Status()> work);
  // The caller of featviz.v1.Visualizer method `method` ("Render"): checked
  // against the tokens when there are any (Unauthenticated,
  // PermissionDenied), else an admin named after its certificate or address.
  absl::StatusOr<Identity> Caller(grpc::CallbackServerContext* context,
                                  absl::string_view method) const;
  // PermissionDenied unless `caller` owns `job` or is an admin.
  absl::Status CheckOwns(const Identity& caller, const JobRecord& job) const;
  absl::Status ListModelsPage(const v1::ListModelsRequest& request,
                              v1::ListModelsResponse& response) const;
  // A request that passed every check a submission makes, ready to queue.
  struct Admitted {
    RenderPlan plan;
    std::string owner;
    OwnerQuota quota;
  };
  // Checks `request` for `caller` as a submission does (validation, the
  // caller's owner name and quotas) without queueing it.
  absl::StatusOr<Admitted> Admit(const Identity& caller,
                                 const v1::RenderRequest& request);
  // Validates `request` and submits it for `context`'s caller.
  absl::StatusOr<JobRecordPtr> Submit(grpc::CallbackServerContext* context,
                                      const Identity& caller,
                                      const v1::RenderRequest& request,
                                      JobWatcherPtr watcher);
  // Logs the stats every 30 s while there is work.
  void LogStatsLoop();

  ModelRegistry& models_;
  const Limits limits_;
  const Authenticator open_access_{nullptr};
  const Authenticator& auth_;  // options.authenticator, or open_access_.
  JobManagerPtr jobs_;
  const DatasetRegistry* const datasets_;  // options.datasets; may be null.
  // datasets_->Fitting for PlanRender (empty without datasets).
  const FittingDatasets fitting_datasets_;
  // MaCo magnitudes and reference images of accepted requests.
  std::unique_ptr<RenderInputs> inputs_;
  std::vector<WorkerPtr> workers_;
  std::atomic<bool> shutting_down_{false};

  absl::Mutex admin_mu_;
  int admin_calls_ ABSL_GUARDED_BY(admin_mu_) = 0;
  UploadLedger uploads_;
  // Set once by Create, before any worker starts.
  std::shared_ptr<UnitValuesCache> unit_values_;

  absl::Mutex log_mu_;
  bool log_stop_ ABSL_GUARDED_BY(log_mu_) = false;
  std::thread log_thread_;
};

}  // namespace featviz::server

#endif  // FEATVIZ_SERVER_VISUALIZER_SERVICE_H_
