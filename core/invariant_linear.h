// A linear layer's product whose every row has the same bits however many
// rows share the call: the CPU float32 product behind LinearMode::kInvariant
// (core/model.h).
//
// BLAS picks its kernels and blocking by the number of rows, so a row's low
// bits depend on the batch. The blocked mode works around that by padding
// every batch to blocks of 8 rows, which makes a job alone pay for 8 rows.
// Here each output is one dot product summed in a fixed order (16 partial
// sums over k mod 16, then a fixed tree, then the tail), and each input
// gradient one sum over the outputs in order, whatever the row count, the
// row's position and the CPU's vector width: a row alone costs one row.
#ifndef FEATVIZ_CORE_INVARIANT_LINEAR_H_
#define FEATVIZ_CORE_INVARIANT_LINEAR_H_

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <torch/csrc/jit/api/compilation_unit.h>

namespace featviz::core {

// The TorchScript operator
//   featviz::invariant_linear(Tensor x, Tensor weight) -> Tensor
// (x [..., K] and weight [N, K] float32 on the CPU; y = x weight^T, no bias),
// differentiable in x (and in weight, by a plain product, when it requires
// a gradient), is registered when this file is linked in. This compiles
// TorchScript source in which `featviz.invariant_linear(x, w)` calls it.
// Throws (LibTorch) on bad source.
std::shared_ptr<torch::jit::CompilationUnit> CompileWithInvariantLinear(
    const std::string& source);

// The vector widths the kernels are compiled for; the widest this CPU runs
// is used. Every width gives the same bits (tested).
enum class InvariantLinearIsa { kPortable, kAvx2, kAvx512 };
// The widths this CPU can run, narrowest first.
std::vector<InvariantLinearIsa> InvariantLinearIsas();

// The operator's forward and input-gradient kernels, for tests and
// benchmarks: x [M, K], weight [N, K] -> [M, N]; grad [M, N] -> [M, K].
// Float32 CPU tensors (c10::Error otherwise); inputs need not be
// contiguous. `isa` picks a width (default: the widest this CPU runs).
at::Tensor InvariantLinearForward(
    const at::Tensor& x, const at::Tensor& weight,
    std::optional<InvariantLinearIsa> isa = std::nullopt);
at::Tensor InvariantLinearInputGrad(
    const at::Tensor& grad, const at::Tensor& weight,
    std::optional<InvariantLinearIsa> isa = std::nullopt);

}  // namespace featviz::core

#endif  // FEATVIZ_CORE_INVARIANT_LINEAR_H_
