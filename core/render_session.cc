#include "core/render_session.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/device.h"
#include "core/objective_eval.h"
#include "core/param_pack.h"
#include "core/status_macros.h"
#include "core/torch_status.h"

namespace featviz::core {
namespace {

std::atomic<uint64_t> next_job_id{1};

// Whether `image` is one stimulus of `param`'s shape (sizes filled), [C, H,
// W] or [1, C, H, W], or one gray channel of it: what l2(REF)'s reference
// and an accentuation's seed must be.
bool IsOneStimulus(const at::Tensor& image, const ParamOptions& param) {
  return image.defined() &&
         (image.dim() == 3 || (image.dim() == 4 && image.size(0) == 1)) &&
         (image.size(-3) == param.channels || image.size(-3) == 1) &&
         image.size(-2) == param.height && image.size(-1) == param.width;
}

// l2(REF)'s reference: the image itself, [1, C, H, W] on the model's
// device (IsOneStimulus).
absl::StatusOr<at::Tensor> PixelReference(const Model& model, const Term& term,
                                          const at::Tensor& image,
                                          const ParamOptions& param) {
  if (!IsOneStimulus(image, param)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "reference image ", term.reference.ToString(), " of ",
        term.ToString(), " has shape ",
        image.defined() ? c10::str(image.sizes()) : "none",
        ", expected the images' [", param.channels, ", ", param.height, ", ",
        param.width, "]"));
  }
  try {
    if (!at::isfinite(image).all().item<bool>()) {
      return absl::InvalidArgumentError(
          absl::StrCat("reference image ", term.reference.ToString(),
                       " has non-finite pixels"));
    }
    const at::Tensor one = image.dim() == 3 ? image.unsqueeze(0) : image;
    return one.to(model.device(), at::kFloat).detach();
  } catch (const std::exception& e) {
    return TorchError(e, absl::StrCat("reading reference image ",
                                      term.reference.ToString()));
  }
}

// The activations of every reference term's reference image at its layer,
// one forward pass per distinct image (no gradient, no transforms).
absl::StatusOr<ReferenceActivations> ComputeReferences(
    const Model& model, const Objective& objective,
    const RenderOptions& options) {
  const std::vector<WeightedTerm>& terms = objective.terms();
  ReferenceActivations activations(terms.size());
  // Reference text -> the layers its terms read.
  std::map<std::string, std::vector<std::string>> layers;
  for (size_t t = 0; t < terms.size(); ++t) {
    const WeightedTerm& wt = terms[t];
    if (!wt.term.UsesReference()) continue;
    const std::string key = wt.term.reference.ToString();
    auto it = options.references.find(key);
    if (it == options.references.end()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "reference image ", key, " of ", wt.term.ToString(),
          " was not given"));
    }
    if (wt.term.kind == TermKind::kL2) {
      FEATVIZ_ASSIGN_OR_RETURN(
          activations[t],
          PixelReference(model, wt.term, it->second, options.param));
      continue;
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
      if (term.UsesReference() && term.kind != TermKind::kL2 &&
          term.reference.ToString() == key) {
        activations[t] = taps.activations.at(term.layer).detach();
      }
    }
  }
  return activations;
}

