#include "server/engine/model_warm_up.h"

#include <ATen/ATen.h>

#include "absl/strings/str_cat.h"
#include "core/status_macros.h"
#include "core/torch_status.h"

namespace featviz::server {

absl::Status WarmUp(const core::Model& model) {
  const core::ModelCard& card = model.card();
  return core::CatchAtBoundary(
      absl::StrCat("warming up model ", card.name), [&]() -> absl::Status {
        at::AutoGradMode grad(true);
        // Mid-gray: the same input every time, and no draw from a generator
        // that a render's seed might share.
        const at::Tensor images =
            at::full({1, card.channels, card.height, card.width}, 0.5,
                     at::TensorOptions().device(model.device()))
                .requires_grad_(true);
        FEATVIZ_ASSIGN_OR_RETURN(const core::Taps taps,
                                 model.Forward(images, {}));
        at::Tensor total;
        for (const auto& [name, output] : taps.outputs) {
          if (!output.requires_grad() ||
              !at::isFloatingType(output.scalar_type())) {
            continue;
          }
          const at::Tensor sum = output.sum().to(at::kFloat);
          total = total.defined() ? total + sum : sum;
        }
        if (!total.defined()) {
          // Nothing to render from (no output depends on the image through
          // a differentiable path); analyses may still read it, so the
          // forward pass is the warm-up.
          if (!taps.logits.defined() || taps.logits.numel() == 0) {
            return absl::OkStatus();
          }
          (void)taps.logits.detach().sum().item<double>();
          return absl::OkStatus();
        }
        total.backward();
        // Reading a value back waits for the device: the copy is ready
        // only once its first pass has really run.
        const at::Tensor grad_sum =
            images.grad().defined() ? images.grad().sum() : total.detach();
        (void)grad_sum.item<double>();
        return absl::OkStatus();
      });
}

}  // namespace featviz::server
