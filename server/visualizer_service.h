// The featviz.v1.Visualizer service over a ModelRegistry, with the callback
// API: ListModels and GetModel answer at once; each Render call is one
// reactor that validates the request (convert.h), queues a job on the render
// worker pool (job_queue.h), and streams the job's progress events and its
// result in order, one write at a time.
//
// A running render stops within one optimisation step when its client
// cancels, its deadline passes, or the server's shutdown grace period ends.
#ifndef FEATVIZ_SERVER_VISUALIZER_SERVICE_H_
#define FEATVIZ_SERVER_VISUALIZER_SERVICE_H_

#include <atomic>
#include <cstdint>
#include <memory>

#include <grpcpp/grpcpp.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "featviz/v1/featviz.grpc.pb.h"
#include "server/job_queue.h"
#include "server/limits.h"
#include "server/model_registry.h"

namespace featviz::server {

class VisualizerService;
using VisualizerServicePtr = std::unique_ptr<VisualizerService>;

class VisualizerService final : public v1::Visualizer::CallbackService {
 public:
  // Serves the models of `models`, which must outlive the service, within
  // `limits`; starts limits.max_concurrent_renders worker threads.
  // InvalidArgument for limits that make no sense (non-positive sizes).
  static absl::StatusOr<VisualizerServicePtr> Create(const ModelRegistry* models,
                                                     const Limits& limits);

  // Shuts down with no grace period. The grpc::Server must have been shut
  // down first: reactors point back at the service.
  ~VisualizerService() override;

  VisualizerService(const VisualizerService&) = delete;
  VisualizerService& operator=(const VisualizerService&) = delete;

  grpc::ServerUnaryReactor* ListModels(grpc::CallbackServerContext* context,
                                       const v1::ListModelsRequest* request,
                                       v1::ListModelsResponse* response) override;
  grpc::ServerUnaryReactor* GetModel(grpc::CallbackServerContext* context,
                                     const v1::GetModelRequest* request,
                                     v1::Model* response) override;
  grpc::ServerWriteReactor<v1::RenderEvent>* Render(
      grpc::CallbackServerContext* context,
      const v1::RenderRequest* request) override;

  // Begins the drain: new renders are refused with UNAVAILABLE, waiting ones
  // end with UNAVAILABLE, running ones may finish until `grace_deadline` and
  // are then cancelled (CANCELLED, "server shut down before the render
  // finished"). Returns when no render runs any more.
  void Shutdown(absl::Time grace_deadline);

  const Limits& limits() const { return limits_; }

 private:
  friend class RenderStream;

  VisualizerService(const ModelRegistry* models, const Limits& limits,
                    JobQueuePtr queue);
  absl::Status ListModelsPage(const v1::ListModelsRequest& request,
                              v1::ListModelsResponse& response) const;

  const ModelRegistry& models_;
  const Limits limits_;
  JobQueuePtr queue_;
  std::atomic<bool> shutting_down_{false};
  std::atomic<uint64_t> next_job_id_{1};
};

}  // namespace featviz::server

#endif  // FEATVIZ_SERVER_VISUALIZER_SERVICE_H_
