#include "core/objective_eval.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "core/torch_status.h"

namespace featviz::core {
namespace {

// Per-image values [B] of a term that compares each image's activations
// at the term's layer with a reference image's (`reference`, [1, ...]).
// Each image's value depends on its own row only (batching cannot change
// it).
at::Tensor AgainstReference(const Term& term, const at::Tensor& activations,
                            const at::Tensor& reference) {
  at::Tensor a = activations.flatten(1);
  at::Tensor r = reference.to(a.scalar_type()).flatten(1);  // [1, N]
  switch (term.kind) {
    case TermKind::kInversion: {
      // Cosine similarity; the small floor keeps an all-zero start finite.
      at::Tensor dot = (a * r).sum(1);
      return dot / (a.norm(2, {1}) * r.norm(2, {1}) + 1e-8);
    }
    case TermKind::kInversionL2:
      return -(a - r).pow(2).mean(1) / (r.pow(2).mean(1) + 1e-8);
    case TermKind::kCaricature:
      return (a * r).sum(1) / (r.pow(2).sum(1) + 1e-8);
    default:
      break;
  }
  return at::Tensor();
}

Taps::TokenLayout LayoutOf(const Taps& taps, const std::string& layer) {
  auto it = taps.token_layouts.find(layer);
  return it == taps.token_layouts.end() ? Taps::TokenLayout() : it->second;
}

// A term's layer's activations, restricted to the tokens it averages over.
at::Tensor TermActivations(const Term& term, const Taps& taps) {
  const at::Tensor& a = taps.activations.at(term.layer);
  if (term.tokens == TokenSubset::kAll || a.dim() != 3) return a;
  return SelectTokens(a, term.tokens, LayoutOf(taps, term.layer));
}

// Per-image values [B] of a term that is defined image by image.
at::Tensor PerImage(const Term& term, const Taps& taps,
                    const at::Tensor& images) {
  switch (term.kind) {
    case TermKind::kNeuron: {
      const at::Tensor& a = taps.activations.at(term.layer);
      at::Tensor c = a.select(1, term.index);
      if (c.dim() == 1) return c;
      if (a.dim() == 3) {
        return c.select(
            1, NeuronToken(term, LayoutOf(taps, term.layer), a.size(2)));
      }
      if (a.dim() == 4 && term.x.has_value() && term.y.has_value()) {
        return c.select(1, *term.y).select(1, *term.x);
      }
      // The centre of the map (of every further dimension).
      while (c.dim() > 1) c = c.select(1, c.size(1) / 2);
      return c;
    }
    case TermKind::kChannel: {
      at::Tensor c = TermActivations(term, taps).select(1, term.index);
      return c.dim() == 1 ? c : c.flatten(1).mean(1);
    }
    case TermKind::kLayer:
      return TermActivations(term, taps).flatten(1).pow(2).mean(1);
    case TermKind::kLogit:
      return taps.logits.select(1, term.index);
    case TermKind::kProb:
      return taps.probs.select(1, term.index);
    case TermKind::kOutput: {
      at::Tensor c = taps.outputs.at(term.output).select(1, term.index);
      return c.dim() == 1 ? c : c.flatten(1).mean(1);
    }
    case TermKind::kDirection: {
      const at::Tensor a = TermActivations(term, taps);
      at::Tensor v =
          at::tensor(std::vector<float>(term.vector.begin(), term.vector.end()))
              .to(a.device(), a.scalar_type());
      std::vector<int64_t> shape(a.dim(), 1);
      shape[1] = v.size(0);
      at::Tensor dot = (a * v.view(shape)).sum(1);
      return dot.dim() == 1 ? dot : dot.flatten(1).mean(1);
    }
    case TermKind::kTotalVariation: {
      at::Tensor dy = (images.narrow(2, 1, images.size(2) - 1) -
                       images.narrow(2, 0, images.size(2) - 1))
                          .abs()
                          .flatten(1)
                          .mean(1);
      at::Tensor dx = (images.narrow(3, 1, images.size(3) - 1) -
                       images.narrow(3, 0, images.size(3) - 1))
                          .abs()
                          .flatten(1)
                          .mean(1);
      return dx + dy;
    }
    case TermKind::kL1:
      return (images - term.param.value_or(0.5)).abs().flatten(1).mean(1);
    case TermKind::kL2:
      return (images - term.param.value_or(0.5))
          .pow(2)
          .flatten(1)
          .mean(1)
          .sqrt();
    case TermKind::kDiversity:
    case TermKind::kAlignment:
    case TermKind::kInversion:
    case TermKind::kInversionL2:
    case TermKind::kCaricature:
      break;
  }
  return at::Tensor();
}

// Negative mean cosine similarity between the images' Gram matrices: higher
// when the images of a batch differ in style, not just in position.
at::Tensor Diversity(const at::Tensor& a) {
  const int64_t b = a.size(0);
  at::Tensor f = a.dim() == 2 ? a.unsqueeze(2) : a.flatten(2);  // [B, C, N]
  at::Tensor gram = at::bmm(f, f.transpose(1, 2)) / f.size(2);
  at::Tensor g = gram.flatten(1);
  g = g / g.norm(2, {1}, true).clamp_min(1e-12);
  at::Tensor sim = at::mm(g, g.t());
  return -(sim.sum() - sim.diagonal().sum()) / static_cast<double>(b * (b - 1));
}

// Negative squared distance between images i and i + d, weighted by
// decay^-d: keeps neighbours of an interpolation alike.
at::Tensor Alignment(const at::Tensor& a, double decay) {
  const int64_t b = a.size(0);
  at::Tensor total = at::zeros({}, a.options());
  for (int64_t d = 1; d < b; ++d) {
    at::Tensor diff = a.narrow(0, 0, b - d) - a.narrow(0, d, b - d);
    total = total - diff.pow(2).flatten(1).mean(1).sum() / std::pow(decay, d);
  }
  return total;
}

}  // namespace

int64_t NeuronToken(const Term& term, const Taps::TokenLayout& layout,
                    int64_t tokens) {
  if (term.token.has_value()) return *term.token;
  if (term.x.has_value() && term.y.has_value() && layout.grid_w > 0) {
    return layout.prefix + *term.y * layout.grid_w + *term.x;
  }
  if (layout.prefix > 0) return 0;
  if (layout.grid_h > 0) {
    return layout.prefix + (layout.grid_h / 2) * layout.grid_w +
           layout.grid_w / 2;
  }
  return tokens / 2;
}

at::Tensor SelectTokens(const at::Tensor& a, TokenSubset subset,
                        const Taps::TokenLayout& layout) {
  const int64_t prefix = std::min<int64_t>(layout.prefix, a.size(2));
  switch (subset) {
    case TokenSubset::kAll:
      return a;
    case TokenSubset::kPrefix:
      return a.narrow(2, 0, prefix);
    case TokenSubset::kPatches:
      return a.narrow(2, prefix, a.size(2) - prefix);
  }
  return a;
}

absl::StatusOr<ObjectiveValue> EvaluateObjective(const Objective& objective,
                                                 const Taps& taps,
                                                 const at::Tensor& images) {
  return EvaluateObjective(objective, taps, images, ReferenceActivations());
}

absl::StatusOr<ObjectiveValue> EvaluateObjective(
    const Objective& objective, const Taps& taps, const at::Tensor& images,
    const ReferenceActivations& references) {
  if (objective.empty()) {
    return absl::InvalidArgumentError("objective is empty");
  }
  try {
    std::vector<at::Tensor> values;
    at::Tensor total;
    for (size_t t = 0; t < objective.terms().size(); ++t) {
      const WeightedTerm& wt = objective.terms()[t];
      const Term& term = wt.term;
      if (term.UsesReference() &&
          (t >= references.size() || !references[t].defined())) {
        return absl::FailedPreconditionError(
            absl::StrCat(term.ToString(), " has no reference activations"));
      }
      if (term.UsesLayer() && !taps.activations.count(term.layer)) {
        return absl::InternalError(
            absl::StrCat("layer ", term.layer, " was not tapped"));
      }
      if (term.kind == TermKind::kOutput && !taps.outputs.count(term.output)) {
        return absl::InternalError(
            absl::StrCat("output ", term.output, " was not returned"));
      }
      at::Tensor summed, mean;
      if (term.kind == TermKind::kDiversity ||
          term.kind == TermKind::kAlignment) {
        const at::Tensor& a = taps.activations.at(term.layer);
        if (a.size(0) < 2) {
          summed = at::zeros({}, a.options());
        } else if (term.kind == TermKind::kDiversity) {
          summed = Diversity(a);
        } else {
          summed = Alignment(a, term.param.value_or(2.0));
        }
        mean = summed;
      } else {
        at::Tensor v;
        if (term.kind == TermKind::kL2 && term.UsesReference()) {
          // The floor keeps the gradient finite where the picture equals
          // its reference (an accentuation's first step): sqrt's slope is
          // infinite at 0, and 0 * inf is NaN.
          v = (images - references[t].to(images.scalar_type()))
                  .pow(2)
                  .flatten(1)
                  .mean(1)
                  .add(1e-12)
                  .sqrt();
        } else if (term.UsesReference()) {
          v = AgainstReference(term, taps.activations.at(term.layer),
                               references[t]);
        } else {
          v = PerImage(term, taps, images);
        }
        if (term.batch.has_value()) v = v.narrow(0, *term.batch, 1);
        summed = v.sum();
        mean = v.mean();
      }
      values.push_back(mean.to(at::kFloat));
      at::Tensor weighted = summed * wt.weight;
      total = total.defined() ? total + weighted : weighted;
    }
    return ObjectiveValue{at::stack(values), total};
  } catch (const std::exception& e) {
    return TorchError(e, "evaluating the objective");
  }
}

absl::StatusOr<at::Tensor> UnitValues(const Term& term, const Taps& taps) {
  if (!term.IsUnit()) {
    return absl::InvalidArgumentError(absl::StrCat(
        term.ToString(), " is not a neuron, channel, logit or prob term"));
  }
  if (term.UsesLayer() && !taps.activations.count(term.layer)) {
    return absl::InternalError(
        absl::StrCat("layer ", term.layer, " was not tapped"));
  }
  try {
    return PerImage(term, taps, at::Tensor());
  } catch (const std::exception& e) {
    return TorchError(e, absl::StrCat("measuring ", term.ToString()));
  }
}

}  // namespace featviz::core
