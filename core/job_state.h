// A job's per-step state as plain data: what the stepper (ParamPack,
// StepTogether, BatchStepper) reads and advances, step after step, and what
// RenderSession made at Create and reads for progress and the result. One
// per job, owned by its RenderSession; not thread-safe (one stepping thread
// at a time).
//
// The functions below are the pieces of one job's step that every way of
// stepping it shares, so that a job alone, batched, or in CUDA-graph mode
// computes the same thing.
#ifndef FEATVIZ_CORE_JOB_STATE_H_
#define FEATVIZ_CORE_JOB_STATE_H_

#include <cstdint>
#include <memory>

#include <ATen/ATen.h>

#include "absl/status/statusor.h"
#include "core/adam.h"
#include "core/model.h"
#include "core/objective.h"
#include "core/objective_eval.h"
#include "core/param.h"

namespace featviz::core {

class ParamPack;  // core/param_pack.h: the rows of jobs stepped together.

// Steps whose term values were written for many jobs at once: rows
// first_row, first_row + 1, ... of `buffer` ([rows, all terms] on the
// device, shared by the jobs of one batch) hold steps first_step,
// first_step + 1, ... up to JobState::step - 1; this job's terms are
// columns [column, column + T). Undefined buffer: every step is in the
// job's own trace.
struct SharedTrace {
  at::Tensor buffer;
  int64_t first_step = 0;
  int64_t first_row = 0;
  int64_t column = 0;
};

// CUDA-graph mode (BatchStepper): everything that changes from step to step
// is read from fixed device buffers, filled before the (captured) step and
// booked after it.
struct StaticBuffers {
  bool on = false;
  at::Tensor theta;  // [1, 2, 3]; undefined without a schedule.
  at::Tensor step;   // 0-dim float: the update number, 1-based.
  at::Tensor terms;  // [T]
};

struct JobState {
  // What the job is, fixed at RenderSession::Create.
  uint64_t id = 0;  // Unique in the process (addresses of freed jobs recur).
  Objective objective;
  int64_t batch = 1;  // Images.
  int64_t steps = 1;  // Steps to take.
  AdamOptions adam;   // The job's learning rate, betas and eps.
  ReferenceActivations references;  // Per term; see EvaluateObjective.
  at::Tensor schedule;  // [steps, 2, 3] every step's transform; undefined:
                        // the identity, no sampling.

  // Its variable and Adam moments. param's variable is the job's own leaf,
  // or a view of its rows of `pack` (member `pack_index`) while it is in
  // one; m and v are its own moments, current only while pack is null.
  ImageParamPtr param;
  at::Tensor m, v;
  std::shared_ptr<ParamPack> pack;
  size_t pack_index = 0;

  // Step by step.
  int64_t step = 0;       // Steps done.
  at::Tensor images;      // Untransformed images of the current step.
  at::Tensor last_terms;  // [T] of the last step (see LastTerms).
  at::Tensor trace;       // [steps, T], filled on the device.
  SharedTrace shared_trace;
  at::Tensor transparency;  // MaCo: running sum of |d loss / d images|.
  StaticBuffers statics;

  bool done() const { return step >= steps; }
};

// This step's transform matrices, [batch, 2, 3] on the device (one draw
// shared by the batch); undefined when the transforms are the identity.
at::Tensor StepMatrices(const JobState& job);

// The term values of the last step, [T] on the device (undefined before the
// first).
at::Tensor LastTerms(const JobState& job);

// Copies the steps recorded in the shared trace into the job's own trace
// (one copy) and forgets it; called before the trace is read or written
// directly.
void FlushSharedTrace(JobState& job);

// From this step on, the job's term values are column `column` on of row
// `row` (and the next ones, step by step) of `buffer`.
void ShareTrace(JobState& job, const at::Tensor& buffer, int64_t row,
                int64_t column);

// The loss to minimise (minus the objective) from the job's rows of the
// taps and its current images; records the step's term values in its trace
// (or its static buffer).
absl::StatusOr<at::Tensor> JobLoss(JobState& job, const Taps& taps);

// After the backward pass and the Adam update: MaCo's transparency gets
// this step's gradient, and the step is done (booked by BatchStepper in
// CUDA-graph mode).
void EndStep(JobState& job);

// Drops the CUDA-graph buffers: the job steps eagerly from here.
void LeaveStaticMode(JobState& job);

}  // namespace featviz::core

#endif  // FEATVIZ_CORE_JOB_STATE_H_
