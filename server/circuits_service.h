// The featviz.v1.Circuits service: datasets (listed, uploaded, deleted),
// activation maps, attribution, detector circuits and top dataset examples
// and unit labels (see proto/featviz/v1/circuits.proto). Analyses are forward/backward
// passes over real images; they run one at a time on the service's own
// analysis thread (not on gRPC's callback threads), on the first device's
// models, and a bounded number may wait. The renders of FindCircuit go
// through the Visualizer's job engine like any other job, so they batch
// with everyone else's. Uploads are decoded, and deletions remove files, on
// threads of their own (dataset_upload.h).
#ifndef FEATVIZ_SERVER_CIRCUITS_SERVICE_H_
#define FEATVIZ_SERVER_CIRCUITS_SERVICE_H_

#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <deque>
#include <functional>
#include <list>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "core/dataset.h"
#include "featviz/v1/circuits.grpc.pb.h"
#include "server/authenticator.h"
#include "server/circuits_convert.h"
#include "server/engine/unit_values_cache.h"
#include "server/engine/dataset_registry.h"
#include "server/limits.h"
#include "server/engine/model_registry.h"
#include "server/upload_ledger.h"

namespace featviz::server {

struct CircuitLimits {
  // Analyses waiting for the analysis thread; one more is refused with
  // RESOURCE_EXHAUSTED.
  int64_t max_pending = 16;
  // Images one ComputeActivations/Attribute request may name, and images of
  // each class FindCircuit may score on.
  int64_t max_images = 1024;
  // Most examples per unit TopExamples returns, and LabelUnits counts over
  // (its default, 100, must stay within it).
  int64_t max_top_n = 100;
  // (model, dataset, layer) passes TopExamples and LabelUnits keep (unit
  // values and class attributions each take an entry) in a cache of the
  // service's own, when Create is given none to share.
  int64_t cache_entries = 32;
  // Largest dataset UploadDataset accepts, in bytes (256 MiB;
  // --max_dataset_bytes).
  int64_t max_dataset_bytes = int64_t{256} << 20;
};

class CircuitsService;
using CircuitsServicePtr = std::unique_ptr<CircuitsService>;

class CircuitsService final : public v1::Circuits::CallbackService {
 public:
  // Queues a render for the caller of `context`, as Visualizer.SubmitJob.
  using SubmitFn = std::function<absl::StatusOr<v1::Job>(
      grpc::CallbackServerContext* context, const v1::RenderRequest& request)>;

  // Serves analyses of `models` on `datasets`, whose uploads and deletions
  // it also serves. `render_limits` checks FindCircuit's render settings
  // before anything is queued; `submit` queues them. `authenticator` checks
  // every call's caller ("/featviz.v1.Circuits/Method") before any work:
  // UNAUTHENTICATED or PERMISSION_DENIED end the call; null lets every
  // caller in. `uploads` books uploaded bytes against each client's
  // max_upload_bytes (share the Visualizer's, so that models and datasets
  // count together); null: a ledger of the service's own. Everything given
  // by pointer must outlive the service. Starts the analysis thread.
  static absl::StatusOr<CircuitsServicePtr> Create(
      const ModelRegistry* models, DatasetRegistry* datasets, SubmitFn submit,
      const Limits& render_limits, const CircuitLimits& limits = {},
      const Authenticator* authenticator = nullptr,
      UploadLedger* uploads = nullptr,
      std::shared_ptr<UnitValuesCache> unit_values = nullptr);

  // Stops the analysis thread (analyses still waiting end UNAVAILABLE) and
  // waits for uploads and deletions in progress.
  ~CircuitsService() override;

  CircuitsService(const CircuitsService&) = delete;
  CircuitsService& operator=(const CircuitsService&) = delete;

