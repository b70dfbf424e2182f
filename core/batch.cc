#include "core/batch.h"

#include <algorithm>
#include <map>
#include <set>
#include <string>

#include "absl/strings/str_cat.h"
#include "core/status_macros.h"
#include "core/torch_status.h"
#include "core/transform.h"

namespace featviz::core {

absl::Status StepTogether(const Model& model,
                          const std::vector<RenderSession*>& sessions,
                          const StepOptions& options) {
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
  int64_t images_in_step = 0;
  for (const RenderSession* s : sessions) images_in_step += s->batch();
  try {
    PrecisionGuard precision(options.precision, model.device());
    if (options.fail_above_images > 0 &&
        images_in_step > options.fail_above_images) {
      // What the caching allocator throws when the device is full.
      throw c10::OutOfMemoryError(
          {__func__, __FILE__, static_cast<uint32_t>(__LINE__)},
          absl::StrCat("CUDA out of memory (injected: a step of ",
                       images_in_step, " images, more than ",
                       options.fail_above_images, ")"));
    }
    // Each session's images, and its transforms as one affine matrix per
    // image from its own schedule; then one sampling call for all the
    // sessions whose images share a size (the per-session chains of small
    // ops were what made a batched step cost nearly as much as the
    // sessions one after another).
    const ModelCard& card = model.card();
    std::vector<at::Tensor> inputs(sessions.size());
    std::map<std::vector<int64_t>, std::vector<size_t>> by_size;
    std::vector<at::Tensor> thetas(sessions.size());
    // Sessions whose images come from same-shaped variables get them from
    // one parameterisation call over their concatenated variables.
    std::vector<std::vector<size_t>> param_groups;
    for (size_t i = 0; i < sessions.size(); ++i) {
      auto same = std::find_if(
          param_groups.begin(), param_groups.end(), [&](const auto& group) {
            return sessions[group[0]]->param_->SameShape(*sessions[i]->param_);
          });
      if (same == param_groups.end()) {
        param_groups.push_back({i});
      } else {
        same->push_back(i);
      }
    }
    for (const std::vector<size_t>& group : param_groups) {
      const ImageParam& param = *sessions[group[0]]->param_;
      if (group.size() == 1) {
        sessions[group[0]]->images_ = param.Image();
        continue;
      }
      std::vector<at::Tensor> variables;
      std::vector<int64_t> sizes;
      for (size_t i : group) {
        variables.push_back(sessions[i]->param_->parameters()[0]);
        sizes.push_back(sessions[i]->batch());
      }
      std::vector<at::Tensor> images =
          param.ImageFrom(at::cat(variables)).split_with_sizes(sizes);
      for (size_t k = 0; k < group.size(); ++k) {
        sessions[group[k]]->images_ = images[k];
      }
    }
    for (size_t i = 0; i < sessions.size(); ++i) {
      RenderSession* s = sessions[i];
      thetas[i] = s->StepMatrices();
      if (!thetas[i].defined()) {
        inputs[i] = s->images_;
        continue;
      }
      by_size[{s->images_.size(1), s->images_.size(2), s->images_.size(3)}]
          .push_back(i);
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
    // Gray stimuli of an RGB model join colour ones as three equal channels.
    if (inputs.size() > 1) {
      for (at::Tensor& input : inputs) input = model.ToModelChannels(input);
    }
    at::Tensor stacked = inputs.size() == 1 ? inputs[0] : at::cat(inputs);
    FEATVIZ_ASSIGN_OR_RETURN(Taps taps, model.Forward(stacked, layers));
    // One split per tapped tensor, not a slice per session: each slice's
    // backward would materialise a zero gradient of the whole batch.
    std::vector<int64_t> sizes;
    for (const RenderSession* s : sessions) sizes.push_back(s->batch());
    std::vector<Taps> parts(sessions.size());
    auto split = [&](const at::Tensor& t, auto assign) {
      std::vector<at::Tensor> pieces = t.split_with_sizes(sizes);
      for (size_t i = 0; i < sessions.size(); ++i) assign(parts[i], pieces[i]);
    };
    split(taps.logits, [](Taps& p, at::Tensor t) { p.logits = std::move(t); });
    split(taps.probs, [](Taps& p, at::Tensor t) { p.probs = std::move(t); });
    for (const auto& [layer, activation] : taps.activations) {
      split(activation, [&layer = layer](Taps& p, at::Tensor t) {
        p.activations[layer] = std::move(t);
      });
    }
    for (const auto& [name, output] : taps.outputs) {
      split(output, [&name = name](Taps& p, at::Tensor t) {
        p.outputs[name] = std::move(t);
      });
    }
    at::Tensor total;
    for (size_t i = 0; i < sessions.size(); ++i) {
      FEATVIZ_ASSIGN_OR_RETURN(at::Tensor loss, sessions[i]->Loss(parts[i]));
      total = total.defined() ? total + loss : loss;
    }
    total.backward();
  } catch (const std::exception& e) {
    // A backward that failed half-way may have reached some gradients.
    for (RenderSession* s : sessions) s->ClearGradients();
    return TorchError(e, absl::StrCat("batched step of ", sessions.size(),
                                      " renders (", images_in_step,
                                      " images)"));
  }
  for (RenderSession* s : sessions) s->Update();
  return absl::OkStatus();
}

}  // namespace featviz::core
