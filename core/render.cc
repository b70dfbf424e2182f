#include "core/render.h"

#include <algorithm>
#include <cmath>
#include <map>

#include "absl/strings/str_cat.h"
#include "core/batch.h"
#include "core/objective_eval.h"
#include "core/status_macros.h"
#include "core/step_graph.h"
#include "core/torch_status.h"

namespace featviz::core {
namespace {

std::atomic<uint64_t> next_session_id{1};

// The activations of every reference term's reference image at its layer,
// one forward pass per distinct image (no gradient, no transforms).
absl::StatusOr<ReferenceActivations> ComputeReferences(
    const Model& model, const Objective& objective,
    const RenderOptions& options) {
  const std::vector<WeightedTerm>& terms = objective.terms();
  ReferenceActivations activations(terms.size());
  // Reference text -> the layers its terms read.
  std::map<std::string, std::vector<std::string>> layers;
  for (const WeightedTerm& wt : terms) {
    if (!wt.term.UsesReference()) continue;
    const std::string key = wt.term.reference.ToString();
    auto it = options.references.find(key);
    if (it == options.references.end()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "reference image ", key, " of ", wt.term.ToString(),
          " was not given"));
    }
    const ModelCard& card = model.card();
    const at::Tensor& image = it->second;
    const at::Tensor one = image.defined() && image.dim() == 4 &&
                                   image.size(0) == 1
                               ? image.squeeze(0)
                               : image;
    if (!one.defined() || one.dim() != 3 ||
        (one.size(0) != card.channels &&
         !(one.size(0) == 1 && card.channels == 3)) ||
        one.size(1) != card.height || one.size(2) != card.width) {
      return absl::InvalidArgumentError(absl::StrCat(
          "reference image ", key, " has shape ",
          image.defined() ? c10::str(image.sizes()) : "none",
          ", expected the model's input [", card.channels, ", ", card.height,
          ", ", card.width, "]"));
    }
    std::vector<std::string>& l = layers[key];
    if (std::find(l.begin(), l.end(), wt.term.layer) == l.end()) {
      l.push_back(wt.term.layer);
    }
  }
  for (const auto& [key, key_layers] : layers) {
    at::Tensor image = options.references.at(key);
    if (image.dim() == 3) image = image.unsqueeze(0);
    Taps taps;
    try {
      at::NoGradGuard no_grad;
      if (!at::isfinite(image).all().item<bool>()) {
        return absl::InvalidArgumentError(
            absl::StrCat("reference image ", key, " has non-finite pixels"));
      }
      FEATVIZ_ASSIGN_OR_RETURN(
          taps, model.Forward(image.to(model.device(), at::kFloat), key_layers));
    } catch (const std::exception& e) {
      return TorchError(e, absl::StrCat("computing reference image ", key));
    }
    for (size_t t = 0; t < terms.size(); ++t) {
      const Term& term = terms[t].term;
      if (term.UsesReference() && term.reference.ToString() == key) {
        activations[t] = taps.activations.at(term.layer).detach();
      }
    }
  }
  return activations;
}

}  // namespace

RenderSession::RenderSession(const Model& model, Objective objective,
                             RenderOptions options)
    : model_(model),
      objective_(std::move(objective)),
      options_(std::move(options)),
      id_(next_session_id.fetch_add(1)) {}

