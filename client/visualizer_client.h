// VisualizerClient: the featviz.v1.Visualizer stub behind absl::Status.
// Every call's gRPC status becomes an absl::Status with the same code and the
// server's message; a server that cannot be reached reads
// "UNAVAILABLE: cannot reach server at ADDR (...)".
//
// Several replicas: any gRPC target works as the address, and calls are
// balanced round-robin over every address it resolves to
// ("dns:///featviz.lab.svc:8980", "ipv4:10.0.0.1:8980,10.0.0.2:8980").
// A job lives on the replica that accepted it; when replicas run with
// --advertise_address its id says which ("17@10.0.0.2:8980"), and GetJob and
// CancelJob go straight to that replica.
#ifndef FEATVIZ_CLIENT_VISUALIZER_CLIENT_H_
#define FEATVIZ_CLIENT_VISUALIZER_CLIENT_H_

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "client/rpc_call.h"
#include "featviz/v1/featviz.grpc.pb.h"

namespace featviz::client {

struct ClientOptions {
  // Deadline of ListModels and GetModel calls; zero or negative means none.
  absl::Duration call_timeout = absl::Seconds(30);
  // Deadline of a whole Render stream; zero or negative means none (a render
  // takes as long as it takes).
  absl::Duration render_timeout = absl::ZeroDuration();
  // Bearer token sent with every call ("authorization: Bearer <token>");
  // empty: none.
  std::string token;
  // TLS: PEM files. tls_ca set means TLS, verified against it; tls_cert and
  // tls_key add a client certificate (mTLS). All empty: plaintext.
  std::string tls_ca;
  std::string tls_cert;
  std::string tls_key;
};

// The token for a client: the first line of `token_file` when given, else
// $FEATVIZ_TOKEN, else empty. NotFound naming an unreadable file.
absl::StatusOr<std::string> ResolveToken(const std::string& token_file);

class VisualizerClient {
 public:
  // Called with each progress event in step order. An error cancels the
  // render, and Render returns that error.
  using ProgressCallback =
      std::function<absl::Status(const featviz::v1::RenderProgress&)>;

  // A client of the server at `address` ("host:port", or any gRPC target
  // naming several replicas). Connects lazily: an unreachable server shows up
  // as UNAVAILABLE on the first call. Errors: InvalidArgument for a TLS file
  // that cannot be read or a client certificate without its key.
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
  // `job_id` (may be null) receives the job's id once the server accepted it
  // (empty when it never did).
  absl::StatusOr<featviz::v1::RenderResult> Render(
      const featviz::v1::RenderRequest& request,
      const ProgressCallback& on_progress, std::string* job_id = nullptr);
  // The server's queue, worker and cache figures.
  absl::StatusOr<featviz::v1::ServerStats> GetServerStats();
  // The job `id`, from the replica its id names (else from the balanced
  // channel); with its result when `include_result` and it succeeded.
  absl::StatusOr<featviz::v1::Job> GetJob(const std::string& id,
                                          bool include_result);
  // Cancels job `id` on the replica holding it; answers once it has ended.
  absl::StatusOr<featviz::v1::Job> CancelJob(const std::string& id);
  // Queues `request` as a job (SubmitJob) and returns it at once.
  absl::StatusOr<featviz::v1::Job> SubmitJob(
      const featviz::v1::RenderRequest& request);
  // Follows job `id` (WatchJob, on the replica its id names) to its end like
  // Render: progress to `on_progress`, then the result or the job's error.
  absl::StatusOr<featviz::v1::RenderResult> WatchJob(
      const std::string& id, const ProgressCallback& on_progress);
  // Every job the server knows (all pages), newest first; only `owner`'s
  // when not empty, only those in `state` unless JOB_STATE_UNSPECIFIED.
  absl::StatusOr<std::vector<featviz::v1::Job>> ListJobs(
      const std::string& owner, featviz::v1::JobState state);

  // Admin calls (the admin role). Their deadline is render_timeout's: an
  // unload answers only once the model's running jobs have finished.
  absl::StatusOr<featviz::v1::LoadModelResponse> LoadModel(
      const std::string& path);
  absl::StatusOr<featviz::v1::UnloadModelResponse> UnloadModel(
      const std::string& name, const std::string& version);
  absl::StatusOr<featviz::v1::ReloadModelResponse> ReloadModel(
      const std::string& name);

  const std::string& address() const { return address_; }
  const ClientOptions& options() const { return options_; }
  // The channel, for stubs of the server's other services (Circuits).
  const std::shared_ptr<grpc::Channel>& channel() const { return channel_; }

  // For calls on channel() by other stubs (CircuitsClient, the upload
  // stream), so that every call is made and reported alike:
  // Sets the deadline (none when `timeout` <= 0) and the token.
  void Prepare(grpc::ClientContext& context, absl::Duration timeout) const;
  // The call's status in absl terms (messages on one line), with the
  // server's address where the server could not be reached.
  absl::Status FromGrpc(const grpc::Status& status) const;

 private:
  VisualizerClient(std::string address, ClientOptions options,
                   std::shared_ptr<grpc::ChannelCredentials> credentials,
                   grpc::ChannelArguments args,
                   std::shared_ptr<grpc::Channel> channel);

  // The stub for calls about job `id`: a channel of its own to the replica
  // named after the id's '@', or the balanced one for ids naming none.
  featviz::v1::Visualizer::Stub* StubForJob(const std::string& id);

  // One unary call of `stub` (Prepare'd with `timeout`, mapped by FromGrpc).
  template <typename Request, typename Response>
  absl::StatusOr<Response> Call(
      featviz::v1::Visualizer::Stub& stub,
      UnaryMethod<featviz::v1::Visualizer::Stub, Request, Response> method,
      const Request& request, absl::Duration timeout);

  // Reads a Render or WatchJob stream to its result (see Render).
  absl::StatusOr<featviz::v1::RenderResult> ReadStream(
      grpc::ClientContext& context,
      grpc::ClientReader<featviz::v1::RenderEvent>& reader,
      const ProgressCallback& on_progress, std::string* job_id);

  const std::string address_;
  const ClientOptions options_;
  // Every channel is made alike: the replicas' ones too.
  const std::shared_ptr<grpc::ChannelCredentials> credentials_;
  const grpc::ChannelArguments args_;
  // Shared with the stub, which gRPC's API hands out as a shared_ptr.
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<featviz::v1::Visualizer::Stub> stub_;

  absl::Mutex mu_;
  // One stub per replica address named by a job id.
  absl::flat_hash_map<std::string,
                      std::unique_ptr<featviz::v1::Visualizer::Stub>>
      replica_stubs_ ABSL_GUARDED_BY(mu_);
};

using VisualizerClientPtr = std::unique_ptr<VisualizerClient>;

}  // namespace featviz::client

#endif  // FEATVIZ_CLIENT_VISUALIZER_CLIENT_H_
