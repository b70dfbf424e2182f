// featviz.v1.Circuits end to end: the real featviz-server with the MNIST
// classifier and the MNIST test set as its dataset directory.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <memory>
#include <set>

#include "absl/strings/match.h"
#include "absl/time/clock.h"
#include "core/image.h"
#include "featviz/v1/circuits.grpc.pb.h"
#include "tests/server/server_process.h"
#include "tests/server/shared_server.h"
#include "tests/server/test_client.h"

namespace featviz::testing {
namespace {

using grpc::StatusCode;

class CircuitsServiceTest : public SharedServerTest<CircuitsServiceTest> {
 public:
  static std::vector<std::string> ServerFlags() { return MnistServerFlags(); }
};

v1::ImageInput DatasetIndices(std::vector<int64_t> indices) {
  v1::ImageInput input;
  input.mutable_dataset()->set_dataset("mnist");
  for (int64_t i : indices) input.mutable_dataset()->add_indices(i);
  return input;
}

// The status's code and whether its message contains `field`.
TEST_F(CircuitsServiceTest, ListsTheMnistTestSet) {
  grpc::ClientContext context;
  v1::ListDatasetsResponse response;
  ASSERT_TRUE(circuits_->ListDatasets(&context, {}, &response).ok());
  ASSERT_EQ(response.datasets_size(), 1);
  const v1::Dataset& mnist = response.datasets(0);
  EXPECT_EQ(mnist.name(), "mnist");
  EXPECT_EQ(mnist.size(), 10000);
  EXPECT_EQ(std::vector<int64_t>(mnist.image_shape().begin(), mnist.image_shape().end()),
            (std::vector<int64_t>{1, 28, 28}));
  ASSERT_EQ(mnist.class_counts_size(), 10);
  int64_t total = 0;
  for (int64_t n : mnist.class_counts()) total += n;
  EXPECT_EQ(total, 10000);
  EXPECT_EQ(mnist.class_counts(1), 1135);  // The test set's count of ones.
}

TEST_F(CircuitsServiceTest, ActivationMapsWithStatisticsAndOverlays) {
  v1::ComputeActivationsRequest request;
  request.set_model(kModel);
  *request.mutable_input() = DatasetIndices({0, 1});
  v1::LayerChannels* layer = request.add_layers();
  layer->set_layer("conv2");
  layer->add_channels(3);
  layer->add_channels(5);
  request.set_overlay_png(true);
  grpc::ClientContext context;
  v1::ComputeActivationsResponse response;
  grpc::Status status = circuits_->ComputeActivations(&context, request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.model(), kModel);
  EXPECT_EQ(response.model_hash().size(), 64u);
  EXPECT_EQ(std::vector<int64_t>(response.labels().begin(), response.labels().end()),
            (std::vector<int64_t>{7, 2}));
  ASSERT_EQ(response.layers_size(), 1);
  const v1::LayerActivations& maps = response.layers(0);
  EXPECT_EQ(std::vector<int64_t>(maps.maps().shape().begin(), maps.maps().shape().end()),
            (std::vector<int64_t>{2, 2, 8, 8}));
  const std::vector<float> values = Floats(maps.maps());
  ASSERT_EQ(maps.stats_size(), 2);
  // Channel 3's max over both images is the max of its maps.
  float max3 = -1e30f;
  for (int b = 0; b < 2; ++b) {
    for (int i = 0; i < 64; ++i) max3 = std::max(max3, values[(b * 2 + 0) * 64 + i]);
  }
  EXPECT_NEAR(maps.stats(0).max(), max3, 1e-5);
  ASSERT_EQ(maps.overlay_png_size(), 4);
  absl::StatusOr<at::Tensor> png = core::DecodePng(maps.overlay_png(0));
  ASSERT_TRUE(png.ok());
  EXPECT_EQ(png->sizes(), (std::vector<int64_t>{3, 28, 28}));
}

TEST_F(CircuitsServiceTest, BadInputsGetPreciseStatusesAndTheServerGoesOn) {
  auto activations = [&](v1::ComputeActivationsRequest request) {
    if (request.layers_size() == 0) request.add_layers()->set_layer("conv2");
    if (request.model().empty()) request.set_model(kModel);
    grpc::ClientContext context;
    v1::ComputeActivationsResponse response;
    return circuits_->ComputeActivations(&context, request, &response);
  };
  v1::ComputeActivationsRequest unknown_dataset;
  *unknown_dataset.mutable_input() = DatasetIndices({0});
  unknown_dataset.mutable_input()->mutable_dataset()->set_dataset("cifar");
  ExpectError(activations(unknown_dataset), StatusCode::NOT_FOUND,
              "input.dataset.dataset: dataset 'cifar' is not hosted here");

  v1::ComputeActivationsRequest out_of_range;
  *out_of_range.mutable_input() = DatasetIndices({3, 10000});
  ExpectError(activations(out_of_range), StatusCode::OUT_OF_RANGE,
              "input.dataset.indices[1]: index 10000 out of range");

  v1::ComputeActivationsRequest wrong_shape;
  *wrong_shape.mutable_input()->mutable_images() =
      FloatTensor({1, 3, 28, 28}, std::vector<float>(3 * 28 * 28, 0.5f));
  ExpectError(activations(wrong_shape), StatusCode::INVALID_ARGUMENT,
              "input.images: model mnist_classifier takes images of shape [B, 1, 28, 28]");

  v1::ComputeActivationsRequest no_input;
  ExpectError(activations(no_input), StatusCode::INVALID_ARGUMENT,
              "input: give images or a dataset slice");

  v1::ComputeActivationsRequest bad_channel;
  *bad_channel.mutable_input() = DatasetIndices({0});
  bad_channel.add_layers()->set_layer("conv2");
  bad_channel.mutable_layers(0)->add_channels(32);
  ExpectError(activations(bad_channel), StatusCode::OUT_OF_RANGE,
              "channel 32 out of range for layer conv2");

  v1::ComputeActivationsRequest unknown_model;
  unknown_model.set_model("resnet");
  *unknown_model.mutable_input() = DatasetIndices({0});
  ExpectError(activations(unknown_model), StatusCode::NOT_FOUND, "model: model 'resnet'");

  v1::ComputeActivationsRequest class_range;
  class_range.mutable_input()->mutable_dataset()->set_dataset("mnist");
  class_range.mutable_input()->mutable_dataset()->set_label(1);
  class_range.mutable_input()->mutable_dataset()->set_start(1130);
  class_range.mutable_input()->mutable_dataset()->set_count(10);
  ExpectError(activations(class_range), StatusCode::OUT_OF_RANGE,
              "out of range for class 1 of dataset mnist with 1135 images");

  // Client-sent images of the right shape still work after all that.
  v1::ComputeActivationsRequest fine;
  *fine.mutable_input()->mutable_images() =
      FloatTensor({1, 28, 28}, std::vector<float>(28 * 28, 0.0f));
  EXPECT_TRUE(activations(fine).ok());
}

TEST_F(CircuitsServiceTest, AttributionRanksChannelsAndDrawsGradCam) {
  v1::AttributeRequest request;
  request.set_model(kModel);
  request.set_target("logit(7)");
  request.set_layer("conv2");
  request.mutable_input()->mutable_dataset()->set_dataset("mnist");
  request.mutable_input()->mutable_dataset()->set_label(7);
  request.mutable_input()->mutable_dataset()->set_count(16);
  request.set_gradcam_png(true);
  grpc::ClientContext context;
  v1::AttributeResponse response;
  grpc::Status status = circuits_->Attribute(&context, request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.target(), "logit(7)");
  EXPECT_EQ(response.images(), 16);
  ASSERT_EQ(response.scores_size(), 32);
  for (int i = 1; i < 32; ++i) {
    EXPECT_GE(response.scores(i - 1).score(), response.scores(i).score());
  }
  EXPECT_GT(response.scores(0).score(), 0);
  EXPECT_FALSE(response.linear_path());  // max-pool and ReLU lie between
  EXPECT_EQ(response.gradcam_png_size(), 16);
  EXPECT_EQ(response.gradcam().shape(0), 16);

  v1::AttributeRequest bad = request;
  bad.set_target("logit(7");
  grpc::ClientContext context2;
  ExpectError(circuits_->Attribute(&context2, bad, &response),
              StatusCode::INVALID_ARGUMENT, "target: column");
  bad.set_target("logit(7)");
  bad.set_layer("fc1");
  grpc::ClientContext context3;
  ExpectError(circuits_->Attribute(&context3, bad, &response),
              StatusCode::INVALID_ARGUMENT, "layer: gradcam needs a layer with spatial maps");
}

TEST_F(CircuitsServiceTest, TopExamplesAreCachedAndAreTheMaxima) {
  v1::TopExamplesRequest request;
  request.set_model(kModel);
  request.set_layer("conv2");
  request.add_channels(4);
  request.set_dataset("mnist");
  request.set_top_n(5);
  request.set_png(true);
  v1::TopExamplesResponse first, second;
  {
    grpc::ClientContext context;
    ASSERT_TRUE(circuits_->TopExamples(&context, request, &first).ok());
  }
  {
    grpc::ClientContext context;
    ASSERT_TRUE(circuits_->TopExamples(&context, request, &second).ok());
  }
  EXPECT_TRUE(second.cached());
  ASSERT_EQ(first.units_size(), 1);
  const v1::UnitExamples& unit = first.units(0);
  ASSERT_EQ(unit.indices_size(), 5);
  EXPECT_EQ(unit.png_size(), 5);
  EXPECT_EQ(second.units(0).indices(0), unit.indices(0));
  // Recomputing the channel's maps on those images gives the same maxima.
  v1::ComputeActivationsRequest check;
  check.set_model(kModel);
  *check.mutable_input() =
      DatasetIndices(std::vector<int64_t>(unit.indices().begin(), unit.indices().end()));
  check.add_layers()->set_layer("conv2");
  check.mutable_layers(0)->add_channels(4);
  grpc::ClientContext context;
  v1::ComputeActivationsResponse maps;
  ASSERT_TRUE(circuits_->ComputeActivations(&context, check, &maps).ok());
  const std::vector<float> values = Floats(maps.layers(0).maps());
  for (int i = 0; i < 5; ++i) {
    const float max = *std::max_element(values.begin() + i * 64, values.begin() + (i + 1) * 64);
    EXPECT_NEAR(max, unit.values(i), 1e-4);
    if (i > 0) {
      EXPECT_GE(unit.values(i - 1), unit.values(i));
    }
  }
  EXPECT_NEAR(maps.layers(0).stats(0).max(), unit.values(0), 1e-4);
}

TEST_F(CircuitsServiceTest, FindCircuitScoresDetectorsAndQueuesTheirRenders) {
  v1::FindCircuitRequest request;
  request.set_model(kModel);
  request.set_layer("conv2");
  request.add_classes(3);
  request.add_classes(8);
  request.set_dataset("mnist");
  request.set_examples_per_class(16);
  request.mutable_render()->mutable_optimizer()->set_steps(8);
  request.mutable_render()->set_seed(1);
  grpc::ClientContext context;
  v1::FindCircuitResponse response;
  grpc::Status status = circuits_->FindCircuit(&context, request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_EQ(response.classes_size(), 2);
  std::set<std::string> jobs;
  for (const v1::ClassCircuit& c : response.classes()) {
    EXPECT_EQ(c.detectors_size(), 3);
    EXPECT_EQ(c.images_scored(), 16);
    EXPECT_FALSE(c.class_job_id().empty());
    jobs.insert(c.class_job_id());
    for (const v1::Detector& d : c.detectors()) {
      EXPECT_FALSE(d.job_id().empty());
      EXPECT_FALSE(d.activation_png().empty());
      jobs.insert(d.job_id());
    }
  }
  EXPECT_EQ(response.classes(0).class_name(), "3");
  // Every queued render succeeds, and each renders what it says.
  for (const std::string& id : jobs) {
    v1::Job job;
    const absl::Time give_up = absl::Now() + absl::Seconds(240);
    while (absl::Now() < give_up) {
      grpc::ClientContext get;
      v1::GetJobRequest get_request;
      get_request.set_id(id);
      get_request.set_include_result(true);
      ASSERT_TRUE(stub_->GetJob(&get, get_request, &job).ok());
      if (job.state() == v1::JOB_STATE_SUCCEEDED || job.state() == v1::JOB_STATE_FAILED) break;
      absl::SleepFor(absl::Milliseconds(100));
    }
    EXPECT_EQ(job.state(), v1::JOB_STATE_SUCCEEDED) << job.error_message();
    EXPECT_EQ(job.result().png_size(), 1);
  }

  // Bad render settings are refused before anything is queued.
  v1::FindCircuitRequest bad = request;
  bad.mutable_render()->mutable_optimizer()->set_steps(1000000000);
  grpc::ClientContext context2;
  ExpectError(circuits_->FindCircuit(&context2, bad, &response),
              StatusCode::INVALID_ARGUMENT, "render: optimizer.steps");
  bad = request;
  bad.set_top_k(40);
  grpc::ClientContext context3;
  ExpectError(circuits_->FindCircuit(&context3, bad, &response),
              StatusCode::OUT_OF_RANGE, "top_k must be in [1, 32]");
  bad = request;
  bad.add_classes(10);
  grpc::ClientContext context4;
  ExpectError(circuits_->FindCircuit(&context4, bad, &response),
              StatusCode::OUT_OF_RANGE, "classes[2]: class 10 out of range");
}

}  // namespace
}  // namespace featviz::testing
