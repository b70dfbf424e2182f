// Adam (Kingma & Ba) over a job's own parameters. Written here rather than
// taken from LibTorch's C++ frontend so that core/ needs only torch/script.h
// and so that each job in a shared batch owns its optimiser state.
#ifndef FEATVIZ_CORE_ADAM_H_
#define FEATVIZ_CORE_ADAM_H_

#include <cstdint>
#include <vector>

#include <ATen/ATen.h>

namespace featviz::core {

struct AdamOptions {
  double lr = 0.05;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
};

class Adam {
 public:
  Adam(std::vector<at::Tensor> parameters, AdamOptions options);

  // One update from the parameters' current .grad(), which it then zeroes.
  // Parameters without a gradient are left alone.
  void Step();
  // The same update with the step number t (1-based) read from `step`, a
  // 0-dim float tensor on the parameters' device, and the bias corrections
  // computed there: no host scalar changes from step to step, so a CUDA
  // graph can capture it once and replay it. Does not advance steps().
  void StepOnDevice(const at::Tensor& step);
  int64_t steps() const { return step_; }
  // After StepOnDevice steps: the host's count of updates done.
  void set_steps(int64_t steps) { step_ = steps; }
  const AdamOptions& options() const { return options_; }
  // The moment estimates, one per parameter.
  const std::vector<at::Tensor>& first_moments() const { return m_; }
  const std::vector<at::Tensor>& second_moments() const { return v_; }
  // Takes over parameters and their state optimised elsewhere (a ParamPack's
  // rows): the next Step() continues from `steps` updates.
  void Reset(std::vector<at::Tensor> parameters, std::vector<at::Tensor> m,
             std::vector<at::Tensor> v, int64_t steps);

 private:
  std::vector<at::Tensor> parameters_;
  std::vector<at::Tensor> m_, v_;
  AdamOptions options_;
  int64_t step_ = 0;
};

}  // namespace featviz::core

#endif  // FEATVIZ_CORE_ADAM_H_
