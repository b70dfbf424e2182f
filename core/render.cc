#include "core/render.h"

#include "absl/strings/str_cat.h"
#include "core/status_macros.h"
#include "core/step_graph.h"

namespace featviz::core {

absl::StatusOr<RenderResult> Render(const Model& model,
                                    const Objective& objective,
                                    const RenderOptions& options,
                                    const ProgressCallback& progress,
                                    const std::atomic<bool>* cancelled,
                                    const StepOptions& step_options) {
  FEATVIZ_ASSIGN_OR_RETURN(auto session,
                           RenderSession::Create(model, objective, options));
  BatchStepper stepper(model, step_options);
  while (!session->done()) {
    if (cancelled != nullptr && cancelled->load(std::memory_order_relaxed)) {
      return absl::CancelledError(absl::StrCat(
          "render cancelled after step ", session->steps_done()));
    }
    // The same step a worker runs for a batch of jobs, with a batch of one:
    // so a job renders the same alone and batched.
    FEATVIZ_RETURN_IF_ERROR(stepper.Step({session.get()}));
    const int64_t every = options.progress_every;
    if (progress && every > 0 &&
        (session->steps_done() % every == 0 || session->done())) {
      if (!progress(session->Progress(options.progress_images))) {
        return absl::CancelledError(absl::StrCat(
            "render cancelled after step ", session->steps_done()));
      }
    }
  }
  return session->Finish();
}

}  // namespace featviz::core
