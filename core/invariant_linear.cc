#include "core/invariant_linear.h"

#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/jit/frontend/resolver.h>
#include <torch/csrc/jit/frontend/sugared_value.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <vector>

// Every sum below is written out in the order it is computed; this file is
// compiled with -ffp-contract=off (core/CMakeLists.txt) so that no multiply
// and add are fused into one rounding. The x86 kernels are compiled once
// per vector width (the same source, inlined into functions of each
// target); each lane computes the same IEEE operations in the same order,
// so every width gives the same bits.

namespace featviz::core {
namespace {

constexpr int kLanes = 16;    // Partial sums of a dot product.
constexpr int kRowTile = 4;   // Rows sharing one read of a weight row.
constexpr int64_t kColumnBlock = 1024;  // Input-gradient columns per pass.

#define FEATVIZ_INLINE inline __attribute__((always_inline))

// out[r] = sum_k x[r][k] * w[k] for R rows: lane l sums k = l, l + 16, ...;
// the lanes are added in a fixed tree (16 -> 8 -> 4 -> 2 -> 1); the last
// K mod 16 products follow in order.
template <int R>
FEATVIZ_INLINE void Dots(const float* const* x, const float* w, int64_t k,
                         float* out) {
  float acc[R][kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= k; i += kLanes) {
    for (int r = 0; r < R; ++r) {
      const float* xr = x[r] + i;
      for (int l = 0; l < kLanes; ++l) acc[r][l] += xr[l] * w[i + l];
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int width = kLanes / 2; width >= 1; width /= 2) {
      for (int l = 0; l < width; ++l) acc[r][l] += acc[r][l + width];
    }
    float sum = acc[r][0];
    for (int64_t j = i; j < k; ++j) sum += x[r][j] * w[j];
    out[r] = sum;
  }
}

// y [m, n] = x [m, k] . w [n, k]^T, rows of x `x_stride` apart.
FEATVIZ_INLINE void ForwardImpl(const float* x, int64_t x_stride,
                                const float* w, int64_t m, int64_t n,
                                int64_t k, float* y) {
  for (int64_t j = 0; j < n; ++j) {
    const float* wj = w + j * k;
    int64_t i = 0;
    for (; i + kRowTile <= m; i += kRowTile) {
      const float* rows[kRowTile];
      for (int r = 0; r < kRowTile; ++r) rows[r] = x + (i + r) * x_stride;
      float out[kRowTile];
      Dots<kRowTile>(rows, wj, k, out);
      for (int r = 0; r < kRowTile; ++r) y[(i + r) * n + j] = out[r];
    }
    for (; i < m; ++i) {
      const float* row = x + i * x_stride;
      Dots<1>(&row, wj, k, &y[i * n + j]);
    }
  }
}

// gx [m, k] = g [m, n] . w [n, k]: each gx[i][c] sums g[i][j] * w[j][c]
// over j = 0, 1, ..., n - 1 in that order.
template <int R>
FEATVIZ_INLINE void GradRows(const float* g, const float* w, int64_t n,
                             int64_t k, int64_t c0, int64_t c1, float* gx) {
  for (int64_t j = 0; j < n; ++j) {
    const float* wj = w + j * k;
    for (int r = 0; r < R; ++r) {
      const float gr = g[r * n + j];
      float* out = gx + r * k;
      for (int64_t c = c0; c < c1; ++c) out[c] += gr * wj[c];
    }
  }
}

FEATVIZ_INLINE void InputGradImpl(const float* g, const float* w, int64_t m,
                                  int64_t n, int64_t k, float* gx) {
  std::fill(gx, gx + m * k, 0.0f);
  for (int64_t c0 = 0; c0 < k; c0 += kColumnBlock) {
    const int64_t c1 = std::min(k, c0 + kColumnBlock);
    int64_t i = 0;
    for (; i + kRowTile <= m; i += kRowTile) {
      GradRows<kRowTile>(g + i * n, w, n, k, c0, c1, gx + i * k);
    }
    for (; i < m; ++i) GradRows<1>(g + i * n, w, n, k, c0, c1, gx + i * k);
  }
}

using ForwardFn = void (*)(const float*, int64_t, const float*, int64_t,
                           int64_t, int64_t, float*);
using InputGradFn = void (*)(const float*, const float*, int64_t, int64_t,
                             int64_t, float*);

void ForwardPortable(const float* x, int64_t x_stride, const float* w,
                     int64_t m, int64_t n, int64_t k, float* y) {
  ForwardImpl(x, x_stride, w, m, n, k, y);
}
void InputGradPortable(const float* g, const float* w, int64_t m, int64_t n,
                       int64_t k, float* gx) {
  InputGradImpl(g, w, m, n, k, gx);
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
__attribute__((target("avx2"))) void ForwardAvx2(
    const float* x, int64_t x_stride, const float* w, int64_t m, int64_t n,
    int64_t k, float* y) {
  ForwardImpl(x, x_stride, w, m, n, k, y);
}
__attribute__((target("avx2"))) void InputGradAvx2(const float* g,
                                                   const float* w, int64_t m,
                                                   int64_t n, int64_t k,
                                                   float* gx) {
  InputGradImpl(g, w, m, n, k, gx);
}
__attribute__((target("avx512f"))) void ForwardAvx512(
    const float* x, int64_t x_stride, const float* w, int64_t m, int64_t n,
    int64_t k, float* y) {
  ForwardImpl(x, x_stride, w, m, n, k, y);
}
__attribute__((target("avx512f"))) void InputGradAvx512(const float* g,
                                                       const float* w,
                                                       int64_t m, int64_t n,
                                                       int64_t k, float* gx) {
  InputGradImpl(g, w, m, n, k, gx);
}
#endif

struct Kernels {
  ForwardFn forward;
  InputGradFn input_grad;
};

Kernels KernelsFor(InvariantLinearIsa isa) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  switch (isa) {
    case InvariantLinearIsa::kAvx512:
      return {ForwardAvx512, InputGradAvx512};
    case InvariantLinearIsa::kAvx2:
      return {ForwardAvx2, InputGradAvx2};
    default:
      break;
  }
#else
  (void)isa;
#endif
  return {ForwardPortable, InputGradPortable};
}

InvariantLinearIsa BestIsa() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return InvariantLinearIsa::kAvx512;
  if (__builtin_cpu_supports("avx2")) return InvariantLinearIsa::kAvx2;
#endif
  return InvariantLinearIsa::kPortable;
}

const Kernels& Best() {
  static const Kernels kernels = KernelsFor(BestIsa());
  return kernels;
}

void CheckArguments(const at::Tensor& a, const at::Tensor& weight,
                    int64_t a_columns, const char* what) {
  TORCH_CHECK(a.dim() == 2 && weight.dim() == 2,
              "featviz::invariant_linear: ", what, " and weight must be 2-D");
  TORCH_CHECK(a.size(1) == a_columns, "featviz::invariant_linear: ", what,
              " has ", a.size(1), " columns, the weight needs ", a_columns);
  TORCH_CHECK(a.scalar_type() == at::kFloat && weight.scalar_type() == at::kFloat,
              "featviz::invariant_linear: float32 only");
  TORCH_CHECK(a.device().is_cpu() && weight.device().is_cpu(),
              "featviz::invariant_linear: CPU tensors only");
}

at::Tensor Forward(const at::Tensor& x_in, const at::Tensor& weight_in,
                   const Kernels& kernels) {
  CheckArguments(x_in, weight_in, weight_in.size(1), "x");
  const at::Tensor x = x_in.contiguous();
  const at::Tensor weight = weight_in.contiguous();
  const int64_t m = x.size(0), n = weight.size(0), k = weight.size(1);
  at::Tensor y = at::empty({m, n}, x.options());
  kernels.forward(x.data_ptr<float>(), k, weight.data_ptr<float>(), m, n, k,
                  y.data_ptr<float>());
  return y;
}

at::Tensor InputGrad(const at::Tensor& grad_in, const at::Tensor& weight_in,
                     const Kernels& kernels) {
  CheckArguments(grad_in, weight_in, weight_in.size(0), "grad");
  const at::Tensor grad = grad_in.contiguous();
  const at::Tensor weight = weight_in.contiguous();
  const int64_t m = grad.size(0), n = weight.size(0), k = weight.size(1);
  at::Tensor gx = at::empty({m, k}, grad.options());
  kernels.input_grad(grad.data_ptr<float>(), weight.data_ptr<float>(), m, n, k,
                     gx.data_ptr<float>());
  return gx;
}

class InvariantLinearFunction
    : public torch::autograd::Function<InvariantLinearFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx,
                            const at::Tensor& x, const at::Tensor& weight) {
    // x is kept only when the weight's gradient will need it.
    ctx->save_for_backward(
        {weight.requires_grad() ? x : at::Tensor(), weight});
    const int64_t k = weight.size(1);
    TORCH_CHECK(x.dim() >= 1 && x.size(-1) == k,
                "featviz::invariant_linear: x's last dimension is ",
                x.dim() >= 1 ? x.size(-1) : 0, ", the weight needs ", k);
    std::vector<int64_t> shape = x.sizes().vec();
    shape.back() = weight.size(0);
    return Forward(x.reshape({-1, k}), weight, Best()).view(shape);
  }

  static torch::autograd::variable_list backward(
      torch::autograd::AutogradContext* ctx,
      torch::autograd::variable_list grads) {
    const torch::autograd::variable_list saved = ctx->get_saved_variables();
    const at::Tensor& x = saved[0];
    const at::Tensor& weight = saved[1];
    const int64_t n = weight.size(0), k = weight.size(1);
    const at::Tensor grad = grads[0].reshape({-1, n});
    at::Tensor grad_x, grad_weight;
    if (ctx->needs_input_grad(0)) {
      std::vector<int64_t> shape = grads[0].sizes().vec();
      shape.back() = k;
      grad_x = InputGrad(grad, weight, Best()).view(shape);
    }
    if (ctx->needs_input_grad(1)) {
      grad_weight = at::mm(grad.t(), x.reshape({-1, k}));
    }
    return {grad_x, grad_weight};
  }
};

