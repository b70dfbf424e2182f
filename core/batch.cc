#include "core/batch.h"

#include <ATen/TensorIndexing.h>

#include <algorithm>
#include <map>
#include <set>
#include <string>
#include <tuple>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/objective_eval.h"
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
      return it != taps.activations.end() && term.tokens == TokenSubset::kAll &&
             it->second.dim() >= 2 && it->second.dim() <= 4;
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

}  // namespace

// One (kind, layer) of the common terms: its entries' indices on the device.
struct CommonGroup {
  TermKind kind;
  std::string layer;               // Empty for logits and probabilities.
  at::Tensor rows, index, ys, xs;  // [E] each; ys, xs: neurons of maps only.
};

struct StepCache::Plan {
  // The sessions (id, batch, static mode) it was built for, in order.
  std::vector<std::tuple<uint64_t, int64_t, bool>> key;
  // Per session: whether its terms are evaluated together here, and where
  // its terms start among all of them.
  std::vector<bool> common;
  std::vector<int64_t> first_term;
  bool any_common = false, any_own = false;
  std::vector<CommonGroup> groups;
  at::Tensor weights;   // [E] float, all groups' entries in order.
  at::Tensor term_ids;  // [E] long: the term each entry counts towards.
  at::Tensor counts;    // [terms] float: entries per term.
  // Steps the plan can take (the most any of its sessions has left, at
  // most kMostPlanSteps; 1 without a cache), and steps taken.
  int64_t rows = 1;
  int64_t rows_done = 0;
  // [rows, terms]: row r holds the term values of the r-th step taken with
  // this plan.
  at::Tensor trace;
  // Per image size (C, H, W), with a cache and no session in CUDA-graph
  // mode: [rows, images, 2, 3], row r the transform matrices of the r-th
  // step of that size's sessions that have transforms, in step order (a
  // session's last matrix repeated past its end). One select per step
  // instead of a narrow and expand per session and a cat.
  std::map<std::vector<int64_t>, at::Tensor> thetas;
};

StepCache::StepCache() = default;
StepCache::~StepCache() = default;

namespace {

using Key = std::vector<std::tuple<uint64_t, int64_t, bool>>;

// The most steps one plan covers: its trace rows and transform matrices
// grow with it (a plan of 256 images holds 6 KiB of matrices per step), and
// one more plan every 256 steps costs a few small ops.
constexpr int64_t kMostPlanSteps = 256;

// Which sessions' terms are evaluated together on the stacked taps and the
// indices of their gathers, for `rows` steps. Builds device tensors only
// when some session is common (so never during a CUDA-graph capture, whose
// static-mode sessions are not).
std::shared_ptr<StepCache::Plan> BuildPlan(
    Key key, const std::vector<RenderSession*>& sessions,
    const std::vector<bool>& common_sessions, const Taps& taps, int64_t rows) {
  auto plan = std::make_shared<StepCache::Plan>();
  plan->key = std::move(key);
  plan->rows = rows;
  plan->common = common_sessions;
  plan->first_term.assign(sessions.size(), 0);
  for (bool c : common_sessions) {
    plan->any_common = plan->any_common || c;
    plan->any_own = plan->any_own || !c;
  }
  if (!plan->any_common) return plan;
  std::map<std::pair<TermKind, std::string>, Gather> groups;
  std::vector<float> counts;
  int64_t row = 0;
  for (size_t i = 0; i < sessions.size(); ++i) {
    const RenderSession* s = sessions[i];
    if (common_sessions[i]) {
      plan->first_term[i] = static_cast<int64_t>(counts.size());
      for (const WeightedTerm& wt : s->objective().terms()) {
        const Term& term = wt.term;
        const bool logits =
            term.kind == TermKind::kLogit || term.kind == TermKind::kProb;
        Gather& g = groups[{term.kind, logits ? std::string() : term.layer}];
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
            } else if (a.dim() == 3) {
              // A token layer's [B, D, T]: the token in xs alone.
              auto layout = taps.token_layouts.find(term.layer);
              g.xs.push_back(NeuronToken(term,
                                         layout == taps.token_layouts.end()
                                             ? Taps::TokenLayout()
                                             : layout->second,
                                         a.size(2)));
            }
          }
        }
      }
    }
    row += s->batch();
  }
  const c10::Device device = taps.logits.device();
  std::vector<float> weights;
  std::vector<int64_t> term_ids;
  for (const auto& [key, g] : groups) {
    CommonGroup group{key.first,
                      key.second,
                      LongTensor(g.rows, device),
                      LongTensor(g.index, device),
                      at::Tensor(),
                      at::Tensor()};
    if (!g.ys.empty()) group.ys = LongTensor(g.ys, device);
    if (!g.xs.empty()) group.xs = LongTensor(g.xs, device);
    plan->groups.push_back(std::move(group));
    weights.insert(weights.end(), g.weights.begin(), g.weights.end());
    term_ids.insert(term_ids.end(), g.terms.begin(), g.terms.end());
  }
  plan->weights = at::tensor(weights).to(device);
  plan->term_ids = LongTensor(term_ids, device);
  plan->counts = at::tensor(counts).to(device);
  plan->trace = at::zeros({rows, static_cast<int64_t>(counts.size())},
                          at::TensorOptions().device(device));
  return plan;
}

