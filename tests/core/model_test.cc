#include "core/model.h"

#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <ATen/record_function.h>
#include <gtest/gtest.h>

#include "tests/core/test_paths.h"

namespace featviz::core {
namespace {

using ::featviz::testing::MnistModel;
using ::featviz::testing::TestModel;

std::unique_ptr<Model> MustLoad(const std::string& path) {
  absl::StatusOr<std::unique_ptr<Model>> model = Model::Load(path);
  EXPECT_TRUE(model.ok()) << model.status();
  return model.ok() ? *std::move(model) : nullptr;
}

bool HasLayer(const Model& model, const std::string& path) {
  return model.FindLayer(path).ok();
}

// Runs submodule `path` of the raw TorchScript file on `input` by walking
// the module tree by hand: the ground truth a tap must reproduce.
at::Tensor RunSubmodule(const std::string& file, const std::vector<std::string>& chain,
                        const at::Tensor& input) {
  torch::jit::Module m = torch::jit::load(file);
  m.eval();
  for (const std::string& name : chain) m = m.attr(name).toModule();
  at::NoGradGuard no_grad;
  return m.forward({input}).toTensor();
}

TEST(ModelLoad, ListsLayersOfScriptedModelWithShapes) {
  auto model = MustLoad(TestModel("scripted.pt"));
  ASSERT_NE(model, nullptr);
  absl::StatusOr<LayerInfo> conv1 = model->FindLayer("conv1");
  ASSERT_TRUE(conv1.ok()) << conv1.status();
  EXPECT_EQ(conv1->kind, "Conv2d");
  EXPECT_EQ(conv1->shape, (std::vector<int64_t>{1, 8, 16, 16}));
  EXPECT_EQ(conv1->channels, 8);
  EXPECT_TRUE(HasLayer(*model, "conv2"));
  EXPECT_TRUE(HasLayer(*model, "fc"));
  EXPECT_EQ(model->FindLayer("fc")->shape.size(), 2u);
  EXPECT_EQ(model->shape().num_classes, 5);
  EXPECT_EQ(model->content_hash().size(), 64u);
}

TEST(ModelForward, ScriptedTapsEqualTheSubmoduleOutputs) {
  auto model = MustLoad(TestModel("scripted.pt"));
  ASSERT_NE(model, nullptr);
  at::manual_seed(1);
  at::Tensor images = at::rand({2, 3, 16, 16});
  absl::StatusOr<Taps> taps = model->Forward(images, {"conv1", "fc"});
  ASSERT_TRUE(taps.ok()) << taps.status();
  // The card of the scripted test model has mean 0, std 1: no normalisation.
  at::Tensor expected = RunSubmodule(TestModel("scripted.pt"), {"conv1"}, images);
  EXPECT_TRUE(at::allclose(taps->activations.at("conv1"), expected));
  EXPECT_EQ(taps->logits.sizes(), (std::vector<int64_t>{2, 5}));
  EXPECT_TRUE(at::allclose(taps->probs.sum(1), at::ones({2})));
  torch::jit::Module raw = torch::jit::load(TestModel("scripted.pt"));
  raw.eval();
  at::NoGradGuard no_grad;
  EXPECT_TRUE(at::allclose(taps->logits, raw.forward({images}).toTensor()));
}

TEST(ModelCreate, FreezesTheWeightsAndLeavesTheCallersModuleAlone) {
  torch::jit::Module raw = torch::jit::load(TestModel("scripted.pt"));
  absl::StatusOr<ModelPtr> model =
      Model::Create(raw, ModelCard::Load(TestModel("scripted.card.json")).value(),
                    c10::kCPU);
  ASSERT_TRUE(model.ok()) << model.status();
  at::Tensor images = at::rand({2, 3, 16, 16}).requires_grad_(true);
  absl::StatusOr<Taps> taps = (*model)->Forward(images, {"conv2"});
  ASSERT_TRUE(taps.ok()) << taps.status();
  // The backward graph reaches the images only: no weight is a leaf that
  // wants a gradient, and none is an autograd copy of the caller's weights.
  (taps->activations.at("conv2").mean() + taps->logits.sum()).backward();
  EXPECT_TRUE(images.grad().defined());
  for (const at::Tensor& p : raw.parameters()) {
    EXPECT_FALSE(p.grad().defined()) << "the caller's weights got a gradient";
  }
}

TEST(ModelForward, GradientsFlowBackToTheImagesButNotTheWeights) {
  auto model = MustLoad(TestModel("scripted.pt"));
  ASSERT_NE(model, nullptr);
  at::Tensor images = at::rand({1, 3, 16, 16}).requires_grad_(true);
  absl::StatusOr<Taps> taps = model->Forward(images, {"conv2"});
  ASSERT_TRUE(taps.ok()) << taps.status();
  (taps->activations.at("conv2").select(1, 3).mean() + taps->probs[0][1])
      .backward();
  ASSERT_TRUE(images.grad().defined());
  EXPECT_GT(images.grad().abs().sum().item<double>(), 0.0);
}

TEST(ModelLoad, TracedModelExposesSequentialChildren) {
  auto model = MustLoad(TestModel("traced.pt"));
  ASSERT_NE(model, nullptr);
  EXPECT_TRUE(HasLayer(*model, "features"));
  EXPECT_TRUE(HasLayer(*model, "features.0"));
  EXPECT_TRUE(HasLayer(*model, "features.2"));
  at::Tensor images = at::rand({3, 3, 16, 16});
  absl::StatusOr<Taps> taps = model->Forward(images, {"features.0"});
  ASSERT_TRUE(taps.ok()) << taps.status();
  at::Tensor expected =
      RunSubmodule(TestModel("traced.pt"), {"features", "0"}, images);
  EXPECT_TRUE(at::allclose(taps->activations.at("features.0"), expected));
}

TEST(ModelLoad, ResidualModelExposesNestedBlocksAndKeepsItsOutput) {
  auto model = MustLoad(TestModel("residual.pt"));
  ASSERT_NE(model, nullptr);
  for (const char* path : {"stem", "layer1", "layer1.0", "layer1.0.conv1",
                           "layer1.1.bn2", "layer2.0", "layer2.0.downsample.0",
                           "fc"}) {
    EXPECT_TRUE(HasLayer(*model, path)) << path;
  }
  EXPECT_EQ(model->FindLayer("layer1.0")->kind, "BasicBlock");
  at::manual_seed(2);
  at::Tensor images = at::rand({2, 3, 16, 16});
  absl::StatusOr<Taps> taps =
      model->Forward(images, {"layer1.0.conv1", "layer1", "layer2.0.downsample.0"});
  ASSERT_TRUE(taps.ok()) << taps.status();
  torch::jit::Module raw = torch::jit::load(TestModel("residual.pt"));
  raw.eval();
  at::NoGradGuard no_grad;
  at::Tensor stem = raw.attr("stem").toModule().forward({images}).toTensor();
  // Whatever the stem does after its conv (functional ops in forward), the
  // block's first conv sees layer1's input; compare layer1 against the raw
  // module chain instead of re-deriving forward by hand.
  at::Tensor logits = raw.forward({images}).toTensor();
  EXPECT_TRUE(at::allclose(taps->logits, logits, 1e-5, 1e-6))
      << "inlining the taps must not change the model's output";
  EXPECT_EQ(taps->activations.at("layer1.0.conv1").dim(), 4);
  EXPECT_EQ(taps->activations.at("layer2.0.downsample.0").size(0), 2);
  EXPECT_TRUE(stem.defined());
}

TEST(ModelLoad, MnistClassifierHasItsCardAndCatalogue) {
  auto model = MustLoad(MnistModel());
  ASSERT_NE(model, nullptr);
  EXPECT_EQ(model->card().name, "mnist_classifier");
  EXPECT_EQ(model->card().channels, 1);
  EXPECT_EQ(model->card().height, 28);
  EXPECT_EQ(model->card().classes.size(), 10u);
  ASSERT_EQ(model->layers().size(), 4u);
  EXPECT_EQ(model->layers()[0].path, "conv1");
  EXPECT_EQ(model->layers()[1].path, "conv2");
  EXPECT_EQ(model->layers()[1].shape, (std::vector<int64_t>{1, 32, 8, 8}));
  EXPECT_EQ(model->layers()[2].path, "fc1");
  EXPECT_EQ(model->layers()[3].path, "fc2");
}

TEST(ModelLoad, DoesNotChangeTheModelFile) {
  auto read = [](const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
  };
  const std::string before = read(TestModel("residual.pt"));
  auto model = MustLoad(TestModel("residual.pt"));
  ASSERT_NE(model, nullptr);
  ASSERT_TRUE(model->Forward(at::rand({1, 3, 16, 16}), {"layer1.0.conv1"}).ok());
  EXPECT_EQ(read(TestModel("residual.pt")), before);
}

TEST(ModelLoad, GuessesTheInputShapeWithoutACard) {
  auto model = MustLoad(TestModel("no_card.pt"));
  ASSERT_NE(model, nullptr);
  EXPECT_EQ(model->card().name, "no_card");
  EXPECT_GT(model->layers().size(), 0u);
  EXPECT_TRUE(model->Forward(at::rand({1, model->card().channels,
                                       model->card().height,
                                       model->card().width}),
                             {model->layers()[0].path})
                  .ok());
}

TEST(ModelLoad, RejectsCorruptFile) {
  absl::StatusOr<std::unique_ptr<Model>> model = Model::Load(TestModel("corrupt.pt"));
  ASSERT_FALSE(model.ok());
  EXPECT_EQ(model.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(model.status().message().find("not a TorchScript model"),
            std::string::npos)
      << model.status();
}

TEST(ModelLoad, RejectsPickledStateDict) {
  absl::StatusOr<std::unique_ptr<Model>> model =
      Model::Load(TestModel("not_torchscript.pt"));
  ASSERT_FALSE(model.ok());
  EXPECT_EQ(model.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ModelLoad, RejectsMissingFileAsNotFound) {
  absl::StatusOr<std::unique_ptr<Model>> model =
      Model::Load(TestModel("does_not_exist.pt"));
  ASSERT_FALSE(model.ok());
  EXPECT_EQ(model.status().code(), absl::StatusCode::kNotFound);
}

// tuple_output returns (logits [B, 3], features [B, 8]); its card names
// three classes but not which output holds them. Only output 0 has three
// columns, so it is the class output.
TEST(ModelLoad, TakesTheOnlyOutputAsWideAsTheCardsClassesAsTheClassOutput) {
  auto model = MustLoad(TestModel("tuple_output.pt"));
  ASSERT_NE(model, nullptr);
  EXPECT_EQ(model->logits_output(), "0");
  EXPECT_EQ(model->shape().num_classes, 3);
  EXPECT_EQ(model->card().classes, (std::vector<std::string>{"p", "q", "r"}));
  // logit(c) reads that output.
  const at::Tensor images = at::rand({2, 3, 16, 16});
  absl::StatusOr<Taps> taps = model->Forward(images, {});
  ASSERT_TRUE(taps.ok()) << taps.status();
  ASSERT_EQ(taps->logits.sizes(), (std::vector<int64_t>{2, 3}));
  EXPECT_TRUE(at::equal(taps->logits, taps->outputs.at("0")));
}

// twin_heads returns two [B, 3] heads and its card names three classes but
// no "logits": a guess could take the wrong one, so the load is refused,
// naming both and what to write in the card.
TEST(ModelLoad, RefusesTwoOutputsAsWideAsTheCardsClassesNamingThem) {
  absl::StatusOr<std::unique_ptr<Model>> model =
      Model::Load(TestModel("twin_heads.pt"));
  ASSERT_FALSE(model.ok());
  EXPECT_EQ(model.status().code(), absl::StatusCode::kInvalidArgument);
  const std::string message(model.status().message());
  EXPECT_NE(message.find("2 outputs have 3 columns ('0', '1')"),
            std::string::npos)
      << message;
  EXPECT_NE(message.find("set \"logits\" in the card"), std::string::npos)
      << message;
}

// A card that names the head itself is followed, whatever else fits.
TEST(ModelLoad, TakesTheCardsLogitsOverTwoOutputsThatFit) {
  absl::StatusOr<ModelCard> card =
      ModelCard::Load(std::filesystem::path(TestModel("twin_heads.pt"))
                          .replace_extension(".card.json")
                          .string());
  ASSERT_TRUE(card.ok()) << card.status();
  card->logits_at = ModelCard::LogitsAt::kOutput;
  card->logits_output = "1";
  torch::jit::Module module = torch::jit::load(TestModel("twin_heads.pt"));
  absl::StatusOr<std::unique_ptr<Model>> model =
      Model::Create(std::move(module), *card, c10::Device(c10::kCPU));
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ((*model)->logits_output(), "1");
}

// Classes in the card but no output as wide: still refused, saying so.
TEST(ModelLoad, RefusesATupleOutputWithNoOutputAsWideAsTheCardsClasses) {
  absl::StatusOr<ModelCard> card =
      ModelCard::Load(std::filesystem::path(TestModel("tuple_output.pt"))
                          .replace_extension(".card.json")
                          .string());
  ASSERT_TRUE(card.ok()) << card.status();
  card->classes = {"a", "b", "c", "d", "e", "f", "g"};
  torch::jit::Module module = torch::jit::load(TestModel("tuple_output.pt"));
  absl::StatusOr<std::unique_ptr<Model>> model =
      Model::Create(std::move(module), *card, c10::Device(c10::kCPU));
  ASSERT_FALSE(model.ok());
  EXPECT_EQ(model.status().code(), absl::StatusCode::kInvalidArgument);
  const std::string message(model.status().message());
  EXPECT_NE(message.find("7 classes but the model has no class output"),
            std::string::npos)
      << message;
  EXPECT_NE(message.find("none is [batch, 7]"), std::string::npos) << message;
}

TEST(ModelForward, RejectsUnknownLayerNamingIt) {
  auto model = MustLoad(MnistModel());
  ASSERT_NE(model, nullptr);
  absl::StatusOr<Taps> taps = model->Forward(at::rand({1, 1, 28, 28}), {"conv9"});
  ASSERT_FALSE(taps.ok());
  EXPECT_EQ(taps.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(taps.status().message().find("conv9"), std::string::npos);
}

TEST(ModelForward, RejectsImagesOfTheWrongShape) {
  auto model = MustLoad(MnistModel());
  ASSERT_NE(model, nullptr);
  absl::StatusOr<Taps> taps = model->Forward(at::rand({1, 3, 28, 28}), {});
  ASSERT_FALSE(taps.ok());
  EXPECT_EQ(taps.status().code(), absl::StatusCode::kInvalidArgument);
}

// How often each operator ran in a call, on this thread (RecordFunction).
template <typename F>
std::map<std::string, int64_t> OperatorsRun(F&& call) {
  std::map<std::string, int64_t> counts;
  // A capturing lambda is no RecordFunction callback: the map goes through a
  // thread-local pointer.
  thread_local std::map<std::string, int64_t>* sink = nullptr;
  sink = &counts;
  at::CallbackHandle handle = at::addThreadLocalCallback(at::RecordFunctionCallback(
      [](const at::RecordFunction& fn) -> std::unique_ptr<at::ObserverContext> {
        if (sink != nullptr) ++(*sink)[fn.name()];
        return nullptr;
      }));
  call();
  at::removeCallback(handle);
  sink = nullptr;
  return counts;
}

bool RanAnyOf(const std::map<std::string, int64_t>& ops,
              const std::vector<std::string>& parts) {
  for (const auto& [op, count] : ops) {
    for (const std::string& part : parts) {
      if (op.find(part) != std::string::npos) return true;
    }
  }
  return false;
}

int64_t Count(const std::map<std::string, int64_t>& ops, const std::string& op) {
  auto it = ops.find(op);
  return it == ops.end() ? 0 : it->second;
}

TEST(ModelForward, TapsOnlyStopsAtTheDeepestTapWithTheSameBits) {
  auto model = MustLoad(featviz::testing::MnistModel());
  ASSERT_NE(model, nullptr);
  at::manual_seed(5);
  const at::Tensor images = at::rand({3, 1, 28, 28});
  auto run = [&](Model::ForwardOutputs outputs, at::Tensor* activation,
                 at::Tensor* grad) {
    at::Tensor x = images.clone().requires_grad_(true);
    absl::StatusOr<Taps> taps = model->Forward(x, {"conv2"}, outputs);
    ASSERT_TRUE(taps.ok()) << taps.status();
    *activation = taps->activations.at("conv2");
    activation->select(1, 7).sum().backward();
    *grad = x.grad();
    if (outputs == Model::ForwardOutputs::kTapsOnly) {
      EXPECT_EQ(taps->logits.sizes(), (std::vector<int64_t>{3, 0}));
      EXPECT_TRUE(taps->outputs.empty());
    }
  };
  at::Tensor full_a, full_g, short_a, short_g;
  const auto full = OperatorsRun(
      [&] { run(Model::ForwardOutputs::kAll, &full_a, &full_g); });
  const auto taps_only = OperatorsRun(
      [&] { run(Model::ForwardOutputs::kTapsOnly, &short_a, &short_g); });
  // The classifier's head (fc1, fc2: matrix products, featviz's own by
  // default, bmm when blocked) runs only when the outputs are wanted; conv1
  // and conv2 run both times.
  const std::vector<std::string> products = {
      "featviz::invariant_linear", "aten::mm",     "aten::bmm",
      "aten::addmm",               "aten::matmul", "aten::linear"};
  EXPECT_TRUE(RanAnyOf(full, products));
  EXPECT_FALSE(RanAnyOf(taps_only, products));
  EXPECT_EQ(Count(taps_only, "aten::conv2d"), 2);
  EXPECT_TRUE(at::equal(full_a, short_a));
  EXPECT_TRUE(at::equal(full_g, short_g));
}

// A residual network's BatchNorm layers check their input's rank and raise
// otherwise: the checks past the tap must not keep the rest of the network
// alive. Tapping layer1 runs the stem's and layer1's convolutions only.
TEST(ModelForward, TapsOnlyStopsPastTheInputChecksOfLaterLayers) {
  auto model = MustLoad(TestModel("residual.pt"));
  ASSERT_NE(model, nullptr);
  at::manual_seed(6);
  const at::Tensor images = at::rand({2, 3, 16, 16});
  at::Tensor full_a, short_a;
  const auto full = OperatorsRun([&] {
    absl::StatusOr<Taps> taps =
        model->Forward(images, {"layer1"}, Model::ForwardOutputs::kAll);
    ASSERT_TRUE(taps.ok()) << taps.status();
    full_a = taps->activations.at("layer1");
  });
  const auto taps_only = OperatorsRun([&] {
    absl::StatusOr<Taps> taps =
        model->Forward(images, {"layer1"}, Model::ForwardOutputs::kTapsOnly);
    ASSERT_TRUE(taps.ok()) << taps.status();
    short_a = taps->activations.at("layer1");
  });
  // stem 1 + layer1 2 blocks x 2; layer2: 2 + the downsample's 1.
  EXPECT_EQ(Count(full, "aten::conv2d"), 8);
  EXPECT_EQ(Count(taps_only, "aten::conv2d"), 5);
  EXPECT_TRUE(at::equal(full_a, short_a));
}

}  // namespace
}  // namespace featviz::core

namespace featviz::core {
namespace {

// BLAS gives a row of a matrix product different low bits depending on how
// many rows share it; the tapped forward computes linear layers row by row
// so a job's numbers do not depend on who shares its batch.
TEST(ModelForward, GivesEachImageTheSameBitsAloneAndInABatch) {
  auto model = MustLoad(featviz::testing::MnistModel());
  ASSERT_NE(model, nullptr);
  at::manual_seed(3);
  at::Tensor images = at::rand({64, 1, 28, 28}).requires_grad_(true);
  absl::StatusOr<Taps> batch = model->Forward(images, {"fc1", "conv2"});
  ASSERT_TRUE(batch.ok()) << batch.status();
  (batch->logits.select(1, 3).sum() + batch->activations.at("fc1").sum()).backward();
  for (int64_t i : {0, 17, 63}) {
    at::Tensor one = images.detach()[i].unsqueeze(0).clone().requires_grad_(true);
    absl::StatusOr<Taps> alone = model->Forward(one, {"fc1", "conv2"});
    ASSERT_TRUE(alone.ok());
    (alone->logits.select(1, 3).sum() + alone->activations.at("fc1").sum()).backward();
    EXPECT_TRUE(at::equal(alone->logits[0], batch->logits[i])) << i;
    EXPECT_TRUE(at::equal(alone->activations.at("fc1")[0],
                          batch->activations.at("fc1")[i])) << i;
    EXPECT_TRUE(at::equal(one.grad()[0], images.grad()[i])) << i;
  }
}

}  // namespace
}  // namespace featviz::core
