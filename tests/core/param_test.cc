#include "core/param.h"

#include <gtest/gtest.h>

namespace featviz::core {
namespace {

ParamOptions Options(ParamKind kind, int64_t c, int64_t h, int64_t w,
                     int64_t batch = 1) {
  ParamOptions o;
  o.kind = kind;
  o.channels = c;
  o.height = h;
  o.width = w;
  o.batch = batch;
  return o;
}

class ParamKinds : public ::testing::TestWithParam<ParamKind> {};

TEST_P(ParamKinds, MakeImagesOfAnySizeInTheUnitRange) {
  for (auto [c, h, w, b] : std::vector<std::array<int64_t, 4>>{
           {1, 28, 28, 1}, {3, 31, 17, 2}, {3, 224, 224, 1}, {1, 5, 64, 3}}) {
    auto param = ImageParam::Create(Options(GetParam(), c, h, w, b), 1, c10::kCPU);
    ASSERT_TRUE(param.ok()) << param.status();
    at::Tensor image = (*param)->Image();
    EXPECT_EQ(image.sizes(), (std::vector<int64_t>{b, c, h, w}));
    EXPECT_GE(image.min().item<double>(), 0.0);
    EXPECT_LE(image.max().item<double>(), 1.0);
  }
}

TEST_P(ParamKinds, AreDifferentiableAndSeeded) {
  auto a = ImageParam::Create(Options(GetParam(), 3, 16, 16), 9, c10::kCPU);
  auto b = ImageParam::Create(Options(GetParam(), 3, 16, 16), 9, c10::kCPU);
  auto c = ImageParam::Create(Options(GetParam(), 3, 16, 16), 10, c10::kCPU);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  EXPECT_TRUE(at::equal((*a)->Image(), (*b)->Image()));
  EXPECT_FALSE(at::equal((*a)->Image(), (*c)->Image()));
  (*a)->Image().mean().backward();
  EXPECT_TRUE((*a)->parameters()[0].grad().defined());
}

TEST_P(ParamKinds, StartFromAGivenImage) {
  ParamOptions o = Options(GetParam(), 3, 20, 24, 2);
  o.init_std = 0;
  o.init_image = at::rand({3, 20, 24}) * 0.8 + 0.1;
  auto param = ImageParam::Create(o, 0, c10::kCPU);
  ASSERT_TRUE(param.ok()) << param.status();
  at::Tensor image = (*param)->Image();
  EXPECT_TRUE(at::allclose(image[0], o.init_image, 1e-3, 1e-3));
  EXPECT_TRUE(at::allclose(image[1], o.init_image, 1e-3, 1e-3));
}

INSTANTIATE_TEST_SUITE_P(Kinds, ParamKinds,
                         ::testing::Values(ParamKind::kPixel, ParamKind::kFft));

TEST(FftParam, PutsMoreEnergyInLowFrequencies) {
  // With a 1/f spectrum the random start is smooth: neighbouring pixels are
  // more alike than in a pixel parameterisation with the same variance.
  ParamOptions o = Options(ParamKind::kFft, 1, 64, 64);
  o.init_std = 1.0;
  auto param = ImageParam::Create(o, 3, c10::kCPU);
  ASSERT_TRUE(param.ok());
  at::Tensor x = (*param)->Image()[0][0];
  x = x - x.mean();
  const double neighbour = (x.narrow(1, 1, 63) * x.narrow(1, 0, 63)).mean().item<double>();
  const double variance = (x * x).mean().item<double>();
  EXPECT_GT(neighbour / variance, 0.5);
}

TEST(ParamOptionsCheck, RejectsBadSizesAndInitImages) {
  EXPECT_FALSE(ImageParam::Create(Options(ParamKind::kFft, 1, 0, 28), 0, c10::kCPU).ok());
  EXPECT_FALSE(ImageParam::Create(Options(ParamKind::kPixel, 1, 28, 28, 0), 0, c10::kCPU).ok());
  ParamOptions o = Options(ParamKind::kFft, 1, 28, 28);
  o.init_image = at::rand({3, 28, 28});
  absl::StatusOr<ImageParamPtr> p = ImageParam::Create(o, 0, c10::kCPU);
  ASSERT_FALSE(p.ok());
  EXPECT_NE(p.status().message().find("init image"), std::string::npos);
  o.init_image = at::Tensor();
  o.decay_power = -1;
  EXPECT_FALSE(ImageParam::Create(o, 0, c10::kCPU).ok());
  EXPECT_EQ(ParseParamKind("wavelet").status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace featviz::core
