#include "core/invariant_conv.h"

#include <string>
#include <vector>

#include <ATen/Parallel.h>
#include <gtest/gtest.h>
#include <torch/script.h>

#include "core/device.h"
#include "core/model.h"
#include "tests/core/test_paths.h"

namespace featviz::core {
namespace {

struct ConvCase {
  std::string name;
  int64_t in, out, size, kernel, stride, dilation, groups;
  bool one_d = false;
};

// Shapes on every route at one and at two threads: the small layers where
// ATen's backend depends on the batch (an MNIST model's 3x3 first layer,
// ResNet-18's layer3 and layer4 at 128 px and its strided 1x1 shortcut), 1x1
// layers, a grouped and a dilated one, a 1-D one, and large ones oneDNN
// always takes.
std::vector<ConvCase> Cases() {
  return {
      {"mnist_conv1", 1, 32, 28, 3, 1, 1, 1},
      {"resnet_layer3", 256, 256, 8, 3, 1, 1, 1},
      {"resnet_layer4", 512, 512, 4, 3, 1, 1, 1},
      {"strided_shortcut", 256, 512, 8, 1, 2, 1, 1},
      {"pointwise", 64, 64, 8, 1, 1, 1, 1},
      {"grouped_pointwise", 64, 64, 8, 1, 1, 1, 4},
      {"dilated", 16, 16, 12, 3, 1, 2, 1},
      {"depthwise", 32, 32, 8, 3, 1, 1, 32},
      {"large", 32, 64, 26, 3, 1, 1, 1},
      {"five_by_five", 1, 16, 28, 5, 1, 1, 1},
      {"one_d", 64, 64, 32, 3, 1, 1, 1, /*one_d=*/true},
  };
}

struct RowResult {
  at::Tensor y, grad;
};

// Row `row` of `x`'s convolution and its input gradient (of the sum of the
// squared outputs, so each row's gradient is its own).
RowResult ConvRow(const ConvCase& c, const at::Tensor& x, const at::Tensor& weight,
              const at::Tensor& bias, int64_t row) {
  at::Tensor input = x.detach().clone().requires_grad_();
  at::Tensor y = InvariantConv(input, weight, bias, {c.stride}, {c.kernel / 2 * c.dilation},
                               {c.dilation}, c.groups);
  y.square().sum().backward();
  return {y[row].detach(), input.grad()[row]};
}

TEST(InvariantConv, EveryImageGetsTheSameBitsAtAnyBatchSizeAndPosition) {
  const int threads_before = at::get_num_threads();
  for (int threads : {1, 2}) {
    at::set_num_threads(threads);
    for (const ConvCase& c : Cases()) {
      SCOPED_TRACE(c.name + " at " + std::to_string(threads) + " threads");
      at::manual_seed(7);
      std::vector<int64_t> x_shape = {17, c.in, c.size, c.size};
      std::vector<int64_t> w_shape = {c.out, c.in / c.groups, c.kernel, c.kernel};
      if (c.one_d) {
        x_shape = {17, c.in, c.size};
        w_shape = {c.out, c.in / c.groups, c.kernel};
      }
      const at::Tensor x = at::randn(x_shape);
      const at::Tensor weight = at::randn(w_shape) * 0.1;
      const at::Tensor bias = at::randn({c.out});
      for (int64_t i : {0, 3, 16}) {
        const RowResult alone = ConvRow(c, x.narrow(0, i, 1), weight, bias, 0);
        for (int64_t batch : {2, 5, 17}) {
          if (i >= batch) continue;
          const RowResult in_batch = ConvRow(c, x.narrow(0, 0, batch), weight, bias, i);
          EXPECT_TRUE(at::equal(alone.y, in_batch.y)) << "row " << i << " of " << batch;
          EXPECT_TRUE(at::equal(alone.grad, in_batch.grad))
              << "row " << i << " of " << batch;
        }
      }
      // And it is the convolution.
      at::Tensor reference =
          c.one_d ? at::conv1d(x, weight, bias, c.stride, c.kernel / 2 * c.dilation,
                               c.dilation, c.groups)
                  : at::conv2d(x, weight, bias, c.stride, c.kernel / 2 * c.dilation,
                               c.dilation, c.groups);
      at::Tensor y = InvariantConv(x, weight, bias, {c.stride}, {c.kernel / 2 * c.dilation},
                                   {c.dilation}, c.groups);
      EXPECT_TRUE(at::allclose(y, reference, 1e-4, 1e-4));
    }
  }
  at::set_num_threads(threads_before);
}

TEST(InvariantConv, RoutesBySizeAndThreadsNeverByBatch) {
  // One image of MNIST's 3x3 first layer is not oneDNN's: padded to two.
  EXPECT_EQ(InvariantConvRoute({1, 1, 28, 28}, {32, 1, 3, 3}, {1, 1}, {1, 1}, 1, 1),
            ConvRoute::kPadOneRow);
  EXPECT_EQ(InvariantConvRoute({64, 1, 28, 28}, {32, 1, 3, 3}, {1, 1}, {1, 1}, 1, 1),
            ConvRoute::kPadOneRow);
  // Large enough, or 5x5: oneDNN's for one image too.
  EXPECT_EQ(InvariantConvRoute({1, 32, 26, 26}, {64, 32, 3, 3}, {1, 1}, {1, 1}, 1, 1),
            ConvRoute::kAsIs);
  EXPECT_EQ(InvariantConvRoute({1, 1, 28, 28}, {16, 1, 5, 5}, {1, 1}, {1, 1}, 1, 1),
            ConvRoute::kAsIs);
  // A 1x1 convolution at one thread: native at every batch; at two threads
  // oneDNN from two images.
  EXPECT_EQ(InvariantConvRoute({1, 64, 56, 56}, {64, 64, 1, 1}, {1, 1}, {1, 1}, 1, 1),
            ConvRoute::kNative);
  EXPECT_EQ(InvariantConvRoute({1, 64, 8, 8}, {64, 64, 1, 1}, {1, 1}, {1, 1}, 1, 2),
            ConvRoute::kPadOneRow);
}

// Every convolution of a loaded model goes through the operator: the
// residual test model (3x3 convolutions at 16x16, a strided 1x1 shortcut)
// and a traced model (aten::_convolution) give an image the same logits and
// input gradient alone and at any position of a batch.
TEST(InvariantConv, ModelsGiveAnImageTheSameBitsAloneAndBatched) {
  for (const char* file : {"residual.pt", "traced.pt"}) {
    SCOPED_TRACE(file);
    absl::StatusOr<ModelPtr> model = Model::Load(featviz::testing::TestModel(file));
    ASSERT_TRUE(model.ok()) << model.status();
    at::manual_seed(3);
    const at::Tensor images = at::rand({6, 3, 16, 16});
    auto run = [&](const at::Tensor& x) {
      at::Tensor input = x.clone().requires_grad_();
      absl::StatusOr<Taps> taps = (*model)->Forward(input, {});
      EXPECT_TRUE(taps.ok()) << taps.status();
      taps->logits.square().sum().backward();
      return std::make_pair(taps->logits.detach(), input.grad());
    };
    const auto batch = run(images);
    for (int64_t i = 0; i < 6; ++i) {
      const auto alone = run(images.narrow(0, i, 1));
      EXPECT_TRUE(at::equal(alone.first[0], batch.first[i])) << "image " << i;
      EXPECT_TRUE(at::equal(alone.second[0], batch.second[i])) << "image " << i;
    }
  }
}

// In a bf16 job autocast still casts the model's convolutions after the
// rewrite, scripted (aten::conv2d) and traced (aten::_convolution): the
// operator calls ATen's conv2d, which autocast lists, not at::convolution,
// which it does not (a bf16 step had silently run in float32).
TEST(InvariantConv, AutocastStillRunsTheRewrittenConvolutionsInBf16) {
  struct Case {
    const char* file;
    const char* layer;
  };
  for (const Case& c : {Case{"scripted.pt", "conv1"}, Case{"traced.pt", "features.0"}}) {
    SCOPED_TRACE(c.file);
    absl::StatusOr<ModelPtr> model = Model::Load(featviz::testing::TestModel(c.file));
    ASSERT_TRUE(model.ok()) << model.status();
    const at::Tensor images = at::rand({2, 3, 16, 16}).requires_grad_();
    PrecisionGuard bf16(Precision::kBf16, at::kCPU);
    absl::StatusOr<Taps> taps = (*model)->Forward(images, {c.layer});
    ASSERT_TRUE(taps.ok()) << taps.status();
    EXPECT_EQ(taps->activations.at(c.layer).scalar_type(), at::kBFloat16);
  }
}

}  // namespace
}  // namespace featviz::core
