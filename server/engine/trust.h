// What a render shows beside its pictures so that a user can judge them
// (RenderRequest.trust, docs/trust.md): the hosted dataset's examples that
// drive the objective's unit most (exemplars), and for each picture a check
// of its path through the network against those examples' paths (path
// similarity). Computed by the worker once a job's steps are done, with the
// job's own model copy; nothing of it runs for a render that does not ask.
#ifndef FEATVIZ_SERVER_ENGINE_TRUST_H_
#define FEATVIZ_SERVER_ENGINE_TRUST_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/model.h"
#include "core/objective.h"
#include "server/engine/engine_types.h"
#include "server/engine/unit_values_cache.h"

namespace featviz::server {

// The path similarity below which a picture is flagged (PathScore::
// threshold), chosen from the calibration in docs/trust.md.
inline constexpr double kPathSimilarityThreshold = 0.5;
// The unit's natural top examples compared with, and the random natural
// images that place 0 (drawn with kPathSeed: the same images every time).
inline constexpr int64_t kPathTopExamples = 32;
inline constexpr int64_t kPathRandomExamples = 64;
inline constexpr uint64_t kPathSeed = 20261206;
// A layer whose top examples are less than this much more alike (Spearman)
// than random images tells nothing about the unit: reported, not counted.
inline constexpr double kMinInformativeGap = 0.05;

// Fills `result`'s exemplars and path_similarity as `plan.trust` asks, for
// `images` ([B, C, H, W] in [0, 1], the render's pictures) on `model` (the
// job's copy). The dataset pass over the unit's layer comes from `cache`.
// Errors: a LibTorch failure, or a dataset that does not fit the model.
absl::Status AddTrust(const core::Model& model, const RenderPlan& plan,
                      const at::Tensor& images, UnitValuesCache& cache,
                      JobResult& result);

// The layers a unit's path is compared at: every tappable layer with
// channels before the unit's layer in model order (not its ancestors), then
// the unit's layer with the unit's channel left out (second: that channel,
// -1 for none). A class unit: every tappable layer with channels, the
// class left out of the last when that is a flat layer as wide as the
// class output (the logits themselves).
std::vector<std::pair<std::string, int64_t>> PathLayers(
    const core::Model& model, const core::Term& unit);

// Spearman's rank correlation of two equally long vectors (ties get their
// mean rank); 0 when either is constant or shorter than 2.
double Spearman(const std::vector<double>& a, const std::vector<double>& b);

}  // namespace featviz::server

#endif  // FEATVIZ_SERVER_ENGINE_TRUST_H_
