#include "core/render.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "core/batch.h"
#include "core/objective_eval.h"
#include "core/status_macros.h"
#include "core/torch_status.h"

namespace featviz::core {

RenderSession::RenderSession(const Model& model, Objective objective,
                             RenderOptions options)
    : model_(model),
      objective_(std::move(objective)),
      options_(std::move(options)),
      rng_(options_.seed) {}

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
  if (p.channels != card.channels) {
    return absl::InvalidArgumentError(
        absl::StrCat("model ", card.name, " takes ", card.channels,
                     "-channel images, not ", p.channels));
  }
  FEATVIZ_RETURN_IF_ERROR(objective.Validate(model.shape(), p.batch));

  std::unique_ptr<RenderSession> session(
      new RenderSession(model, std::move(objective), std::move(options)));
  RenderSession& s = *session;
  s.transforms_ = s.options_.transforms.has_value()
                      ? *s.options_.transforms
                      : DefaultTransforms(p.height, p.width);
  s.layers_ = s.objective_.Layers();
  // The image variables and the transforms draw from separate streams of the
  // one seed, so changing the transforms does not change the start image.
  FEATVIZ_ASSIGN_OR_RETURN(
      s.param_, ImageParam::Create(s.options_.param, s.options_.seed,
                                   model.device()));
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

at::Tensor RenderSession::PrepareInput() {
  images_ = param_->Image();
  const ModelCard& card = model_.card();
  return ApplyTransforms(transforms_, images_, rng_, card.height, card.width);
}

absl::StatusOr<at::Tensor> RenderSession::Loss(const Taps& taps) {
  FEATVIZ_ASSIGN_OR_RETURN(ObjectiveValue value,
                           EvaluateObjective(objective_, taps, images_));
  last_terms_ = value.terms.detach();
  // Written on the device: no host synchronisation inside the loop.
  trace_[std::min(step_, options_.steps - 1)].copy_(last_terms_);
  return -value.total;
}

void RenderSession::Update() {
  adam_->Step();
  ++step_;
}

ProgressEvent RenderSession::Progress(bool with_images) const {
  ProgressEvent event;
  event.step = step_;
  if (last_terms_.defined()) {
    at::Tensor v = last_terms_.to(at::kCPU, at::kDouble);
    event.values.assign(v.data_ptr<double>(), v.data_ptr<double>() + v.numel());
  }
  if (with_images) {
    at::NoGradGuard no_grad;
    event.images = param_->Image().to(at::kCPU).contiguous();
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
  try {
    at::NoGradGuard no_grad;
    at::Tensor images = param_->Image();
    const ModelCard& card = model_.card();
    at::Tensor input = images;
    if (images.size(2) != card.height || images.size(3) != card.width) {
      input = ApplyTransforms({}, images, rng_, card.height, card.width);
    }
    FEATVIZ_ASSIGN_OR_RETURN(Taps taps, model_.Forward(input, layers_));
    FEATVIZ_ASSIGN_OR_RETURN(ObjectiveValue value,
                             EvaluateObjective(objective_, taps, images));
    at::Tensor terms = value.terms.to(at::kCPU, at::kDouble);
    result.final_values.assign(terms.data_ptr<double>(),
                               terms.data_ptr<double>() + terms.numel());
    result.final_total = value.total.item<double>();
    result.images = images.to(at::kCPU, at::kFloat).contiguous();
    result.trace = trace_.narrow(0, 0, step_).to(at::kCPU).contiguous();
    result.logits = taps.logits.to(at::kCPU).contiguous();
    result.probs = taps.probs.to(at::kCPU).contiguous();
    for (const std::string& layer : layers_) {
      const at::Tensor& a = taps.activations.at(layer);
      LayerStats stats;
      stats.layer = layer;
      if (a.dim() >= 3) {
        at::Tensor flat = a.flatten(2);
        stats.mean = flat.mean(2).to(at::kCPU);
        stats.max = std::get<0>(flat.max(2)).to(at::kCPU);
      } else {
        stats.mean = a.to(at::kCPU);
        stats.max = stats.mean;
      }
      result.layer_stats.push_back(std::move(stats));
    }
  } catch (const std::exception& e) {
    return TorchError(e, "measuring the final images");
  }
  return result;
}

absl::StatusOr<RenderResult> Render(const Model& model,
                                    const Objective& objective,
                                    const RenderOptions& options,
                                    const ProgressCallback& progress,
                                    const std::atomic<bool>* cancelled) {
  FEATVIZ_ASSIGN_OR_RETURN(auto session,
                           RenderSession::Create(model, objective, options));
  while (!session->done()) {
    if (cancelled != nullptr && cancelled->load(std::memory_order_relaxed)) {
      return absl::CancelledError(absl::StrCat(
          "render cancelled after step ", session->steps_done()));
    }
    // The same step a worker runs for a batch of jobs, with a batch of one:
    // so a job renders the same alone and batched.
    FEATVIZ_RETURN_IF_ERROR(StepTogether(model, {session.get()}));
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
