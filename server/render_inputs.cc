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
absl::StatusOr<at::Tensor> ModelInput(at::Tensor image, const core::Model& model,
                                      const std::string& what) {
  const core::ModelCard& card = model.card();
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

// The only hosted dataset whose images have `channels` channels; null when
// none or several do (then none is "the model's").
core::DatasetPtr OnlyDatasetWithChannels(const DatasetIndex& datasets,
                                         int64_t channels) {
  core::DatasetPtr only;
  for (const auto& [name, d] : datasets.all()) {
    if (d->images.size(1) != channels) continue;
    if (only != nullptr) return nullptr;
    only = d;
  }
  return only;
}

}  // namespace

RenderInputs::RenderInputs(std::vector<core::DatasetPtr> datasets)
    : datasets_(std::move(datasets)) {}

absl::StatusOr<RenderInputs::MacoPrior> RenderInputs::Prior(
    const std::string& dataset, int64_t channels, int64_t height,
    int64_t width) {
  // Which dataset: the one named, else the only one whose images have the
  // stimuli's channel count, else none (1/f).
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
    source = OnlyDatasetWithChannels(datasets_, channels);
  }
  const std::string name = source == nullptr ? kOneOverF : source->name;
  const auto key = std::make_tuple(name, channels, height, width);
  {
    absl::MutexLock lock(&mu_);
    auto it = priors_.find(key);
    if (it != priors_.end()) return it->second;
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
  if (priors_.size() >= kMaxCachedMagnitudes && !priors_.count(key)) {
    priors_.clear();
  }
  return priors_.emplace(key, std::move(entry)).first->second;
}

bool RenderInputs::DefaultsToMaco(const v1::RenderRequest& request,
                                  const RenderPlan& plan) const {
  const v1::ImageSpec& image = request.image();
  // Only where the request leaves every parameterisation choice open: no
  // kind, no FFT decay, no start image (MaCo would keep only its phase).
  if (image.parameterization() != v1::PARAMETERIZATION_UNSPECIFIED ||
      image.decay_power() != 0 || image.has_init_image() ||
      !image.maco_dataset().empty()) {
    return false;
  }
  if (plan.model->card().channels != 1 || plan.options.param.channels != 1) {
    return false;
  }
  return OnlyDatasetWithChannels(datasets_, 1) != nullptr;
}

absl::Status RenderInputs::Resolve(const v1::RenderRequest& request,
                                   RenderPlan& plan) {
  // On gRPC's threads: LibTorch's exceptions end here, as the request's
  // error.
  try {
    return ResolveUnguarded(request, plan);
  } catch (const std::exception& e) {
    return core::TorchError(e, "resolving the render's inputs");
  }
}

absl::Status RenderInputs::ResolveUnguarded(const v1::RenderRequest& request,
                                            RenderPlan& plan) {
  core::ParamOptions& param = plan.options.param;
  if (DefaultsToMaco(request, plan)) {
    param.kind = core::ParamKind::kMaco;
    if (request.optimizer().lr() == 0) plan.options.lr = DefaultLr(param.kind);
  }
  if (param.kind == core::ParamKind::kMaco) {
    FEATVIZ_ASSIGN_OR_RETURN(
        MacoPrior prior, Prior(request.image().maco_dataset(), param.channels,
                               param.height, param.width));
    param.magnitude = prior.magnitude;
    param.magnitude_source = prior.source;
    param.tone_gain = prior.tone.gain;
    param.tone_offset = prior.tone.offset;
  } else if (!request.image().maco_dataset().empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "image.maco_dataset is set to '", request.image().maco_dataset(),
        "', but the parameterization is not MaCo"));
  }
  for (const core::WeightedTerm& wt : plan.objective.terms()) {
    const core::Term& term = wt.term;
    if (!term.UsesReference()) continue;
    const core::ReferenceImage& ref = term.reference;
    const std::string key = ref.ToString();
    if (plan.options.references.count(key)) continue;
    at::Tensor image;
    std::string what;
    if (ref.source == core::ReferenceImage::Source::kTensor) {
      what = absl::StrCat("references[", ref.index, "]");
      if (ref.index >= request.references_size()) {
        return absl::OutOfRangeError(absl::StrCat(
            "objective: ", term.ToString(), " needs ", what,
            ", but the request has ", request.references_size(),
            " reference tensors"));
      }
      FEATVIZ_ASSIGN_OR_RETURN(
          image, TensorFromProto(request.references(static_cast<int>(ref.index)),
                                 what));
    } else {
      absl::StatusOr<core::DatasetPtr> dataset = datasets_.Find(ref.dataset);
      if (!dataset.ok()) {
        return Prefixed(absl::StrCat("objective: ", term.ToString()),
                        dataset.status());
      }
      if (ref.index >= (*dataset)->size()) {
        return absl::OutOfRangeError(absl::StrCat(
            "objective: ", term.ToString(), ": index ", ref.index,
            " is beyond dataset ", (*dataset)->name, " of ",
            (*dataset)->size(), " images"));
      }
      what = absl::StrCat("image ", ref.index, " of dataset ", (*dataset)->name);
      image = (*dataset)->images[ref.index];
    }
    FEATVIZ_ASSIGN_OR_RETURN(image, ModelInput(image, *plan.model, what));
    plan.options.references[key] = image;
  }
  return absl::OkStatus();
}

}  // namespace featviz::server