// Checks the options that need no model but its card, and fills the image
// size and channels from the card where they are 0.
absl::Status CheckOptions(const ModelCard& card, RenderOptions& options) {
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
  const at::Tensor& seed = options.accentuation_seed;
  if (seed.defined()) {
    if (!IsOneStimulus(seed, p)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "accentuation seed has shape ", c10::str(seed.sizes()),
          ", expected the images' [", p.channels, ", ", p.height, ", ",
          p.width, "]"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

RenderSession::RenderSession(const Model& model, RenderOptions options)
    : model_(model), options_(std::move(options)) {}

absl::StatusOr<std::unique_ptr<RenderSession>> RenderSession::Create(
    const Model& model, Objective objective, RenderOptions options) {
  FEATVIZ_RETURN_IF_ERROR(CheckOptions(model.card(), options));
  FEATVIZ_RETURN_IF_ERROR(
      objective.Validate(model.shape(), options.param.batch));
  FEATVIZ_ASSIGN_OR_RETURN(ReferenceActivations references,
                           ComputeReferences(model, objective, options));

  std::unique_ptr<RenderSession> session(
      new RenderSession(model, std::move(options)));
  RenderSession& s = *session;
  const RenderOptions& o = s.options_;
  JobState& job = s.state_;
  job.id = next_job_id.fetch_add(1);
  job.objective = std::move(objective);
  job.batch = o.param.batch;
  job.steps = o.steps;
  job.adam = AdamOptions{.lr = o.lr};
  job.references = std::move(references);
  s.transforms_ = o.transforms.has_value()
                      ? *o.transforms
                      : DefaultTransformsFor(model.IsTokenModel(),
                                             o.param.height, o.param.width);
  s.layers_ = job.objective.Layers();
  // The image variables and the transforms draw from separate streams of the
  // one seed, so changing the transforms does not change the start image.
  FEATVIZ_ASSIGN_OR_RETURN(job.param,
                           ImageParam::Create(o.param, o.seed, model.device()));
  // The transforms' generator lives on the model's device and gets its own
  // stream of the seed (the start image's CPU generator takes the seed as
  // it is); the whole schedule is drawn here, once.
  FEATVIZ_ASSIGN_OR_RETURN(
      s.generator_,
      MakeGenerator(model.device(), o.seed ^ 0x9e3779b97f4a7c15ULL));
  const ModelCard& card = model.card();
  if (!IsIdentity(s.transforms_, o.param.height, o.param.width, card.height,
                  card.width)) {
    try {
      job.schedule = TransformMatrices(s.transforms_, o.steps, o.param.height,
                                       o.param.width, s.generator_);
    } catch (const std::exception& e) {
      return TorchError(e, "drawing the transforms");
    }
  }
  const at::TensorOptions on_device =
      at::TensorOptions().device(model.device());
  if (o.param.kind == ParamKind::kMaco) {
    try {
      job.transparency = at::zeros(
          {o.param.batch, o.param.channels, o.param.height, o.param.width},
          on_device);
    } catch (const std::exception& e) {
      return TorchError(e, "allocating the transparency map");
    }
  }
  try {
    job.m = at::zeros_like(job.param->parameters()[0]);
    job.v = at::zeros_like(job.param->parameters()[0]);
  } catch (const std::exception& e) {
    return TorchError(e, "allocating Adam's moments");
  }
  try {
    job.trace = at::zeros(
        {o.steps, static_cast<int64_t>(job.objective.terms().size())},
        on_device);
  } catch (const std::exception& e) {
    return TorchError(e, "allocating the trace");
  }
  return session;
}

at::Tensor RenderSession::PrepareInput() {
  // A job stepped by its pieces is a pack of one, as StepTogether steps a
  // job alone.
  LeaveStaticMode(state_);
  const std::shared_ptr<ParamPack> pack = ParamPack::For({&state_});
  state_.images = state_.param->ImageFrom(pack->variable());
  if (state_.transparency.defined()) state_.images.retain_grad();
  const ModelCard& card = model_.card();
  at::Tensor matrices = StepMatrices(state_);
  if (!matrices.defined()) return state_.images;
  return SampleAffine(state_.images, matrices, card.height, card.width);
}

absl::StatusOr<at::Tensor> RenderSession::Loss(const Taps& taps) {
  return JobLoss(state_, taps);
}

void RenderSession::Update() {
  if (state_.pack != nullptr) state_.pack->Update(state_.pack->StepSizes());
  EndStep(state_);
}

ProgressEvent RenderSession::Progress(bool with_images) const {
  ProgressEvent event;
  event.step = state_.step;
  // The one host synchronisation of a progress point.
  HostCopies copies;
  at::Tensor v;
  const at::Tensor last_terms = LastTerms(state_);
  if (last_terms.defined()) v = copies.Add(last_terms, at::kDouble);
  if (with_images) {
    at::NoGradGuard no_grad;
    event.images = copies.Add(state_.param->Image(), at::kFloat);
  }
  copies.Wait();
  if (v.defined()) {
    event.values.assign(v.data_ptr<double>(), v.data_ptr<double>() + v.numel());
  }
  return event;
}

absl::StatusOr<RenderResult> RenderSession::Finish() {
  RenderResult result;
  result.objective = state_.objective.ToString();
  for (const WeightedTerm& wt : state_.objective.terms()) {
    result.terms.push_back(wt.term.ToString());
    result.weights.push_back(wt.weight);
  }
  result.seed = options_.seed;
  result.steps = state_.step;
  result.transforms = TransformsToString(transforms_);
  result.parameterization = state_.param->options().kind;
  if (state_.param->options().kind == ParamKind::kMaco) {
    result.magnitude_source = state_.param->options().magnitude_source.empty()
                                  ? "1/f"
                                  : state_.param->options().magnitude_source;
  }
  try {
    at::NoGradGuard no_grad;
    at::Tensor images = state_.param->Image();
    const ModelCard& card = model_.card();
    at::Tensor input = images;
    if (images.size(2) != card.height || images.size(3) != card.width) {
      input = ApplyTransforms({}, images, generator_, card.height, card.width);
    }
    FEATVIZ_ASSIGN_OR_RETURN(Taps taps, model_.Forward(input, layers_));
    FEATVIZ_ASSIGN_OR_RETURN(
        ObjectiveValue value,
        EvaluateObjective(state_.objective, taps, images, state_.references));
    // Every copy queued first, then one wait: the result's only host
    // synchronisation.
    HostCopies copies;
    at::Tensor terms = copies.Add(value.terms, at::kDouble);
    at::Tensor total = copies.Add(value.total.reshape({1}), at::kDouble);
    result.images = copies.Add(images, at::kFloat);
    FlushSharedTrace(state_);
    result.trace = copies.Add(state_.trace.narrow(0, 0, state_.step));
    result.logits = copies.Add(taps.logits, at::kFloat);
    result.probs = copies.Add(taps.probs, at::kFloat);
    if (state_.transparency.defined()) {
      result.transparency = copies.Add(state_.transparency, at::kFloat);
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
    result.warnings = ProbSaturationWarnings(state_.objective, result.probs,
                                             model_.card().log_probs);
    if (options_.accentuation_seed.defined()) {
      FEATVIZ_ASSIGN_OR_RETURN(result.accentuation,
                               MeasureAccentuation(taps, images));
    }
  } catch (const std::exception& e) {
    return TorchError(e, "measuring the final images");
  }
  return result;
}

absl::StatusOr<std::vector<AccentuationOutcome>>
RenderSession::MeasureAccentuation(const Taps& taps, const at::Tensor& images) {
  const int64_t batch = images.size(0);
  at::Tensor seed = options_.accentuation_seed;
  if (seed.dim() == 3) seed = seed.unsqueeze(0);
  seed = seed.to(images.device(), images.scalar_type());
  // Per image: the RMS over its pixels (a gray seed broadcast over colour
  // stimuli).
  const at::Tensor distance =
      (images - seed).pow(2).flatten(1).mean(1).to(at::kCPU, at::kDouble);
  std::vector<AccentuationOutcome> outcomes(static_cast<size_t>(batch));
  for (int64_t b = 0; b < batch; ++b) {
    outcomes[b].pixel_distance = std::sqrt(distance[b].item<double>());
  }
  const std::optional<size_t> unit = UnitTermIndex(state_.objective);
  if (!unit.has_value()) return outcomes;
  const Term& term = state_.objective.terms()[*unit].term;
  FEATVIZ_ASSIGN_OR_RETURN(at::Tensor values, UnitValues(term, taps));
  const ModelCard& card = model_.card();
  at::Tensor seed_input = seed.expand({1, images.size(1), images.size(2),
                                       images.size(3)});
  if (seed_input.size(2) != card.height || seed_input.size(3) != card.width) {
    seed_input = ApplyTransforms({}, seed_input, generator_, card.height,
                                 card.width);
  }
  std::vector<std::string> layers;
  if (term.UsesLayer()) layers.push_back(term.layer);
  FEATVIZ_ASSIGN_OR_RETURN(Taps seed_taps, model_.Forward(seed_input, layers));
  FEATVIZ_ASSIGN_OR_RETURN(at::Tensor seed_values, UnitValues(term, seed_taps));
  const double seed_value = seed_values.to(at::kCPU, at::kDouble)[0].item<double>();
  values = values.to(at::kCPU, at::kDouble);
  for (int64_t b = 0; b < batch; ++b) {
    outcomes[b].seed_value = seed_value;
    outcomes[b].value = values[b].item<double>();
  }
  return outcomes;
}

std::vector<std::string> ProbSaturationWarnings(const Objective& objective,
                                                const at::Tensor& probs,
                                                bool log_probs) {
  std::vector<std::string> warnings;
  if (!probs.defined() || probs.dim() != 2 || probs.size(0) == 0) {
    return warnings;
  }
  const at::Tensor p = probs.to(at::kCPU, at::kDouble).contiguous();
  const int64_t images = p.size(0);
  for (const WeightedTerm& wt : objective.terms()) {
    const Term& term = wt.term;
    if (term.kind != TermKind::kProb || term.index >= p.size(1)) continue;
    const int64_t first = term.batch.value_or(0);
    const int64_t count = term.batch.has_value() ? 1 : images;
    if (first + count > images) continue;
    const at::Tensor column = p.select(1, term.index).narrow(0, first, count);
    const int64_t saturated = column.gt(kProbSaturated).sum().item<int64_t>();
    if (saturated == 0) continue;
    Term logit = term;
    logit.kind = TermKind::kLogit;
    const std::string instead =
        log_probs
            ? absl::StrCat("this model's logit(", term.index,
                           ") is log p and saturates too; maximise class ",
                           term.index,
                           "'s unit in the layer before its log_softmax "
                           "(neuron(LAYER, ",
                           term.index, "))")
            : absl::StrCat("maximise ", logit.ToString(),
                           " instead, whose gradient does not vanish");
    warnings.push_back(absl::StrFormat(
        "%s saturated: p = %.5f on %d of %d images, so its gradient "
        "(p(1 - p) times the logit's) all but vanished and the images hardly "
        "changed; %s",
        term.ToString(), column.max().item<double>(), saturated, count,
        instead));
  }
  return warnings;
}

}  // namespace featviz::core
