#include "core/param_pack.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>

#include "absl/strings/str_cat.h"

#include "core/render.h"

namespace featviz::core {

std::shared_ptr<ParamPack> ParamPack::For(
    const std::vector<RenderSession*>& sessions) {
  const std::shared_ptr<ParamPack>& current = sessions.front()->pack_;
  if (current != nullptr && current->members_ == sessions &&
      std::all_of(sessions.begin(), sessions.end(),
                  [&](const RenderSession* s) { return s->pack_ == current; })) {
    return current;
  }
  at::NoGradGuard no_grad;
  std::shared_ptr<ParamPack> pack(new ParamPack());
  std::vector<at::Tensor> variables, m, v;
  int64_t total = 0;
  for (RenderSession* s : sessions) {
    if (s->pack_ != nullptr) {
      const ParamPack& from = *s->pack_;
      variables.push_back(from.Rows(from.variable_, s->pack_index_));
      m.push_back(from.Rows(from.m_, s->pack_index_));
      v.push_back(from.Rows(from.v_, s->pack_index_));
    } else {
      variables.push_back(s->param_->parameters()[0].detach());
      m.push_back(s->adam_->first_moments()[0]);
      v.push_back(s->adam_->second_moments()[0]);
    }
    pack->members_.push_back(s);
    pack->first_row_.push_back(total);
    pack->rows_.push_back(s->batch());
    total += s->batch();
  }
  pack->adam_ = sessions.front()->adam_->options();
  // Copies, also for one member: a pack never shares memory with another.
  pack->variable_ = at::cat(variables).requires_grad_(true);
  pack->m_ = at::cat(m);
  pack->v_ = at::cat(v);
  for (size_t k = 0; k < sessions.size(); ++k) {
    RenderSession& s = *sessions[k];
    s.pack_ = pack;  // May free the pack it was in: its rows are copied.
    s.pack_index_ = k;
    s.param_->SetVariable(pack->Rows(pack->variable_, k));
  }
  return pack;
}

at::Tensor ParamPack::Rows(const at::Tensor& t, size_t k) const {
  return t.detach().narrow(0, first_row_[k], rows_[k]);
}

at::Tensor ParamPack::StepSizes() const {
  // Per row: the step size lr / (1 - beta1^t) and the correction
  // 1 - beta2^t of its member's update number t, computed on the host as
  // Adam::Step does, to be sent in one copy.
  const int64_t total = variable_.size(0);
  at::Tensor host = at::empty({2, total}, at::TensorOptions().dtype(at::kFloat));
  float* step_size = host.data_ptr<float>();
  float* bias2 = step_size + total;
  for (size_t k = 0; k < members_.size(); ++k) {
    const RenderSession& s = *members_[k];
    const double t = static_cast<double>(s.step_ + 1);
    const double size = s.options_.lr / (1.0 - std::pow(adam_.beta1, t));
    if (!(std::abs(size) <= std::numeric_limits<float>::max())) {
      // As ATen refuses a scalar that overflows the tensor's type.
      throw std::overflow_error(absl::StrCat(
          "Adam's step size lr / (1 - beta1^", t, ") = ", size,
          " overflows float (lr ", s.options_.lr, ")"));
    }
    std::fill_n(step_size + first_row_[k], rows_[k], static_cast<float>(size));
    std::fill_n(bias2 + first_row_[k], rows_[k],
                static_cast<float>(1.0 - std::pow(adam_.beta2, t)));
  }
  return host;
}

void ParamPack::Update(at::Tensor step_sizes) {
  at::NoGradGuard no_grad;
  at::Tensor grad = variable_.grad();
  if (!grad.defined()) return;
  at::Tensor rows = std::move(step_sizes);
  if (variable_.is_cuda()) {
    rows = rows.pin_memory().to(variable_.device(), /*non_blocking=*/true);
  }
  std::vector<int64_t> shape(static_cast<size_t>(variable_.dim()), 1);
  shape[0] = variable_.size(0);
  const at::Tensor size_rows = rows[0].view(shape);
  const at::Tensor bias2_rows = rows[1].view(shape);
  m_.mul_(adam_.beta1).add_(grad, 1.0 - adam_.beta1);
  v_.mul_(adam_.beta2).addcmul_(grad, grad, 1.0 - adam_.beta2);
  const at::Tensor denom = (v_ / bias2_rows).sqrt_().add_(adam_.eps);
  variable_.addcdiv_(m_ * size_rows, denom, -1.0);
  grad.zero_();
}

void ParamPack::ClearGradient() {
  at::Tensor grad = variable_.grad();
  if (grad.defined()) grad.zero_();
}

void ParamPack::Unpack(RenderSession& session) const {
  at::NoGradGuard no_grad;
  const size_t k = session.pack_index_;
  at::Tensor variable = Rows(variable_, k).clone().requires_grad_(true);
  session.param_->SetVariable(variable);
  session.adam_->Reset({variable}, {Rows(m_, k).clone()},
                       {Rows(v_, k).clone()}, session.step_);
}

}  // namespace featviz::core
