// Adam (Kingma & Ba), written once. Every path that optimises images goes
// through AdamUpdate: the rows of many jobs packed into one tensor
// (ParamPack), a job's own rows in CUDA-graph mode, and a lone Adam over
// its own parameters. Written here rather than taken from LibTorch's C++
// frontend so that core/ needs only torch/script.h and so that each row
// can have its own learning rate and update number.
//
// Adam is elementwise, and ATen's elementwise kernels give the same bits at
// every offset, so a row's update does not depend on which rows share its
// tensor.
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

// One update of `variable` from its .grad(), which it then zeroes (nothing
// when it has none): `m` and `v` are its moment estimates (same shape),
// `step_size` (lr / (1 - beta1^t)) and `bias2` (1 - beta2^t) hold each
// row's figures for its update number t, shaped to broadcast against it
// ([rows, 1, ...], or 0-dim for one row). Only options' betas and eps are
// read. The step sizes are never host scalars, so the same kernels run
// whether t is known on the host or only on the device (a CUDA graph).
void AdamUpdate(const AdamOptions& options, const at::Tensor& variable,
                const at::Tensor& m, const at::Tensor& v,
                const at::Tensor& step_size, const at::Tensor& bias2);

// `rows` consecutive rows that share a learning rate and an update number
// `t` (1-based).
struct AdamRows {
  int64_t rows = 1;
  double lr = 0.05;
  int64_t t = 1;
};

// The figures of one update of rows in this order, computed on the host:
// [2, total rows] float on the CPU, row 0 the step sizes, row 1 the bias
// corrections. Throws std::overflow_error when a step size is not a float
// (a huge lr), as ATen refuses a scalar that overflows the tensor's type.
at::Tensor AdamStepSizes(const AdamOptions& options,
                         const std::vector<AdamRows>& rows);

// AdamUpdate with AdamStepSizes' figures: sends them to the variable's
// device in one copy (asynchronous on CUDA) and gives each row its own.
void AdamUpdateRows(const AdamOptions& options, const at::Tensor& variable,
                    const at::Tensor& m, const at::Tensor& v,
                    const at::Tensor& step_sizes);

// AdamUpdate of one row with the update number t read from `step`, a 0-dim
// float tensor on the variable's device, and options.lr: no host scalar
// changes from step to step, so a CUDA graph can capture it once and
// replay it.
void AdamUpdateOnDevice(const AdamOptions& options, const at::Tensor& variable,
                        const at::Tensor& m, const at::Tensor& v,
                        const at::Tensor& step);

// A lone optimiser over its own parameters (each one row), for code that
// optimises a tensor without a render session (tests, the plain loops of
// the benchmarks).
class Adam {
 public:
  Adam(std::vector<at::Tensor> parameters, AdamOptions options);

  // One update from the parameters' current .grad(), which it then zeroes.
  // Parameters without a gradient are left alone.
  void Step();
  int64_t steps() const { return step_; }
  const AdamOptions& options() const { return options_; }

 private:
  std::vector<at::Tensor> parameters_;
  std::vector<at::Tensor> m_, v_;
  AdamOptions options_;
  int64_t step_ = 0;
};

}  // namespace featviz::core

#endif  // FEATVIZ_CORE_ADAM_H_
