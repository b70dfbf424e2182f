#include "server/convert.h"

#include <cmath>
#include <memory>
#include <string>

#include <gtest/gtest.h>

#include "server/engine/model_registry.h"
#include "server/render_inputs.h"

namespace featviz::server {
namespace {

class ConvertTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    absl::StatusOr<ModelRegistryPtr> registry =
        ModelRegistry::Create(FEATVIZ_MODELS_DIR, {c10::kCPU});
    ASSERT_TRUE(registry.ok()) << registry.status();
    registry_ = registry->release();
  }
  static void TearDownTestSuite() {
    delete registry_;
    registry_ = nullptr;
  }

  static v1::RenderRequest Request(const std::string& objective) {
    v1::RenderRequest request;
    request.set_model("mnist_classifier");
    request.set_objective_text(objective);
    return request;
  }

  static ModelRegistry* registry_;
  Limits limits_;
};

ModelRegistry* ConvertTest::registry_ = nullptr;

TEST(ToGrpcStatus, KeepsEveryCodeAndTheMessage) {
  for (int code = 1; code <= 16; ++code) {
    const grpc::Status status = ToGrpcStatus(
        absl::Status(static_cast<absl::StatusCode>(code), "what went wrong"));
    EXPECT_EQ(static_cast<int>(status.error_code()), code);
    EXPECT_EQ(status.error_message(), "what went wrong");
  }
  EXPECT_TRUE(ToGrpcStatus(absl::OkStatus()).ok());
}

TEST(ToGrpcStatus, CutsAMessageTooLongForATrailerAndKeepsTheCode) {
  const std::string long_message = "model 'x" + std::string(1 << 20, 'x') + "'";
  const grpc::Status status =
      ToGrpcStatus(absl::NotFoundError(long_message));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_LT(status.error_message().size(), kMaxStatusMessageBytes + 64);
  EXPECT_EQ(status.error_message().substr(0, 8), "model 'x");
  EXPECT_NE(status.error_message().find(" bytes cut)"), std::string::npos);
}

TEST(Prefixed, KeepsTheCode) {
  const absl::Status status =
      Prefixed("objective_text", absl::OutOfRangeError("channel 70"));
  EXPECT_EQ(status.code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(status.message(), "objective_text: channel 70");
}

TEST(TensorFromProto, RoundTripsTensorToProto) {
  const at::Tensor tensor = at::arange(24, at::kFloat).view({2, 3, 4}) / 24;
  const v1::Tensor proto = TensorToProto(tensor);
  EXPECT_EQ(proto.data().size(), 24 * sizeof(float));
  absl::StatusOr<at::Tensor> back = TensorFromProto(proto, "t");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_TRUE(at::equal(*back, tensor));
}

TEST(TensorFromProto, RefusesAShapeWhoseSizeOverflows) {
  v1::Tensor proto;
  proto.set_dtype(v1::Tensor::DTYPE_FLOAT32);
  for (int i = 0; i < 4; ++i) proto.add_shape(int64_t{1} << 40);
  proto.set_data(std::string(16, '\0'));
  const absl::Status status = TensorFromProto(proto, "image.init_image").status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("needs more bytes than fit in 64 bits"), std::string::npos)
      << status;
}

TEST_F(ConvertTest, PlanFillsTheDocumentedDefaults) {
  absl::StatusOr<RenderPlan> plan =
      PlanRender(Request("channel(conv2, 5)"), *registry_, limits_);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->options.steps, 256);
  EXPECT_EQ(plan->options.lr, 0.05);
  EXPECT_EQ(plan->options.progress_every, 16);
  EXPECT_EQ(plan->options.param.batch, 1);
  EXPECT_EQ(plan->options.param.height, 28);
  EXPECT_EQ(plan->options.param.kind, core::ParamKind::kFft);
  EXPECT_EQ(plan->options.param.decay_power, 1.0);
  ASSERT_TRUE(plan->options.transforms.has_value());
  EXPECT_EQ(*plan->options.transforms, core::DefaultTransforms(28, 28));
  EXPECT_FALSE(plan->seed.has_value());
  EXPECT_EQ(plan->objective.ToString(), "channel(conv2, 5)");
}

TEST_F(ConvertTest, ARequestAskingForNoOutputGetsPngs) {
  v1::RenderRequest request = Request("logit(1)");
  absl::StatusOr<RenderPlan> plan = PlanRender(request, *registry_, limits_);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_TRUE(plan->png);
  EXPECT_FALSE(plan->tensor);

  request.mutable_output()->set_tensor(true);
  plan = PlanRender(request, *registry_, limits_);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_FALSE(plan->png) << "tensors asked for: no PNGs unless asked too";
  EXPECT_TRUE(plan->tensor);
}

