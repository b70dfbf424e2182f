#include "core/invariant_linear.h"

#include <torch/csrc/api/include/torch/jit.h>
#include <torch/script.h>

#include <gtest/gtest.h>

namespace featviz::core {
namespace {

// Shapes of real linear layers: the classic MNIST CNN's fc1 and fc2, a
// ViT block's MLP, a 7-class head, and one whose K is not a multiple of 16.
const std::vector<std::pair<int64_t, int64_t>> kShapes = {
    {9216, 128}, {128, 10}, {192, 768}, {100, 7}, {37, 5}};

// What a job relies on: a row gets the same bits alone, in a batch of any
// size and at any position of it (BLAS does not promise this; the blocked
// mode pads to 8 rows to get it).
TEST(InvariantLinear, ARowHasTheSameBitsAloneAndAtEveryPositionOfABatch) {
  at::manual_seed(0);
  for (const auto& [k, n] : kShapes) {
    const at::Tensor weight = at::randn({n, k});
    const at::Tensor batch = at::randn({19, k});
    const at::Tensor grad = at::randn({19, n});
    const at::Tensor y = InvariantLinearForward(batch, weight);
    const at::Tensor gx = InvariantLinearInputGrad(grad, weight);
    for (int64_t rows : {1, 2, 3, 4, 5, 8, 13}) {
      for (int64_t start = 0; start + rows <= 19; start += 6) {
        EXPECT_TRUE(at::equal(
            InvariantLinearForward(batch.narrow(0, start, rows), weight),
            y.narrow(0, start, rows)))
            << k << "x" << n << " rows " << start << "+" << rows;
        EXPECT_TRUE(at::equal(
            InvariantLinearInputGrad(grad.narrow(0, start, rows), weight),
            gx.narrow(0, start, rows)))
            << k << "x" << n << " rows " << start << "+" << rows;
      }
    }
    // And it is the product, to float rounding.
    EXPECT_TRUE(at::allclose(y, at::mm(batch, weight.t()), 1e-4, 1e-3));
    EXPECT_TRUE(at::allclose(gx, at::mm(grad, weight), 1e-4, 1e-3));
  }
}

// The kernel compiled for each vector width this CPU runs gives the same
// bits, so the choice of width does not change anyone's images.
TEST(InvariantLinear, EveryVectorWidthGivesTheSameBits) {
  at::manual_seed(1);
  for (const auto& [k, n] : kShapes) {
    const at::Tensor weight = at::randn({n, k});
    const at::Tensor x = at::randn({6, k});
    const at::Tensor grad = at::randn({6, n});
    const at::Tensor y = InvariantLinearForward(x, weight,
                                                InvariantLinearIsa::kPortable);
    const at::Tensor gx = InvariantLinearInputGrad(
        grad, weight, InvariantLinearIsa::kPortable);
    for (InvariantLinearIsa isa : InvariantLinearIsas()) {
      EXPECT_TRUE(at::equal(InvariantLinearForward(x, weight, isa), y))
          << static_cast<int>(isa);
      EXPECT_TRUE(at::equal(InvariantLinearInputGrad(grad, weight, isa), gx))
          << static_cast<int>(isa);
    }
  }
}

TEST(InvariantLinear, IsAnOperatorTorchScriptCallsAndDifferentiates) {
  auto unit = CompileWithInvariantLinear(R"JIT(
def f(x: Tensor, w: Tensor) -> Tensor:
    return featviz.invariant_linear(x, w)
)JIT");
  at::manual_seed(2);
  const at::Tensor weight = at::randn({10, 128}).requires_grad_();
  const at::Tensor x = at::randn({2, 3, 128}).requires_grad_();
  const at::Tensor y = unit->get_function("f")({x, weight}).toTensor();
  ASSERT_EQ(y.sizes(), (std::vector<int64_t>{2, 3, 10}));
  const at::Tensor seed = at::randn({2, 3, 10});
  y.backward(seed);
  const at::Tensor gx = x.grad().clone(), gw = weight.grad().clone();
  x.mutable_grad().zero_();
  weight.mutable_grad().zero_();
  at::linear(x, weight).backward(seed);
  EXPECT_TRUE(at::allclose(y, at::linear(x, weight), 1e-4, 1e-4));
  EXPECT_TRUE(at::allclose(gx, x.grad(), 1e-4, 1e-4));
  EXPECT_TRUE(at::allclose(gw, weight.grad(), 1e-4, 1e-4));
}

TEST(InvariantLinear, RefusesWhatItCannotCompute) {
  const at::Tensor weight = at::randn({4, 8});
  EXPECT_THROW(InvariantLinearForward(at::randn({2, 7}), weight), c10::Error);
  EXPECT_THROW(InvariantLinearForward(at::randn({2, 8}, at::kDouble), weight),
               c10::Error);
  EXPECT_THROW(InvariantLinearInputGrad(at::randn({2, 5}), weight), c10::Error);
}

}  // namespace
}  // namespace featviz::core
