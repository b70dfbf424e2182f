#include "core/render.h"

#include <iostream>

#include <gtest/gtest.h>

#include "core/mnist.h"
#include "tests/core/mnist_model.h"
#include "tests/core/test_paths.h"

namespace featviz::core {
namespace {

using ::featviz::testing::MnistDir;

using ::featviz::testing::Mnist;

RenderOptions Quick(int64_t steps, int64_t batch = 1, uint64_t seed = 0) {
  RenderOptions o;
  o.steps = steps;
  o.param.batch = batch;
  o.seed = seed;
  return o;
}

RenderResult MustRender(const std::string& text, const RenderOptions& options) {
  absl::StatusOr<Objective> objective = Objective::Parse(text);
  EXPECT_TRUE(objective.ok()) << objective.status();
  absl::StatusOr<RenderResult> result = Render(Mnist(), *objective, options);
  EXPECT_TRUE(result.ok()) << text << ": " << result.status();
  return result.ok() ? *std::move(result) : RenderResult{};
}

// Each objective kind, optimised for a few steps, ends higher than it began.
class ObjectiveMovesUp : public ::testing::TestWithParam<const char*> {};

TEST_P(ObjectiveMovesUp, AfterOptimising) {
  // A varied start, so that regularisers and alignment have room to move.
  RenderOptions o = Quick(24, 2, 3);
  o.param.init_std = 0.5;
  RenderResult r = MustRender(GetParam(), o);
  ASSERT_TRUE(r.trace.defined());
  ASSERT_EQ(r.trace.size(0), 24);
  const double first = r.trace[0][0].item<double>() * r.weights[0];
  const double last = r.trace[23][0].item<double>() * r.weights[0];
  EXPECT_GT(last, first) << GetParam();
}

INSTANTIATE_TEST_SUITE_P(
    Kinds, ObjectiveMovesUp,
    ::testing::Values("neuron(conv2, 3)", "neuron(conv1, 2, 5, 20)",
                      "neuron(fc1, 7)", "channel(conv1, 4)", "conv2:9",
                      "layer(conv2)", "logit(3)", "prob(5)",
                      "direction(fc2, [1, -1, 0.5, 0, 0, 0, 0, 0, 0, 0])",
                      "diversity(conv1)", "alignment(conv2)", "-tv()",
                      "-l1()", "-l2(0.2)"),
    [](const ::testing::TestParamInfo<const char*>& info) {
      // The term's function name and the test's index: "neuron_0".
      std::string name;
      for (const char* c = info.param; *c && *c != '(' && *c != ':'; ++c) {
        if (std::isalnum(static_cast<unsigned char>(*c))) name += *c;
      }
      return name + "_" + std::to_string(info.index);
    });

TEST(Render, SameSeedGivesBitwiseIdenticalImages) {
  RenderOptions o = Quick(16, 2, 11);
  RenderResult a = MustRender("channel(conv2, 5) - 0.05 * tv()", o);
  RenderResult b = MustRender("channel(conv2, 5) - 0.05 * tv()", o);
  ASSERT_TRUE(a.images.defined() && b.images.defined());
  EXPECT_TRUE(at::equal(a.images, b.images));
  EXPECT_TRUE(at::equal(a.trace, b.trace));
  RenderResult c = MustRender("channel(conv2, 5) - 0.05 * tv()", Quick(16, 2, 12));
  EXPECT_FALSE(at::equal(a.images, c.images));
}

TEST(Render, SameSeedIsIdenticalForPixelParamWithoutTransforms) {
  RenderOptions o = Quick(8, 1, 4);
  o.param.kind = ParamKind::kPixel;
  o.transforms = TransformList{};
  EXPECT_TRUE(at::equal(MustRender("logit(2)", o).images,
                        MustRender("logit(2)", o).images));
}

TEST(Render, BatchTargetingOnlyMovesTheTargetedImage) {
  RenderOptions o = Quick(10, 2, 5);
  RenderResult only_second = MustRender("channel(conv2, 3, batch=1)", o);
  RenderResult other = MustRender("logit(4, batch=1)", o);
  // Image 0 has no gradient in either render, so it stays at its start.
  EXPECT_TRUE(at::equal(only_second.images[0], other.images[0]));
  EXPECT_FALSE(at::equal(only_second.images[1], other.images[1]));
}

TEST(Render, ResultCarriesFinalStatisticsOfTheUntransformedImages) {
  RenderResult r = MustRender("channel(conv2, 5) + 0.5 * prob(7) - 0.01 * tv()",
                              Quick(12, 3, 1));
  EXPECT_EQ(r.objective, "channel(conv2, 5) + 0.5 * prob(7) - 0.01 * tv()");
  EXPECT_EQ(r.terms, (std::vector<std::string>{"channel(conv2, 5)", "prob(7)", "tv()"}));
  EXPECT_EQ(r.weights, (std::vector<double>{1, 0.5, -0.01}));
  EXPECT_EQ(r.images.sizes(), (std::vector<int64_t>{3, 1, 28, 28}));
  EXPECT_EQ(r.trace.sizes(), (std::vector<int64_t>{12, 3}));
  EXPECT_EQ(r.logits.sizes(), (std::vector<int64_t>{3, 10}));
  ASSERT_EQ(r.layer_stats.size(), 1u);
  EXPECT_EQ(r.layer_stats[0].layer, "conv2");
  EXPECT_EQ(r.layer_stats[0].mean.sizes(), (std::vector<int64_t>{3, 32}));
  // The final channel term is the mean over images of that channel's mean.
  EXPECT_NEAR(r.final_values[0],
              r.layer_stats[0].mean.select(1, 5).mean().item<double>(), 1e-4);
  EXPECT_NEAR(r.final_values[1], r.probs.select(1, 7).mean().item<double>(), 1e-5);
  EXPECT_NEAR(r.final_total,
              3 * (r.final_values[0] + 0.5 * r.final_values[1] - 0.01 * r.final_values[2]),
              1e-3);
}

TEST(Render, ResultNamesTheParameterisationUsed) {
  RenderOptions pixel = Quick(2);
  pixel.param.kind = ParamKind::kPixel;
  EXPECT_EQ(MustRender("logit(3)", pixel).parameterization, ParamKind::kPixel);
  EXPECT_EQ(MustRender("logit(3)", Quick(2)).parameterization, ParamKind::kFft);
}

// A prob(c) term whose class is at p > 0.999 on an image it reads gets a
// warning naming it and the logit term to use; others get none.
TEST(ProbSaturationWarnings, NameTheSaturatedTermAndItsLogit) {
  absl::StatusOr<Objective> objective =
      Objective::Parse("prob(0) + prob(1, batch=1) + logit(0) + 0.5 * prob(1)");
  ASSERT_TRUE(objective.ok()) << objective.status();
  const at::Tensor probs =
      at::tensor({0.9995f, 0.0005f, 0.4f, 0.6f}).view({2, 2});
  std::vector<std::string> warnings =
      ProbSaturationWarnings(*objective, probs, /*log_probs=*/false);
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_EQ(
      warnings[0].rfind("prob(0) saturated: p = 0.99950 on 1 of 2 images", 0),
      0u)
      << warnings[0];
  EXPECT_NE(warnings[0].find("maximise logit(0) instead"), std::string::npos)
      << warnings[0];

  // Only the images a term reads count, and the suggestion keeps its batch.
  objective = Objective::Parse("prob(0, batch=1) + prob(0, batch=0)");
  ASSERT_TRUE(objective.ok()) << objective.status();
  warnings = ProbSaturationWarnings(*objective, probs, false);
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(
      warnings[0].find("prob(0, batch=0) saturated: p = 0.99950 on 1 of 1"),
      std::string::npos)
      << warnings[0];
  EXPECT_NE(warnings[0].find("logit(0, batch=0)"), std::string::npos)
      << warnings[0];

  // A log_softmax model's logit(c) is log p: the suggestion is another.
  warnings = ProbSaturationWarnings(*objective, probs, /*log_probs=*/true);
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("log_softmax"), std::string::npos) << warnings[0];

