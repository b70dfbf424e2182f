#include "core/invariant_conv.h"

#include <vector>

#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>
#include <torch/csrc/jit/ir/constants.h>
#include <torch/library.h>

namespace featviz::core {
namespace {

using torch::jit::Node;
using torch::jit::Value;

// Per-image elements above which ATen's float32 oneDNN test holds whatever
// the batch (see the header).
constexpr int64_t kOneDnnMinElements = 20480;

bool AnyAbove1(at::IntArrayRef values) {
  for (int64_t v : values) {
    if (v != 1) return true;
  }
  return false;
}

// Whether ATen's CPU float32 test picks oneDNN at `batch` images.
bool OneDnnAt(int64_t batch, at::IntArrayRef input, at::IntArrayRef weight,
              at::IntArrayRef stride, at::IntArrayRef dilation, int64_t groups,
              int threads) {
  const int64_t kh = weight[2], kw = weight[3];
  const bool first = AnyAbove1(stride) || AnyAbove1(dilation) || batch >= 16 ||
                     kh != 1 || kw != 1 || threads > 1;
  const bool second = groups > 1 || (kh > 3 && kw > 3) || batch > 1 ||
                      batch * input[1] * input[2] * input[3] > kOneDnnMinElements;
  return first && second;
}

// A list argument as `n` values (TorchScript's int[2] accepts one value for
// both sides).
std::vector<int64_t> Expand(at::IntArrayRef values, size_t n) {
  if (values.size() == 1) return std::vector<int64_t>(n, values[0]);
  return values.vec();
}

// The convolution through its per-rank ATen op (not at::convolution), which
// CPU and CUDA autocast cast to bf16 in a bf16 job.
at::Tensor Conv(const at::Tensor& x, const at::Tensor& weight,
                const c10::optional<at::Tensor>& bias, at::IntArrayRef stride,
                at::IntArrayRef padding, at::IntArrayRef dilation,
                int64_t groups) {
  switch (x.dim()) {
    case 3:
      return at::conv1d(x, weight, bias, stride, padding, dilation, groups);
    case 4:
      return at::conv2d(x, weight, bias, stride, padding, dilation, groups);
    case 5:
      return at::conv3d(x, weight, bias, stride, padding, dilation, groups);
    default: {
      const std::vector<int64_t> output_padding(stride.size(), 0);
      return at::convolution(x, weight, bias, stride, padding, dilation, false,
                             output_padding, groups);
    }
  }
}

// The native (im2col) path for every batch: ATen's own slow kernels, which
// compute each image with its own product.
at::Tensor NativeConv2d(const at::Tensor& x, const at::Tensor& weight,
                        const c10::optional<at::Tensor>& bias,
                        at::IntArrayRef stride, at::IntArrayRef padding,
                        at::IntArrayRef dilation, int64_t groups) {
  if (groups > 1) {
    std::vector<at::Tensor> xs = x.chunk(groups, 1);
    std::vector<at::Tensor> ws = weight.chunk(groups, 0);
    std::vector<at::Tensor> bs;
    if (bias.has_value() && bias->defined()) bs = bias->chunk(groups, 0);
    std::vector<at::Tensor> ys;
    for (int64_t g = 0; g < groups; ++g) {
      ys.push_back(NativeConv2d(
          xs[g], ws[g], bs.empty() ? c10::optional<at::Tensor>() : bs[g],
          stride, padding, dilation, 1));
    }
    return at::cat(ys, 1);
  }
  const std::vector<int64_t> kernel = {weight.size(2), weight.size(3)};
  if (AnyAbove1(dilation)) {
    return at::slow_conv_dilated2d(x, weight, kernel, bias, stride, padding,
                                   dilation);
  }
  return at::thnn_conv2d(x, weight, kernel, bias, stride, padding);
}

at::Tensor InvariantConv2d(const at::Tensor& x, const at::Tensor& weight,
                           const c10::optional<at::Tensor>& bias,
                           at::IntArrayRef stride, at::IntArrayRef padding,
                           at::IntArrayRef dilation, int64_t groups) {
  const std::vector<int64_t> s = Expand(stride, 2), p = Expand(padding, 2),
                             d = Expand(dilation, 2);
  switch (InvariantConvRoute(x.sizes(), weight.sizes(), s, d, groups,
                             at::get_num_threads())) {
    case ConvRoute::kAsIs:
      break;
    case ConvRoute::kPadOneRow:
      if (x.size(0) == 1) {
        return at::conv2d(at::cat({x, at::zeros_like(x)}), weight, bias, s, p,
                          d, groups)
            .narrow(0, 0, 1);
      }
      break;
    case ConvRoute::kNative:
      return NativeConv2d(x, weight, bias, s, p, d, groups);
  }
  return at::conv2d(x, weight, bias, s, p, d, groups);
}

// Whether the call is a float32 CPU convolution that ATen may run on either
// backend. Under CPU autocast (a bf16 job) the convolution runs in bf16,
// always in oneDNN: nothing to route.
bool Routed(const at::Tensor& x, const at::Tensor& weight) {
  return x.device().is_cpu() && !at::autocast::is_cpu_enabled() &&
         x.scalar_type() == at::kFloat &&
         weight.scalar_type() == at::kFloat && !x.is_mkldnn() &&
         at::hasMKLDNN() && at::globalContext().userEnabledMkldnn() &&
         x.dim() == weight.dim() && (x.dim() == 3 || x.dim() == 4) &&
         x.size(0) > 0;
}

// A constant bool input, or nullopt.
c10::optional<bool> ConstantBool(Value* value) {
  return torch::jit::constant_as<bool>(value);
}

bool IsIntList(Value* value) {
  const auto list = value->type()->cast<c10::ListType>();
  return list && list->getElementType()->kind() == c10::TypeKind::IntType;
}

}  // namespace

ConvRoute InvariantConvRoute(at::IntArrayRef input, at::IntArrayRef weight,
                             at::IntArrayRef stride, at::IntArrayRef dilation,
                             int64_t groups, int threads) {
  if (input.size() != 4 || weight.size() != 4) return ConvRoute::kAsIs;
  if (OneDnnAt(1, input, weight, stride, dilation, groups, threads)) {
    return ConvRoute::kAsIs;
  }
  if (OneDnnAt(2, input, weight, stride, dilation, groups, threads)) {
    return ConvRoute::kPadOneRow;
  }
  return ConvRoute::kNative;
}

at::Tensor InvariantConv(const at::Tensor& x, const at::Tensor& weight,
                         const c10::optional<at::Tensor>& bias,
                         at::IntArrayRef stride, at::IntArrayRef padding,
                         at::IntArrayRef dilation, int64_t groups) {
  const size_t spatial = x.dim() > 2 ? static_cast<size_t>(x.dim() - 2) : 1;
  if (!Routed(x, weight)) {
    return Conv(x, weight, bias, Expand(stride, spatial),
                Expand(padding, spatial), Expand(dilation, spatial), groups);
  }
  if (x.dim() == 4) {
    return InvariantConv2d(x, weight, bias, stride, padding, dilation, groups);
  }
  // As ATen runs a 1-D convolution: a 2-D one of height 1.
  const std::vector<int64_t> s = {1, Expand(stride, 1)[0]},
                             p = {0, Expand(padding, 1)[0]},
                             d = {1, Expand(dilation, 1)[0]};
  return InvariantConv2d(x.unsqueeze(2), weight.unsqueeze(2), bias, s, p, d,
                         groups)
      .squeeze(2);
}

void RewriteConvolutions(torch::jit::Block* block) {
  static const c10::Symbol kInvariantConv =
      c10::Symbol::fromQualString("featviz::invariant_conv");
  for (auto it = block->nodes().begin(); it != block->nodes().end();) {
    Node* node = *it;
    ++it;
    for (torch::jit::Block* sub : node->blocks()) RewriteConvolutions(sub);
    const c10::Symbol kind = node->kind();
    Value* groups = nullptr;
    if (kind == c10::aten::conv1d || kind == c10::aten::conv2d) {
      // (input, weight, bias, stride, padding, dilation, groups); the
      // overload with padding "same" / "valid" is left alone.
      if (node->inputs().size() != 7 || !IsIntList(node->input(4))) continue;
      groups = node->input(6);
    } else if (kind == c10::aten::_convolution ||
               kind == c10::aten::convolution) {
      // (input, weight, bias, stride, padding, dilation, transposed,
      //  output_padding, groups, ...)
      if (node->inputs().size() < 9 || ConstantBool(node->input(6)) != false) {
        continue;
      }
      groups = node->input(8);
    } else {
      continue;
    }
    torch::jit::WithInsertPoint guard(node);
    Value* conv = node->owningGraph()->insert(
        kInvariantConv, {node->input(0), node->input(1), node->input(2),
                         node->input(3), node->input(4), node->input(5),
                         groups});
    node->output()->replaceAllUsesWith(conv);
    node->destroy();
  }
}

TORCH_LIBRARY_FRAGMENT(featviz, m) {
  m.def(
      "invariant_conv(Tensor x, Tensor weight, Tensor? bias, int[] stride, "
      "int[] padding, int[] dilation, int groups) -> Tensor");
  m.impl("invariant_conv",
         torch::dispatch(c10::DispatchKey::CompositeImplicitAutograd,
                         TORCH_FN(InvariantConv)));
}

}  // namespace featviz::core
