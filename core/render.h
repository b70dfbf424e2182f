// Render(): one job alone, start to finish, through the same stepper as a
// worker's batches (a batch of one), so a job renders the same alone and
// batched. The job's types (RenderOptions, RenderResult, RenderSession) are
// in core/render_session.h.
#ifndef FEATVIZ_CORE_RENDER_H_
#define FEATVIZ_CORE_RENDER_H_

#include <atomic>

#include "absl/status/statusor.h"
#include "core/device.h"
#include "core/model.h"
#include "core/objective.h"
#include "core/render_session.h"

namespace featviz::core {

// Renders alone: the whole loop of one session, one forward/backward per
// step for the whole batch. Errors: the objective's validation status,
// InvalidArgument for bad options, Cancelled when `progress` returns false
// or when `cancelled` (checked before every step) becomes true.
absl::StatusOr<RenderResult> Render(
    const Model& model, const Objective& objective,
    const RenderOptions& options, const ProgressCallback& progress = nullptr,
    const std::atomic<bool>* cancelled = nullptr,
    const StepOptions& step_options = {});

}  // namespace featviz::core

#endif  // FEATVIZ_CORE_RENDER_H_