  grpc::ServerUnaryReactor* ListDatasets(
      grpc::CallbackServerContext* context,
      const v1::ListDatasetsRequest* request,
      v1::ListDatasetsResponse* response) override;
  grpc::ServerUnaryReactor* ComputeActivations(
      grpc::CallbackServerContext* context,
      const v1::ComputeActivationsRequest* request,
      v1::ComputeActivationsResponse* response) override;
  grpc::ServerUnaryReactor* Attribute(
      grpc::CallbackServerContext* context,
      const v1::AttributeRequest* request,
      v1::AttributeResponse* response) override;
  grpc::ServerUnaryReactor* FindCircuit(
      grpc::CallbackServerContext* context,
      const v1::FindCircuitRequest* request,
      v1::FindCircuitResponse* response) override;
  grpc::ServerUnaryReactor* TopExamples(
      grpc::CallbackServerContext* context,
      const v1::TopExamplesRequest* request,
      v1::TopExamplesResponse* response) override;
  grpc::ServerUnaryReactor* LabelUnits(
      grpc::CallbackServerContext* context,
      const v1::LabelUnitsRequest* request,
      v1::LabelUnitsResponse* response) override;
  grpc::ServerReadReactor<v1::UploadDatasetRequest>* UploadDataset(
      grpc::CallbackServerContext* context, v1::Dataset* response) override;
  grpc::ServerUnaryReactor* DeleteDataset(
      grpc::CallbackServerContext* context,
      const v1::DeleteDatasetRequest* request,
      v1::DeleteDatasetResponse* response) override;

  // Refuses new analyses and uploads with UNAVAILABLE and ends the waiting
  // analyses so.
  void Shutdown();

 private:
  CircuitsService(const ModelRegistry* models, DatasetRegistry* datasets,
                  SubmitFn submit, const Limits& render_limits,
                  const CircuitLimits& limits,
                  const Authenticator* authenticator, UploadLedger* uploads,
                  std::shared_ptr<UnitValuesCache> unit_values);

  // Runs `work` on a thread of its own, counted so that the destructor
  // waits for it.
  void RunDetached(std::function<void()> work);

  // Runs `work` on the analysis thread and finishes the call with its
  // status; RESOURCE_EXHAUSTED at once when too many wait.
  grpc::ServerUnaryReactor* Defer(grpc::CallbackServerContext* context,
                                  absl::string_view method,
                                  std::function<absl::Status()> work);
  // The authenticator's check of `method` ("Attribute").
  absl::Status Authorize(grpc::CallbackServerContext* context,
                         absl::string_view method) const;
  void AnalysisLoop();

  absl::Status DoComputeActivations(const v1::ComputeActivationsRequest& request,
                                    v1::ComputeActivationsResponse& response);
  absl::Status DoAttribute(const v1::AttributeRequest& request,
                           v1::AttributeResponse& response);
  absl::Status DoFindCircuit(grpc::CallbackServerContext* context,
                             const v1::FindCircuitRequest& request,
                             v1::FindCircuitResponse& response);
  absl::Status DoTopExamples(const v1::TopExamplesRequest& request,
                             v1::TopExamplesResponse& response);
  absl::Status DoLabelUnits(const v1::LabelUnitsRequest& request,
                            v1::LabelUnitsResponse& response);

  // The model `name` names ("name" or "name@version"), held by the caller
  // while it uses it.
  absl::StatusOr<SharedModel> FindModel(const std::string& name) const;
  // [N, K] unit values of `layer` on `dataset`, from the cache or one pass;
  // `cached` says which.
  absl::StatusOr<at::Tensor> CachedUnitValues(const core::Model& model,
                                              const core::DatasetPtr& dataset,
                                              const std::string& layer,
                                              bool& cached);
  // [classes, K] mean gradient x activation of `layer`'s units for each
  // class's logit over images of the class (core::ClassAttributionScores),
  // cached as CachedUnitValues.
  absl::StatusOr<at::Tensor> CachedClassAttribution(
      const core::Model& model, const core::DatasetPtr& dataset,
      const std::string& layer, bool& cached);
  const ModelRegistry* const models_;
  DatasetRegistry* const datasets_;
  const SubmitFn submit_;
  const Authenticator open_access_{nullptr};
  const Authenticator& auth_;  // The one given, or open_access_.
  const Limits render_limits_;
  const CircuitLimits limits_;
  UploadLedger own_uploads_;
  UploadLedger& uploads_;  // The one given, or own_uploads_.

  // Dataset passes (unit values, class attributions), shared with the
  // workers' renders when the server gives one (its own otherwise).
  const std::shared_ptr<UnitValuesCache> unit_values_;

  struct Task {
    grpc::ServerUnaryReactor* reactor;
    std::function<absl::Status()> work;
  };
  absl::Mutex mu_;
  std::deque<Task> pending_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  // Uploads and deletions running on their own threads.
  int detached_ ABSL_GUARDED_BY(mu_) = 0;
  std::thread thread_;

};

}  // namespace featviz::server

#endif  // FEATVIZ_SERVER_CIRCUITS_SERVICE_H_