TEST_F(ConvertTest, PlanAppliesTheServersLimits) {
  limits_.max_steps = 100;
  v1::RenderRequest request = Request("logit(1)");
  request.mutable_optimizer()->set_steps(101);
  const absl::Status status = PlanRender(request, *registry_, limits_).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message(),
            "optimizer.steps must be in [1, 100] (0 means 256), got 101");
}

TEST_F(ConvertTest, ObjectiveTreeBecomesTheSameObjectiveAsItsText) {
  v1::Objective tree;
  v1::WeightedTerm* neuron = tree.add_terms();
  neuron->set_weight(2);
  neuron->mutable_term()->set_kind(v1::TERM_KIND_NEURON);
  neuron->mutable_term()->set_layer("conv2");
  neuron->mutable_term()->set_index(3);
  neuron->mutable_term()->set_x(1);
  neuron->mutable_term()->set_y(2);
  v1::WeightedTerm* l2 = tree.add_terms();
  l2->set_weight(-0.5);
  l2->mutable_term()->set_kind(v1::TERM_KIND_L2);
  l2->mutable_term()->set_param(0.25);
  l2->mutable_term()->set_batch(0);
  absl::StatusOr<core::Objective> objective = ObjectiveFromProto(tree);
  ASSERT_TRUE(objective.ok()) << objective.status();
  EXPECT_EQ(*objective,
            *core::Objective::Parse(
                "2 * neuron(conv2, 3, 1, 2) - 0.5 * l2(0.25, batch=0)"));
}

TEST_F(ConvertTest, AnL2TermWithAReferenceIsL2OfThatImage) {
  v1::Objective tree;
  v1::WeightedTerm* l2 = tree.add_terms();
  l2->set_weight(-2);
  l2->mutable_term()->set_kind(v1::TERM_KIND_L2);
  v1::DatasetImage* image =
      l2->mutable_term()->mutable_reference()->mutable_dataset_image();
  image->set_dataset("mnist");
  image->set_index(3);
  absl::StatusOr<core::Objective> objective = ObjectiveFromProto(tree);
  ASSERT_TRUE(objective.ok()) << objective.status();
  EXPECT_EQ(*objective, *core::Objective::Parse("-2 * l2(dataset(mnist, 3))"));
  // Without one it is the l2 it always was.
  l2->mutable_term()->clear_reference();
  EXPECT_EQ(*ObjectiveFromProto(tree), *core::Objective::Parse("-2 * l2()"));
}

TEST_F(ConvertTest, AnAccentuationAddsItsKeepCloseTermAndItsDefaults) {
  v1::RenderRequest request = Request("channel(conv2, 2)");
  request.mutable_accentuate()->mutable_image()->mutable_dataset_image()
      ->set_index(12);
  absl::StatusOr<RenderPlan> plan = PlanRender(request, *registry_, limits_);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->objective.ToString(),
            "channel(conv2, 2) - 4 * l2(dataset(12))");
  EXPECT_EQ(plan->options.param.kind, core::ParamKind::kFft);
  EXPECT_EQ(plan->options.steps, kDefaultAccentuationSteps);
  EXPECT_EQ(plan->options.lr, kDefaultAccentuationLr);
  ASSERT_TRUE(plan->accentuation.has_value());
  EXPECT_EQ(plan->accentuation->ToString(), "dataset(12)");

  request.mutable_accentuate()->set_layer("conv1");
  request.mutable_accentuate()->set_weight(0.5);
  request.mutable_optimizer()->set_steps(10);
  request.mutable_image()->set_parameterization(v1::PARAMETERIZATION_PIXEL);
  plan = PlanRender(request, *registry_, limits_);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->objective.ToString(),
            "channel(conv2, 2) + 0.5 * inversion_l2(conv1, dataset(12))");
  EXPECT_EQ(plan->options.param.kind, core::ParamKind::kPixel);
  EXPECT_EQ(plan->options.steps, 10);

  // An ordinary render is planned as it was.
  plan = PlanRender(Request("channel(conv2, 2)"), *registry_, limits_);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_FALSE(plan->accentuation.has_value());
  EXPECT_EQ(plan->objective.ToString(), "channel(conv2, 2)");
  EXPECT_EQ(plan->options.steps, 256);
}