  EXPECT_TRUE(ProbSaturationWarnings(*objective, at::full({2, 2}, 0.5f), false)
                  .empty());
}

// A model whose softmax is saturated on every image: prob(0) cannot move
// the images, and the result says so; logit(0) and prob(1) get no warning.
TEST(Render, SaturatedProbTermOfAConfidentModelIsReported) {
  absl::StatusOr<ModelPtr> model =
      Model::Load(::featviz::testing::TestModel("confident.pt"));
  ASSERT_TRUE(model.ok()) << model.status();
  absl::StatusOr<Objective> objective = Objective::Parse("prob(0) + logit(0)");
  ASSERT_TRUE(objective.ok()) << objective.status();
  absl::StatusOr<RenderResult> r = Render(**model, *objective, Quick(4, 2));
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->warnings.size(), 1u);
  EXPECT_EQ(r->warnings[0].rfind(
                "prob(0) saturated: p = 1.00000 on 2 of 2 images", 0),
            0u)
      << r->warnings[0];

  objective = Objective::Parse("prob(1)");
  ASSERT_TRUE(objective.ok()) << objective.status();
  r = Render(**model, *objective, Quick(4));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->warnings.empty()) << r->warnings[0];
}

TEST(Render, ProgressArrivesInOrderAndCanCancel) {
  RenderOptions o = Quick(20);
  o.progress_every = 5;
  o.progress_images = true;
  std::vector<int64_t> steps;
  absl::StatusOr<RenderResult> r =
      Render(Mnist(), Prob(1), o, [&](const ProgressEvent& e) {
        steps.push_back(e.step);
        EXPECT_EQ(e.values.size(), 1u);
        EXPECT_EQ(e.images.sizes(), (std::vector<int64_t>{1, 1, 28, 28}));
        return true;
      });
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(steps, (std::vector<int64_t>{5, 10, 15, 20}));
  r = Render(Mnist(), Prob(1), o, [](const ProgressEvent& e) { return e.step < 10; });
  EXPECT_EQ(r.status().code(), absl::StatusCode::kCancelled);
}

