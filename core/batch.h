// Cross-job batching: several render sessions of one model stepped as ONE
// forward/backward pass. Each session keeps its own parameters, transforms,
// random stream, optimiser state, learning rate and step count; their inputs
// are stacked, the tapped forward runs once over the stack, each session's
// loss reads its own rows, and one backward reaches every session's
// parameters. A session's images are bitwise identical whether it is
// stepped alone or together with others (convolutions are computed per
// image, linear layers row by row, and a session's loss depends only on its
// own rows).
#ifndef FEATVIZ_CORE_BATCH_H_
#define FEATVIZ_CORE_BATCH_H_

#include <vector>

#include "absl/status/status.h"
#include "core/device.h"
#include "core/model.h"
#include "core/render.h"

namespace featviz::core {

// One step of every session in `sessions` (all of `model`, none done) as a
// single batched forward/backward, in `options.precision`. On error no
// session has advanced and their gradients are cleared, so the step can be
// retried (alone or in smaller groups) with the same result. Running out of
// memory is ResourceExhausted (see IsOutOfMemory).
//
// Host synchronisation: none. Transform matrices come from each session's
// schedule (drawn on the device at Create), term values are written to the
// trace on the device, the optimiser's scalars are host arithmetic.
absl::Status StepTogether(const Model& model,
                          const std::vector<RenderSession*>& sessions,
                          const StepOptions& options = {});

}  // namespace featviz::core

#endif  // FEATVIZ_CORE_BATCH_H_
