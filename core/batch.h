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
#include "core/model.h"
#include "core/render.h"

namespace featviz::core {

// One step of every session in `sessions` (all of `model`, none done) as a
// single batched forward/backward. On error no session has advanced.
absl::Status StepTogether(const Model& model,
                          const std::vector<RenderSession*>& sessions);

}  // namespace featviz::core

#endif  // FEATVIZ_CORE_BATCH_H_
