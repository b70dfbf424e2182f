// A convolution whose every image gets the same bits however many images
// share the call: the CPU float32 convolution behind LinearMode::kInvariant
// and kBlocked (core/model.h), which rewrite a model's convolutions to it.
//
// ATen picks a float32 convolution's CPU backend by the batch size as well as
// by the layer's shape. In LibTorch 1.13 (and 2.x) oneDNN takes a 2-D
// convolution when
//   (strided or dilated or batch >= 16 or the kernel is not 1x1 or more than
//    one thread) and
//   (grouped or both kernel sides > 3 or batch > 1 or batch * C * H * W > 20480)
// and the native im2col path takes it otherwise. The two give an image
// different low bits, so a small convolution (ResNet-18's layer3 and layer4
// at 128 px, an MNIST model's 3x3 first layer) gave a one-image job other
// pictures alone than in a batch. Each backend on its own is invariant: a
// row gets the same bits at any batch size and position (tested). So every
// call is routed to the backend its batch would not change:
//   - kAsIs: oneDNN takes one image already, hence every batch;
//   - kPadOneRow: oneDNN takes two images or more; one image is padded with
//     a zero image to two (the small layers where this happens cost little);
//   - kNative: a 1x1 convolution at one thread, which oneDNN takes only from
//     16 images: the native path for every batch.
// bf16 convolutions always run in oneDNN; CUDA is left to cuDNN.
#ifndef FEATVIZ_CORE_INVARIANT_CONV_H_
#define FEATVIZ_CORE_INVARIANT_CONV_H_

#include <ATen/ATen.h>
#include <torch/csrc/jit/ir/ir.h>

namespace featviz::core {

enum class ConvRoute { kAsIs, kPadOneRow, kNative };

// The route of a 2-D convolution of `input` [B, C, H, W] by `weight`
// [O, C/groups, kH, kW] (see above), at `threads` intra-op threads. Only the
// per-image sizes count: the batch size does not change the route.
ConvRoute InvariantConvRoute(at::IntArrayRef input, at::IntArrayRef weight,
                             at::IntArrayRef stride, at::IntArrayRef dilation,
                             int64_t groups, int threads);

// The TorchScript operator
//   featviz::invariant_conv(Tensor x, Tensor weight, Tensor? bias,
//                           int[] stride, int[] padding, int[] dilation,
//                           int groups) -> Tensor
// registered when this file is linked in: a 1-D or 2-D convolution, routed as
// above for float32 on the CPU with oneDNN on (not under autocast), ATen's
// conv1d/conv2d/conv3d otherwise, which autocast casts as it would the
// model's own;
// differentiable in every input. Also callable directly.
at::Tensor InvariantConv(const at::Tensor& x, const at::Tensor& weight,
                         const c10::optional<at::Tensor>& bias,
                         at::IntArrayRef stride, at::IntArrayRef padding,
                         at::IntArrayRef dilation, int64_t groups);

// Replaces every aten::conv1d, aten::conv2d (numeric padding) and
// non-transposed aten::convolution / aten::_convolution in `block` and the
// blocks inside it with featviz::invariant_conv. Other convolutions (string
// padding, transposed, 3-D) are left as they are.
void RewriteConvolutions(torch::jit::Block* block);

}  // namespace featviz::core

#endif  // FEATVIZ_CORE_INVARIANT_CONV_H_
