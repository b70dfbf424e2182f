#include "client/circuits_client.h"

#include <algorithm>
#include <map>

#include "absl/strings/str_cat.h"
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

bool Finished(v1::JobState state) {
  return state == v1::JOB_STATE_SUCCEEDED || state == v1::JOB_STATE_FAILED ||
         state == v1::JOB_STATE_CANCELLED || state == v1::JOB_STATE_EXPIRED;
}

}  // namespace

CircuitsClient::CircuitsClient(VisualizerClient& visualizer)
    : visualizer_(visualizer),
      circuits_(v1::Circuits::NewStub(visualizer.channel())),
      jobs_(v1::Visualizer::NewStub(visualizer.channel())) {}

void CircuitsClient::Prepare(grpc::ClientContext& context) const {
  // The same bearer token as the Visualizer's calls, and a deadline long
  // enough for an analysis.
  visualizer_.Prepare(context, std::max(visualizer_.options().call_timeout,
                                        kMinAnalysisTimeout));
}

template <typename Stub, typename Request, typename Response>
absl::StatusOr<Response> CircuitsClient::Call(
    Stub& stub, UnaryMethod<Stub, Request, Response> method,
    const Request& request) {
  return CallUnary(
      stub, method, request,
      [this](grpc::ClientContext& context) { Prepare(context); },
      [this](const grpc::Status& status) {
        return visualizer_.FromGrpc(status);
      });
}

absl::StatusOr<v1::ComputeActivationsResponse>
CircuitsClient::ComputeActivations(
    const v1::ComputeActivationsRequest& request) {
  return Call(*circuits_, &v1::Circuits::Stub::ComputeActivations, request);
}

absl::StatusOr<v1::AttributeResponse> CircuitsClient::Attribute(
    const v1::AttributeRequest& request) {
  return Call(*circuits_, &v1::Circuits::Stub::Attribute, request);
}

absl::StatusOr<v1::FindCircuitResponse> CircuitsClient::FindCircuit(
    const v1::FindCircuitRequest& request) {
  return Call(*circuits_, &v1::Circuits::Stub::FindCircuit, request);
}

absl::StatusOr<v1::TopExamplesResponse> CircuitsClient::TopExamples(
    const v1::TopExamplesRequest& request) {
  return Call(*circuits_, &v1::Circuits::Stub::TopExamples, request);
}

absl::StatusOr<v1::LabelUnitsResponse> CircuitsClient::LabelUnits(
    const v1::LabelUnitsRequest& request) {
  return Call(*circuits_, &v1::Circuits::Stub::LabelUnits, request);
}

absl::StatusOr<v1::ListDatasetsResponse> CircuitsClient::ListDatasets() {
  return Call(*circuits_, &v1::Circuits::Stub::ListDatasets,
              v1::ListDatasetsRequest());
}

absl::StatusOr<v1::Dataset> CircuitsClient::UploadDataset(
    v1::UploadDatasetRequest::Header header, absl::string_view bytes,
    int64_t chunk_bytes) {
  header.set_size_bytes(static_cast<int64_t>(bytes.size()));
  header.set_sha256(core::Sha256Hex(bytes));
  grpc::ClientContext context;
  Prepare(context);
  v1::Dataset dataset;
  std::unique_ptr<grpc::ClientWriter<v1::UploadDatasetRequest>> writer =
      circuits_->UploadDataset(&context, &dataset);
  SendChunks(*writer, header, bytes, chunk_bytes);
  absl::Status status = visualizer_.FromGrpc(writer->Finish());
  if (!status.ok()) return status;
  return dataset;
}

absl::StatusOr<v1::DeleteDatasetResponse> CircuitsClient::DeleteDataset(
    const std::string& name) {
  v1::DeleteDatasetRequest request;
  request.set_name(name);
  return Call(*circuits_, &v1::Circuits::Stub::DeleteDataset, request);
}

absl::StatusOr<v1::Job> CircuitsClient::SubmitJob(
    const v1::RenderRequest& request) {
  v1::SubmitJobRequest submit;
  *submit.mutable_request() = request;
  return Call(*jobs_, &v1::Visualizer::Stub::SubmitJob, submit);
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