absl::StatusOr<std::unique_ptr<RenderSession>> RenderSession::Create(
    const Model& model, Objective objective, RenderOptions options) {
  if (options.steps < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("steps must be >= 1, got ", options.steps));
  }
  if (!std::isfinite(options.lr) || options.lr <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("lr must be a positive number, got ", options.lr));
  }
  if (options.param.batch < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("batch must be >= 1, got ", options.param.batch));
  }
  if (options.progress_every < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "progress_every must be >= 0, got ", options.progress_every));
  }
  const ModelCard& card = model.card();
  ParamOptions& p = options.param;
  if (p.channels == 0) p.channels = card.channels;
  if (p.height == 0) p.height = card.height;
  if (p.width == 0) p.width = card.width;
  // One-channel stimuli for a three-channel model are gray images, repeated
  // into its channels (Model::ToModelChannels); nothing else fits.
  const bool gray_for_colour = p.channels == 1 && card.channels == 3;
  if (p.channels != card.channels && !gray_for_colour) {
    return absl::InvalidArgumentError(absl::StrCat(
        "model ", card.name, " takes ", card.channels, "-channel images, not ",
        p.channels,
        card.channels == 1
            ? "; colour stimuli cannot be shown to a one-channel model"
            : "; only one-channel (gray) stimuli can stand in for its "
              "channels"));
  }
  FEATVIZ_RETURN_IF_ERROR(objective.Validate(model.shape(), p.batch));
  FEATVIZ_ASSIGN_OR_RETURN(ReferenceActivations references,
                           ComputeReferences(model, objective, options));

  std::unique_ptr<RenderSession> session(
      new RenderSession(model, std::move(objective), std::move(options)));
  RenderSession& s = *session;
  s.references_ = std::move(references);
  s.transforms_ = s.options_.transforms.has_value()
                      ? *s.options_.transforms
                      : DefaultTransformsFor(model.IsTokenModel(), p.height,
                                            p.width);
  s.layers_ = s.objective_.Layers();
  // The image variables and the transforms draw from separate streams of the
  // one seed, so changing the transforms does not change the start image.
  FEATVIZ_ASSIGN_OR_RETURN(
      s.param_, ImageParam::Create(s.options_.param, s.options_.seed,
                                   model.device()));
  // The transforms' generator lives on the model's device and gets its own
  // stream of the seed (the start image's CPU generator takes the seed as
  // it is); the whole schedule is drawn here, once.
  FEATVIZ_ASSIGN_OR_RETURN(
      s.generator_,
      MakeGenerator(model.device(), s.options_.seed ^ 0x9e3779b97f4a7c15ULL));
  if (!IsIdentity(s.transforms_, p.height, p.width, card.height,
                  card.width)) {
    try {
      s.schedule_ = TransformMatrices(s.transforms_, s.options_.steps,
                                      p.height, p.width, s.generator_);
    } catch (const std::exception& e) {
      return TorchError(e, "drawing the transforms");
    }
  }
  if (p.kind == ParamKind::kMaco) {
    try {
      s.transparency_ = at::zeros({p.batch, p.channels, p.height, p.width},
                                  at::TensorOptions().device(model.device()));
    } catch (const std::exception& e) {
      return TorchError(e, "allocating the transparency map");
    }
  }
  s.adam_ = std::make_unique<Adam>(s.param_->parameters(),
                                   AdamOptions{.lr = s.options_.lr});
  try {
    s.trace_ = at::zeros({s.options_.steps,
                          static_cast<int64_t>(s.objective_.terms().size())},
                         at::TensorOptions().device(model.device()));
  } catch (const std::exception& e) {
    return TorchError(e, "allocating the trace");
  }
  return session;
}

at::Tensor RenderSession::StepMatrices() const {
  if (!schedule_.defined()) return at::Tensor();
  if (static_mode_) return static_theta_.expand({batch(), 2, 3});
  return schedule_.narrow(0, std::min(step_, options_.steps - 1), 1)
      .expand({batch(), 2, 3});
}

void RenderSession::ClearGradients() {
  if (pack_ != nullptr) {
    pack_->ClearGradient();
    return;
  }
  for (const at::Tensor& p : param_->parameters()) {
    at::Tensor grad = p.grad();
    if (grad.defined()) grad.zero_();
  }
}

void RenderSession::LeavePack() {
  if (pack_ == nullptr) return;
  const std::shared_ptr<ParamPack> pack = std::move(pack_);
  pack_ = nullptr;
  pack->Unpack(*this);
}

at::Tensor RenderSession::PrepareInput() {
  // Stepped on its own from here: gradients must reach its own leaf.
  LeavePack();
  images_ = param_->Image();
  if (transparency_.defined()) images_.retain_grad();
  const ModelCard& card = model_.card();
  at::Tensor matrices = StepMatrices();
  if (!matrices.defined()) return images_;
  return SampleAffine(images_, matrices, card.height, card.width);
}

at::Tensor RenderSession::LastTerms() const {
  const SharedTrace& shared = shared_trace_;
  // (Entering static mode flushed it: static steps are in trace_.)
  if (shared.buffer.defined() && step_ > shared.first_step) {
    return shared.buffer.select(0, shared.first_row + step_ - 1 -
                                       shared.first_step)
        .narrow(0, shared.column, trace_.size(1));
  }
  return last_terms_;
}

void RenderSession::FlushSharedTrace() {
  SharedTrace& shared = shared_trace_;
  if (!shared.buffer.defined()) return;
  const int64_t steps = step_ - shared.first_step;
  if (steps > 0) {
    trace_.narrow(0, shared.first_step, steps)
        .copy_(shared.buffer.narrow(0, shared.first_row, steps)
                   .narrow(1, shared.column, trace_.size(1)));
    last_terms_ = trace_[step_ - 1];
  }
  shared = SharedTrace{};
}

absl::StatusOr<at::Tensor> RenderSession::Loss(const Taps& taps) {
  // Written to trace_ directly from here.
  FlushSharedTrace();
  FEATVIZ_ASSIGN_OR_RETURN(
      ObjectiveValue value,
      EvaluateObjective(objective_, taps, images_, references_));
  if (static_mode_) {
    static_terms_.copy_(value.terms.detach());
    last_terms_ = static_terms_;
    return -value.total;
  }
  last_terms_ = value.terms.detach();
  // Written on the device: no host synchronisation inside the loop.
  trace_[std::min(step_, options_.steps - 1)].copy_(last_terms_);
  return -value.total;
}

