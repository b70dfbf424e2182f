// Cross-job batching: several render jobs of one model stepped as ONE
// forward/backward pass. Each job keeps its own transforms, random stream,
// learning rate and step count (its JobState); the variables and Adam
// moments of same-shaped jobs are rows of one ParamPack (one leaf, one
// parameterisation call, one Adam update for all of them); their inputs are
// stacked, the tapped forward runs once over the stack, the common
// objective terms of all jobs are read with a few gathers (others from each
// job's own rows), and one backward reaches every row. A job's images are
// bitwise identical whether it is stepped alone or together with others
// (convolutions are computed per image, linear layers in fixed-size row
// blocks, a job's loss depends only on its own rows, and Adam is
// elementwise), unless linear layers run in LinearMode::kPlain.
#ifndef FEATVIZ_CORE_BATCH_H_
#define FEATVIZ_CORE_BATCH_H_

#include <cstdint>
#include <memory>
#include <tuple>
#include <vector>

#include "absl/status/status.h"
#include "core/device.h"
#include "core/model.h"
#include "core/render_session.h"

namespace featviz::core {

class StepCache;

// One step of every session in `sessions` (all of `model`, none done) as a
// single batched forward/backward, in `options.precision`. On error no
// session has advanced and their gradients are cleared, so the step can be
// retried (alone or in smaller groups) with the same result. Running out of
// memory is ResourceExhausted (see IsOutOfMemory).
//
// Host synchronisation: none. Transform matrices come from each session's
// schedule (drawn on the device at Create), term values are written to the
// trace on the device, the optimiser's per-row step sizes are host
// arithmetic sent in one (on CUDA, asynchronous) copy.
//
// `cache`, when given, keeps what depends only on which sessions are
// stepped together (StepCache) from one call to the next.
absl::Status StepTogether(const Model& model,
                          const std::vector<RenderSession*>& sessions,
                          const StepOptions& options = {},
                          StepCache* cache = nullptr);

// What StepTogether reuses while the same sessions (by id, batch and
// CUDA-graph mode, in the same order) are stepped together step after step:
// which sessions' terms are evaluated together, the gathers' indices,
// weights and term ids, put on the device once rather than built on the
// host every step, and a [steps, terms] trace buffer into which each step's
// term values of all those sessions are written as one row (a session's
// own trace gets its rows in one copy when the batch changes or it
// finishes). One cache per stepping thread (a worker's BatchStepper owns
// one); not thread-safe.
class StepCache {
 public:
  StepCache();
  ~StepCache();
  StepCache(const StepCache&) = delete;
  StepCache& operator=(const StepCache&) = delete;

  // Plans built so far: one per change of the batch's composition.
  int64_t plans_built() const { return plans_built_; }

  struct Plan;  // Defined in batch.cc.
  // The jobs a plan is for, in order: (id, batch, CUDA-graph mode).
  using Key = std::vector<std::tuple<uint64_t, int64_t, bool>>;

  // The plan kept for `key` when it has a step left; else null.
  std::shared_ptr<Plan> Find(const Key& key) const;
  // Keeps `plan` for the next steps.
  void Keep(std::shared_ptr<Plan> plan);

 private:
  std::shared_ptr<Plan> plan_;
  int64_t plans_built_ = 0;
};

}  // namespace featviz::core

#endif  // FEATVIZ_CORE_BATCH_H_
