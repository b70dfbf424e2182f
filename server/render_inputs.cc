#include "server/render_inputs.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/image.h"
#include "core/param.h"
#include "core/status_macros.h"
#include "core/torch_status.h"

namespace featviz::server {
namespace {

constexpr char kOneOverF[] = "1/f";

std::string ShapeOf(const at::Tensor& t) { return c10::str(t.sizes()); }

// `image` ([C, H, W] or [1, C, H, W]) checked against the model's input;
// `what` names it in errors.
absl::StatusOr<at::Tensor> ModelInput(at::Tensor image,
                                      const core::ModelCard& card,
                                      const std::string& what) {
  if (image.dim() == 4 && image.size(0) == 1) image = image.squeeze(0);
  if (image.dim() != 3 ||
      (image.size(0) != card.channels &&
       !(image.size(0) == 1 && card.channels == 3)) ||
      image.size(1) != card.height || image.size(2) != card.width) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, " has shape ", ShapeOf(image), ", but model ", card.name,
        " takes [", card.channels, ", ", card.height, ", ", card.width, "]"));
  }
  return image;
}

}  // namespace

RenderInputs::RenderInputs(const DatasetRegistry* datasets)
    : datasets_(datasets != nullptr ? *datasets : empty_) {}

absl::StatusOr<RenderInputs::MacoPrior> RenderInputs::Prior(
    const std::string& dataset, const DatasetNeed& need, int64_t height,
    int64_t width) {
  const int64_t channels = need.channels;
  // Which dataset: the one named, else the only one that fits the model,
  // else none (1/f).
  core::DatasetPtr source;
  if (dataset == kOneOverF) {
    // Asked for the default.
  } else if (!dataset.empty()) {
    absl::StatusOr<core::DatasetPtr> found = datasets_.Find(dataset);
    if (!found.ok()) return Prefixed("image.maco_dataset", found.status());
    source = *found;
    if (source->images.size(1) != channels) {
      return absl::InvalidArgumentError(absl::StrCat(
          "image.maco_dataset: dataset ", dataset, " has ",
          source->images.size(1), "-channel images, the stimuli have ",
          channels));
    }
  } else {
    absl::StatusOr<core::DatasetPtr> picked =
        datasets_.Pick("", need, "image.maco_dataset");
    if (picked.ok()) {
      source = *std::move(picked);
    } else if (!absl::IsFailedPrecondition(picked.status())) {
      // Several fit: which one is the request's to say.
      return absl::Status(
          picked.status().code(),
          absl::StrCat(picked.status().message(), " (or '1/f')"));
    }
  }
  const std::string name = source == nullptr ? kOneOverF : source->name;
  const auto key = std::make_tuple(name, channels, height, width);
  {
    absl::MutexLock lock(&mu_);
    auto it = priors_.find(key);
    if (it != priors_.end() && it->second.from.lock() == source) {
      return it->second.prior;
    }
  }
  // Estimated outside the lock (requests for other sizes need not wait); two
  // requests racing for one key both estimate, and the first stored wins,
  // so every session of a key holds the same tensor (and batches).
  MacoPrior entry;
  if (source == nullptr) {
    entry.magnitude = core::DefaultMacoMagnitude(channels, height, width);
    entry.source = kOneOverF;
  } else {
    FEATVIZ_ASSIGN_OR_RETURN(
        entry.magnitude,
        core::MacoMagnitudeFromImages(source->images, height, width));
    FEATVIZ_ASSIGN_OR_RETURN(entry.tone,
                             core::MacoToneFromImages(source->images));
    entry.source = absl::StrCat(
        "dataset ", source->name, " (",
        std::min<int64_t>(source->size(), core::kMacoMaxImages), " images)");
  }
  absl::MutexLock lock(&mu_);
  auto it = priors_.find(key);
  if (it != priors_.end() && it->second.from.lock() == source) {
    return it->second.prior;
  }
  if (priors_.size() >= kMaxCachedMagnitudes && it == priors_.end()) {
    priors_.clear();
  }
  CachedPrior& cached = priors_[key];
  cached = {std::move(entry), source};
  return cached.prior;
}

absl::StatusOr<at::Tensor> RenderInputs::ResolveReference(
    const core::ReferenceImage& ref, const RenderPlan& plan,
    const std::string& field) {
  at::Tensor image;
  std::string what;
  if (ref.source == core::ReferenceImage::Source::kTensor) {
    what = absl::StrCat("references[", ref.index, "]");
    if (ref.index >= static_cast<int64_t>(plan.reference_tensors.size())) {
      return absl::OutOfRangeError(absl::StrCat(
          field, " needs ", what, ", but the request has ",
          plan.reference_tensors.size(), " reference tensors"));
    }
    image = plan.reference_tensors[static_cast<size_t>(ref.index)];
  } else {
    DatasetNeed need = NeedOf(plan.model->card, plan.model->card.channels);
    need.gray_for_rgb = true;  // As ModelInput takes them.
    absl::StatusOr<core::DatasetPtr> dataset =
        ref.dataset.empty() ? datasets_.Pick("", need, field)
                            : datasets_.Find(ref.dataset);
    if (!dataset.ok()) {
      if (ref.dataset.empty()) return dataset.status();
      return Prefixed(field, dataset.status());
    }
    if (ref.index >= (*dataset)->size()) {
      return absl::OutOfRangeError(absl::StrCat(
          field, ": index ", ref.index, " is beyond dataset ",
          (*dataset)->name, " of ", (*dataset)->size(), " images"));
    }
    what = absl::StrCat("image ", ref.index, " of dataset ", (*dataset)->name);
    image = (*dataset)->images[ref.index];
  }
  return ModelInput(image, plan.model->card, what);
}

