#include "core/unit_labels.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/analysis.h"
#include "core/objective.h"
#include "core/status_macros.h"
#include "core/torch_status.h"

namespace featviz::core {
namespace {

// InvalidArgument unless `labels` is [N] with every label in
// [0, num_classes).
absl::Status CheckLabels(const at::Tensor& labels, int64_t n,
                         int64_t num_classes) {
  if (num_classes < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_classes must be >= 1, got ", num_classes));
  }
  if (labels.dim() != 1 || labels.size(0) != n) {
    return absl::InvalidArgumentError(
        absl::StrCat("labels must be [", n, "], got ", labels.dim(),
                     " dimensions of ", labels.numel(), " values"));
  }
  if (n > 0) {
    const int64_t low = labels.min().item<int64_t>();
    const int64_t high = labels.max().item<int64_t>();
    if (low < 0 || high >= num_classes) {
      return absl::InvalidArgumentError(absl::StrCat(
          "labels must be in [0, ", num_classes, "), got ",
          low < 0 ? low : high, " (unlabelled images cannot be counted)"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

double UnitClassSelectivity::FractionOf(int64_t class_index) const {
  for (const ClassCount& c : classes) {
    if (c.class_index == class_index) return c.fraction;
  }
  return 0;
}

double SelectivityIndex(double p, double q) {
  // A dataset of a single class: every unit's top examples are all of it,
  // and there is nothing to be selective against.
  if (q >= 1) return p >= 1 ? 1 : 0;
  return std::clamp((p - q) / (1 - q), 0.0, 1.0);
}

absl::StatusOr<std::vector<UnitClassSelectivity>> ClassSelectivity(
    const at::Tensor& values, const at::Tensor& labels, int64_t num_classes,
    const std::vector<int64_t>& channels, int64_t top_n) {
  if (values.dim() != 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        "unit values must be [N, K], got ", values.dim(), " dimensions"));
  }
  if (top_n < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("top_n must be >= 1, got ", top_n));
  }
  const int64_t n = values.size(0);
  FEATVIZ_RETURN_IF_ERROR(CheckLabels(labels, n, num_classes));
  if (n == 0) {
    return absl::InvalidArgumentError("unit values: the dataset is empty");
  }
  std::vector<int64_t> wanted = channels;
  if (wanted.empty()) {
    for (int64_t c = 0; c < values.size(1); ++c) wanted.push_back(c);
  }
  for (int64_t c : wanted) {
    if (c < 0 || c >= values.size(1)) {
      return absl::OutOfRangeError(absl::StrCat(
          "channel ", c, " out of range for ", values.size(1), " channels"));
    }
  }
  const int64_t k = std::min(top_n, n);
  const at::Tensor cpu_labels = labels.to(at::kCPU, at::kLong).contiguous();
  const at::Tensor dataset_counts =
      at::bincount(cpu_labels, /*weights=*/{}, num_classes);
  std::vector<UnitClassSelectivity> out;
  out.reserve(wanted.size());
  try {
    // One topk over every wanted unit: [k, units].
    const at::Tensor picked =
        values.to(at::kCPU, at::kFloat)
            .index_select(1, at::tensor(wanted, at::kLong));
    auto [top_values, top] = picked.topk(k, /*dim=*/0);
    const at::Tensor top_labels = cpu_labels.index_select(0, top.flatten())
                                      .view({k, -1})
                                      .contiguous();
    for (size_t u = 0; u < wanted.size(); ++u) {
      const at::Tensor counts = at::bincount(
          top_labels.select(1, static_cast<int64_t>(u)).contiguous(),
          /*weights=*/{}, num_classes);
      UnitClassSelectivity unit;
      unit.channel = wanted[u];
      unit.top_n = k;
      unit.max_value = top_values[0][static_cast<int64_t>(u)].item<float>();
      const int64_t* count = counts.data_ptr<int64_t>();
      for (int64_t c = 0; c < num_classes; ++c) {
        if (count[c] == 0) continue;
        unit.classes.push_back(
            {c, count[c], static_cast<double>(count[c]) / k});
      }
      std::stable_sort(unit.classes.begin(), unit.classes.end(),
                       [](const ClassCount& a, const ClassCount& b) {
                         return a.count > b.count;
                       });
      const ClassCount& first = unit.classes.front();
      const double q =
          dataset_counts[first.class_index].item<double>() / static_cast<double>(n);
      unit.selectivity = SelectivityIndex(first.fraction, q);
      out.push_back(std::move(unit));
    }
  } catch (const std::exception& e) {
    return TorchError(e, "class selectivity");
  }
  return out;
}

absl::StatusOr<at::Tensor> ClassAttributionScores(const Model& model,
                                                  const at::Tensor& images,
                                                  const at::Tensor& labels,
                                                  int64_t num_classes,
                                                  const std::string& layer,
                                                  int64_t per_class) {
  const int64_t logits = model.shape().num_classes;
  if (logits == 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "model ", model.card().name, " has no class logits to attribute to"));
  }
  if (logits != num_classes) {
    return absl::FailedPreconditionError(absl::StrCat(
        "model ", model.card().name, " has ", logits,
        " class logits and the dataset ", num_classes,
        " classes: its labels do not name the logits"));
  }
  if (per_class < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("per_class must be >= 1, got ", per_class));
  }
  FEATVIZ_RETURN_IF_ERROR(CheckLabels(labels, images.size(0), num_classes));
  at::Tensor scores;
  try {
    const at::Tensor cpu_labels = labels.to(at::kCPU, at::kLong);
    for (int64_t c = 0; c < num_classes; ++c) {
      at::Tensor rows = (cpu_labels == c).nonzero().flatten();
      if (rows.size(0) > per_class) rows = rows.narrow(0, 0, per_class);
      if (rows.size(0) == 0) continue;
      FEATVIZ_ASSIGN_OR_RETURN(
          Attribution attribution,
          Attribute(model, Logit(c), layer, images.index_select(0, rows),
                    /*gradcam=*/false));
      if (!scores.defined()) {
        scores = at::zeros({num_classes, attribution.scores.size(0)},
                           at::kFloat);
      }
      scores[c].copy_(attribution.scores.to(at::kCPU, at::kFloat));
    }
  } catch (const std::exception& e) {
    return TorchError(e, absl::StrCat("class attribution on model ",
                                      model.card().name));
  }
  if (!scores.defined()) {
    return absl::InvalidArgumentError("the dataset has no images");
  }
  return scores;
}

std::string UnitLabelText(const std::string& class_name, double fraction,
                          int64_t top_n, float max_value) {
  return absl::StrFormat("%s %ss: %d %% of its top %d",
                         max_value > 0 ? "fires on" : "never fires; closest on",
                         class_name,
                         static_cast<int>(std::lround(100 * fraction)), top_n);
}

}  // namespace featviz::core
