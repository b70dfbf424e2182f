// The optimiser variables of many jobs as rows of shared tensors, and the
// one Adam step of them (issue 13, point 3). Jobs whose images come from
// same-shaped variables are stepped together with ONE leaf holding all
// their rows, one parameterisation call on it and ONE Adam update of it per
// step (AdamUpdateRows), with each job's learning rate and update number as
// figures per row: about ten ATen ops per step for the whole batch instead
// of ten per job. A job stepped alone is a pack of one, through the same
// code.
//
// A pack lasts while the same jobs are stepped together in the same order.
// When a job joins or leaves, the jobs are re-packed: their rows (variables
// and moment estimates) are copied into a new pack, taken from the pack
// they were in or from their own tensors. A job's parameterisation keeps a
// view of its rows, so its images (progress, final measurement) read the
// current values; LeavePack gives it its own leaf and moments back
// (CUDA-graph mode).
//
// A job's images do not depend on its pack: Adam is elementwise and each
// row's arithmetic is the same wherever the row sits (the ATen kernels give
// the same bits at every offset).
#ifndef FEATVIZ_CORE_PARAM_PACK_H_
#define FEATVIZ_CORE_PARAM_PACK_H_

#include <cstdint>
#include <memory>
#include <vector>

#include <ATen/ATen.h>

#include "core/adam.h"
#include "core/job_state.h"

namespace featviz::core {

class ParamPack {
 public:
  // The pack of `jobs` (same-shaped parameterisations, not in CUDA-graph
  // mode, in this order): theirs when it holds exactly them in this order,
  // else a new one made from their current state, which each job then
  // points to. May throw (LibTorch).
  static std::shared_ptr<ParamPack> For(const std::vector<JobState*>& jobs);

  // Every row's variable, [rows, ...], a leaf that requires grad.
  const at::Tensor& variable() const { return variable_; }
  // Each member's number of rows, in order.
  const std::vector<int64_t>& rows() const { return rows_; }

  // The host half of the next update (AdamStepSizes, [2, rows] on the
  // CPU): a member's update number is its steps done + 1. Throws
  // std::overflow_error when a step size is not a float (a huge lr), before
  // anything has changed: StepTogether computes them for every pack of a
  // step before it updates any.
  at::Tensor StepSizes() const;
  // One Adam update of every row from variable().grad(), which it then
  // zeroes, with StepSizes()' figures.
  void Update(const at::Tensor& step_sizes);
  // Forgets the gradient of a step that failed half-way.
  void ClearGradient();

  // Gives `job` (a member) its own leaf and moments again, copied from its
  // rows.
  void Unpack(JobState& job) const;

 private:
  ParamPack() = default;
  // The rows of member k, without autograd: a view of the shared tensors.
  at::Tensor Rows(const at::Tensor& t, size_t k) const;

  std::vector<JobState*> members_;
  std::vector<int64_t> first_row_;  // Each member's first row.
  std::vector<int64_t> rows_;
  AdamOptions adam_;  // Betas and eps; lr is per member.
  at::Tensor variable_, m_, v_;
};

// Takes the job's variable and moments back from its pack, if in one.
void LeavePack(JobState& job);

// Forgets the gradients of a step that failed half-way (its pack's, or its
// own leaf's), so that a retry does not add to them.
void ClearGradients(JobState& job);

}  // namespace featviz::core

#endif  // FEATVIZ_CORE_PARAM_PACK_H_