TEST_F(ConvertTest, TokenTermsCrossTheWireAndBadOnesAreNamed) {
  v1::Objective tree;
  v1::Term* neuron = tree.add_terms()->mutable_term();
  tree.mutable_terms(0)->set_weight(1);
  neuron->set_kind(v1::TERM_KIND_NEURON);
  neuron->set_layer("blocks.0.mlp.0");
  neuron->set_index(3);
  neuron->set_token(5);
  v1::WeightedTerm* channel = tree.add_terms();
  channel->set_weight(1);
  channel->mutable_term()->set_kind(v1::TERM_KIND_CHANNEL);
  channel->mutable_term()->set_layer("blocks.0.mlp.0");
  channel->mutable_term()->set_index(4);
  channel->mutable_term()->set_tokens(v1::TOKEN_SUBSET_CLS);
  absl::StatusOr<core::Objective> objective = ObjectiveFromProto(tree);
  ASSERT_TRUE(objective.ok()) << objective.status();
  EXPECT_EQ(*objective, *core::Objective::Parse(
                            "neuron(blocks.0.mlp.0, 3, 5) + "
                            "channel(blocks.0.mlp.0, 4, tokens=cls)"));

  v1::Objective bad = tree;
  bad.mutable_terms(0)->mutable_term()->set_token(-1);
  absl::Status s = ObjectiveFromProto(bad).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("objective_tree.terms[0].term.token"),
            std::string::npos) << s;
  bad = tree;
  bad.mutable_terms(0)->mutable_term()->set_x(1);
  bad.mutable_terms(0)->mutable_term()->set_y(1);
  s = ObjectiveFromProto(bad).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("set one"), std::string::npos) << s;
  bad = tree;
  bad.mutable_terms(1)->mutable_term()->set_tokens(
      static_cast<v1::TokenSubset>(99));
  s = ObjectiveFromProto(bad).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("terms[1].term.tokens"), std::string::npos) << s;
  // 2^63 - 1 parses; validation then names it out of range for the layer.
  bad = tree;
  bad.mutable_terms(0)->mutable_term()->set_token(INT64_MAX);
  EXPECT_TRUE(ObjectiveFromProto(bad).ok());
}

TEST_F(ConvertTest, ModelToProtoNamesEveryClassAndLayer) {
  absl::StatusOr<SharedModel> model = registry_->Resolve("mnist_classifier");
  ASSERT_TRUE(model.ok());
  const v1::Model proto = ModelToProto(**model);
  EXPECT_EQ(proto.class_names_size(), 10);
  EXPECT_EQ(proto.layers_size(), 4);
  EXPECT_EQ(proto.input().mean_size(), 1);
  EXPECT_EQ(proto.device(), "cpu");
  EXPECT_GT(proto.memory_bytes(), 0);
}

}  // namespace
}  // namespace featviz::server

namespace featviz::server {
namespace {

// The result cache's key comes from the plan (its inputs resolved, as the
// service does): requests that plan alike share it whoever sends them, and
// anything that changes the picture changes it.
TEST_F(ConvertTest, TheCacheKeyComesFromThePlanNotTheRequest) {
  RenderInputs inputs(nullptr);
  auto key = [&](const v1::RenderRequest& request) {
    absl::StatusOr<RenderPlan> plan = PlanRender(request, *registry_, limits_);
    EXPECT_TRUE(plan.ok()) << plan.status();
    if (!plan.ok()) return std::string("error");
    const absl::Status resolved = inputs.Resolve(*plan);
    EXPECT_TRUE(resolved.ok()) << resolved;
    return CacheKey(*plan);
  };
  v1::RenderRequest base = Request("channel(conv2, 5) - 0.01 * tv()");
  base.set_seed(7);
  const std::string k = key(base);
  ASSERT_FALSE(k.empty());

  v1::RenderRequest same = base;
  same.set_owner("someone else");
  same.set_priority(3);
  same.set_queue_timeout_seconds(5);
  same.mutable_optimizer()->set_lr(kDefaultLr);  // The default, spelled out.
  same.set_objective_text("channel(conv2,5)-0.01*tv()");
  EXPECT_EQ(key(same), k) << "the same plan, asked for differently";

  v1::RenderRequest other_lr = base;
  other_lr.mutable_optimizer()->set_lr(0.051);
  EXPECT_NE(key(other_lr), k);
  v1::RenderRequest other_seed = base;
  other_seed.set_seed(8);
  EXPECT_NE(key(other_seed), k);

  // A reference tensor's bytes are part of the plan, not just its shape.
  v1::RenderRequest inverted = Request("inversion(conv2, reference(0))");
  inverted.set_seed(7);
  *inverted.add_references() = TensorToProto(at::zeros({1, 28, 28}));
  v1::RenderRequest inverted_other = inverted;
  *inverted_other.mutable_references(0) =
      TensorToProto(at::zeros({1, 28, 28}).index_put_({0, 3, 3}, 1.0));
  EXPECT_NE(key(inverted), key(inverted_other));

  v1::RenderRequest unseeded = base;
  unseeded.clear_seed();
  EXPECT_EQ(key(unseeded), "") << "only a seeded render is reproducible";
}

TEST_F(ConvertTest, ReferenceTensorsAreCheckedWhenTheRequestIsPlanned) {
  v1::RenderRequest request = Request("logit(1)");
  v1::Tensor* bad = request.add_references();
  bad->set_dtype(v1::Tensor::DTYPE_FLOAT32);
  bad->add_shape(2);
  bad->set_data("abc");
  const absl::Status status = PlanRender(request, *registry_, limits_).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message(),
            "references[0].data has 3 bytes, but shape [2] of float32 needs 8");
}

}  // namespace
}  // namespace featviz::server
