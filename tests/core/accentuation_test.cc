// l2(REF), the pixel distance to a reference image that feature
// accentuation keeps small, and what a render measures for an
// accentuation (RenderOptions::accentuation_seed), on the bundled MNIST
// classifier.
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "core/mnist.h"
#include "core/objective.h"
#include "core/objective_eval.h"
#include "core/render.h"
#include "tests/core/mnist_model.h"
#include "tests/core/test_paths.h"

namespace featviz::core {
namespace {

using ::featviz::testing::Mnist;

TEST(PixelReference, ParsesAndPrintsBackCanonically) {
  for (const char* text :
       {"l2(dataset(5))", "l2(dataset(mnist, 5))", "l2(reference(0))",
        "channel(conv2, 3) - 4 * l2(dataset('my-set', 12), batch=1)"}) {
    absl::StatusOr<Objective> o = Objective::Parse(text);
    ASSERT_TRUE(o.ok()) << text << ": " << o.status();
    EXPECT_EQ(o->ToString(), text);
    EXPECT_EQ(Objective::Parse(o->ToString()).value(), *o);
  }
  const Objective built = L2(DatasetReference("mnist", 5));
  EXPECT_EQ(built.ToString(), "l2(dataset(mnist, 5))");
  EXPECT_TRUE(built.terms()[0].term.UsesReference());
  EXPECT_FALSE(built.terms()[0].term.UsesLayer());
  // The constant form is what it was: no reference, the same text.
  EXPECT_EQ(Objective::Parse("l2(0.25)").value().ToString(), "l2(0.25)");
  EXPECT_FALSE(L2().terms()[0].term.UsesReference());
  EXPECT_EQ(Objective::Parse("l2()").value(), L2());
  // A reference and a constant are different terms, and so are two
  // references.
  EXPECT_FALSE(L2(TensorReference(0)) == L2());
  EXPECT_FALSE(L2(TensorReference(0)) == L2(TensorReference(1)));
}

TEST(PixelReference, SaysWhatIsWrongWithIt) {
  for (auto [text, expected] :
       {std::pair<const char*, const char*>{"l2(image(3))", "constant"},
        {"l2(reference(-1))", "non-negative"},
        {"l2(dataset(mnist 3))", "','"},
        {"l2(dataset(3), 0.5)", "too many arguments"}}) {
    absl::StatusOr<Objective> o = Objective::Parse(text);
    ASSERT_FALSE(o.ok()) << text;
    EXPECT_EQ(o.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(o.status().message().find(expected), std::string::npos)
        << text << ": " << o.status();
  }
  // Built in code with both a constant and a reference.
  Objective both = L2(TensorReference(0));
  Term term = both.terms()[0].term;
  term.param = 0.5;
  const absl::Status status = Objective(term).Validate(Mnist().shape(), 1);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("not both"), std::string::npos) << status;
}

TEST(PixelReference, IsTheRootMeanSquareDistanceToTheReferencePixels) {
  const at::Tensor images = at::full({2, 1, 4, 4}, 0.5);
  images[1].fill_(0.2);
  const at::Tensor reference = at::full({1, 1, 4, 4}, 0.1);
  const Objective objective = L2(TensorReference(0)) + L2();
  absl::StatusOr<ObjectiveValue> value = EvaluateObjective(
      objective, Taps(), images, ReferenceActivations{reference, at::Tensor()});
  ASSERT_TRUE(value.ok()) << value.status();
  // Mean over the images: (0.4 + 0.1) / 2 against the reference, and
  // (0 + 0.3) / 2 against the constant 0.5.
  EXPECT_NEAR(value->terms[0].item<double>(), 0.25, 1e-5);
  EXPECT_NEAR(value->terms[1].item<double>(), 0.15, 1e-5);
  // No reference given: a named error, not a crash.
  EXPECT_EQ(EvaluateObjective(objective, Taps(), images).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST(PixelReference, HasAFiniteGradientOnTheReferenceItself) {
  const at::Tensor reference = at::rand({1, 1, 4, 4});
  const at::Tensor images = reference.clone().requires_grad_(true);
  absl::StatusOr<ObjectiveValue> value =
      EvaluateObjective(L2(TensorReference(0)), Taps(), images,
                        ReferenceActivations{reference});
  ASSERT_TRUE(value.ok()) << value.status();
  value->total.backward();
  EXPECT_TRUE(at::isfinite(images.grad()).all().item<bool>());
}

TEST(PixelReference, NeedsItsImageOfTheImagesShape) {
  RenderOptions o;
  o.steps = 2;
  o.transforms = TransformList{};
  const Objective objective = Channel("conv2", 3) - L2(TensorReference(0));
  o.references["reference(0)"] = at::rand({1, 20, 28});
  absl::StatusOr<RenderResult> r = Render(Mnist(), objective, o);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("l2(reference(0))"), std::string::npos)
      << r.status();
  EXPECT_NE(r.status().message().find("[1, 28, 28]"), std::string::npos)
      << r.status();
  o.references["reference(0)"] = at::rand({1, 1, 28, 28});
  EXPECT_TRUE(Render(Mnist(), objective, o).ok());
}

TEST(UnitTermIndex, IsTheFirstPositiveNeuronChannelLogitOrProbTerm) {
  EXPECT_EQ(UnitTermIndex(-0.1 * TotalVariation() + Channel("conv2", 3) -
                          2 * L2(TensorReference(0))),
            std::optional<size_t>(1));
  EXPECT_EQ(UnitTermIndex(-1 * Logit(3) + Prob(4)), std::optional<size_t>(1));
  EXPECT_EQ(UnitTermIndex(LayerObjective("conv2") - L2()), std::nullopt);
}

// A render that starts from a seed measures, per image, the unit on the seed
// and on the picture, and how far the picture moved from the seed.
TEST(Accentuation, MeasuresTheUnitOnTheSeedAndThePictureAndTheDistance) {
  absl::StatusOr<LabelledImages> digits =
      LoadMnistTestSet(featviz::testing::MnistDir());
  ASSERT_TRUE(digits.ok()) << digits.status();
  const at::Tensor seed = digits->images[3];  // [1, 28, 28]
  RenderOptions o;
  o.steps = 32;
  o.seed = 7;
  o.param.kind = ParamKind::kFft;
  o.param.batch = 2;
  o.param.init_image = seed;
  o.references["dataset(3)"] = seed;
  o.accentuation_seed = seed;
  const Objective objective =
      Channel("conv2", 5) - 4 * L2(DatasetReference("", 3));
  absl::StatusOr<RenderResult> r = Render(Mnist(), objective, o);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->accentuation.size(), 2u);

  absl::StatusOr<Taps> taps = Mnist().Forward(seed.unsqueeze(0), {"conv2"});
  ASSERT_TRUE(taps.ok()) << taps.status();
  const double on_seed =
      taps->activations.at("conv2").select(1, 5).mean().item<double>();
  for (size_t b = 0; b < 2; ++b) {
    const AccentuationOutcome& a = r->accentuation[b];
    EXPECT_NEAR(a.seed_value, on_seed, 1e-4);
    EXPECT_GT(a.value, a.seed_value);
    const double distance =
        (r->images[b] - seed).pow(2).mean().sqrt().item<double>();
    EXPECT_NEAR(a.pixel_distance, distance, 1e-5);
    EXPECT_GT(a.pixel_distance, 0);
  }
  // Nothing is measured for a render that does not ask.
  o.accentuation_seed = at::Tensor();
  r = Render(Mnist(), objective, o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->accentuation.empty());
}

TEST(Accentuation, NeedsASeedOfTheImagesShape) {
  RenderOptions o;
  o.steps = 1;
  o.accentuation_seed = at::rand({1, 14, 14});
  absl::StatusOr<RenderResult> r = Render(Mnist(), Channel("conv2", 5), o);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("accentuation seed"), std::string::npos)
      << r.status();
}

}  // namespace
}  // namespace featviz::core
