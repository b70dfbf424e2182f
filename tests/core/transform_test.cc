#include "core/transform.h"

#include <gtest/gtest.h>

namespace featviz::core {
namespace {

TEST(Transforms, DefaultSetIsScaledToTheImageSize) {
  TransformList small = DefaultTransforms(28, 28);
  TransformList large = DefaultTransforms(224, 224);
  ASSERT_EQ(small.size(), 5u);
  EXPECT_EQ(small[0].kind, Transform::Kind::kPad);
  EXPECT_EQ(small[0].pixels, 2);   // Lucid's 12 px at 224, scaled.
  EXPECT_EQ(large[0].pixels, 12);
  EXPECT_EQ(small[1].pixels, 1);
  EXPECT_EQ(large[1].pixels, 8);
}

TEST(Transforms, KeepTheModelInputShape) {
  std::mt19937_64 rng(7);
  at::Tensor images = at::rand({3, 1, 28, 28});
  for (int i = 0; i < 20; ++i) {
    at::Tensor out =
        ApplyTransforms(DefaultTransforms(28, 28), images, rng, 28, 28);
    EXPECT_EQ(out.sizes(), images.sizes());
  }
  at::Tensor resized = ApplyTransforms({}, at::rand({1, 3, 64, 48}), rng, 32, 32);
  EXPECT_EQ(resized.sizes(), (std::vector<int64_t>{1, 3, 32, 32}));
}

TEST(Transforms, AreSeeded) {
  at::Tensor images = at::rand({2, 3, 32, 32});
  std::mt19937_64 a(42), b(42), c(43);
  const TransformList t = DefaultTransforms(32, 32);
  at::Tensor x = ApplyTransforms(t, images, a, 32, 32);
  at::Tensor y = ApplyTransforms(t, images, b, 32, 32);
  EXPECT_TRUE(at::equal(x, y));
  bool any_different = false;
  for (int i = 0; i < 5 && !any_different; ++i) {
    any_different = !at::equal(ApplyTransforms(t, images, a, 32, 32),
                               ApplyTransforms(t, images, c, 32, 32));
  }
  EXPECT_TRUE(any_different);
}

TEST(Transforms, NoneLeavesTheImageAlone) {
  std::mt19937_64 rng(1);
  at::Tensor images = at::rand({1, 1, 28, 28});
  EXPECT_TRUE(at::equal(ApplyTransforms({}, images, rng, 28, 28), images));
}

TEST(Transforms, JitterCropsAndPadGrows) {
  std::mt19937_64 rng(3);
  at::Tensor images = at::rand({1, 1, 20, 20});
  Transform pad{Transform::Kind::kPad, 3, {}};
  Transform jitter{Transform::Kind::kJitter, 4, {}};
  // out size equal to the intermediate size, so nothing is resized.
  EXPECT_EQ(ApplyTransforms({pad}, images, rng, 26, 26).size(3), 26);
  EXPECT_EQ(ApplyTransforms({jitter}, images, rng, 16, 16).size(3), 16);
}

TEST(Transforms, RotateByZeroIsIdentityAndByNinetyTurnsTheImage) {
  std::mt19937_64 rng(5);
  at::Tensor images = at::zeros({1, 1, 9, 9});
  images[0][0][0].fill_(1.0);  // Top row lit.
  Transform rotate{Transform::Kind::kRotate, 0, {90}};
  at::Tensor out = ApplyTransforms({rotate}, images, rng, 9, 9);
  // A quarter turn moves the lit row to a column.
  EXPECT_GT(out[0][0].select(1, 0).mean().item<double>() +
                out[0][0].select(1, 8).mean().item<double>(),
            0.5);
  EXPECT_LT(out[0][0][0].mean().item<double>(), 0.5);
}

TEST(TransformText, ParsesAndPrintsLists) {
  absl::StatusOr<TransformList> t = ParseTransforms(
      "pad(2), jitter(1), scale(0.9, 1.1), rotate(-5, 5)", 28, 28);
  ASSERT_TRUE(t.ok()) << t.status();
  ASSERT_EQ(t->size(), 4u);
  EXPECT_EQ(TransformsToString(*t),
            "pad(2), jitter(1), scale(0.9, 1.1), rotate(-5, 5)");
  EXPECT_EQ(ParseTransforms(TransformsToString(*t), 28, 28).value(), *t);
  EXPECT_TRUE(ParseTransforms("none", 28, 28)->empty());
  EXPECT_EQ(ParseTransforms("default", 28, 28).value(), DefaultTransforms(28, 28));
}

TEST(TransformText, RejectsBadTransformsNamingThem) {
  for (const char* bad : {"blur(3)", "pad(-1)", "pad(1.5)", "scale()",
                          "scale(0)", "rotate(1000)", "jitter(28)", "pad(2"}) {
    absl::StatusOr<TransformList> t = ParseTransforms(bad, 28, 28);
    EXPECT_FALSE(t.ok()) << bad;
    EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
}

}  // namespace
}  // namespace featviz::core