absl::Status RenderInputs::ResolveAccentuation(RenderPlan& plan) {
  const core::ReferenceImage& ref = *plan.accentuation;
  const std::string field = absl::StrCat("accentuate.image ", ref.ToString());
  FEATVIZ_ASSIGN_OR_RETURN(at::Tensor seed,
                           ResolveReference(ref, plan, field));
  core::ParamOptions& param = plan.options.param;
  // A gray seed stands for every channel of colour stimuli; colour cannot
  // become gray stimuli without choosing how.
  if (seed.size(0) != param.channels) {
    if (seed.size(0) != 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          field, " has ", seed.size(0), " channels, but the stimuli have ",
          param.channels, " (image.color); ask for the model's colour"));
    }
    seed = seed.expand({param.channels, seed.size(1), seed.size(2)});
  }
  seed = seed.to(at::kFloat).contiguous();
  // It becomes the start image, which must be in [0, 1] as
  // image.init_image must (a request reference is checked only for shape).
  const at::Tensor bad = seed.isnan().logical_or(seed < 0).logical_or(seed > 1);
  if (bad.any().item<bool>()) {
    const int64_t at = bad.flatten().nonzero()[0][0].item<int64_t>();
    return absl::InvalidArgumentError(
        absl::StrCat(field, " must hold values in [0, 1], found ",
                     seed.flatten()[at].item<float>(), " at element ", at));
  }
  plan.options.references[ref.ToString()] = seed;
  param.init_image = seed;
  plan.options.accentuation_seed = seed;
  return absl::OkStatus();
}

absl::Status RenderInputs::Resolve(RenderPlan& plan) {
  // On gRPC's threads: LibTorch's exceptions end here, as the request's
  // error.
  try {
    return ResolveUnguarded(plan);
  } catch (const std::exception& e) {
    return core::TorchError(e, "resolving the render's inputs");
  }
}

absl::Status RenderInputs::ResolveUnguarded(RenderPlan& plan) {
  core::ParamOptions& param = plan.options.param;
  if (param.kind == core::ParamKind::kMaco) {
    FEATVIZ_ASSIGN_OR_RETURN(
        MacoPrior prior,
        Prior(plan.maco_dataset,
              NeedOf(plan.model->card, param.channels), param.height,
              param.width));
    param.magnitude = prior.magnitude;
    param.magnitude_source = prior.source;
    param.tone_gain = prior.tone.gain;
    param.tone_offset = prior.tone.offset;
  }
  if (plan.accentuation.has_value()) {
    FEATVIZ_RETURN_IF_ERROR(ResolveAccentuation(plan));
  }
  for (const core::WeightedTerm& wt : plan.objective.terms()) {
    const core::Term& term = wt.term;
    if (!term.UsesReference()) continue;
    const std::string key = term.reference.ToString();
    if (plan.options.references.count(key)) continue;
    FEATVIZ_ASSIGN_OR_RETURN(
        plan.options.references[key],
        ResolveReference(term.reference, plan,
                         absl::StrCat("objective: ", term.ToString())));
  }
  return ResolveTrust(plan);
}

absl::Status RenderInputs::ResolveTrust(RenderPlan& plan) const {
  TrustPlan& trust = plan.trust;
  if (!trust.asked()) return absl::OkStatus();
  const core::ModelCard& card = plan.model->card;
  FEATVIZ_ASSIGN_OR_RETURN(
      trust.dataset,
      datasets_.Pick(trust.dataset_name, NeedOf(card, card.channels),
                     "trust.dataset"));
  const core::Dataset& dataset = *trust.dataset;
  const at::Tensor& images = dataset.images;
  if (images.dim() != 4 || images.size(1) != card.channels ||
      images.size(2) != card.height || images.size(3) != card.width) {
    return absl::InvalidArgumentError(absl::StrCat(
        "trust.dataset: ", dataset.name, " holds images of shape ",
        ImageShape(dataset), ", but model ", card.name, " takes [",
        card.channels, ", ", card.height, ", ", card.width, "]"));
  }
  // Labels that name classes the model does not have are another task's.
  const int64_t classes = static_cast<int64_t>(plan.model->class_names.size());
  const int64_t labelled = static_cast<int64_t>(dataset.class_names.size());
  if (labelled > 0 && classes > 0 && labelled > classes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "trust.dataset: ", dataset.name, " has ", labelled,
        " classes, more than the ", classes, " of model ", card.name));
  }
  return absl::OkStatus();
}

}  // namespace featviz::server
