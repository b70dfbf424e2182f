#include "client/circuits_client.h"

#include <algorithm>
#include <chrono>
#include <map>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/time/clock.h"
#include "client/chunked_send.h"
#include "client/proto_convert.h"
#include "core/sha256.h"

namespace featviz::client {

namespace v1 = featviz::v1;

namespace {

// Analyses read whole datasets; they get at least this long.
constexpr absl::Duration kMinAnalysisTimeout = absl::Minutes(5);
constexpr absl::Duration kPollEvery = absl::Milliseconds(250);

absl::Status FromGrpc(const grpc::Status& status, const std::string& address) {
  if (status.ok()) return absl::OkStatus();
  std::string message = absl::StrReplaceAll(status.error_message(),
                                            {{"\r\n", "; "}, {"\n", "; "}});
  const auto code = static_cast<absl::StatusCode>(status.error_code());
  if (code == absl::StatusCode::kUnavailable) {
    message = absl::StrCat(message, " (server ", address, ")");
  }
  return absl::Status(code, message);
}

bool Finished(v1::JobState state) {
  return state == v1::JOB_STATE_SUCCEEDED || state == v1::JOB_STATE_FAILED ||
         state == v1::JOB_STATE_CANCELLED || state == v1::JOB_STATE_EXPIRED;
}

}  // namespace

CircuitsClient::CircuitsClient(VisualizerClient& visualizer)
    : visualizer_(visualizer),
      circuits_(v1::Circuits::NewStub(visualizer.channel())),
      jobs_(v1::Visualizer::NewStub(visualizer.channel())) {}

void CircuitsClient::SetDeadline(grpc::ClientContext& context) const {
  // The same bearer token as the Visualizer's calls (plain metadata).
  if (!visualizer_.options().token.empty()) {
    context.AddMetadata("authorization", "Bearer " + visualizer_.options().token);
  }
  const absl::Duration timeout =
      std::max(visualizer_.options().call_timeout, kMinAnalysisTimeout);
  context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
}

#define FEATVIZ_CIRCUITS_CALL(stub, Method, Request, Response)           \
  absl::StatusOr<v1::Response> CircuitsClient::Method(                  \
      const v1::Request& request) {                                     \
    grpc::ClientContext context;                                        \
    SetDeadline(context);                                               \
    v1::Response response;                                              \
    absl::Status status = FromGrpc(                                     \
        stub->Method(&context, request, &response), visualizer_.address()); \
    if (!status.ok()) return status;                                    \
    return response;                                                    \
  }

FEATVIZ_CIRCUITS_CALL(circuits_, ComputeActivations, ComputeActivationsRequest,
                      ComputeActivationsResponse)
FEATVIZ_CIRCUITS_CALL(circuits_, Attribute, AttributeRequest, AttributeResponse)
FEATVIZ_CIRCUITS_CALL(circuits_, FindCircuit, FindCircuitRequest,
                      FindCircuitResponse)
FEATVIZ_CIRCUITS_CALL(circuits_, TopExamples, TopExamplesRequest,
                      TopExamplesResponse)
#undef FEATVIZ_CIRCUITS_CALL

absl::StatusOr<v1::ListDatasetsResponse> CircuitsClient::ListDatasets() {
  grpc::ClientContext context;
  SetDeadline(context);
  v1::ListDatasetsResponse response;
  absl::Status status =
      FromGrpc(circuits_->ListDatasets(&context, v1::ListDatasetsRequest(),
                                       &response),
               visualizer_.address());
  if (!status.ok()) return status;
  return response;
}

absl::StatusOr<v1::Dataset> CircuitsClient::UploadDataset(
    v1::UploadDatasetRequest::Header header, absl::string_view bytes,
    int64_t chunk_bytes) {
  header.set_size_bytes(static_cast<int64_t>(bytes.size()));
  header.set_sha256(core::Sha256Hex(bytes));
  grpc::ClientContext context;
  SetDeadline(context);
  v1::Dataset dataset;
  std::unique_ptr<grpc::ClientWriter<v1::UploadDatasetRequest>> writer =
      circuits_->UploadDataset(&context, &dataset);
  SendChunks(*writer, header, bytes, chunk_bytes);
  absl::Status status = FromGrpc(writer->Finish(), visualizer_.address());
  if (!status.ok()) return status;
  return dataset;
}

absl::StatusOr<v1::DeleteDatasetResponse> CircuitsClient::DeleteDataset(
    const std::string& name) {
  grpc::ClientContext context;
  SetDeadline(context);
  v1::DeleteDatasetRequest request;
  request.set_name(name);
  v1::DeleteDatasetResponse response;
  absl::Status status =
      FromGrpc(circuits_->DeleteDataset(&context, request, &response),
               visualizer_.address());
  if (!status.ok()) return status;
  return response;
}

absl::StatusOr<v1::Job> CircuitsClient::SubmitJob(
    const v1::RenderRequest& request) {
  grpc::ClientContext context;
  SetDeadline(context);
  v1::SubmitJobRequest submit;
  *submit.mutable_request() = request;
  v1::Job job;
  absl::Status status = FromGrpc(jobs_->SubmitJob(&context, submit, &job),
                                 visualizer_.address());
  if (!status.ok()) return status;
  return job;
}

absl::StatusOr<v1::Job> CircuitsClient::GetJob(const std::string& id,
                                               bool include_result) {
  // The replica the id names holds the job (VisualizerClient routes it).
  return visualizer_.GetJob(id, include_result);
}

absl::StatusOr<std::vector<v1::Job>> CircuitsClient::WaitForJobs(
    const std::vector<std::string>& ids,
    const std::function<void(size_t, size_t)>& on_progress) {
  std::map<std::string, v1::Job> done;
  std::vector<std::string> waiting;
  for (const std::string& id : ids) {
    if (std::find(waiting.begin(), waiting.end(), id) == waiting.end()) {
      waiting.push_back(id);
    }
  }
  const size_t total = waiting.size();
  while (!waiting.empty()) {
    std::vector<std::string> still;
    for (const std::string& id : waiting) {
      absl::StatusOr<v1::Job> job = GetJob(id, /*include_result=*/false);
      if (!job.ok()) {
        return absl::Status(job.status().code(),
                            absl::StrCat("job ", id, ": ", job.status().message()));
      }
      if (!Finished(job->state())) {
        still.push_back(id);
        continue;
      }
      if (job->state() != v1::JOB_STATE_SUCCEEDED) {
        return absl::Status(
            job->error_code() == 0
                ? absl::StatusCode::kUnknown
                : static_cast<absl::StatusCode>(job->error_code()),
            absl::StrCat("job ", id, " (", job->objective(), ") ended ",
                         JobStateName(job->state()), ": ",
                         job->error_message()));
      }
      absl::StatusOr<v1::Job> full = GetJob(id, /*include_result=*/true);
      if (!full.ok()) return full.status();
      done.emplace(id, *std::move(full));
      if (on_progress) on_progress(done.size(), total);
    }
    waiting.swap(still);
    if (!waiting.empty()) absl::SleepFor(kPollEvery);
  }
  std::vector<v1::Job> out;
  for (const std::string& id : ids) out.push_back(done.at(id));
  return out;
}

}  // namespace featviz::client
