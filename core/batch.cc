#include "core/batch.h"

#include <algorithm>
#include <map>
#include <set>
#include <string>

#include <ATen/TensorIndexing.h>

#include "absl/strings/str_cat.h"
#include "core/param_pack.h"
#include "core/status_macros.h"
#include "core/torch_status.h"
#include "core/transform.h"

namespace featviz::core {
namespace {

// The terms evaluated for all sessions at once: one value per image they
// target, read from the stacked taps with one gather per (kind, layer).
bool CommonTerm(const Term& term, const Taps& taps) {
  switch (term.kind) {
    case TermKind::kLogit:
    case TermKind::kProb:
      return true;
    case TermKind::kNeuron:
    case TermKind::kChannel: {
      auto it = taps.activations.find(term.layer);
      return it != taps.activations.end() &&
             (it->second.dim() == 2 || it->second.dim() == 4);
    }
    default:
      return false;
  }
}

// The entries of one (kind, layer): entry e is image rows[e] of the stack,
// channel or class index[e] (and position ys[e], xs[e] for a neuron of a
// map), counted towards term terms[e] with weight weights[e].
struct Gather {
  std::vector<int64_t> rows, index, ys, xs, terms;
  std::vector<float> weights;
};

at::Tensor LongTensor(const std::vector<int64_t>& v, const c10::Device& d) {
  return at::tensor(v, at::TensorOptions().dtype(at::kLong)).to(d);
}

// [E] values of a group's entries, differentiable w.r.t. the taps.
at::Tensor GatherValues(TermKind kind, const at::Tensor& source,
                        const Gather& g) {
  using at::indexing::TensorIndex;
  const c10::Device device = source.device();
  const at::Tensor rows = LongTensor(g.rows, device);
  const at::Tensor index = LongTensor(g.index, device);
  if (kind == TermKind::kNeuron && source.dim() == 4) {
    return source.index({TensorIndex(rows), TensorIndex(index),
                         TensorIndex(LongTensor(g.ys, device)),
                         TensorIndex(LongTensor(g.xs, device))});
  }
  at::Tensor v = source.index({TensorIndex(rows), TensorIndex(index)});
  // A channel of a map: its spatial mean, image by image.
  return v.dim() == 1 ? v : v.flatten(1).mean(1);
}

}  // namespace

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
  std::vector<std::shared_ptr<ParamPack>> packs;
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
    // one parameterisation call over one variable: their ParamPack's, which
    // also runs their optimiser after the backward pass. Sessions in
    // CUDA-graph mode keep their own leaves (a captured step must find the
    // same tensors at every replay) and concatenate them.
    std::vector<std::vector<size_t>> param_groups;
    for (size_t i = 0; i < sessions.size(); ++i) {
      auto same = std::find_if(
          param_groups.begin(), param_groups.end(), [&](const auto& group) {
            const RenderSession& first = *sessions[group[0]];
            return first.static_mode_ == sessions[i]->static_mode_ &&
                   first.param_->SameShape(*sessions[i]->param_);
          });
      if (same == param_groups.end()) {
        param_groups.push_back({i});
      } else {
        same->push_back(i);
      }
    }
    for (const std::vector<size_t>& group : param_groups) {
      const ImageParam& param = *sessions[group[0]]->param_;
      std::vector<RenderSession*> members;
      std::vector<int64_t> sizes;
      for (size_t i : group) {
        members.push_back(sessions[i]);
        sizes.push_back(sessions[i]->batch());
      }
      at::Tensor images;
      if (!members[0]->static_mode_) {
        packs.push_back(ParamPack::For(members));
        images = param.ImageFrom(packs.back()->variable());
      } else if (group.size() == 1) {
        images = param.Image();
      } else {
        std::vector<at::Tensor> variables;
        for (RenderSession* s : members) {
          variables.push_back(s->param_->parameters()[0]);
        }
        images = param.ImageFrom(at::cat(variables));
      }
      if (group.size() == 1) {
        members[0]->images_ = images;
        continue;
      }
      std::vector<at::Tensor> pieces = images.split_with_sizes(sizes);
      for (size_t k = 0; k < group.size(); ++k) {
        members[k]->images_ = pieces[k];
      }
    }
    for (size_t i = 0; i < sessions.size(); ++i) {
      RenderSession* s = sessions[i];
      // MaCo's transparency map reads the gradient of the images.
      if (s->transparency_.defined()) s->images_.retain_grad();
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
    // Sessions whose terms are all common ones (neuron, channel, logit,
    // prob, weighted sums of them) are evaluated together on the stacked
    // taps: a few gathers for all of them instead of a chain of small ops
    // per session. Each image's value and gradient are computed as they
    // would be alone (a gather copies, a spatial mean reduces one image's
    // map, d(loss)/d(value) is minus the term's weight), so batching does
    // not change them. Sessions in static mode (CUDA graphs, whose steps
    // must not copy from the host) and those with other terms go through
    // their own Loss().
    std::vector<bool> common(sessions.size());
    bool any_common = false, any_own = false;
    for (size_t i = 0; i < sessions.size(); ++i) {
      const RenderSession* s = sessions[i];
      // An empty objective goes to Loss(), which says so.
      bool c = !s->static_mode_ && !s->objective().empty();
      for (const WeightedTerm& wt : s->objective().terms()) {
        c = c && CommonTerm(wt.term, taps);
      }
      common[i] = c;
      any_common = any_common || c;
      any_own = any_own || !c;
    }
    at::Tensor total;
    if (any_common) {
      std::map<std::pair<TermKind, std::string>, Gather> groups;
      std::vector<int64_t> first_term(sessions.size(), 0);
      std::vector<float> counts;
      int64_t row = 0;
      for (size_t i = 0; i < sessions.size(); ++i) {
        const RenderSession* s = sessions[i];
        if (common[i]) {
          first_term[i] = static_cast<int64_t>(counts.size());
          for (const WeightedTerm& wt : s->objective().terms()) {
            const Term& term = wt.term;
            const bool logits = term.kind == TermKind::kLogit ||
                                term.kind == TermKind::kProb;
            Gather& g =
                groups[{term.kind, logits ? std::string() : term.layer}];
            const int64_t t = static_cast<int64_t>(counts.size());
            const int64_t first = term.batch.value_or(0);
            const int64_t last = term.batch.has_value() ? first : s->batch() - 1;
            counts.push_back(static_cast<float>(last - first + 1));
            for (int64_t b = first; b <= last; ++b) {
              g.rows.push_back(row + b);
              g.index.push_back(term.index);
              g.terms.push_back(t);
              g.weights.push_back(static_cast<float>(wt.weight));
              if (term.kind == TermKind::kNeuron) {
                const at::Tensor& a = taps.activations.at(term.layer);
                if (a.dim() == 4) {
                  g.ys.push_back(term.y.value_or(a.size(2) / 2));
                  g.xs.push_back(term.x.value_or(a.size(3) / 2));
                }
              }
            }
          }
        }
        row += s->batch();
      }
      std::vector<at::Tensor> values, weights, term_ids;
      const c10::Device device = taps.logits.device();
      for (const auto& [key, g] : groups) {
        const TermKind kind = key.first;
        const at::Tensor& source =
            kind == TermKind::kLogit  ? taps.logits
            : kind == TermKind::kProb ? taps.probs
                                      : taps.activations.at(key.second);
        values.push_back(GatherValues(kind, source, g).to(at::kFloat));
        weights.push_back(at::tensor(g.weights).to(device));
        term_ids.push_back(LongTensor(g.terms, device));
      }
      at::Tensor v = values.size() == 1 ? values[0] : at::cat(values);
      at::Tensor w = weights.size() == 1 ? weights[0] : at::cat(weights);
      at::Tensor ids = term_ids.size() == 1 ? term_ids[0] : at::cat(term_ids);
      total = -(v * w).sum();
      // Each term's value: the mean over the images it targets.
      at::Tensor term_values =
          at::zeros({static_cast<int64_t>(counts.size())}, v.options())
              .index_add_(0, ids, v.detach())
              .div_(at::tensor(counts).to(device));
      for (size_t i = 0; i < sessions.size(); ++i) {
        if (!common[i]) continue;
        RenderSession* s = sessions[i];
        s->last_terms_ = term_values.narrow(
            0, first_term[i],
            static_cast<int64_t>(s->objective().terms().size()));
        s->trace_[std::min(s->step_, s->options_.steps - 1)].copy_(
            s->last_terms_);
      }
    }
    if (any_own) {
      // One split per tapped tensor, not a slice per session: each slice's
      // backward would materialise a zero gradient of the whole batch.
      std::vector<int64_t> sizes;
      for (const RenderSession* s : sessions) sizes.push_back(s->batch());
      std::vector<Taps> parts(sessions.size());
      auto split = [&](const at::Tensor& t, auto assign) {
        std::vector<at::Tensor> pieces = t.split_with_sizes(sizes);
        for (size_t i = 0; i < sessions.size(); ++i) {
          assign(parts[i], pieces[i]);
        }
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
      for (size_t i = 0; i < sessions.size(); ++i) {
        if (common[i]) continue;
        FEATVIZ_ASSIGN_OR_RETURN(at::Tensor loss, sessions[i]->Loss(parts[i]));
        total = total.defined() ? total + loss : loss;
      }
    }
    total.backward();
    std::vector<at::Tensor> step_sizes;
    for (const std::shared_ptr<ParamPack>& pack : packs) {
      step_sizes.push_back(pack->StepSizes());
    }
    for (size_t k = 0; k < packs.size(); ++k) packs[k]->Update(step_sizes[k]);
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
