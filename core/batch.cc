#include "core/batch.h"

#include <ATen/TensorIndexing.h>

#include <algorithm>
#include <map>
#include <set>
#include <string>
#include <tuple>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/job_state.h"
#include "core/objective_eval.h"
#include "core/param_pack.h"
#include "core/status_macros.h"
#include "core/torch_status.h"
#include "core/transform.h"

namespace featviz::core {

// One (kind, layer) of the common terms: its entries' indices on the device.
struct CommonGroup {
  TermKind kind;
  std::string layer;               // Empty for logits and probabilities.
  at::Tensor rows, index, ys, xs;  // [E] each; ys, xs: neurons of maps only.
};

struct StepCache::Plan {
  // The jobs it was built for, in order.
  Key key;
  // Per job: whether its terms are evaluated together here, and where its
  // terms start among all of them.
  std::vector<bool> common;
  std::vector<int64_t> first_term;
  bool any_common = false, any_own = false;
  std::vector<CommonGroup> groups;
  at::Tensor weights;   // [E] float, all groups' entries in order.
  at::Tensor term_ids;  // [E] long: the term each entry counts towards.
  at::Tensor counts;    // [terms] float: entries per term.
  // Steps the plan can take (the most any of its jobs has left, at most
  // kMostPlanSteps; 1 without a cache), and steps taken.
  int64_t rows = 1;
  int64_t rows_done = 0;
  // [rows, terms]: row r holds the term values of the r-th step taken with
  // this plan.
  at::Tensor trace;
  // Per image size (C, H, W), with a cache and no job in CUDA-graph mode:
  // [rows, images, 2, 3], row r the transform matrices of the r-th step of
  // that size's jobs that have transforms, in step order (a job's last
  // matrix repeated past its end). One select per step instead of a narrow
  // and expand per job and a cat.
  std::map<std::vector<int64_t>, at::Tensor> thetas;
};

StepCache::StepCache() = default;
StepCache::~StepCache() = default;

std::shared_ptr<StepCache::Plan> StepCache::Find(const Key& key) const {
  if (plan_ != nullptr && plan_->key == key && plan_->rows_done < plan_->rows) {
    return plan_;
  }
  return nullptr;
}

void StepCache::Keep(std::shared_ptr<Plan> plan) {
  plan_ = std::move(plan);
  ++plans_built_;
}

namespace {

using Plan = StepCache::Plan;
// Jobs by image size (C, H, W): the indices of those with transforms.
using SizeGroups = std::map<std::vector<int64_t>, std::vector<size_t>>;

// The most steps one plan covers: its trace rows and transform matrices
// grow with it (a plan of 256 images holds 6 KiB of matrices per step), and
// one more plan every 256 steps costs a few small ops.
constexpr int64_t kMostPlanSteps = 256;

// The terms evaluated for all jobs at once: one value per image they
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
using Gathers = std::map<std::pair<TermKind, std::string>, Gather>;

at::Tensor LongTensor(const std::vector<int64_t>& v, const c10::Device& d) {
  return at::tensor(v, at::TensorOptions().dtype(at::kLong)).to(d);
}

std::vector<int64_t> Batches(const std::vector<JobState*>& jobs) {
  std::vector<int64_t> sizes;
  sizes.reserve(jobs.size());
  for (const JobState* j : jobs) sizes.push_back(j->batch);
  return sizes;
}

// Adds the entries of one common job's terms, whose images start at row
// `row` of the stack and whose terms at `counts.size()`; `counts` gets each
// term's number of entries.
void AddEntries(const JobState& job, int64_t row, const Taps& taps,
                Gathers& groups, std::vector<float>& counts) {
  for (const WeightedTerm& wt : job.objective.terms()) {
    const Term& term = wt.term;
    const bool logits =
        term.kind == TermKind::kLogit || term.kind == TermKind::kProb;
    Gather& g = groups[{term.kind, logits ? std::string() : term.layer}];
    const int64_t t = static_cast<int64_t>(counts.size());
    const int64_t first = term.batch.value_or(0);
    const int64_t last = term.batch.has_value() ? first : job.batch - 1;
    counts.push_back(static_cast<float>(last - first + 1));
    for (int64_t b = first; b <= last; ++b) {
      g.rows.push_back(row + b);
      g.index.push_back(term.index);
      g.terms.push_back(t);
      g.weights.push_back(static_cast<float>(wt.weight));
      if (term.kind != TermKind::kNeuron) continue;
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

// Which jobs' terms are evaluated together on the stacked taps and the
// indices of their gathers, for `rows` steps. Builds device tensors only
// when some job is common (so never during a CUDA-graph capture, whose
// static-mode jobs are not).
std::shared_ptr<Plan> BuildPlan(StepCache::Key key,
                                const std::vector<JobState*>& jobs,
                                const std::vector<bool>& common_jobs,
                                const Taps& taps, int64_t rows) {
  auto plan = std::make_shared<Plan>();
  plan->key = std::move(key);
  plan->rows = rows;
  plan->common = common_jobs;
  plan->first_term.assign(jobs.size(), 0);
  for (bool c : common_jobs) {
    plan->any_common = plan->any_common || c;
    plan->any_own = plan->any_own || !c;
  }
  if (!plan->any_common) return plan;
  Gathers groups;
  std::vector<float> counts;
  int64_t row = 0;
  for (size_t i = 0; i < jobs.size(); ++i) {
    if (common_jobs[i]) {
      plan->first_term[i] = static_cast<int64_t>(counts.size());
      AddEntries(*jobs[i], row, taps, groups, counts);
    }
    row += jobs[i]->batch;
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

// Every later step's transform matrices of a plan of `rows` steps, by image
// size: a job's rows from its current step on, its last one repeated past
// its end (it has left the batch by then, and the plan with it).
void PlanMatrices(const std::vector<JobState*>& jobs, const SizeGroups& by_size,
                  Plan& plan) {
  const int64_t rows = plan.rows;
  for (const auto& [size, members] : by_size) {
    std::vector<at::Tensor> parts;
    for (size_t i : members) {
      const JobState& j = *jobs[i];
      const int64_t left = std::min(rows, j.steps - j.step);
      at::Tensor own = j.schedule.narrow(0, j.step, left);
      if (left < rows) {
        own = at::cat(
            {own, own.narrow(0, left - 1, 1).expand({rows - left, 2, 3})});
      }
      parts.push_back(own.unsqueeze(1).expand({rows, j.batch, 2, 3}));
    }
    plan.thetas[size] = at::cat(parts, 1);
  }
}

// The plan for these jobs, built once the taps show which terms are
// common, and kept in `cache` (when given) while they step together.
std::shared_ptr<Plan> NewPlan(StepCache::Key key,
                              const std::vector<JobState*>& jobs,
                              const SizeGroups& by_size, const Taps& taps,
                              StepCache* cache) {
  std::vector<bool> common(jobs.size());
  // Without a cache the plan lives for this step only.
  int64_t rows = 1;
  bool any_static = false;
  for (size_t i = 0; i < jobs.size(); ++i) {
    const JobState& j = *jobs[i];
    // An empty objective goes to JobLoss, which says so.
    bool c = !j.statics.on && !j.objective.empty();
    for (const WeightedTerm& wt : j.objective.terms()) {
      c = c && CommonTerm(wt.term, taps);
    }
    common[i] = c;
    any_static = any_static || j.statics.on;
    if (cache != nullptr) {
      rows = std::max(rows, std::min(j.steps - j.step, kMostPlanSteps));
    }
  }
  std::shared_ptr<Plan> plan =
      BuildPlan(std::move(key), jobs, common, taps, rows);
  if (cache != nullptr && !any_static) PlanMatrices(jobs, by_size, *plan);
  if (cache != nullptr) cache->Keep(plan);
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

// The layers the jobs' objectives read, and whether some term reads the
// model's outputs; otherwise the forward pass stops at the deepest tapped
// layer (the taps are the same bits either way, so a job's images do not
// depend on who shares its batch).
struct LayersRead {
  std::vector<std::string> layers;
  bool outputs = false;
};

LayersRead LayersOf(const std::vector<JobState*>& jobs) {
  std::set<std::string> layers;
  bool outputs = false;
  for (const JobState* j : jobs) {
    for (const std::string& layer : j->objective.Layers()) {
      layers.insert(layer);
    }
    outputs = outputs || j->objective.ReadsOutputs();
  }
  return {std::vector<std::string>(layers.begin(), layers.end()), outputs};
}

// What the caching allocator throws when the device is full, for a step of
// more images than the options allow (the tests' fault).
void InjectOutOfMemory(const StepOptions& options, int64_t images) {
  if (options.fail_above_images > 0 && images > options.fail_above_images) {
    throw c10::OutOfMemoryError(
        {__func__, __FILE__, static_cast<uint32_t>(__LINE__)},
        absl::StrCat("CUDA out of memory (injected: a step of ", images,
                     " images, more than ", options.fail_above_images, ")"));
  }
}

// The jobs' images of this step (JobState::images). Jobs whose images come
// from same-shaped variables get them from one parameterisation call over
// one variable: their ParamPack's (returned), which also runs their
// optimiser after the backward pass. Jobs in CUDA-graph mode keep their
// own leaves (a captured step must find the same tensors at every replay)
// and concatenate them.
std::vector<std::shared_ptr<ParamPack>> MakeImages(
    const std::vector<JobState*>& jobs) {
  std::vector<std::vector<JobState*>> groups;
  for (JobState* j : jobs) {
    auto same = std::find_if(groups.begin(), groups.end(), [&](auto& group) {
      const JobState& first = *group[0];
      return first.statics.on == j->statics.on &&
             first.param->SameShape(*j->param);
    });
    if (same == groups.end()) {
      groups.push_back({j});
    } else {
      same->push_back(j);
    }
  }
  std::vector<std::shared_ptr<ParamPack>> packs;
  for (const std::vector<JobState*>& members : groups) {
    const ImageParam& param = *members[0]->param;
    at::Tensor images;
    if (!members[0]->statics.on) {
      packs.push_back(ParamPack::For(members));
      images = param.ImageFrom(packs.back()->variable());
    } else if (members.size() == 1) {
      images = param.Image();
    } else {
      std::vector<at::Tensor> variables;
      for (const JobState* j : members) {
        variables.push_back(j->param->parameters()[0]);
      }
      images = param.ImageFrom(at::cat(variables));
    }
    if (members.size() == 1) {
      members[0]->images = images;
      continue;
    }
    std::vector<at::Tensor> pieces = images.split_with_sizes(Batches(members));
    for (size_t k = 0; k < members.size(); ++k) {
      members[k]->images = pieces[k];
    }
  }
  return packs;
}

// The model's input for every job, stacked in order: each job's images
// transformed by one affine matrix per image from its own schedule (or the
// plan's copy of it), with one sampling call for all the jobs whose images
// share a size (the per-job chains of small ops were what made a batched
// step cost nearly as much as the jobs one after another). Fills `by_size`.
at::Tensor StackInputs(const Model& model, const std::vector<JobState*>& jobs,
                       const Plan* plan, SizeGroups& by_size) {
  std::vector<at::Tensor> inputs(jobs.size());
  for (size_t i = 0; i < jobs.size(); ++i) {
    JobState& j = *jobs[i];
    // MaCo's transparency map reads the gradient of the images.
    if (j.transparency.defined()) j.images.retain_grad();
    // (No schedule: the identity, no sampling.)
    if (!j.schedule.defined()) {
      inputs[i] = j.images;
      continue;
    }
    by_size[{j.images.size(1), j.images.size(2), j.images.size(3)}].push_back(
        i);
  }
  const ModelCard& card = model.card();
  for (const auto& [size, members] : by_size) {
    std::vector<at::Tensor> images, matrices;
    for (size_t i : members) images.push_back(jobs[i]->images);
    at::Tensor theta;
    if (plan != nullptr) {
      if (auto t = plan->thetas.find(size); t != plan->thetas.end()) {
        theta = t->second.select(0, plan->rows_done);
      }
    }
    if (!theta.defined()) {
      for (size_t i : members) matrices.push_back(StepMatrices(*jobs[i]));
      theta = members.size() == 1 ? matrices[0] : at::cat(matrices);
    }
    at::Tensor sampled =
        SampleAffine(members.size() == 1 ? images[0] : at::cat(images), theta,
                     card.height, card.width);
    if (members.size() == jobs.size()) {
      // Every job, in order, in this one call: it is the stack.
      return sampled;
    }
    // One split, not a narrow per job: each narrow's backward would fill a
    // zero gradient of the whole sample (at 256 one-image jobs of the
    // bundled classifier that was a third of the step).
    std::vector<int64_t> sizes;
    for (size_t i : members) sizes.push_back(jobs[i]->batch);
    std::vector<at::Tensor> pieces = sampled.split_with_sizes(sizes);
    for (size_t k = 0; k < members.size(); ++k) {
      inputs[members[k]] = pieces[k];
    }
  }
  if (inputs.size() == 1) return inputs[0];
  // Gray stimuli of an RGB model join colour ones as three equal channels
  // (one sample holds images of one size and channel count).
  for (at::Tensor& input : inputs) input = model.ToModelChannels(input);
  return at::cat(inputs);
}

// Minus the weighted sum of the common jobs' terms, evaluated together on
// the stacked taps: a few gathers for all of them instead of a chain of
// small ops per job. Each image's value and gradient are computed as they
// would be alone (a gather copies, a spatial mean reduces one image's map,
// d(loss)/d(value) is minus the term's weight), so batching does not change
// them. Each term's value, the mean over the images it targets, is written
// as this step's row of the plan's trace, for all jobs at once.
at::Tensor CommonLoss(Plan& plan, const Taps& taps) {
  std::vector<at::Tensor> values;
  for (const CommonGroup& g : plan.groups) {
    values.push_back(GatherValues(g, taps).to(at::kFloat));
  }
  at::Tensor v = values.size() == 1 ? values[0] : at::cat(values);
  at::Tensor total = -(v * plan.weights).sum();
  // (Zeroed first: a failed step may have written the row.)
  plan.trace.select(0, plan.rows_done)
      .zero_()
      .index_add_(0, plan.term_ids, v.detach())
      .div_(plan.counts);
  return total;
}

// Each job's rows of the stacked taps. One split per tapped tensor, not a
// slice per job: each slice's backward would materialise a zero gradient
// of the whole batch.
std::vector<Taps> SplitTaps(const Taps& taps,
                            const std::vector<JobState*>& jobs) {
  const std::vector<int64_t> sizes = Batches(jobs);
  std::vector<Taps> parts(jobs.size());
  auto split = [&](const at::Tensor& t, auto assign) {
    std::vector<at::Tensor> pieces = t.split_with_sizes(sizes);
    for (size_t i = 0; i < jobs.size(); ++i) assign(parts[i], pieces[i]);
  };
  for (Taps& p : parts) p.token_layouts = taps.token_layouts;
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
  return parts;
}

// The loss of the step: the common jobs' together, the others' (other
// terms, or CUDA-graph mode, whose steps must not copy from the host)
// through their own JobLoss on their rows.
absl::StatusOr<at::Tensor> TotalLoss(const std::vector<JobState*>& jobs,
                                     Plan& plan, const Taps& taps) {
  at::Tensor total;
  if (plan.any_common) total = CommonLoss(plan, taps);
  if (!plan.any_own) return total;
  std::vector<Taps> parts = SplitTaps(taps, jobs);
  for (size_t i = 0; i < jobs.size(); ++i) {
    if (plan.common[i]) continue;
    FEATVIZ_ASSIGN_OR_RETURN(at::Tensor loss, JobLoss(*jobs[i], parts[i]));
    total = total.defined() ? total + loss : loss;
  }
  return total;
}

// After backward: the one Adam update of every row of the step, each pack's
// with its figures computed on the host (all of them before any row moves,
// so that an lr whose step size overflows moves nobody), each CUDA-graph
// job's own with its update number read on the device.
void UpdateRows(const std::vector<std::shared_ptr<ParamPack>>& packs,
                const std::vector<JobState*>& jobs) {
  std::vector<at::Tensor> step_sizes;
  for (const std::shared_ptr<ParamPack>& pack : packs) {
    step_sizes.push_back(pack->StepSizes());
  }
  for (size_t k = 0; k < packs.size(); ++k) packs[k]->Update(step_sizes[k]);
  for (JobState* j : jobs) {
    if (!j->statics.on) continue;
    AdamUpdateOnDevice(j->adam, j->param->parameters()[0], j->m, j->v,
                       j->statics.step);
  }
}

// After a step that succeeded: the common jobs' trace rows are this step's
// row of the plan's, and every job has taken its step.
void EndSteps(const std::vector<JobState*>& jobs, Plan& plan) {
  if (plan.any_common) {
    for (size_t i = 0; i < jobs.size(); ++i) {
      if (plan.common[i]) {
        ShareTrace(*jobs[i], plan.trace, plan.rows_done, plan.first_term[i]);
      }
    }
  }
  ++plan.rows_done;
  for (JobState* j : jobs) EndStep(*j);
}

// The forward/backward and update of one step, on the jobs' images.
absl::Status StepJobs(const Model& model, const std::vector<JobState*>& jobs,
                      const StepOptions& options, StepCache* cache,
                      std::shared_ptr<Plan>& plan) {
  StepCache::Key key;
  key.reserve(jobs.size());
  for (const JobState* j : jobs) {
    key.emplace_back(j->id, j->batch, j->statics.on);
  }
  if (cache != nullptr) plan = cache->Find(key);
  const std::vector<std::shared_ptr<ParamPack>> packs = MakeImages(jobs);
  SizeGroups by_size;
  const at::Tensor stacked = StackInputs(model, jobs, plan.get(), by_size);
  const LayersRead read = LayersOf(jobs);
  FEATVIZ_ASSIGN_OR_RETURN(
      Taps taps, model.Forward(stacked, read.layers,
                               read.outputs || !options.stop_at_deepest_tap
                                   ? Model::ForwardOutputs::kAll
                                   : Model::ForwardOutputs::kTapsOnly));
  // Which jobs are common, and the gathers' indices, depend only on the
  // jobs: the plan is kept in `cache` while they stay.
  if (plan == nullptr) {
    plan = NewPlan(std::move(key), jobs, by_size, taps, cache);
  }
  FEATVIZ_ASSIGN_OR_RETURN(at::Tensor total, TotalLoss(jobs, *plan, taps));
  total.backward();
  UpdateRows(packs, jobs);
  return absl::OkStatus();
}

}  // namespace

absl::Status StepTogether(const Model& model,
                          const std::vector<RenderSession*>& sessions,
                          const StepOptions& options, StepCache* cache) {
  if (sessions.empty()) return absl::OkStatus();
  std::vector<JobState*> jobs;
  jobs.reserve(sessions.size());
  int64_t images = 0;
  for (RenderSession* s : sessions) {
    if (s->done()) {
      return absl::FailedPreconditionError("a finished session was stepped");
    }
    jobs.push_back(&s->state());
    images += s->batch();
  }
  std::shared_ptr<Plan> plan;
  try {
    PrecisionGuard precision(options.precision, model.device());
    InjectOutOfMemory(options, images);
    FEATVIZ_RETURN_IF_ERROR(StepJobs(model, jobs, options, cache, plan));
  } catch (const std::exception& e) {
    // A backward that failed half-way may have reached some gradients.
    for (JobState* j : jobs) ClearGradients(*j);
    return TorchError(e, absl::StrCat("batched step of ", sessions.size(),
                                      " renders (", images, " images)"));
  }
  EndSteps(jobs, *plan);
  return absl::OkStatus();
}

}  // namespace featviz::core