at::Tensor InvariantLinearOp(const at::Tensor& x, const at::Tensor& weight) {
  return InvariantLinearFunction::apply(x, weight);
}

}  // namespace

TORCH_LIBRARY(featviz, m) {
  m.def("invariant_linear(Tensor x, Tensor weight) -> Tensor");
  m.impl("invariant_linear", torch::dispatch(c10::DispatchKey::CompositeImplicitAutograd,
                                             TORCH_FN(InvariantLinearOp)));
}

namespace {

// Resolves the name `featviz` to the operator namespace (torch.ops.featviz
// in Python), and `torch` to ATen's as LibTorch's native resolver does.
class FeatvizResolver : public torch::jit::Resolver {
 public:
  std::shared_ptr<torch::jit::SugaredValue> resolveValue(
      const std::string& name, torch::jit::GraphFunction&,
      const torch::jit::SourceRange&) override {
    if (name == "featviz") {
      return std::make_shared<torch::jit::BuiltinModule>("featviz");
    }
    if (name == "torch") {
      return std::make_shared<torch::jit::BuiltinModule>("aten");
    }
    return nullptr;
  }
  c10::TypePtr resolveType(const std::string&,
                           const torch::jit::SourceRange&) override {
    return nullptr;
  }
};

}  // namespace

std::shared_ptr<torch::jit::CompilationUnit> CompileWithInvariantLinear(
    const std::string& source) {
  auto unit = std::make_shared<torch::jit::CompilationUnit>();
  unit->define(c10::nullopt, source, std::make_shared<FeatvizResolver>(),
               nullptr);
  return unit;
}

std::vector<InvariantLinearIsa> InvariantLinearIsas() {
  std::vector<InvariantLinearIsa> isas = {InvariantLinearIsa::kPortable};
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2")) isas.push_back(InvariantLinearIsa::kAvx2);
  if (__builtin_cpu_supports("avx512f")) {
    isas.push_back(InvariantLinearIsa::kAvx512);
  }
#endif
  return isas;
}

at::Tensor InvariantLinearForward(const at::Tensor& x, const at::Tensor& weight,
                                  std::optional<InvariantLinearIsa> isa) {
  return Forward(x, weight, isa ? KernelsFor(*isa) : Best());
}

at::Tensor InvariantLinearInputGrad(const at::Tensor& grad,
                                    const at::Tensor& weight,
                                    std::optional<InvariantLinearIsa> isa) {
  return InputGrad(grad, weight, isa ? KernelsFor(*isa) : Best());
}

}  // namespace featviz::core
