#include "core/batch.h"

#include <map>
#include <set>
#include <string>

#include "absl/strings/str_cat.h"
#include "core/status_macros.h"
#include "core/torch_status.h"
#include "core/transform.h"

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
    // Each session's images, and its transforms as one affine matrix per
    // image drawn from its own stream; then one sampling call for all the
    // sessions whose images share a size (the per-session chains of small
    // ops were what made a batched step cost nearly as much as the
    // sessions one after another).
    const ModelCard& card = model.card();
    std::vector<at::Tensor> inputs(sessions.size());
    std::map<std::vector<int64_t>, std::vector<size_t>> by_size;
    std::vector<at::Tensor> thetas(sessions.size());
    for (size_t i = 0; i < sessions.size(); ++i) {
      RenderSession* s = sessions[i];
      s->images_ = s->param_->Image();
      const int64_t h = s->images_.size(2), w = s->images_.size(3);
      if (IsIdentity(s->transforms_, h, w, card.height, card.width)) {
        inputs[i] = s->images_;
        continue;
      }
      thetas[i] = TransformMatrices(s->transforms_, s->batch(), h, w, s->rng_);
      by_size[{s->images_.size(1), h, w}].push_back(i);
    }
    for (const auto& [size, members] : by_size) {
      std::vector<at::Tensor> images, matrices;
      for (size_t i : members) {
        images.push_back(sessions[i]->images_);
        matrices.push_back(thetas[i]);
      }
      at::Tensor sampled =
          SampleAffine(members.size() == 1 ? images[0] : at::cat(images),
                       members.size() == 1 ? matrices[0] : at::cat(matrices),
                       card.height, card.width);
      int64_t offset = 0;
      for (size_t i : members) {
        inputs[i] = sampled.narrow(0, offset, sessions[i]->batch());
        offset += sessions[i]->batch();
      }
    }
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
