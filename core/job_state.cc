#include "core/job_state.h"

#include <algorithm>

#include "core/status_macros.h"

namespace featviz::core {

at::Tensor StepMatrices(const JobState& job) {
  if (!job.schedule.defined()) return at::Tensor();
  if (job.statics.on) return job.statics.theta.expand({job.batch, 2, 3});
  return job.schedule.narrow(0, std::min(job.step, job.steps - 1), 1)
      .expand({job.batch, 2, 3});
}

at::Tensor LastTerms(const JobState& job) {
  const SharedTrace& shared = job.shared_trace;
  // (Entering static mode flushed it: static steps are in the trace.)
  if (shared.buffer.defined() && job.step > shared.first_step) {
    return shared.buffer
        .select(0, shared.first_row + job.step - 1 - shared.first_step)
        .narrow(0, shared.column, job.trace.size(1));
  }
  return job.last_terms;
}

void FlushSharedTrace(JobState& job) {
  SharedTrace& shared = job.shared_trace;
  if (!shared.buffer.defined()) return;
  const int64_t steps = job.step - shared.first_step;
  if (steps > 0) {
    job.trace.narrow(0, shared.first_step, steps)
        .copy_(shared.buffer.narrow(0, shared.first_row, steps)
                   .narrow(1, shared.column, job.trace.size(1)));
    job.last_terms = job.trace[job.step - 1];
  }
  shared = SharedTrace{};
}

void ShareTrace(JobState& job, const at::Tensor& buffer, int64_t row,
                int64_t column) {
  if (job.shared_trace.buffer.is_same(buffer)) return;
  FlushSharedTrace(job);
  job.shared_trace = {buffer, job.step, row, column};
}

absl::StatusOr<at::Tensor> JobLoss(JobState& job, const Taps& taps) {
  // Written to the trace directly from here.
  FlushSharedTrace(job);
  FEATVIZ_ASSIGN_OR_RETURN(
      ObjectiveValue value,
      EvaluateObjective(job.objective, taps, job.images, job.references));
  if (job.statics.on) {
    job.statics.terms.copy_(value.terms.detach());
    job.last_terms = job.statics.terms;
    return -value.total;
  }
  job.last_terms = value.terms.detach();
  // Written on the device: no host synchronisation inside the loop.
  job.trace[std::min(job.step, job.steps - 1)].copy_(job.last_terms);
  return -value.total;
}

void EndStep(JobState& job) {
  if (job.transparency.defined() && job.images.defined()) {
    // MaCo's transparency: how much each pixel moved the objective, summed
    // over the steps (the gradient of a step's transformed input flows
    // back to the untransformed image).
    at::Tensor grad = job.images.grad();
    if (grad.defined()) job.transparency.add_(grad.detach().abs());
  }
  if (!job.statics.on) ++job.step;
}

void LeaveStaticMode(JobState& job) { job.statics = StaticBuffers{}; }

}  // namespace featviz::core
