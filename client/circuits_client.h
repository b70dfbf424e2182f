// CircuitsClient: the featviz.v1.Circuits stub, and the Visualizer's job
// calls that `featviz circuits` and `featviz atlas` need, behind
// absl::Status, over a VisualizerClient's channel (same server, same
// credentials).
#ifndef FEATVIZ_CLIENT_CIRCUITS_CLIENT_H_
#define FEATVIZ_CLIENT_CIRCUITS_CLIENT_H_

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "client/rpc_call.h"
#include "client/visualizer_client.h"
#include "featviz/v1/circuits.grpc.pb.h"
#include "featviz/v1/featviz.grpc.pb.h"

namespace featviz::client {

class CircuitsClient {
 public:
  // Uses `visualizer`'s channel (and its routing of job ids to the replica
  // holding them); `visualizer` must outlive this client.
  explicit CircuitsClient(VisualizerClient& visualizer);

  absl::StatusOr<featviz::v1::ListDatasetsResponse> ListDatasets();
  absl::StatusOr<featviz::v1::ComputeActivationsResponse> ComputeActivations(
      const featviz::v1::ComputeActivationsRequest& request);
  absl::StatusOr<featviz::v1::AttributeResponse> Attribute(
      const featviz::v1::AttributeRequest& request);
  absl::StatusOr<featviz::v1::FindCircuitResponse> FindCircuit(
      const featviz::v1::FindCircuitRequest& request);
  absl::StatusOr<featviz::v1::TopExamplesResponse> TopExamples(
      const featviz::v1::TopExamplesRequest& request);
  absl::StatusOr<featviz::v1::LabelUnitsResponse> LabelUnits(
      const featviz::v1::LabelUnitsRequest& request);
  // Sends `bytes` with `header` (whose size_bytes and sha256 this fills in)
  // in pieces of `chunk_bytes`; the hosted dataset (UploadDataset).
  absl::StatusOr<featviz::v1::Dataset> UploadDataset(
      featviz::v1::UploadDatasetRequest::Header header,
      absl::string_view bytes, int64_t chunk_bytes);
  absl::StatusOr<featviz::v1::DeleteDatasetResponse> DeleteDataset(
      const std::string& name);

  absl::StatusOr<featviz::v1::Job> SubmitJob(
      const featviz::v1::RenderRequest& request);
  absl::StatusOr<featviz::v1::Job> GetJob(const std::string& id,
                                          bool include_result);

  // Polls every job until it has ended and returns them, with results, in
  // the order of `ids` (duplicates allowed). `on_progress` (may be empty)
  // sees (finished, total) as jobs end. The first job that did not succeed
  // is an error naming it and its status.
  absl::StatusOr<std::vector<featviz::v1::Job>> WaitForJobs(
      const std::vector<std::string>& ids,
      const std::function<void(size_t, size_t)>& on_progress);

 private:
  // The client's bearer token and the deadline of an analysis: the call
  // deadline, but at least five minutes.
  void Prepare(grpc::ClientContext& context) const;
  // One unary call of `stub` (Prepare'd, mapped by the VisualizerClient's
  // FromGrpc).
  template <typename Stub, typename Request, typename Response>
  absl::StatusOr<Response> Call(Stub& stub,
                                UnaryMethod<Stub, Request, Response> method,
                                const Request& request);

  VisualizerClient& visualizer_;
  std::unique_ptr<featviz::v1::Circuits::Stub> circuits_;
  std::unique_ptr<featviz::v1::Visualizer::Stub> jobs_;
};

}  // namespace featviz::client

#endif  // FEATVIZ_CLIENT_CIRCUITS_CLIENT_H_
