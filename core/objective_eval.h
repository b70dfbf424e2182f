// Turns an Objective into numbers: the value of each term on a batch, from
// one forward pass's taps and the (untransformed) images.
#ifndef FEATVIZ_CORE_OBJECTIVE_EVAL_H_
#define FEATVIZ_CORE_OBJECTIVE_EVAL_H_

#include <ATen/ATen.h>

#include <vector>

#include "absl/status/statusor.h"
#include "core/model.h"
#include "core/objective.h"

namespace featviz::core {

struct ObjectiveValue {
  // [T] value of each term (unweighted): the mean over the images it
  // targets, or the batch-level value for diversity and alignment.
  at::Tensor terms;
  // Scalar to maximise: sum over terms of weight * (sum over targeted images
  // of the per-image value). Summing, not averaging, keeps each image's
  // gradient independent of how many images share the batch.
  at::Tensor total;
};

// The token a neuron term reads from a token layer's (or a sequence's)
// [B, D, T] activations: its token, its (x, y) patch of the grid, or by
// default the first token when the layout has tokens before its grid (the
// class token), else the centre patch (the centre position without a grid).
int64_t NeuronToken(const Term& term, const Taps::TokenLayout& layout,
                    int64_t tokens);

// The tokens of a token layer's [B, D, T] activations that a channel,
// direction or layer term averages over (Term::tokens): [B, D, T'].
at::Tensor SelectTokens(const at::Tensor& a, TokenSubset subset,
                        const Taps::TokenLayout& layout);

// `taps` must hold every layer objective.Layers() names; `images` are the
// [B, C, H, W] images in [0, 1] that the regularisers read. Assumes the
// objective was validated against the model and batch.
absl::StatusOr<ObjectiveValue> EvaluateObjective(const Objective& objective,
                                                 const Taps& taps,
                                                 const at::Tensor& images);

// One entry per term of an objective, in order: for an inversion,
// inversion_l2 or caricature term the reference image's activations at the
// term's layer ([1, ...], the layer's shape for one image); for l2(REF) the
// reference image itself ([1, C, H, W], the images' shape for one image);
// undefined for every other term.
using ReferenceActivations = std::vector<at::Tensor>;

// As above, with the reference activations the objective's reference terms
// compare with. FailedPrecondition when a reference term has none.
absl::StatusOr<ObjectiveValue> EvaluateObjective(
    const Objective& objective, const Taps& taps, const at::Tensor& images,
    const ReferenceActivations& references);

// Per-image values [B] of one neuron, channel, logit or prob term (the
// unit UnitTermIndex picks), ignoring its batch restriction: what feature
// accentuation reports for each image. `taps` must hold the term's layer.
absl::StatusOr<at::Tensor> UnitValues(const Term& term, const Taps& taps);

}  // namespace featviz::core

#endif  // FEATVIZ_CORE_OBJECTIVE_EVAL_H_
