// VisualizerClient: the featviz.v1.Visualizer stub behind absl::Status.
// Every call's gRPC status becomes an absl::Status with the same code and the
// server's message; a server that cannot be reached reads
// "UNAVAILABLE: cannot reach server at ADDR (...)".
#ifndef FEATVIZ_CLIENT_VISUALIZER_CLIENT_H_
#define FEATVIZ_CLIENT_VISUALIZER_CLIENT_H_

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "featviz/v1/featviz.grpc.pb.h"

namespace featviz::client {

struct ClientOptions {
  // Deadline of ListModels and GetModel calls; zero or negative means none.
  absl::Duration call_timeout = absl::Seconds(30);
  // Deadline of a whole Render stream; zero or negative means none (a render
  // takes as long as it takes).
  absl::Duration render_timeout = absl::ZeroDuration();
};

class VisualizerClient {
 public:
  // Called with each progress event in step order. An error cancels the
  // render, and Render returns that error.
  using ProgressCallback =
      std::function<absl::Status(const featviz::v1::RenderProgress&)>;

  // A client of the server at `address` ("host:port"). Connects lazily: an
  // unreachable server shows up as UNAVAILABLE on the first call.
  static absl::StatusOr<std::unique_ptr<VisualizerClient>> Create(
      const std::string& address, const ClientOptions& options = {});

  VisualizerClient(const VisualizerClient&) = delete;
  VisualizerClient& operator=(const VisualizerClient&) = delete;

  // Every hosted model, ordered by name (all pages).
  absl::StatusOr<std::vector<featviz::v1::Model>> ListModels();
  // One hosted model; NOT_FOUND naming it when it is not hosted.
  absl::StatusOr<featviz::v1::Model> GetModel(const std::string& name);
  // Runs a render to its end: `on_progress` (may be empty) sees each progress
  // event; returns the result event. The stream must end with a result.
  absl::StatusOr<featviz::v1::RenderResult> Render(
      const featviz::v1::RenderRequest& request,
      const ProgressCallback& on_progress);

  const std::string& address() const { return address_; }
  const ClientOptions& options() const { return options_; }
  // The channel, for stubs of the server's other services (Circuits).
  const std::shared_ptr<grpc::Channel>& channel() const { return channel_; }

 private:
  VisualizerClient(std::string address, ClientOptions options,
                   std::shared_ptr<grpc::Channel> channel);

  // The call's status in absl terms, with the server's address where the
  // server could not be reached.
  absl::Status FromGrpc(const grpc::Status& status) const;
  void SetDeadline(grpc::ClientContext& context, absl::Duration timeout) const;

  const std::string address_;
  const ClientOptions options_;
  // Shared with the stub, which gRPC's API hands out as a shared_ptr.
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<featviz::v1::Visualizer::Stub> stub_;
};

using VisualizerClientPtr = std::unique_ptr<VisualizerClient>;

}  // namespace featviz::client

#endif  // FEATVIZ_CLIENT_VISUALIZER_CLIENT_H_
