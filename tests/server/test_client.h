// Client-side helpers for the end-to-end tests: requests, a whole Render
// stream read into one value, the health check, and tensor bytes as floats.
#ifndef FEATVIZ_TESTS_SERVER_TEST_CLIENT_H_
#define FEATVIZ_TESTS_SERVER_TEST_CLIENT_H_

#include <chrono>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

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

// A render that would take minutes on this model (10000 steps of two
// 224x224 images), so it is still running whenever a test looks.
inline v1::RenderRequest LongRequest() {
  v1::RenderRequest request = TextRequest("logit(3)", 10000);
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

}  // namespace featviz::testing

#endif  // FEATVIZ_TESTS_SERVER_TEST_CLIENT_H_
