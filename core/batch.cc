#include "core/batch.h"

#include <set>
#include <string>

#include "absl/strings/str_cat.h"
#include "core/status_macros.h"
#include "core/torch_status.h"

namespace featviz::core {

absl::Status StepTogether(const Model& model,
                          const std::vector<RenderSession*>& sessions) {
  if (sessions.empty()) return absl::OkStatus();
  std::set<std::string> layer_set;
  for (const RenderSession* s : sessions) {
    if (s->done()) {
      return absl::FailedPreconditionError("a finished session was stepped");
    }
    for (const std::string& layer : s->objective().Layers()) {
      layer_set.insert(layer);
    }
  }
  const std::vector<std::string> layers(layer_set.begin(), layer_set.end());
  try {
    std::vector<at::Tensor> inputs;
    inputs.reserve(sessions.size());
    for (RenderSession* s : sessions) inputs.push_back(s->PrepareInput());
    at::Tensor stacked = inputs.size() == 1 ? inputs[0] : at::cat(inputs);
    FEATVIZ_ASSIGN_OR_RETURN(Taps taps, model.Forward(stacked, layers));
    at::Tensor total;
    int64_t offset = 0;
    for (RenderSession* s : sessions) {
      FEATVIZ_ASSIGN_OR_RETURN(at::Tensor loss,
                               s->Loss(taps.Slice(offset, s->batch())));
      offset += s->batch();
      total = total.defined() ? total + loss : loss;
    }
    total.backward();
  } catch (const std::exception& e) {
    return TorchError(e, absl::StrCat("batched step of ", sessions.size(),
                                      " renders"));
  }
  for (RenderSession* s : sessions) s->Update();
  return absl::OkStatus();
}

}  // namespace featviz::core
