// End to end: the real featviz-server on a free port, the committed MNIST
// model, and the featviz.v1 API as a client sees it.
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "core/device.h"
#include "tests/server/server_process.h"
#include "tests/server/test_client.h"

namespace featviz::testing {
namespace {

using ::grpc::StatusCode;
using Health = ::grpc::health::v1::HealthCheckResponse;

class VisualizerServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<ServerProcess>> server = ServerProcess::Start();
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    stub_ = server_->NewStub();
  }

  std::unique_ptr<ServerProcess> server_;
  std::unique_ptr<v1::Visualizer::Stub> stub_;
};

bool IsLowercaseHex(const std::string& text) {
  for (char c : text) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

void ExpectMnistModel(const v1::Model& model) {
  EXPECT_EQ(model.name(), kModel);
  ASSERT_EQ(model.layers_size(), 4);
  EXPECT_EQ(model.layers(0).path(), "conv1");
  EXPECT_EQ(model.layers(1).path(), "conv2");
  EXPECT_EQ(model.layers(2).path(), "fc1");
  EXPECT_EQ(model.layers(3).path(), "fc2");
  EXPECT_EQ(model.layers(1).kind(), "Conv2d");
  EXPECT_EQ(model.layers(1).output_shape_size(), 4);
  EXPECT_EQ(model.layers(1).channels(), model.layers(1).output_shape(1));
  EXPECT_EQ(model.class_names_size(), 10);
  EXPECT_EQ(model.class_names(3), "3");
  EXPECT_EQ(model.content_hash().size(), 64u);
  EXPECT_TRUE(IsLowercaseHex(model.content_hash())) << model.content_hash();
  EXPECT_EQ(model.input().channels(), 1);
  EXPECT_EQ(model.input().height(), 28);
  EXPECT_EQ(model.input().width(), 28);
  EXPECT_EQ(model.device(), "cpu");
}

TEST_F(VisualizerServiceTest, ListModelsReturnsTheMnistClassifier) {
  grpc::ClientContext context;
  v1::ListModelsResponse response;
  ASSERT_TRUE(stub_->ListModels(&context, {}, &response).ok());
  ASSERT_EQ(response.models_size(), 1);
  ExpectMnistModel(response.models(0));
  EXPECT_EQ(response.next_page_token(), "");
}

TEST_F(VisualizerServiceTest, ListModelsPagesAndRefusesForeignTokens) {
  v1::ListModelsRequest request;
  request.set_page_size(1);
  {
    grpc::ClientContext context;
    v1::ListModelsResponse response;
    ASSERT_TRUE(stub_->ListModels(&context, request, &response).ok());
    EXPECT_EQ(response.models_size(), 1);
    EXPECT_EQ(response.next_page_token(), "");  // It was the last page.
  }
  request.set_page_token("not-a-token");
  grpc::ClientContext context;
  v1::ListModelsResponse response;
  const grpc::Status status = stub_->ListModels(&context, request, &response);
  EXPECT_EQ(status.error_code(), StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(status.error_message().find("page_token 'not-a-token'"),
            std::string::npos)
      << status.error_message();
}

TEST_F(VisualizerServiceTest, GetModelReturnsTheModelByName) {
  grpc::ClientContext context;
  v1::GetModelRequest request;
  request.set_name(kModel);
  v1::Model model;
  ASSERT_TRUE(stub_->GetModel(&context, request, &model).ok());
  ExpectMnistModel(model);
}

TEST_F(VisualizerServiceTest, GetModelOfAnUnknownNameIsNotFoundAndNamesIt) {
  grpc::ClientContext context;
  v1::GetModelRequest request;
  request.set_name("nope");
  v1::Model model;
  const grpc::Status status = stub_->GetModel(&context, request, &model);
  EXPECT_EQ(status.error_code(), StatusCode::NOT_FOUND);
  EXPECT_EQ(status.error_message(),
            "model 'nope' is not hosted here; models are: mnist_classifier");
}

TEST_F(VisualizerServiceTest, HealthIsServingForTheServerAndTheService) {
  for (const std::string service : {"", kServiceName}) {
    const HealthOutcome health = CheckHealth(server_->channel(), service);
    ASSERT_TRUE(health.status.ok()) << health.status.error_message();
    EXPECT_EQ(health.serving, Health::SERVING) << "service '" << service << "'";
  }
}

TEST_F(VisualizerServiceTest, RenderStreamsProgressInStepOrderThenTheResult) {
  v1::RenderRequest request = TextRequest("logit(3)", 64);
  const RenderOutcome outcome = RenderAll(*stub_, request);
  ASSERT_TRUE(outcome.status.ok()) << outcome.status.error_message();

  // Progress every 16 steps (the default), in strictly increasing order.
  ASSERT_GE(outcome.progress.size(), 2u);
  int64_t last_step = 0;
  for (const v1::RenderProgress& progress : outcome.progress) {
    EXPECT_GT(progress.step(), last_step);
    last_step = progress.step();
    EXPECT_EQ(progress.total_steps(), 64);
    EXPECT_EQ(progress.term_values_size(), 1);
    EXPECT_TRUE(progress.preview_png().empty());
  }
  EXPECT_EQ(last_step, 64);
  EXPECT_EQ(outcome.results, 1);
  EXPECT_FALSE(outcome.progress_after_result);
  ASSERT_TRUE(outcome.result.has_value());
  const v1::RenderResult& result = *outcome.result;

  EXPECT_EQ(result.model(), kModel);
  EXPECT_EQ(result.model_hash().size(), 64u);
  EXPECT_EQ(result.objective(), "logit(3)");
  EXPECT_EQ(result.steps(), 64);
  ASSERT_EQ(result.images().shape_size(), 4);
  EXPECT_EQ(result.images().shape(0), 1);
  EXPECT_EQ(result.images().shape(1), 1);
  EXPECT_EQ(result.images().shape(2), 28);
  EXPECT_EQ(result.images().shape(3), 28);
  EXPECT_EQ(result.images().dtype(), v1::Tensor::DTYPE_FLOAT32);
  const std::vector<float> pixels = Floats(result.images());
  ASSERT_EQ(pixels.size(), 784u);
  for (float p : pixels) {
    ASSERT_GE(p, 0.0f);
    ASSERT_LE(p, 1.0f);
  }
  ASSERT_EQ(result.png_size(), 1);
  EXPECT_EQ(result.png(0).substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));

  ASSERT_EQ(result.terms_size(), 1);
  EXPECT_EQ(result.terms(0).term(), "logit(3)");
  EXPECT_EQ(result.terms(0).weight(), 1.0);
  EXPECT_EQ(result.terms(0).trace_size(), 64);
  EXPECT_DOUBLE_EQ(result.final_total(), result.terms(0).final_value());

  ASSERT_EQ(result.logits().shape_size(), 2);
  EXPECT_EQ(result.logits().shape(0), 1);
  EXPECT_EQ(result.logits().shape(1), 10);
  const std::vector<float> probs = Floats(result.probs());
  ASSERT_EQ(probs.size(), 10u);
  for (int c = 0; c < 10; ++c) {
    if (c != 3) {
      EXPECT_GT(probs[3], probs[c]) << "class " << c;
    }
  }
  EXPECT_TRUE(result.layer_stats().empty());  // logit() names no layer.
  EXPECT_TRUE(result.has_timings());
  EXPECT_GE(result.timings().queue_seconds(), 0);
  EXPECT_GT(result.timings().compute_seconds(), 0);
  EXPECT_NE(result.transforms(), "");
  EXPECT_EQ(result.linear_mode(), "invariant");  // The server's default.
}

TEST_F(VisualizerServiceTest, RenderOfAChannelReportsThatLayersStatistics) {
  v1::RenderRequest request = TextRequest("channel(conv2, 5)", 16);
  request.mutable_image()->set_batch(2);
  request.mutable_output()->set_preview_png(true);
  request.mutable_output()->set_progress_every(8);
  const RenderOutcome outcome = RenderAll(*stub_, request);
  ASSERT_TRUE(outcome.status.ok()) << outcome.status.error_message();
  ASSERT_EQ(outcome.progress.size(), 2u);
  for (const v1::RenderProgress& progress : outcome.progress) {
    EXPECT_EQ(progress.preview_png().substr(1, 3), "PNG");
  }
  ASSERT_TRUE(outcome.result.has_value());
  ASSERT_EQ(outcome.result->layer_stats_size(), 1);
  const v1::LayerStats& stats = outcome.result->layer_stats(0);
  EXPECT_EQ(stats.layer(), "conv2");
  ASSERT_EQ(stats.mean().shape_size(), 2);
  EXPECT_EQ(stats.mean().shape(0), 2);
  EXPECT_EQ(stats.max().shape(0), 2);
  EXPECT_EQ(stats.mean().shape(1), stats.max().shape(1));
  EXPECT_EQ(outcome.result->png_size(), 2);
}

TEST_F(VisualizerServiceTest, RenderReportsThePickedSeedAndRepeatsBitwiseWithIt) {
  v1::RenderRequest request = TextRequest("logit(3) - 0.01 * tv()", 16);
  const RenderOutcome first = RenderAll(*stub_, request);
  ASSERT_TRUE(first.status.ok()) << first.status.error_message();
  ASSERT_TRUE(first.result.has_value());

  request.set_seed(first.result->seed());
  const RenderOutcome again = RenderAll(*stub_, request);
  ASSERT_TRUE(again.status.ok()) << again.status.error_message();
  ASSERT_TRUE(again.result.has_value());
  EXPECT_EQ(again.result->seed(), first.result->seed());
  EXPECT_EQ(again.result->images().data(), first.result->images().data());
  EXPECT_EQ(again.result->logits().data(), first.result->logits().data());
}

// A request's precision is its own: the result says which arithmetic ran,
// an empty field is the server's default (GetServerStats says which), and
// the same seed in bf16 is computed in bf16, not answered from the fp32
// result's cache entry.
TEST_F(VisualizerServiceTest, RenderPrecisionIsTheRequestsAndKeysTheCache) {
  std::string default_precision;
  {
    grpc::ClientContext context;
    v1::ServerStats stats;
    ASSERT_TRUE(stub_->GetServerStats(&context, {}, &stats).ok());
    default_precision = stats.default_precision();
  }
  v1::RenderRequest request = TextRequest("channel(conv2, 5)", 8);
  request.set_seed(11);
  const RenderOutcome unnamed = RenderAll(*stub_, request);
  ASSERT_TRUE(unnamed.status.ok()) << unnamed.status.error_message();
  ASSERT_TRUE(unnamed.result.has_value());
  EXPECT_EQ(unnamed.result->precision(), default_precision);

  request.set_precision("fp32");
  const RenderOutcome fp32 = RenderAll(*stub_, request);
  ASSERT_TRUE(fp32.status.ok()) << fp32.status.error_message();
  ASSERT_TRUE(fp32.result.has_value());
  EXPECT_EQ(fp32.result->precision(), "fp32");

  request.set_precision("bf16");
  const RenderOutcome bf16 = RenderAll(*stub_, request);
  ASSERT_TRUE(bf16.status.ok()) << bf16.status.error_message();
  ASSERT_TRUE(bf16.result.has_value());
  EXPECT_EQ(bf16.result->precision(), "bf16");
  // The steps ran in bfloat16: the images are not the fp32 ones.
  EXPECT_NE(bf16.result->images().data(), fp32.result->images().data());
  ASSERT_EQ(bf16.result->terms_size(), 1);
  EXPECT_TRUE(std::isfinite(bf16.result->terms(0).final_value()));
  // The unnamed request is the named one of the server's default, bit for
  // bit.
  const RenderOutcome& same = default_precision == "bf16" ? bf16 : fp32;
  EXPECT_EQ(unnamed.result->images().data(), same.result->images().data());
}

TEST_F(VisualizerServiceTest, RenderOfAnObjectiveTreeMatchesTheSameText) {
  v1::RenderRequest text = TextRequest("logit(3) - 0.01 * tv()", 16);
  text.set_seed(7);
  v1::RenderRequest tree = text;
  v1::Objective* objective = tree.mutable_objective_tree();
  v1::WeightedTerm* logit = objective->add_terms();
  logit->set_weight(1);
  logit->mutable_term()->set_kind(v1::TERM_KIND_LOGIT);
  logit->mutable_term()->set_index(3);
  v1::WeightedTerm* tv = objective->add_terms();
  tv->set_weight(-0.01);
  tv->mutable_term()->set_kind(v1::TERM_KIND_TV);

  const RenderOutcome from_text = RenderAll(*stub_, text);
  const RenderOutcome from_tree = RenderAll(*stub_, tree);
  ASSERT_TRUE(from_text.status.ok()) << from_text.status.error_message();
  ASSERT_TRUE(from_tree.status.ok()) << from_tree.status.error_message();
  EXPECT_EQ(from_tree.result->objective(), "logit(3) - 0.01 * tv()");
  EXPECT_EQ(from_tree.result->objective(), from_text.result->objective());
  ASSERT_EQ(from_tree.result->terms_size(), 2);
  EXPECT_EQ(from_tree.result->terms(1).term(), "tv()");
  EXPECT_EQ(from_tree.result->terms(1).weight(), -0.01);
  EXPECT_EQ(from_tree.result->images().data(), from_text.result->images().data());
}

// ------------------------------------------------------- bad requests

struct BadRequest {
  std::string name;
  std::function<void(v1::RenderRequest&)> change;
  StatusCode code;
  std::string message;  // A substring of the status message.
};

v1::Transform* CustomTransform(v1::RenderRequest& request,
                               v1::Transform::Kind kind) {
  request.mutable_transforms()->set_preset(v1::Transforms::PRESET_CUSTOM);
  v1::Transform* transform = request.mutable_transforms()->add_list();
  transform->set_kind(kind);
  return transform;
}

v1::Term* TreeTerm(v1::RenderRequest& request, double weight,
                   v1::TermKind kind) {
  v1::WeightedTerm* term = request.mutable_objective_tree()->add_terms();
  term->set_weight(weight);
  term->mutable_term()->set_kind(kind);
  return term->mutable_term();
}

const double kNaN = std::numeric_limits<double>::quiet_NaN();

std::vector<BadRequest> BadRequests() {
  using R = v1::RenderRequest;
  return {
      {"unknown model", [](R& r) { r.set_model("nope"); }, StatusCode::NOT_FOUND,
       "model 'nope' is not hosted here; models are: mnist_classifier"},
      {"empty model", [](R& r) { r.set_model(""); },
       StatusCode::INVALID_ARGUMENT, "model must name a hosted model"},
      {"unknown layer", [](R& r) { r.set_objective_text("channel(conv9, 1)"); },
       StatusCode::NOT_FOUND,
       "objective_text: unknown layer 'conv9'; layers are: conv1, conv2, fc1, fc2"},
      {"channel out of range",
       [](R& r) { r.set_objective_text("channel(conv2, 70)"); },
       StatusCode::OUT_OF_RANGE,
       "objective_text: channel 70 out of range for layer conv2 with"},
      {"class out of range", [](R& r) { r.set_objective_text("logit(10)"); },
       StatusCode::OUT_OF_RANGE,
       "objective_text: class 10 out of range for a model with 10 classes"},
      {"neuron x outside the map",
       [](R& r) { r.set_objective_text("neuron(conv2, 1, 100, 0)"); },
       StatusCode::OUT_OF_RANGE, "neuron x 100 out of range for layer conv2"},
      {"batch index out of range",
       [](R& r) {
         r.set_objective_text("logit(3, batch=2)");
         r.mutable_image()->set_batch(2);
       },
       StatusCode::OUT_OF_RANGE, "batch index 2 out of range for a batch of 2"},
      {"diversity with batch 1",
       [](R& r) { r.set_objective_text("logit(3) + diversity(conv2)"); },
       StatusCode::INVALID_ARGUMENT,
       "diversity(conv2) compares the images of a batch and needs at least 2"},
      {"malformed objective text",
       [](R& r) { r.set_objective_text("channel(conv2 5)"); },
       StatusCode::INVALID_ARGUMENT, "objective_text: column 15: expected"},
      {"unknown objective function",
       [](R& r) { r.set_objective_text("foo(1)"); },
       StatusCode::INVALID_ARGUMENT,
       "objective_text: column 1: unknown function 'foo'"},
      {"empty objective text", [](R& r) { r.set_objective_text(""); },
       StatusCode::INVALID_ARGUMENT, "objective_text: objective is empty"},
      {"no objective", [](R& r) { r.clear_objective(); },
       StatusCode::INVALID_ARGUMENT,
       "objective: set objective_text or objective_tree; neither was given"},
      {"objective tree without terms",
       [](R& r) { r.mutable_objective_tree(); }, StatusCode::INVALID_ARGUMENT,
       "objective_tree.terms must hold at least one term, got none"},
      {"objective tree with a NaN weight",
       [](R& r) { TreeTerm(r, kNaN, v1::TERM_KIND_LOGIT)->set_index(3); },
       StatusCode::INVALID_ARGUMENT,
       "objective_tree.terms[0].weight must be finite and at most 1e+06 in "
       "magnitude, got nan"},
      {"objective tree term of unspecified kind",
       [](R& r) { TreeTerm(r, 1, v1::TERM_KIND_UNSPECIFIED); },
       StatusCode::INVALID_ARGUMENT,
       "objective_tree.terms[0].term.kind must be set, got TERM_KIND_UNSPECIFIED"},
      {"objective tree neuron with x but no y",
       [](R& r) {
         v1::Term* term = TreeTerm(r, 1, v1::TERM_KIND_NEURON);
         term->set_layer("conv2");
         term->set_x(1);
       },
       StatusCode::INVALID_ARGUMENT,
       "objective_tree.terms[0].term sets only x; set both x and y or neither"},
      {"objective tree channel out of range",
       [](R& r) {
         TreeTerm(r, 1, v1::TERM_KIND_LOGIT)->set_index(3);
         v1::Term* term = TreeTerm(r, 0.5, v1::TERM_KIND_CHANNEL);
         term->set_layer("conv2");
         term->set_index(99);
       },
       StatusCode::OUT_OF_RANGE,
       "objective_tree.terms[1].term: channel 99 out of range for layer conv2"},
      {"negative steps", [](R& r) { r.mutable_optimizer()->set_steps(-1); },
       StatusCode::INVALID_ARGUMENT,
       "optimizer.steps must be in [1, 10000] (0 means 256), got -1"},
      {"a billion steps",
       [](R& r) { r.mutable_optimizer()->set_steps(1000000000); },
       StatusCode::INVALID_ARGUMENT,
       "optimizer.steps must be in [1, 10000] (0 means 256), got 1000000000"},
      {"NaN learning rate", [](R& r) { r.mutable_optimizer()->set_lr(kNaN); },
       StatusCode::INVALID_ARGUMENT,
       "optimizer.lr must be in (0, 10] (0 means 0.05), got nan"},
      {"negative learning rate",
       [](R& r) { r.mutable_optimizer()->set_lr(-0.1); },
       StatusCode::INVALID_ARGUMENT,
       "optimizer.lr must be in (0, 10] (0 means 0.05), got -0.1"},
      {"learning rate 1e300",
       [](R& r) { r.mutable_optimizer()->set_lr(1e300); },
       StatusCode::INVALID_ARGUMENT,
       "optimizer.lr must be in (0, 10] (0 means 0.05), got 1e+300"},
      {"infinite learning rate",
       [](R& r) {
         r.mutable_optimizer()->set_lr(std::numeric_limits<double>::infinity());
       },
       StatusCode::INVALID_ARGUMENT,
       "optimizer.lr must be in (0, 10] (0 means 0.05), got inf"},
      {"weight 1e300 in the text",
       [](R& r) { r.set_objective_text("1e300 * logit(3)"); },
       StatusCode::INVALID_ARGUMENT,
       "objective_text: weight 1e+300 of logit(3) must be finite and at most "
       "1e+06 in magnitude"},
      {"weight 1e300 in the tree",
       [](R& r) { TreeTerm(r, 1e300, v1::TERM_KIND_LOGIT)->set_index(3); },
       StatusCode::INVALID_ARGUMENT,
       "objective_tree.terms[0].weight must be finite and at most 1e+06 in "
       "magnitude, got 1e+300"},
      {"a megabyte of objective text",
       [](R& r) {
         std::string text = "logit(3)";
         while (text.size() < (1 << 20)) text += " + logit(3)";
         r.set_objective_text(text);
       },
       StatusCode::INVALID_ARGUMENT,
       "more than the limit of 131072"},
      {"300 terms",
       [](R& r) {
         std::string text = "logit(3)";
         for (int i = 1; i < 300; ++i) text += " + logit(3)";
         r.set_objective_text(text);
       },
       StatusCode::INVALID_ARGUMENT,
       "objective_text: objective has 300 terms, more than the limit of 256"},
      {"300 terms in the tree",
       [](R& r) {
         for (int i = 0; i < 300; ++i) {
           TreeTerm(r, 1, v1::TERM_KIND_LOGIT)->set_index(3);
         }
       },
       StatusCode::INVALID_ARGUMENT,
       "objective_tree.terms holds 300 terms, more than the limit of 256"},
      {"direction value 1e300 in the tree",
       [](R& r) {
         v1::Term* term = TreeTerm(r, 1, v1::TERM_KIND_DIRECTION);
         term->set_layer("fc2");
         for (int i = 0; i < 10; ++i) term->add_vector(i == 4 ? 1e300 : 1);
       },
       StatusCode::INVALID_ARGUMENT,
       "objective_tree: direction value 1e+300 at position 4 must be finite"},
      {"l2 constant 1e300", [](R& r) { r.set_objective_text("logit(3) - l2(1e300)"); },
       StatusCode::INVALID_ARGUMENT,
       "objective_text: the constant 1e+300 of l2 must be finite and at most"},
      {"steps 2^63 - 1",
       [](R& r) {
         r.mutable_optimizer()->set_steps(std::numeric_limits<int64_t>::max());
       },
       StatusCode::INVALID_ARGUMENT,
       "optimizer.steps must be in [1, 10000] (0 means 256), got "
       "9223372036854775807"},
      {"batch -2^63",
       [](R& r) {
         r.mutable_image()->set_batch(std::numeric_limits<int64_t>::min());
       },
       StatusCode::INVALID_ARGUMENT,
       "image.batch must be in [0, 64] (0 means 1), got -9223372036854775808"},
      {"queue timeout 1e300 s",
       [](R& r) { r.set_queue_timeout_seconds(1e300); },
       StatusCode::INVALID_ARGUMENT,
       "queue_timeout_seconds must be in [0, 2.592e+06] (0 means the server's "
       "default), got 1e+300"},
      {"progress every 2^63 - 1 steps",
       [](R& r) {
         r.mutable_output()->set_progress_every(
             std::numeric_limits<int64_t>::max());
       },
       StatusCode::INVALID_ARGUMENT,
       "output.progress_every must be in [0, 10000] (0 means 16), got "
       "9223372036854775807"},
      {"neuron x 2^63 - 1",
       [](R& r) {
         r.set_objective_text("neuron(conv2, 1, 9223372036854775807, 0)");
       },
       StatusCode::OUT_OF_RANGE, "neuron x 9223372036854775807 out of range"},
      {"a megabyte of model name",
       [](R& r) { r.set_model(std::string(1 << 20, 'm')); },
       StatusCode::INVALID_ARGUMENT, "model must be at most 256 bytes, got 1048576"},
      {"a megabyte of owner",
       [](R& r) { r.set_owner(std::string(1 << 20, 'o')); },
       StatusCode::INVALID_ARGUMENT, "owner must be at most 256 bytes, got 1048576"},
      {"priority 2^31 - 1",
       [](R& r) { r.set_priority(std::numeric_limits<int32_t>::max()); },
       StatusCode::INVALID_ARGUMENT,
       "priority must be in [-10, 10], got 2147483647"},
      {"negative size", [](R& r) { r.mutable_image()->set_size(-1); },
       StatusCode::INVALID_ARGUMENT,
       "image.size must be in [0, 512] (0 means the model's input size), got -1"},
      {"huge size", [](R& r) { r.mutable_image()->set_size(100000); },
       StatusCode::INVALID_ARGUMENT,
       "image.size must be in [0, 512] (0 means the model's input size), got "
       "100000"},
      {"negative batch", [](R& r) { r.mutable_image()->set_batch(-1); },
       StatusCode::INVALID_ARGUMENT,
       "image.batch must be in [0, 64] (0 means 1), got -1"},
      {"huge batch", [](R& r) { r.mutable_image()->set_batch(1000000); },
       StatusCode::INVALID_ARGUMENT,
       "image.batch must be in [0, 64] (0 means 1), got 1000000"},
      {"decay power 100",
       [](R& r) { r.mutable_image()->set_decay_power(100); },
       StatusCode::INVALID_ARGUMENT,
       "image.decay_power must be in (0, 4] (0 means 1), got 100"},
      {"unknown parameterization",
       [](R& r) {
         r.mutable_image()->set_parameterization(
             static_cast<v1::Parameterization>(7));
       },
       StatusCode::INVALID_ARGUMENT,
       "image.parameterization has unknown value 7"},
      {"result larger than max_message_bytes",
       [](R& r) {
         r.mutable_image()->set_batch(64);
         r.mutable_image()->set_size(512);
       },
       StatusCode::INVALID_ARGUMENT,
       "more than this server's max_message_bytes 67108864"},
      {"transform of unspecified kind",
       [](R& r) { CustomTransform(r, v1::Transform::KIND_UNSPECIFIED); },
       StatusCode::INVALID_ARGUMENT,
       "transforms.list[0].kind must be set, got KIND_UNSPECIFIED"},
      {"negative pad",
       [](R& r) { CustomTransform(r, v1::Transform::KIND_PAD)->set_pixels(-1); },
       StatusCode::INVALID_ARGUMENT,
       "transforms.list[0].pixels (pad) must be in [0, 512], got -1"},
      {"jitter as large as the image",
       [](R& r) {
         CustomTransform(r, v1::Transform::KIND_JITTER)->set_pixels(28);
       },
       StatusCode::INVALID_ARGUMENT,
       "transforms.list[0].pixels (jitter) must be in [0, 27], got 28"},
      {"scale 0",
       [](R& r) { CustomTransform(r, v1::Transform::KIND_SCALE)->add_values(0); },
       StatusCode::INVALID_ARGUMENT,
       "transforms.list[0].values[0] (scale) must be in [0.1, 10], got 0"},
      {"rotate a million degrees",
       [](R& r) {
         CustomTransform(r, v1::Transform::KIND_PAD)->set_pixels(1);
         CustomTransform(r, v1::Transform::KIND_ROTATE)->add_values(1e6);
       },
       StatusCode::INVALID_ARGUMENT,
       "transforms.list[1].values[0] (rotate) must be in [-360, 360], got 1e+06"},
      {"transform list without PRESET_CUSTOM",
       [](R& r) {
         r.mutable_transforms()->add_list()->set_kind(v1::Transform::KIND_PAD);
       },
       StatusCode::INVALID_ARGUMENT,
       "transforms.list is only used with PRESET_CUSTOM, but preset is "
       "PRESET_DEFAULT"},
      {"init image of the wrong shape",
       [](R& r) {
         *r.mutable_image()->mutable_init_image() =
             FloatTensor({1, 14, 14}, std::vector<float>(196, 0.5f));
       },
       StatusCode::INVALID_ARGUMENT,
       "image.init_image.shape must be [1, 28, 28] or [N, 1, 28, 28] with N 1 "
       "or the batch (1), got [1, 14, 14]"},
      {"init image with too few bytes",
       [](R& r) {
         *r.mutable_image()->mutable_init_image() =
             FloatTensor({1, 28, 28}, std::vector<float>(25, 0.5f));
       },
       StatusCode::INVALID_ARGUMENT,
       "image.init_image.data has 100 bytes, but shape [1, 28, 28] of float32 "
       "needs 3136"},
      {"init image without a dtype",
       [](R& r) {
         v1::Tensor* tensor = r.mutable_image()->mutable_init_image();
         *tensor = FloatTensor({1, 28, 28}, std::vector<float>(784, 0.5f));
         tensor->set_dtype(v1::Tensor::DTYPE_UNSPECIFIED);
       },
       StatusCode::INVALID_ARGUMENT,
       "image.init_image.dtype must be DTYPE_FLOAT32, got DTYPE_UNSPECIFIED"},
      {"init image with a pixel outside [0, 1]",
       [](R& r) {
         std::vector<float> pixels(784, 0.5f);
         pixels[5] = 2;
         *r.mutable_image()->mutable_init_image() = FloatTensor({1, 28, 28}, pixels);
       },
       StatusCode::INVALID_ARGUMENT,
       "image.init_image.data must hold values in [0, 1], found 2 at element 5"},
      {"negative progress_every",
       [](R& r) { r.mutable_output()->set_progress_every(-3); },
       StatusCode::INVALID_ARGUMENT,
       "output.progress_every must be in [0, 10000] (0 means 16), got -3"},
      {"unknown precision",
       [](R& r) { r.set_precision("fp64"); },
       StatusCode::INVALID_ARGUMENT,
       "precision must be fp32, tf32 or bf16, got 'fp64'"},
      {"a megabyte of precision",
       [](R& r) { r.set_precision(std::string(1 << 20, 'b')); },
       StatusCode::INVALID_ARGUMENT,
       "precision must be fp32, tf32, bf16 or empty, got 1048576 bytes"},
      {"tf32 on a server without it",
       [](R& r) { r.set_precision("tf32"); },
       StatusCode::INVALID_ARGUMENT,
       "precision is \"tf32\", but this server computes in "},
  };
}

TEST_F(VisualizerServiceTest, BadRenderRequestsAreRefusedNamingTheFieldAndValue) {
  const std::vector<BadRequest> cases = BadRequests();
  ASSERT_GE(cases.size(), 25u);
  for (const BadRequest& bad : cases) {
    SCOPED_TRACE(bad.name);
    v1::RenderRequest request = TextRequest("logit(3)", 8);
    bad.change(request);
    const RenderOutcome outcome = RenderAll(*stub_, request, 30);
    EXPECT_EQ(outcome.status.error_code(), bad.code)
        << outcome.status.error_message();
    EXPECT_NE(outcome.status.error_message().find(bad.message), std::string::npos)
        << "message: " << outcome.status.error_message();
    EXPECT_TRUE(outcome.progress.empty());
    EXPECT_FALSE(outcome.result.has_value());
    const HealthOutcome health = CheckHealth(server_->channel(), kServiceName);
    EXPECT_TRUE(health.status.ok());
    EXPECT_EQ(health.serving, Health::SERVING);
  }
  // And the server still renders.
  const RenderOutcome good = RenderAll(*stub_, TextRequest("logit(3)", 4));
  EXPECT_TRUE(good.status.ok()) << good.status.error_message();
}

// A megabyte where a name, an id or a token goes, and 2^31 - 1 where a count
// goes, in every call that is not a render: each is refused with its code,
// the message (cut to fit a trailer) still says what was wrong, and the
// server serves on.
TEST_F(VisualizerServiceTest, HostileValuesInEveryOtherCallAreRefused) {
  const std::string megabyte(1 << 20, 'x');
  const auto expect = [&](const grpc::Status& status, StatusCode code,
                          const std::string& start) {
    EXPECT_EQ(status.error_code(), code) << status.error_message().substr(0, 200);
    EXPECT_EQ(status.error_message().substr(0, start.size()), start);
    EXPECT_LT(status.error_message().size(), 4096u);
  };
  {
    grpc::ClientContext context;
    v1::GetJobRequest request;
    request.set_id(megabyte);
    v1::Job job;
    expect(stub_->GetJob(&context, request, &job), StatusCode::NOT_FOUND,
           "job 'xxx");
  }
  {
    grpc::ClientContext context;
    v1::CancelJobRequest request;
    request.set_id("7@" + megabyte);
    v1::Job job;
    expect(stub_->CancelJob(&context, request, &job), StatusCode::NOT_FOUND,
           "job '7@xxx");
  }
  {
    grpc::ClientContext context;
    v1::ListJobsRequest request;
    request.set_page_token(megabyte);
    request.set_page_size(std::numeric_limits<int32_t>::max());
    v1::ListJobsResponse response;
    expect(stub_->ListJobs(&context, request, &response),
           StatusCode::INVALID_ARGUMENT, "page_token 'xxx");
  }
  {
    grpc::ClientContext context;
    v1::ListJobsRequest request;
    request.set_page_size(std::numeric_limits<int32_t>::min());
    v1::ListJobsResponse response;
    expect(stub_->ListJobs(&context, request, &response),
           StatusCode::INVALID_ARGUMENT, "page_size must be >= 0");
  }
  {
    grpc::ClientContext context;
    v1::GetModelRequest request;
    request.set_name(megabyte);
    v1::Model model;
    const grpc::Status status = stub_->GetModel(&context, request, &model);
    EXPECT_EQ(status.error_code(), StatusCode::NOT_FOUND);
    EXPECT_LT(status.error_message().size(), 4096u);
  }
  {
    grpc::ClientContext context;
    v1::LoadModelRequest request;
    request.set_path(megabyte);
    v1::LoadModelResponse response;
    const grpc::Status status = stub_->LoadModel(&context, request, &response);
    EXPECT_NE(status.error_code(), StatusCode::OK);
    EXPECT_LT(status.error_message().size(), 4096u);
  }
  {
    grpc::ClientContext context;
    v1::WatchJobRequest request;
    request.set_id(megabyte);
    auto reader = stub_->WatchJob(&context, request);
    const RenderOutcome outcome = ReadAll(*reader);
    EXPECT_EQ(outcome.status.error_code(), StatusCode::NOT_FOUND);
  }
  const HealthOutcome health = CheckHealth(server_->channel(), kServiceName);
  EXPECT_EQ(health.serving, Health::SERVING);
  EXPECT_TRUE(RenderAll(*stub_, TextRequest("logit(3)", 4)).status.ok());
}

TEST(VisualizerServiceLimitsTest, RequestOverMaxMessageBytesIsRefusedByGrpc) {
  absl::StatusOr<std::unique_ptr<ServerProcess>> server =
      ServerProcess::Start({"--max_message_bytes=1048576"});
  ASSERT_TRUE(server.ok()) << server.status();
  v1::RenderRequest request = TextRequest("logit(3)", 8);
  // 2 MiB of init image: well formed, but over the 1 MiB limit.
  *request.mutable_image()->mutable_init_image() =
      FloatTensor({512, 1, 32, 32}, std::vector<float>(512 * 32 * 32, 0.5f));
  auto stub = (*server)->NewStub();
  const RenderOutcome outcome = RenderAll(*stub, request, 30);
  EXPECT_EQ(outcome.status.error_code(), StatusCode::RESOURCE_EXHAUSTED)
      << outcome.status.error_message();
  EXPECT_NE(outcome.status.error_message().find("larger than max"),
            std::string::npos)
      << outcome.status.error_message();
  const HealthOutcome health = CheckHealth((*server)->channel(), kServiceName);
  EXPECT_EQ(health.serving, Health::SERVING);
}

TEST(VisualizerServiceStartTest, SkipsAModelThatFailsToLoadAndServesTheRest) {
  namespace fs = std::filesystem;
  char dir_template[] = "/tmp/featviz_models_XXXXXX";
  ASSERT_NE(mkdtemp(dir_template), nullptr);
  const fs::path dir = dir_template;
  std::ofstream(dir / "broken.pt") << "not a TorchScript file";
  // Copies: a symlink out of the repository would be refused.
  for (const char* file : {"mnist_classifier.pt", "mnist_classifier.card.json"}) {
    fs::copy_file(fs::path(FEATVIZ_MODELS_DIR) / file, dir / file);
  }
  absl::StatusOr<std::unique_ptr<ServerProcess>> server =
      ServerProcess::Start({"--model_dir=" + dir.string()});
  ASSERT_TRUE(server.ok()) << server.status();
  grpc::ClientContext context;
  v1::ListModelsResponse response;
  ASSERT_TRUE((*server)->NewStub()->ListModels(&context, {}, &response).ok());
  ASSERT_EQ(response.models_size(), 1);
  EXPECT_EQ(response.models(0).name(), kModel);
  fs::remove_all(dir);
}

// --precision auto (the default): bf16 where the CPU computes it natively,
// fp32 elsewhere; GetServerStats and every result say which, and a request
// may still ask for the other.
TEST(VisualizerServiceStartTest, DefaultPrecisionIsChosenForTheMachine) {
  std::string why;
  const featviz::core::Precision expected = featviz::core::DefaultPrecision(
      featviz::core::PrecisionFactsFor({c10::Device(c10::kCPU)}), &why);
  absl::StatusOr<std::unique_ptr<ServerProcess>> server = ServerProcess::Start();
  ASSERT_TRUE(server.ok()) << server.status();
  std::unique_ptr<v1::Visualizer::Stub> stub = (*server)->NewStub();
  {
    grpc::ClientContext context;
    v1::ServerStats stats;
    ASSERT_TRUE(stub->GetServerStats(&context, {}, &stats).ok());
    EXPECT_EQ(stats.default_precision(), featviz::core::PrecisionName(expected)) << why;
  }
  for (const char* asked : {"", "fp32", "bf16"}) {
    v1::RenderRequest request = TextRequest("conv1:0", 2);
    request.set_precision(asked);
    const RenderOutcome outcome = RenderAll(*stub, request);
    ASSERT_TRUE(outcome.status.ok()) << outcome.status.error_message();
    ASSERT_TRUE(outcome.result.has_value());
    EXPECT_EQ(outcome.result->precision(),
              *asked ? std::string(asked) : featviz::core::PrecisionName(expected))
        << asked;
  }
}

TEST(VisualizerServiceStartTest, RefusesAnUnknownPrecisionFlagNamingIt) {
  const std::string log = ::testing::TempDir() + "/precision_flag.log";
  absl::StatusOr<std::unique_ptr<ServerProcess>> server = ServerProcess::Start(
      {"--precision=fp8"}, absl::Seconds(120), log);
  ASSERT_FALSE(server.ok());
  std::ifstream file(log);
  const std::string text((std::istreambuf_iterator<char>(file)),
                         std::istreambuf_iterator<char>());
  EXPECT_NE(text.find("--precision must be fp32, tf32 or bf16, got 'fp8' (or "
                      "auto)"),
            std::string::npos)
      << text;
}

TEST(VisualizerServiceStartTest, ExitsWithoutListeningWhenTheModelDirIsMissing) {
  absl::StatusOr<std::unique_ptr<ServerProcess>> server =
      ServerProcess::Start({"--model_dir=/nonexistent/featviz/models"});
  ASSERT_FALSE(server.ok());
  EXPECT_NE(server.status().message().find("exited before listening"),
            std::string::npos)
      << server.status();
}

}  // namespace
}  // namespace featviz::testing
