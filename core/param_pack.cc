#include "core/param_pack.h"

#include <algorithm>

namespace featviz::core {

std::shared_ptr<ParamPack> ParamPack::For(const std::vector<JobState*>& jobs) {
  const std::shared_ptr<ParamPack>& current = jobs.front()->pack;
  if (current != nullptr && current->members_ == jobs &&
      std::all_of(jobs.begin(), jobs.end(),
                  [&](const JobState* j) { return j->pack == current; })) {
    return current;
  }
  at::NoGradGuard no_grad;
  std::shared_ptr<ParamPack> pack(new ParamPack());
  std::vector<at::Tensor> variables, m, v;
  int64_t total = 0;
  for (JobState* j : jobs) {
    if (j->pack != nullptr) {
      const ParamPack& from = *j->pack;
      variables.push_back(from.Rows(from.variable_, j->pack_index));
      m.push_back(from.Rows(from.m_, j->pack_index));
      v.push_back(from.Rows(from.v_, j->pack_index));
    } else {
      variables.push_back(j->param->parameters()[0].detach());
      m.push_back(j->m);
      v.push_back(j->v);
    }
    pack->members_.push_back(j);
    pack->first_row_.push_back(total);
    pack->rows_.push_back(j->batch);
    total += j->batch;
  }
  pack->adam_ = jobs.front()->adam;
  // Copies, also for one member: a pack never shares memory with another.
  pack->variable_ = at::cat(variables).requires_grad_(true);
  pack->m_ = at::cat(m);
  pack->v_ = at::cat(v);
  for (size_t k = 0; k < jobs.size(); ++k) {
    JobState& j = *jobs[k];
    j.pack = pack;  // May free the pack it was in: its rows are copied.
    j.pack_index = k;
    j.param->SetVariable(pack->Rows(pack->variable_, k));
  }
  return pack;
}

at::Tensor ParamPack::Rows(const at::Tensor& t, size_t k) const {
  return t.detach().narrow(0, first_row_[k], rows_[k]);
}

at::Tensor ParamPack::StepSizes() const {
  std::vector<AdamRows> rows;
  rows.reserve(members_.size());
  for (size_t k = 0; k < members_.size(); ++k) {
    const JobState& j = *members_[k];
    rows.push_back({rows_[k], j.adam.lr, j.step + 1});
  }
  return AdamStepSizes(adam_, rows);
}

void ParamPack::Update(const at::Tensor& step_sizes) {
  AdamUpdateRows(adam_, variable_, m_, v_, step_sizes);
}

void ParamPack::ClearGradient() {
  at::Tensor grad = variable_.grad();
  if (grad.defined()) grad.zero_();
}

void ParamPack::Unpack(JobState& job) const {
  at::NoGradGuard no_grad;
  const size_t k = job.pack_index;
  job.param->SetVariable(Rows(variable_, k).clone().requires_grad_(true));
  job.m = Rows(m_, k).clone();
  job.v = Rows(v_, k).clone();
}

void LeavePack(JobState& job) {
  if (job.pack == nullptr) return;
  const std::shared_ptr<ParamPack> pack = std::move(job.pack);
  job.pack = nullptr;
  pack->Unpack(job);
}

void ClearGradients(JobState& job) {
  if (job.pack != nullptr) {
    job.pack->ClearGradient();
    return;
  }
  for (const at::Tensor& p : job.param->parameters()) {
    at::Tensor grad = p.grad();
    if (grad.defined()) grad.zero_();
  }
}

}  // namespace featviz::core
