#include "core/adam.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>

#include "absl/strings/str_cat.h"

namespace featviz::core {

void AdamUpdate(const AdamOptions& options, const at::Tensor& variable,
                const at::Tensor& m, const at::Tensor& v,
                const at::Tensor& step_size, const at::Tensor& bias2) {
  at::NoGradGuard no_grad;
  at::Tensor grad = variable.grad();
  if (!grad.defined()) return;
  m.mul_(options.beta1).add_(grad, 1.0 - options.beta1);
  v.mul_(options.beta2).addcmul_(grad, grad, 1.0 - options.beta2);
  const at::Tensor denom = (v / bias2).sqrt_().add_(options.eps);
  variable.addcdiv_(m * step_size, denom, -1.0);
  grad.zero_();
}

at::Tensor AdamStepSizes(const AdamOptions& options,
                         const std::vector<AdamRows>& rows) {
  int64_t total = 0;
  for (const AdamRows& r : rows) total += r.rows;
  at::Tensor host =
      at::empty({2, total}, at::TensorOptions().dtype(at::kFloat));
  float* step_size = host.data_ptr<float>();
  float* bias2 = step_size + total;
  for (const AdamRows& r : rows) {
    const double t = static_cast<double>(r.t);
    const double size = r.lr / (1.0 - std::pow(options.beta1, t));
    if (!(std::abs(size) <= std::numeric_limits<float>::max())) {
      throw std::overflow_error(absl::StrCat(
          "Adam's step size lr / (1 - beta1^", t, ") = ", size,
          " overflows float (lr ", r.lr, ")"));
    }
    step_size = std::fill_n(step_size, r.rows, static_cast<float>(size));
    bias2 = std::fill_n(bias2, r.rows,
                        static_cast<float>(1.0 - std::pow(options.beta2, t)));
  }
  return host;
}

void AdamUpdateRows(const AdamOptions& options, const at::Tensor& variable,
                    const at::Tensor& m, const at::Tensor& v,
                    const at::Tensor& step_sizes) {
  if (!variable.grad().defined()) return;
  at::Tensor rows = step_sizes;
  if (variable.is_cuda()) {
    rows = rows.pin_memory().to(variable.device(), /*non_blocking=*/true);
  }
  std::vector<int64_t> shape(static_cast<size_t>(variable.dim()), 1);
  if (!shape.empty()) shape[0] = rows.size(1);
  AdamUpdate(options, variable, m, v, rows[0].view(shape), rows[1].view(shape));
}

void AdamUpdateOnDevice(const AdamOptions& options, const at::Tensor& variable,
                        const at::Tensor& m, const at::Tensor& v,
                        const at::Tensor& step) {
  at::NoGradGuard no_grad;
  const at::Tensor bias1 = 1 - at::pow(options.beta1, step);
  const at::Tensor bias2 = 1 - at::pow(options.beta2, step);
  const at::Tensor step_size = options.lr / bias1;
  AdamUpdate(options, variable, m, v, step_size, bias2);
}

Adam::Adam(std::vector<at::Tensor> parameters, AdamOptions options)
    : parameters_(std::move(parameters)), options_(options) {
  for (const at::Tensor& p : parameters_) {
    m_.push_back(at::zeros_like(p));
    v_.push_back(at::zeros_like(p));
  }
}

void Adam::Step() {
  ++step_;
  const at::Tensor figures =
      AdamStepSizes(options_, {AdamRows{1, options_.lr, step_}});
  // As 0-dim CPU tensors, which ATen hands to a device's kernels as values:
  // no copy per step, as cheap as host scalars for the plain loops.
  const at::Tensor step_size = figures[0][0];
  const at::Tensor bias2 = figures[1][0];
  for (size_t i = 0; i < parameters_.size(); ++i) {
    AdamUpdate(options_, parameters_[i], m_[i], v_[i], step_size, bias2);
  }
}

}  // namespace featviz::core
