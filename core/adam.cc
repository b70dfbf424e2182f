#include "core/adam.h"

#include <cmath>

namespace featviz::core {

Adam::Adam(std::vector<at::Tensor> parameters, AdamOptions options)
    : parameters_(std::move(parameters)), options_(options) {
  for (const at::Tensor& p : parameters_) {
    m_.push_back(at::zeros_like(p));
    v_.push_back(at::zeros_like(p));
  }
}

void Adam::Reset(std::vector<at::Tensor> parameters, std::vector<at::Tensor> m,
                 std::vector<at::Tensor> v, int64_t steps) {
  parameters_ = std::move(parameters);
  m_ = std::move(m);
  v_ = std::move(v);
  step_ = steps;
}

void Adam::Step() {
  at::NoGradGuard no_grad;
  ++step_;
  const double bias1 = 1.0 - std::pow(options_.beta1, step_);
  const double bias2 = 1.0 - std::pow(options_.beta2, step_);
  for (size_t i = 0; i < parameters_.size(); ++i) {
    at::Tensor& p = parameters_[i];
    at::Tensor grad = p.grad();
    if (!grad.defined()) continue;
    m_[i].mul_(options_.beta1).add_(grad, 1.0 - options_.beta1);
    v_[i].mul_(options_.beta2).addcmul_(grad, grad, 1.0 - options_.beta2);
    at::Tensor denom = (v_[i] / bias2).sqrt_().add_(options_.eps);
    p.addcdiv_(m_[i], denom, -options_.lr / bias1);
    grad.zero_();
  }
}

void Adam::StepOnDevice(const at::Tensor& step) {
  at::NoGradGuard no_grad;
  const at::Tensor bias1 = 1 - at::pow(options_.beta1, step);
  const at::Tensor bias2 = 1 - at::pow(options_.beta2, step);
  const at::Tensor step_size = options_.lr / bias1;
  for (size_t i = 0; i < parameters_.size(); ++i) {
    at::Tensor& p = parameters_[i];
    at::Tensor grad = p.grad();
    if (!grad.defined()) continue;
    m_[i].mul_(options_.beta1).add_(grad, 1.0 - options_.beta1);
    v_[i].mul_(options_.beta2).addcmul_(grad, grad, 1.0 - options_.beta2);
    at::Tensor denom = (v_[i] / bias2).sqrt_().add_(options_.eps);
    p.addcdiv_(m_[i] * step_size, denom, -1.0);
    grad.zero_();
  }
}

}  // namespace featviz::core
