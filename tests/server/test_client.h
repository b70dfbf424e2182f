// Client-side helpers for the end-to-end tests: requests, a whole Render
// stream read into one value, the health check, and tensor bytes as floats.
#ifndef FEATVIZ_TESTS_SERVER_TEST_CLIENT_H_
#define FEATVIZ_TESTS_SERVER_TEST_CLIENT_H_

#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "absl/time/clock.h"
#include "absl/time/time.h"

#include "featviz/v1/featviz.grpc.pb.h"
#include "grpc/health/v1/health.grpc.pb.h"

namespace featviz::testing {

inline constexpr char kModel[] = "mnist_classifier";
inline constexpr char kServiceName[] = "featviz.v1.Visualizer";

// A render of `objective` on the MNIST model with tensor and PNG output.
inline v1::RenderRequest TextRequest(const std::string& objective,
                                     int64_t steps) {
  v1::RenderRequest request;
  request.set_model(kModel);
  request.set_objective_text(objective);
  request.mutable_optimizer()->set_steps(steps);
  request.mutable_output()->set_tensor(true);
  request.mutable_output()->set_png(true);
  return request;
}

// A render of two 224x224 images that is still running whenever a test
// looks: 10000 steps, the default max_steps, take 20 s on a fast CPU. A test
// that needs it to outlast a longer wait asks for kEndlessSteps from a
// server started with kEndlessMaxSteps: hours on any machine (and its
// loss curve, 4 bytes a step, still fits a result message).
inline constexpr int64_t kEndlessSteps = 10000000;
inline constexpr char kEndlessMaxSteps[] = "--max_steps=10000000";
inline v1::RenderRequest LongRequest(int64_t steps = 10000) {
  v1::RenderRequest request = TextRequest("logit(3)", steps);
  request.mutable_image()->set_size(224);
  request.mutable_image()->set_batch(2);
  request.mutable_output()->set_tensor(false);
  request.mutable_output()->set_png(false);
  request.mutable_output()->set_progress_every(1);
  return request;
}

// Everything one Render stream said.
struct RenderOutcome {
  grpc::Status status;
  std::vector<v1::RenderProgress> progress;
  std::optional<v1::RenderResult> result;
  int results = 0;                  // Result events seen.
  bool progress_after_result = false;
};

inline std::chrono::system_clock::time_point After(double seconds) {
  return std::chrono::system_clock::now() +
         std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000));
}

// Reads a Render stream to its end.
inline RenderOutcome ReadAll(grpc::ClientReader<v1::RenderEvent>& reader) {
  RenderOutcome outcome;
  v1::RenderEvent event;
  while (reader.Read(&event)) {
    if (event.has_progress()) {
      if (outcome.results > 0) outcome.progress_after_result = true;
      outcome.progress.push_back(event.progress());
    } else if (event.has_result()) {
      ++outcome.results;
      outcome.result = event.result();
    }
  }
  outcome.status = reader.Finish();
  return outcome;
}

inline RenderOutcome RenderAll(v1::Visualizer::Stub& stub,
                               const v1::RenderRequest& request,
                               double deadline_seconds = 120) {
  grpc::ClientContext context;
  context.set_deadline(After(deadline_seconds));
  std::unique_ptr<grpc::ClientReader<v1::RenderEvent>> reader =
      stub.Render(&context, request);
  return ReadAll(*reader);
}

// The health status of `service` ("" for the server), or the RPC's error.
struct HealthOutcome {
  grpc::Status status;
  grpc::health::v1::HealthCheckResponse::ServingStatus serving =
      grpc::health::v1::HealthCheckResponse::UNKNOWN;
};

inline HealthOutcome CheckHealth(const std::shared_ptr<grpc::Channel>& channel,
                                 const std::string& service) {
  auto stub = grpc::health::v1::Health::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(After(10));
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(service);
  grpc::health::v1::HealthCheckResponse response;
  HealthOutcome outcome;
  outcome.status = stub->Check(&context, request, &response);
  outcome.serving = response.status();
  return outcome;
}

inline std::vector<float> Floats(const v1::Tensor& tensor) {
  std::vector<float> values(tensor.data().size() / sizeof(float));
  std::memcpy(values.data(), tensor.data().data(),
              values.size() * sizeof(float));
  return values;
}

inline v1::Tensor FloatTensor(std::vector<int64_t> shape,
                              const std::vector<float>& values) {
  v1::Tensor tensor;
  for (int64_t dim : shape) tensor.add_shape(dim);
  tensor.set_dtype(v1::Tensor::DTYPE_FLOAT32);
  tensor.set_data(reinterpret_cast<const char*>(values.data()),
                  values.size() * sizeof(float));
  return tensor;
}

// The job API, one call each; WaitForState polls the job itself, so a test
// waits for the state it needs however fast the machine is.
struct JobReply {
  grpc::Status status;
  v1::Job job;
};

inline JobReply Submit(v1::Visualizer::Stub& stub, const v1::RenderRequest& request) {
  grpc::ClientContext context;
  context.set_deadline(After(60));
  v1::SubmitJobRequest submit;
  *submit.mutable_request() = request;
  JobReply reply;
  reply.status = stub.SubmitJob(&context, submit, &reply.job);
  return reply;
}

inline JobReply Get(v1::Visualizer::Stub& stub, const std::string& id,
             bool include_result = false) {
  grpc::ClientContext context;
  context.set_deadline(After(60));
  v1::GetJobRequest get;
  get.set_id(id);
  get.set_include_result(include_result);
  JobReply reply;
  reply.status = stub.GetJob(&context, get, &reply.job);
  return reply;
}

inline JobReply Cancel(v1::Visualizer::Stub& stub, const std::string& id) {
  grpc::ClientContext context;
  context.set_deadline(After(60));
  v1::CancelJobRequest cancel;
  cancel.set_id(id);
  JobReply reply;
  reply.status = stub.CancelJob(&context, cancel, &reply.job);
  return reply;
}

inline RenderOutcome Watch(v1::Visualizer::Stub& stub, const std::string& id,
                    double deadline_seconds = 120) {
  grpc::ClientContext context;
  context.set_deadline(After(deadline_seconds));
  v1::WatchJobRequest watch;
  watch.set_id(id);
  std::unique_ptr<grpc::ClientReader<v1::RenderEvent>> reader =
      stub.WatchJob(&context, watch);
  return ReadAll(*reader);
}

inline v1::ServerStats Stats(v1::Visualizer::Stub& stub) {
  grpc::ClientContext context;
  context.set_deadline(After(30));
  v1::ServerStats stats;
  EXPECT_TRUE(stub.GetServerStats(&context, {}, &stats).ok());
  return stats;
}

// Polls job `id` until it is in `state`; the last reply either way.
inline JobReply WaitForState(v1::Visualizer::Stub& stub, const std::string& id,
                      v1::JobState state,
                      absl::Duration timeout = absl::Seconds(60)) {
  const absl::Time give_up = absl::Now() + timeout;
  JobReply reply;
  do {
    reply = Get(stub, id);
    if (!reply.status.ok() || reply.job.state() == state) break;
    absl::SleepFor(absl::Milliseconds(20));
  } while (absl::Now() < give_up);
  return reply;
}

}  // namespace featviz::testing

#endif  // FEATVIZ_TESTS_SERVER_TEST_CLIENT_H_
