// What a render needs beyond its own request, resolved when it is accepted:
// MaCo's fixed magnitude spectrum (estimated from a hosted dataset once per
// dataset, channel count and image size, then cached; the 1/f default when
// no dataset fits the model), the reference images of inversion,
// caricature and l2(REF) terms (the request's own tensors, or hosted
// dataset images), and a feature accentuation's seed image.
// A request that names no dataset gets only one whose images fit the model
// (DatasetRegistry::Pick).
#ifndef FEATVIZ_SERVER_RENDER_INPUTS_H_
#define FEATVIZ_SERVER_RENDER_INPUTS_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include <ATen/ATen.h>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "core/dataset.h"
#include "core/param.h"
#include "server/circuits_convert.h"
#include "server/convert.h"
#include "server/engine/dataset_registry.h"
#include "server/engine/engine_types.h"

namespace featviz::server {

// Magnitudes kept at most; the cache is emptied when it would grow beyond
// (each is [C, H, W/2 + 1] floats: 1.5 MB at 3 x 512 x 512).
inline constexpr size_t kMaxCachedMagnitudes = 64;

class RenderInputs {
 public:
  // Reads `datasets` (which must outlive this; null: none hosted).
  explicit RenderInputs(const DatasetRegistry* datasets);

  RenderInputs(const RenderInputs&) = delete;
  RenderInputs& operator=(const RenderInputs&) = delete;

  // Fetches what `plan` (PlanRender's result) names, without reading the
  // request again: for a MaCo plan, options.param.magnitude, tone and
  // magnitude_source (plan.maco_dataset: a dataset's name, "1/f", or empty
  // for the one hosted dataset whose images fit the model with the
  // stimuli's channel count, else 1/f); for every reference term,
  // options.references (reference(k): plan.reference_tensors[k];
  // dataset(i) without a name: the one dataset that fits the model, a gray
  // one included for an RGB model). Errors name the field: NOT_FOUND an
  // unknown dataset; OUT_OF_RANGE a dataset index or reference(k) beyond
  // what there is; INVALID_ARGUMENT a reference of another shape than the
  // model's input, a MaCo dataset with another channel count, or several
  // datasets fitting where none is named; FAILED_PRECONDITION a dataset(i)
  // reference when none fits. For plan.trust (when asked): the dataset
  // trust.dataset names (NOT_FOUND when unknown, INVALID_ARGUMENT when its
  // images or labels do not fit the model), or the one that fits the model
  // (FAILED_PRECONDITION when none does, INVALID_ARGUMENT when several do).
  absl::Status Resolve(RenderPlan& plan);

  // What a MaCo render holds fixed: the magnitude spectrum and the tone of
  // a dataset's pictures (core::MacoTone; neutral for 1/f), with the source
  // text.
  struct MacoPrior {
    at::Tensor magnitude;
    core::MacoTone tone;
    std::string source;
  };

  // The prior for `need.channels` x `height` x `width` stimuli of the
  // model `need` describes, from `dataset` ("" as in Resolve). Estimated
  // once, then cached: every session of a key holds the same tensors, so
  // they batch.
  absl::StatusOr<MacoPrior> Prior(const std::string& dataset,
                                  const DatasetNeed& need, int64_t height,
                                  int64_t width);

 private:
  absl::Status ResolveUnguarded(RenderPlan& plan);
  // A reference image's pixels, [C, H, W] at the model's input (C the
  // model's channels, or 1 for an RGB model): plan.reference_tensors[k] or
  // a hosted dataset's image. `field` starts every error.
  absl::StatusOr<at::Tensor> ResolveReference(const core::ReferenceImage& ref,
                                              const RenderPlan& plan,
                                              const std::string& field);
  // plan.accentuation's seed into options.references, the start image and
  // options.accentuation_seed, at the stimuli's channels.
  absl::Status ResolveAccentuation(RenderPlan& plan);
  // plan.trust's dataset: the one named, or the one that fits the model.
  absl::Status ResolveTrust(RenderPlan& plan) const;

  const DatasetRegistry empty_;
  const DatasetRegistry& datasets_;  // The one given, or empty_.
  absl::Mutex mu_;
  // A prior with the dataset it came from, held weakly (a deleted dataset
  // is freed) and compared on a hit, so that a dataset uploaded again
  // under the same name is estimated again.
  struct CachedPrior {
    MacoPrior prior;
    std::weak_ptr<const core::Dataset> from;
  };
  // (dataset, channels, height, width) -> its prior.
  std::map<std::tuple<std::string, int64_t, int64_t, int64_t>, CachedPrior>
      priors_ ABSL_GUARDED_BY(mu_);
};

}  // namespace featviz::server

#endif  // FEATVIZ_SERVER_RENDER_INPUTS_H_
