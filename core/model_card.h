// The model card: a small JSON file beside a model (`<stem>.card.json`) that
// says what the model expects and what its outputs mean.
//
//   {"name": "mnist_classifier", "version": "1",
//    "input": {"channels": 1, "height": 28, "width": 28,
//              "range": [0, 1], "mean": [0.1307], "std": [0.3081]},
//    "output": "logits", "classes": ["0", ..., "9"]}
//
// Every field is optional; the defaults are those of the declarations below.
#ifndef FEATVIZ_CORE_MODEL_CARD_H_
#define FEATVIZ_CORE_MODEL_CARD_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace featviz::core {

struct ModelCard {
  std::string name;     // Default: the file's stem.
  std::string version = "1";
  std::string description;
  int64_t channels = 3;
  int64_t height = 224;
  int64_t width = 224;
  // The model sees pixel * (range_max - range_min) + range_min, then
  // (value - mean[c]) / std[c]. Images inside featviz are always in [0, 1].
  double range_min = 0.0;
  double range_max = 1.0;
  std::vector<double> mean;  // One per channel; empty means 0.
  std::vector<double> std;   // One per channel; empty means 1.
  // Class names; when empty, the classes are named by index.
  std::vector<std::string> classes;

  // InvalidArgument naming the field for malformed JSON, wrong types,
  // non-positive sizes, mean/std of the wrong length, or std <= 0.
  static absl::StatusOr<ModelCard> Parse(absl::string_view json);
  static absl::StatusOr<ModelCard> Load(const std::string& path);
  std::string ToJson() const;
};

}  // namespace featviz::core

#endif  // FEATVIZ_CORE_MODEL_CARD_H_