// [E] values of a group's entries, differentiable w.r.t. the taps.
at::Tensor GatherValues(const CommonGroup& g, const Taps& taps) {
  using at::indexing::TensorIndex;
  const at::Tensor& source = g.kind == TermKind::kLogit ? taps.logits
                             : g.kind == TermKind::kProb
                                 ? taps.probs
                                 : taps.activations.at(g.layer);
  if (g.ys.defined()) {
    return source.index({TensorIndex(g.rows), TensorIndex(g.index),
                         TensorIndex(g.ys), TensorIndex(g.xs)});
  }
  if (g.xs.defined()) {  // A neuron of a token layer: one token.
    return source.index(
        {TensorIndex(g.rows), TensorIndex(g.index), TensorIndex(g.xs)});
  }
  at::Tensor v = source.index({TensorIndex(g.rows), TensorIndex(g.index)});
  // A channel of a map: its spatial mean, image by image.
  return v.dim() == 1 ? v : v.flatten(1).mean(1);
}

}  // namespace

absl::Status StepTogether(const Model& model,
                          const std::vector<RenderSession*>& sessions,
                          const StepOptions& options, StepCache* cache) {
  if (sessions.empty()) return absl::OkStatus();
  std::set<std::string> layer_set;
  // Whether some term reads the model's outputs; otherwise the forward pass
  // stops at the deepest tapped layer (the taps are the same bits either
  // way, so a job's images do not depend on who shares its batch).
  bool outputs_read = false;
  for (const RenderSession* s : sessions) {
    if (s->done()) {
      return absl::FailedPreconditionError("a finished session was stepped");
    }
    for (const std::string& layer : s->objective().Layers()) {
      layer_set.insert(layer);
    }
    outputs_read = outputs_read || s->objective().ReadsOutputs();
  }
  const std::vector<std::string> layers(layer_set.begin(), layer_set.end());
  int64_t images_in_step = 0;
  for (const RenderSession* s : sessions) images_in_step += s->batch();
  std::vector<std::shared_ptr<ParamPack>> packs;
  std::shared_ptr<StepCache::Plan> plan;
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
    // The plan of the last step, if these are its sessions and it has a
    // step left (see StepCache).
    Key key;
    key.reserve(sessions.size());
    for (const RenderSession* s : sessions) {
      key.emplace_back(s->id_, s->batch(), s->static_mode_);
    }
    if (cache != nullptr && cache->plan_ != nullptr &&
        cache->plan_->key == key &&
        cache->plan_->rows_done < cache->plan_->rows) {
      plan = cache->plan_;
    }
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
      // (No schedule: the identity, no sampling.)
      if (!s->schedule_.defined()) {
        inputs[i] = s->images_;
        continue;
      }
      by_size[{s->images_.size(1), s->images_.size(2), s->images_.size(3)}]
          .push_back(i);
    }
    at::Tensor whole;  // The stack, when one sampling call made all of it.
    for (const auto& [size, members] : by_size) {
      std::vector<at::Tensor> images, matrices;
      for (size_t i : members) images.push_back(sessions[i]->images_);
      at::Tensor theta;
      if (plan != nullptr) {
        if (auto t = plan->thetas.find(size); t != plan->thetas.end()) {
          theta = t->second.select(0, plan->rows_done);
        }
      }
      if (!theta.defined()) {
        for (size_t i : members)
          matrices.push_back(sessions[i]->StepMatrices());
        theta = members.size() == 1 ? matrices[0] : at::cat(matrices);
      }
      at::Tensor sampled =
          SampleAffine(members.size() == 1 ? images[0] : at::cat(images), theta,
                       card.height, card.width);
      if (members.size() == sessions.size()) {
        // Every session, in order, in this one call: it is the stack.
        whole = sampled;
        continue;
      }
      // One split, not a narrow per session: each narrow's backward would
      // fill a zero gradient of the whole sample (at 256 one-image jobs of
      // the bundled classifier that was a third of the step).
      std::vector<int64_t> sizes;
      for (size_t i : members) sizes.push_back(sessions[i]->batch());
      std::vector<at::Tensor> pieces = sampled.split_with_sizes(sizes);
      for (size_t k = 0; k < members.size(); ++k) {
        inputs[members[k]] = pieces[k];
      }
    }
    // Gray stimuli of an RGB model join colour ones as three equal channels
    // (one sample holds images of one size and channel count).
    if (!whole.defined() && inputs.size() > 1) {
      for (at::Tensor& input : inputs) input = model.ToModelChannels(input);
    }
    at::Tensor stacked = whole.defined()      ? whole
                         : inputs.size() == 1 ? inputs[0]
                                              : at::cat(inputs);
    FEATVIZ_ASSIGN_OR_RETURN(
        Taps taps, model.Forward(stacked, layers,
                                 outputs_read || !options.stop_at_deepest_tap
                                     ? Model::ForwardOutputs::kAll
                                     : Model::ForwardOutputs::kTapsOnly));
    // Sessions whose terms are all common ones (neuron, channel, logit,
    // prob, weighted sums of them) are evaluated together on the stacked
    // taps: a few gathers for all of them instead of a chain of small ops
    // per session. Each image's value and gradient are computed as they
    // would be alone (a gather copies, a spatial mean reduces one image's
    // map, d(loss)/d(value) is minus the term's weight), so batching does
    // not change them. Sessions in static mode (CUDA graphs, whose steps
    // must not copy from the host) and those with other terms go through
    // their own Loss(). Which is which, and the gathers' indices, depend
    // only on the sessions: the plan is kept in `cache` while they stay.
    if (plan == nullptr) {
      std::vector<bool> common(sessions.size());
      // Without a cache the plan lives for this step only.
      int64_t rows = 1;
      bool any_static = false;
      for (size_t i = 0; i < sessions.size(); ++i) {
        const RenderSession* s = sessions[i];
        // An empty objective goes to Loss(), which says so.
        bool c = !s->static_mode_ && !s->objective().empty();
        for (const WeightedTerm& wt : s->objective().terms()) {
          c = c && CommonTerm(wt.term, taps);
        }
        common[i] = c;
        any_static = any_static || s->static_mode_;
        if (cache != nullptr) {
          rows = std::max(
              rows, std::min(s->options_.steps - s->step_, kMostPlanSteps));
        }
      }
      plan = BuildPlan(std::move(key), sessions, common, taps, rows);
      if (cache != nullptr && !any_static) {
        // Every later step's transform matrices, by image size: a session's
        // rows from its current step on, its last one repeated past its end
        // (it has left the batch by then, and the plan with it).
        for (const auto& [size, members] : by_size) {
          std::vector<at::Tensor> parts;
          for (size_t i : members) {
            const RenderSession* s = sessions[i];
            const int64_t left = std::min(rows, s->options_.steps - s->step_);
            at::Tensor own = s->schedule_.narrow(0, s->step_, left);
            if (left < rows) {
              own = at::cat(
                  {own,
                   own.narrow(0, left - 1, 1).expand({rows - left, 2, 3})});
            }
            parts.push_back(own.unsqueeze(1).expand({rows, s->batch(), 2, 3}));
          }
          plan->thetas[size] = at::cat(parts, 1);
        }
      }
      if (cache != nullptr) {
        cache->plan_ = plan;
        ++cache->plans_built_;
      }
    }
    at::Tensor total;
    if (plan->any_common) {
      std::vector<at::Tensor> values;
      for (const CommonGroup& g : plan->groups) {
        values.push_back(GatherValues(g, taps).to(at::kFloat));
      }
      at::Tensor v = values.size() == 1 ? values[0] : at::cat(values);
      total = -(v * plan->weights).sum();
      // Each term's value: the mean over the images it targets, written as
      // this step's row of the plan's trace, for all sessions at once.
      // (Zeroed first: a failed step may have written the row.)
      plan->trace.select(0, plan->rows_done)
          .zero_()
          .index_add_(0, plan->term_ids, v.detach())
          .div_(plan->counts);
    }
    if (plan->any_own) {
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
      for (Taps& p : parts) p.token_layouts = taps.token_layouts;
      split(taps.logits,
            [](Taps& p, at::Tensor t) { p.logits = std::move(t); });
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
        if (plan->common[i]) continue;
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
    return TorchError(
        e, absl::StrCat("batched step of ", sessions.size(), " renders (",
                        images_in_step, " images)"));
  }
  if (plan->any_common) {
    // The common sessions' trace rows: this step's row of the plan's.
    for (size_t i = 0; i < sessions.size(); ++i) {
      if (!plan->common[i]) continue;
      RenderSession* s = sessions[i];
      if (!s->shared_trace_.buffer.is_same(plan->trace)) {
        s->FlushSharedTrace();
        s->shared_trace_ = {plan->trace, s->step_, plan->rows_done,
                            plan->first_term[i]};
      }
    }
  }
  ++plan->rows_done;
  for (RenderSession* s : sessions) s->Update();
  return absl::OkStatus();
}

}  // namespace featviz::core