void RenderSession::Update() {
  if (transparency_.defined() && images_.defined()) {
    // MaCo's transparency: how much each pixel moved the objective, summed
    // over the steps (the gradient of a step's transformed input flows
    // back to the untransformed image).
    at::Tensor grad = images_.grad();
    if (grad.defined()) transparency_.add_(grad.detach().abs());
  }
  if (static_mode_) {
    adam_->StepOnDevice(static_step_);
    return;
  }
  // In a pack, the pack's update (before this) moved its rows.
  if (pack_ == nullptr) adam_->Step();
  ++step_;
}

void RenderSession::EnterStaticMode() {
  if (static_mode_) return;
  // A captured step updates each session's own leaf with its own Adam,
  // and writes its own trace.
  LeavePack();
  FlushSharedTrace();
  const at::TensorOptions on_device =
      at::TensorOptions().device(model_.device()).dtype(at::kFloat);
  if (schedule_.defined()) static_theta_ = at::empty({1, 2, 3}, on_device);
  static_step_ = at::zeros({}, on_device);
  static_terms_ = at::zeros({trace_.size(1)}, on_device);
  static_mode_ = true;
}

void RenderSession::LeaveStaticMode() {
  if (!static_mode_) return;
  adam_->set_steps(step_);
  static_mode_ = false;
  static_theta_ = at::Tensor();
  static_step_ = at::Tensor();
  static_terms_ = at::Tensor();
}

void RenderSession::LoadStaticStep() {
  if (static_theta_.defined()) {
    static_theta_.copy_(schedule_.narrow(0, step_, 1));
  }
  static_step_.fill_(static_cast<double>(step_ + 1));
}

void RenderSession::CommitStaticStep() {
  trace_[step_].copy_(static_terms_);
  ++step_;
  adam_->set_steps(step_);
}

ProgressEvent RenderSession::Progress(bool with_images) const {
  ProgressEvent event;
  event.step = step_;
  // The one host synchronisation of a progress point.
  HostCopies copies;
  at::Tensor v;
  const at::Tensor last_terms = LastTerms();
  if (last_terms.defined()) v = copies.Add(last_terms, at::kDouble);
  if (with_images) {
    at::NoGradGuard no_grad;
    event.images = copies.Add(param_->Image(), at::kFloat);
  }
  copies.Wait();
  if (v.defined()) {
    event.values.assign(v.data_ptr<double>(), v.data_ptr<double>() + v.numel());
  }
  return event;
}

absl::StatusOr<RenderResult> RenderSession::Finish() {
  RenderResult result;
  result.objective = objective_.ToString();
  for (const WeightedTerm& wt : objective_.terms()) {
    result.terms.push_back(wt.term.ToString());
    result.weights.push_back(wt.weight);
  }
  result.seed = options_.seed;
  result.steps = step_;
  result.transforms = TransformsToString(transforms_);
  if (param_->options().kind == ParamKind::kMaco) {
    result.magnitude_source = param_->options().magnitude_source.empty()
                                  ? "1/f"
                                  : param_->options().magnitude_source;
  }
  try {
    at::NoGradGuard no_grad;
    at::Tensor images = param_->Image();
    const ModelCard& card = model_.card();
    at::Tensor input = images;
    if (images.size(2) != card.height || images.size(3) != card.width) {
      input = ApplyTransforms({}, images, generator_, card.height, card.width);
    }
    FEATVIZ_ASSIGN_OR_RETURN(Taps taps, model_.Forward(input, layers_));
    FEATVIZ_ASSIGN_OR_RETURN(
        ObjectiveValue value,
        EvaluateObjective(objective_, taps, images, references_));
    // Every copy queued first, then one wait: the result's only host
    // synchronisation.
    HostCopies copies;
    at::Tensor terms = copies.Add(value.terms, at::kDouble);
    at::Tensor total = copies.Add(value.total.reshape({1}), at::kDouble);
    result.images = copies.Add(images, at::kFloat);
    FlushSharedTrace();
    result.trace = copies.Add(trace_.narrow(0, 0, step_));
    result.logits = copies.Add(taps.logits, at::kFloat);
    result.probs = copies.Add(taps.probs, at::kFloat);
    if (transparency_.defined()) {
      result.transparency = copies.Add(transparency_, at::kFloat);
    }
    for (const std::string& layer : layers_) {
      const at::Tensor& a = taps.activations.at(layer);
      LayerStats stats;
      stats.layer = layer;
      if (a.dim() >= 3) {
        at::Tensor flat = a.flatten(2);
        stats.mean = copies.Add(flat.mean(2), at::kFloat);
        stats.max = copies.Add(std::get<0>(flat.max(2)), at::kFloat);
      } else {
        stats.mean = copies.Add(a, at::kFloat);
        stats.max = stats.mean;
      }
      result.layer_stats.push_back(std::move(stats));
    }
    copies.Wait();
    result.final_values.assign(terms.data_ptr<double>(),
                               terms.data_ptr<double>() + terms.numel());
    result.final_total = total.data_ptr<double>()[0];
  } catch (const std::exception& e) {
    return TorchError(e, "measuring the final images");
  }
  return result;
}

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
