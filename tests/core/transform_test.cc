#include "core/transform.h"

#include <set>

#include <ATen/CPUGeneratorImpl.h>

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
  at::Generator rng = at::detail::createCPUGenerator(7);
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
  at::Generator a = at::detail::createCPUGenerator(42);
  at::Generator b = at::detail::createCPUGenerator(42);
  at::Generator c = at::detail::createCPUGenerator(43);
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
  at::Generator rng = at::detail::createCPUGenerator(1);
  at::Tensor images = at::rand({1, 1, 28, 28});
  EXPECT_TRUE(at::equal(ApplyTransforms({}, images, rng, 28, 28), images));
}

// A single lit pixel, to see where transforms move things.
at::Tensor Dot(int64_t size, int64_t y, int64_t x) {
  at::Tensor images = at::zeros({1, 1, size, size});
  images[0][0][y][x] = 1.0;
  return images;
}

std::pair<int64_t, int64_t> Brightest(const at::Tensor& image) {
  const int64_t index = image.flatten().argmax().item<int64_t>();
  return {index / image.size(-1), index % image.size(-1)};
}

TEST(Transforms, JitterShiftsByWholePixels) {
  Transform jitter{Transform::Kind::kJitter, 4, {}};
  std::set<std::pair<int64_t, int64_t>> seen;
  at::Generator rng = at::detail::createCPUGenerator(3);
  for (int i = 0; i < 40; ++i) {
    at::Tensor out = ApplyTransforms({jitter}, Dot(21, 10, 10), rng, 21, 21);
    // A whole-pixel shift moves the dot without blurring it.
    EXPECT_NEAR(out.max().item<double>(), 1.0, 1e-5);
    auto [y, x] = Brightest(out);
    EXPECT_LE(std::abs(y - 10), 2);
    EXPECT_LE(std::abs(x - 10), 2);
    seen.insert({y, x});
  }
  EXPECT_GT(seen.size(), 5u);
}

TEST(Transforms, PadZoomsOutAndScaleZoomsIn) {
  at::Generator rng = at::detail::createCPUGenerator(1);
  // A dot 8 px right of the centre of a 33 px image.
  at::Tensor dot = Dot(33, 16, 24);
  Transform pad{Transform::Kind::kPad, 8, {}};  // 33 -> 49 px of content
  Transform zoom{Transform::Kind::kScale, 0, {2.0}};
  EXPECT_EQ(Brightest(ApplyTransforms({pad}, dot, rng, 33, 33)).second,
            16 + 5);  // 8 * 33 / 49 = 5.4
  EXPECT_EQ(Brightest(ApplyTransforms({zoom}, dot, rng, 33, 33)).second,
            16 + 16);
}

TEST(Transforms, ComposeIntoOneMatrixPerImage) {
  at::Generator a = at::detail::createCPUGenerator(9);
  at::Generator b = at::detail::createCPUGenerator(9);
  const TransformList t = DefaultTransforms(28, 28);
  // One draw, shared by the batch's three images.
  at::Tensor m = TransformMatrices(t, 1, 28, 28, a).expand({3, 2, 3});
  EXPECT_EQ(m.sizes(), (std::vector<int64_t>{3, 2, 3}));
  at::Tensor images = at::rand({3, 1, 28, 28});
  EXPECT_TRUE(at::equal(SampleAffine(images, m, 28, 28),
                        ApplyTransforms(t, images, b, 28, 28)));
}

TEST(Transforms, ScheduleDrawsEveryStepOnTheGeneratorsDevice) {
  at::Generator a = at::detail::createCPUGenerator(5);
  at::Generator b = at::detail::createCPUGenerator(5);
  const TransformList t = DefaultTransforms(28, 28);
  at::Tensor schedule = TransformMatrices(t, 256, 28, 28, a);
  EXPECT_EQ(schedule.sizes(), (std::vector<int64_t>{256, 2, 3}));
  EXPECT_EQ(schedule.scalar_type(), at::kFloat);
  EXPECT_TRUE(schedule.device().is_cpu());
  // Seeded: the same generator state draws the same schedule.
  EXPECT_TRUE(at::equal(schedule, TransformMatrices(t, 256, 28, 28, b)));
  // Every step draws afresh: many distinct matrices across the schedule.
  at::Tensor flat = schedule.flatten(1);
  int64_t distinct = std::get<0>(at::_unique(flat.select(1, 2))).numel();
  EXPECT_GT(distinct, 1);
  // Rotations within +-10 degrees and zooms within 0.9-1.1 keep the linear
  // part close to the identity (scaled by the pad).
  EXPECT_LT((schedule.select(2, 0).select(1, 0) - 1).abs().max().item<float>(),
            0.35);
}

TEST(Transforms, SampleEachImageIndependentlyOfTheStack) {
  at::Generator rng = at::detail::createCPUGenerator(4);
  at::Tensor images = at::rand({16, 3, 24, 24});
  at::Tensor m = at::cat({TransformMatrices(DefaultTransforms(24, 24), 8, 24, 24, rng),
                          TransformMatrices(DefaultTransforms(24, 24), 8, 24, 24, rng)});
  at::Tensor all = SampleAffine(images, m, 20, 20);
  for (int64_t i : {0, 9, 15}) {
    EXPECT_TRUE(at::equal(all[i], SampleAffine(images.narrow(0, i, 1),
                                               m.narrow(0, i, 1), 20, 20)[0]));
  }
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
