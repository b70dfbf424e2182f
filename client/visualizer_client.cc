#include "client/visualizer_client.h"

#include <chrono>
#include <cstdlib>
#include <limits>
#include <optional>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "core/files.h"
#include "core/status_macros.h"

namespace featviz::client {

namespace v1 = featviz::v1;

namespace {

// A TLS file named by `flag`; InvalidArgument (a usage error) naming the
// flag and the file.
absl::StatusOr<std::string> ReadPem(absl::string_view flag,
                                    const std::string& path) {
  absl::StatusOr<std::string> pem = core::ReadFile(path);
  if (!pem.ok()) {
    return absl::InvalidArgumentError(
        core::Prefixed(flag, pem.status()).message());
  }
  return pem;
}

// A server that hands back the same page token forever must not hang us.
constexpr int kMaxPages = 10000;

// Every item of a paged List call: `list(request)` again with each
// next_page_token until a page has none; `items(page)` is the page's
// repeated field of them. `method` names the call in the error.
template <typename Item, typename Request, typename List, typename Items>
absl::StatusOr<std::vector<Item>> AllPages(Request request, const List& list,
                                           const Items& items,
                                           absl::string_view method) {
  std::vector<Item> all;
  for (int page = 0; page < kMaxPages; ++page) {
    auto response = list(request);
    if (!response.ok()) return response.status();
    for (Item& item : *items(*response)) all.push_back(std::move(item));
    if (response->next_page_token().empty()) return all;
    request.set_page_token(response->next_page_token());
  }
  return absl::InternalError(
      absl::StrCat(method, ": the server never ended its pages"));
}

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> Credentials(
    const ClientOptions& options) {
  if (options.tls_cert.empty() != options.tls_key.empty()) {
    return absl::InvalidArgumentError(
        "--tls_cert and --tls_key go together: give both or neither");
  }
  if (options.tls_ca.empty() && options.tls_cert.empty()) {
    return grpc::InsecureChannelCredentials();
  }
  grpc::SslCredentialsOptions ssl;
  if (!options.tls_ca.empty()) {
    absl::StatusOr<std::string> ca = ReadPem("--tls_ca", options.tls_ca);
    if (!ca.ok()) return ca.status();
    ssl.pem_root_certs = *std::move(ca);
  }
  if (!options.tls_cert.empty()) {
    absl::StatusOr<std::string> cert = ReadPem("--tls_cert", options.tls_cert);
    if (!cert.ok()) return cert.status();
    absl::StatusOr<std::string> key = ReadPem("--tls_key", options.tls_key);
    if (!key.ok()) return key.status();
    ssl.pem_cert_chain = *std::move(cert);
    ssl.pem_private_key = *std::move(key);
  }
  return grpc::SslCredentials(ssl);
}

}  // namespace

absl::StatusOr<std::string> ResolveToken(const std::string& token_file) {
  if (!token_file.empty()) {
    absl::StatusOr<std::string> text = core::ReadFile(token_file);
    if (!text.ok()) return core::Prefixed("--token_file", text.status());
    // The first line.
    return std::string(absl::StripAsciiWhitespace(
        absl::string_view(*text).substr(0, text->find('\n'))));
  }
  const char* env = std::getenv("FEATVIZ_TOKEN");
  if (env != nullptr) return std::string(absl::StripAsciiWhitespace(env));
  return std::string();
}

absl::StatusOr<std::unique_ptr<VisualizerClient>> VisualizerClient::Create(
    const std::string& address, const ClientOptions& options) {
  if (address.empty()) {
    return absl::InvalidArgumentError("server address is empty");
  }
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> credentials =
      Credentials(options);
  if (!credentials.ok()) return credentials.status();
  grpc::ChannelArguments args;
  // Results carry float tensors and PNGs of whole batches; gRPC's 4 MiB
  // default would reject a batch of large RGB images.
  args.SetMaxReceiveMessageSize(std::numeric_limits<int>::max());
  // A target naming several replicas (DNS names of a headless Service, or
  // "ipv4:a,b,c") spreads calls over all of them; gRPC's default,
  // pick_first, would send every call to one.
  args.SetLoadBalancingPolicyName("round_robin");
  std::shared_ptr<grpc::Channel> channel =
      grpc::CreateCustomChannel(address, *credentials, args);
  if (channel == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot make a channel to '", address, "'"));
  }
  return std::unique_ptr<VisualizerClient>(
      new VisualizerClient(address, options, *std::move(credentials),
                           std::move(args), std::move(channel)));
}

VisualizerClient::VisualizerClient(
    std::string address, ClientOptions options,
    std::shared_ptr<grpc::ChannelCredentials> credentials,
    grpc::ChannelArguments args, std::shared_ptr<grpc::Channel> channel)
    : address_(std::move(address)),
      options_(options),
      credentials_(std::move(credentials)),
      args_(std::move(args)),
      channel_(std::move(channel)),
      stub_(v1::Visualizer::NewStub(channel_)) {}

v1::Visualizer::Stub* VisualizerClient::StubForJob(const std::string& id) {
  const size_t at = id.find('@');
  if (at == std::string::npos || at + 1 == id.size()) return stub_.get();
  const std::string replica = id.substr(at + 1);
  absl::MutexLock lock(&mu_);
  std::unique_ptr<v1::Visualizer::Stub>& stub = replica_stubs_[replica];
  if (stub == nullptr) {
    stub = v1::Visualizer::NewStub(
        grpc::CreateCustomChannel(replica, credentials_, args_));
  }
  return stub.get();
}

absl::Status VisualizerClient::FromGrpc(const grpc::Status& status) const {
  if (status.ok()) return absl::OkStatus();
  // Messages are shown on one line.
  std::string message = absl::StrReplaceAll(
      status.error_message(), {{"\r\n", "; "}, {"\n", "; "}, {"\r", "; "}});
  // gRPC's codes and absl's share their numbering.
  const auto code = static_cast<absl::StatusCode>(status.error_code());
  // UNAVAILABLE also means "the server is shutting down"; only a channel that
  // never got a connection is a server we cannot reach.
  if (code == absl::StatusCode::kUnavailable &&
      channel_->GetState(/*try_to_connect=*/false) != GRPC_CHANNEL_READY) {
    message = absl::StrCat("cannot reach server at ", address_, " (", message,
                           ")");
  }
  return absl::Status(code, message);
}

void VisualizerClient::Prepare(grpc::ClientContext& context,
                               absl::Duration timeout) const {
  // Plain metadata rather than call credentials: gRPC sends those only over
  // TLS, and a loopback server may take tokens in plaintext.
  if (!options_.token.empty()) {
    context.AddMetadata("authorization", "Bearer " + options_.token);
  }
  if (timeout <= absl::ZeroDuration()) return;
  context.set_deadline(std::chrono::system_clock::now() +
                       absl::ToChronoMilliseconds(timeout));
}

template <typename Request, typename Response>
absl::StatusOr<Response> VisualizerClient::Call(
    v1::Visualizer::Stub& stub,
    UnaryMethod<v1::Visualizer::Stub, Request, Response> method,
    const Request& request, absl::Duration timeout) {
  return CallUnary(
      stub, method, request,
      [this, timeout](grpc::ClientContext& context) {
        Prepare(context, timeout);
      },
      [this](const grpc::Status& status) { return FromGrpc(status); });
}

absl::StatusOr<v1::ServerStats> VisualizerClient::GetServerStats() {
  return Call(*stub_, &v1::Visualizer::Stub::GetServerStats,
              v1::GetServerStatsRequest(), options_.call_timeout);
}

absl::StatusOr<std::vector<v1::Model>> VisualizerClient::ListModels() {
  return AllPages<v1::Model>(
      v1::ListModelsRequest(),
      [this](const v1::ListModelsRequest& request) {
        return Call(*stub_, &v1::Visualizer::Stub::ListModels, request,
                    options_.call_timeout);
      },
      [](v1::ListModelsResponse& page) { return page.mutable_models(); },
      "ListModels");
}

absl::StatusOr<v1::Model> VisualizerClient::GetModel(const std::string& name) {
  v1::GetModelRequest request;
  request.set_name(name);
  return Call(*stub_, &v1::Visualizer::Stub::GetModel, request,
              options_.call_timeout);
}

absl::StatusOr<v1::Job> VisualizerClient::GetJob(const std::string& id,
                                                 bool include_result) {
  v1::GetJobRequest request;
  request.set_id(id);
  request.set_include_result(include_result);
  return Call(*StubForJob(id), &v1::Visualizer::Stub::GetJob, request,
              options_.call_timeout);
}

absl::StatusOr<v1::Job> VisualizerClient::CancelJob(const std::string& id) {
  v1::CancelJobRequest request;
  request.set_id(id);
  return Call(*StubForJob(id), &v1::Visualizer::Stub::CancelJob, request,
              options_.call_timeout);
}

absl::StatusOr<v1::RenderResult> VisualizerClient::Render(
    const v1::RenderRequest& request, const ProgressCallback& on_progress,
    std::string* job_id) {
  grpc::ClientContext context;
  Prepare(context, options_.render_timeout);
  std::unique_ptr<grpc::ClientReader<v1::RenderEvent>> reader =
      stub_->Render(&context, request);
  return ReadStream(context, *reader, on_progress, job_id);
}

absl::StatusOr<v1::RenderResult> VisualizerClient::WatchJob(
    const std::string& id, const ProgressCallback& on_progress) {
  grpc::ClientContext context;
  Prepare(context, options_.render_timeout);
  v1::WatchJobRequest request;
  request.set_id(id);
  std::unique_ptr<grpc::ClientReader<v1::RenderEvent>> reader =
      StubForJob(id)->WatchJob(&context, request);
  return ReadStream(context, *reader, on_progress, nullptr);
}

absl::StatusOr<v1::RenderResult> VisualizerClient::ReadStream(
    grpc::ClientContext& context, grpc::ClientReader<v1::RenderEvent>& reader,
    const ProgressCallback& on_progress, std::string* job_id) {
  v1::RenderEvent event;
  absl::Status callback_status;
  std::optional<v1::RenderResult> result;
  while (reader.Read(&event)) {
    if (event.has_progress()) {
      if (result.has_value()) continue;  // Nothing may follow the result.
      if (on_progress && callback_status.ok()) {
        callback_status = on_progress(event.progress());
        if (!callback_status.ok()) context.TryCancel();
      }
    } else if (event.has_result()) {
      result = std::move(*event.mutable_result());
    }
  }
  const grpc::Status finish = reader.Finish();
  if (job_id != nullptr) {
    // Sent with the initial metadata once the job is accepted.
    const auto& metadata = context.GetServerInitialMetadata();
    const auto it = metadata.find("featviz-job-id");
    job_id->assign(it == metadata.end()
                       ? std::string()
                       : std::string(it->second.data(), it->second.size()));
  }
  if (!callback_status.ok()) return callback_status;
  absl::Status status = FromGrpc(finish);
  if (!status.ok()) return status;
  if (!result.has_value()) {
    return absl::InternalError(
        "the server ended the render stream without a result");
  }
  return *std::move(result);
}

absl::StatusOr<v1::Job> VisualizerClient::SubmitJob(
    const v1::RenderRequest& request) {
  v1::SubmitJobRequest submit;
  *submit.mutable_request() = request;
  return Call(*stub_, &v1::Visualizer::Stub::SubmitJob, submit,
              options_.call_timeout);
}

absl::StatusOr<std::vector<v1::Job>> VisualizerClient::ListJobs(
    const std::string& owner, v1::JobState state) {
  v1::ListJobsRequest request;
  request.set_owner(owner);
  request.set_state(state);
  return AllPages<v1::Job>(
      request,
      [this](const v1::ListJobsRequest& page_request) {
        return Call(*stub_, &v1::Visualizer::Stub::ListJobs, page_request,
                    options_.call_timeout);
      },
      [](v1::ListJobsResponse& page) { return page.mutable_jobs(); },
      "ListJobs");
}

absl::StatusOr<v1::LoadModelResponse> VisualizerClient::LoadModel(
    const std::string& path) {
  v1::LoadModelRequest request;
  request.set_path(path);
  return Call(*stub_, &v1::Visualizer::Stub::LoadModel, request,
              options_.render_timeout);
}

absl::StatusOr<v1::UnloadModelResponse> VisualizerClient::UnloadModel(
    const std::string& name, const std::string& version) {
  v1::UnloadModelRequest request;
  request.set_name(name);
  request.set_version(version);
  return Call(*stub_, &v1::Visualizer::Stub::UnloadModel, request,
              options_.render_timeout);
}

absl::StatusOr<v1::ReloadModelResponse> VisualizerClient::ReloadModel(
    const std::string& name) {
  v1::ReloadModelRequest request;
  request.set_name(name);
  return Call(*stub_, &v1::Visualizer::Stub::ReloadModel, request,
              options_.render_timeout);
}

}  // namespace featviz::client
