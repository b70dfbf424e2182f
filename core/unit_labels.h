// Automatic unit labels on a labelled dataset: which classes a unit's top
// examples belong to, how selective it is for one of them, and which class
// logits it feeds most. docs/trust.md ("Unit labels") says what the numbers
// mean and where they mislead.
//
//   ClassSelectivity       per unit: class counts among its top_n dataset
//                          examples, the shares, and a selectivity index
//   ClassAttributionScores [classes, K] mean gradient x activation of each
//                          unit for each class's logit over images of the
//                          class
//   UnitLabelText          "fires on 7s: 82 % of its top 100"
#ifndef FEATVIZ_CORE_UNIT_LABELS_H_
#define FEATVIZ_CORE_UNIT_LABELS_H_

#include <cstdint>
#include <string>
#include <vector>

#include <torch/script.h>

#include "absl/status/statusor.h"
#include "core/model.h"

namespace featviz::core {

struct ClassCount {
  int64_t class_index = 0;
  int64_t count = 0;      // Top examples of the class.
  double fraction = 0;    // count / top_n.
};

struct UnitClassSelectivity {
  int64_t channel = 0;
  // Classes with at least one top example, largest share first (ties: the
  // lower class index first). The first is the unit's label.
  std::vector<ClassCount> classes;
  // (p - q) / (1 - q) for the first class, clamped to [0, 1]: p its share
  // of the top examples, q its share of the dataset. 0 when the unit's top
  // examples are no more of the class than the dataset is, 1 when they
  // all are.
  double selectivity = 0;
  // Top examples counted: top_n, or the dataset's size when smaller.
  int64_t top_n = 0;
  // The unit's highest value on the dataset. At most 0: the unit never
  // fires (past a ReLU), and its top examples are only the images that
  // come closest.
  float max_value = 0;

  // The share of `class_index` in the top examples (0 when none).
  double FractionOf(int64_t class_index) const;
};

// The class selectivity of `channels` (all when empty) from `values` ([N, K]
// from UnitValues) and `labels` ([N] int64 in [0, num_classes)), over each
// unit's `top_n` highest-valued images. InvalidArgument when the shapes
// disagree, a label is outside [0, num_classes) (-1: unlabelled) or top_n <
// 1; OutOfRange for a channel outside [0, K).
absl::StatusOr<std::vector<UnitClassSelectivity>> ClassSelectivity(
    const at::Tensor& values, const at::Tensor& labels, int64_t num_classes,
    const std::vector<int64_t>& channels, int64_t top_n);

// The selectivity index of a unit whose top examples have share `p` of a
// class that is `q` of the dataset: (p - q) / (1 - q), clamped to [0, 1]
// (1 when q is 1 and p too: a dataset of one class).
double SelectivityIndex(double p, double q);

// [num_classes, K]: row c is the mean over up to `per_class` images of class
// c (the first in dataset order) of each channel of `layer`'s gradient x
// activation for logit(c) (Attribute's scores). A class without images has
// a row of zeros. FailedPrecondition when the model has no class logits or
// they are not num_classes wide; NotFound/InvalidArgument as Attribute for
// the layer.
absl::StatusOr<at::Tensor> ClassAttributionScores(const Model& model,
                                                  const at::Tensor& images,
                                                  const at::Tensor& labels,
                                                  int64_t num_classes,
                                                  const std::string& layer,
                                                  int64_t per_class);

// "fires on 7s: 82 % of its top 100" for a unit whose largest share is
// `fraction` of `top_n` examples of class `class_name`; for a unit that
// never fires (`max_value` <= 0), "never fires; closest on 7s: 71 % of its
// top 100", so that the label does not claim what the unit does not do.
std::string UnitLabelText(const std::string& class_name, double fraction,
                          int64_t top_n, float max_value = 1);

}  // namespace featviz::core

#endif  // FEATVIZ_CORE_UNIT_LABELS_H_