TEST(Render, StopsWithinOneStepOfACancelFlag) {
  std::atomic<bool> cancelled{false};
  int64_t last_step = 0;
  RenderOptions o = Quick(100);
  o.progress_every = 1;
  absl::StatusOr<RenderResult> r = Render(
      Mnist(), Prob(1), o,
      [&](const ProgressEvent& e) {
        last_step = e.step;
        if (e.step == 7) cancelled = true;
        return true;
      },
      &cancelled);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(last_step, 7);
}

TEST(Render, RejectsBadOptionsAndObjectives) {
  EXPECT_EQ(Render(Mnist(), Prob(1), Quick(0)).status().code(),
            absl::StatusCode::kInvalidArgument);
  RenderOptions o = Quick(4);
  o.lr = -1;
  EXPECT_EQ(Render(Mnist(), Prob(1), o).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Render(Mnist(), Channel("conv2", 70), Quick(4)).status().code(),
            absl::StatusCode::kOutOfRange);
  EXPECT_EQ(Render(Mnist(), Channel("conv9", 0), Quick(4)).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(Render(Mnist(), Prob(10), Quick(4)).status().code(),
            absl::StatusCode::kOutOfRange);
  EXPECT_EQ(Render(Mnist(), ForBatch(Prob(1), 2), Quick(4, 2)).status().code(),
            absl::StatusCode::kOutOfRange);
}

TEST(Render, RendersAtOtherSizesThanTheModelInput) {
  RenderOptions o = Quick(6);
  o.param.height = 56;
  o.param.width = 56;
  RenderResult r = MustRender("logit(3)", o);
  EXPECT_EQ(r.images.sizes(), (std::vector<int64_t>{1, 1, 56, 56}));
}

// The headline checks: with the default robust settings and 256 steps, each
// digit's class visualisation convinces the classifier...
TEST(MnistHeadline, EveryClassVisualisationReachesProbabilityPoint99) {
  Objective all;
  for (int c = 0; c < 10; ++c) all = all + ForBatch(Prob(c), c);
  RenderOptions o = Quick(256, 10, 0);
  absl::StatusOr<RenderResult> r = Render(Mnist(), all, o);
  ASSERT_TRUE(r.ok()) << r.status();
  for (int c = 0; c < 10; ++c) {
    EXPECT_GE(r->probs[c][c].item<double>(), 0.99) << "class " << c;
  }
  std::cout << "softmax of each class visualisation:";
  for (int c = 0; c < 10; ++c) std::cout << " " << r->probs[c][c].item<double>();
  std::cout << "\n";
}

// ...and every channel of the last conv layer is driven above the highest
// value it reaches on any of the 1,000 held-out digits.
TEST(MnistHeadline, EveryLastConvChannelBeatsItsHeldOutMaximum) {
  absl::StatusOr<LabelledImages> mnist = LoadMnistTestSet(MnistDir());
  ASSERT_TRUE(mnist.ok()) << mnist.status();
  at::Tensor heldout = mnist->images.narrow(0, 9000, 1000);
  absl::StatusOr<Taps> taps;
  {
    at::NoGradGuard no_grad;
    taps = Mnist().Forward(heldout, {"conv2"});
  }
  ASSERT_TRUE(taps.ok()) << taps.status();
  // The channel objective's statistic: the spatial mean of the channel.
  at::Tensor digit_max =
      std::get<0>(taps->activations.at("conv2").flatten(2).mean(2).max(0));
  const int64_t channels = digit_max.size(0);
  ASSERT_EQ(channels, 32);

  Objective all;
  for (int64_t c = 0; c < channels; ++c) all = all + ForBatch(Channel("conv2", c), c);
  absl::StatusOr<RenderResult> r = Render(Mnist(), all, Quick(256, channels, 0));
  ASSERT_TRUE(r.ok()) << r.status();
  const at::Tensor& mean = r->layer_stats.at(0).mean;
  for (int64_t c = 0; c < channels; ++c) {
    EXPECT_GT(mean[c][c].item<double>(), digit_max[c].item<double>())
        << "conv2 channel " << c;
  }
  at::Tensor margin = mean.diagonal() - digit_max;
  std::cout << "conv2 channel mean, render minus held-out max: min "
            << margin.min().item<double>() << ", median "
            << margin.median().item<double>() << "; held-out max median "
            << digit_max.median().item<double>() << "\n";
}

}  // namespace
}  // namespace featviz::core
