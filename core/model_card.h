// The model card: a small JSON file beside a model (`<stem>.card.json`) that
// says what the model expects and what its outputs mean.
//
//   {"name": "mnist_classifier", "version": "1",
//    "input": {"channels": 1, "height": 28, "width": 28,
//              "range": [0, 1], "mean": [0.1307], "std": [0.3081]},
//    "output": "logits", "classes": ["0", ..., "9"]}
//
// A model whose forward returns a tuple, list or dict of tensors (nested is
// fine) says which of them holds the class scores with "logits": an index
// (0), a key ("age"), or a path of both ([1, "age"]; written "1.age"); null
// says the model has no class output (a backbone). Left out, a lone tensor
// of shape [batch, N] is the logits; of several outputs, the one [batch, N]
// output whose N is the number of "classes" (when the card names classes;
// two or more such outputs are refused, asking for "logits"); otherwise none.
// "output" says what that tensor holds: "logits" (pre-softmax scores) or
// "log_probs" (a log_softmax output; logit(c) is then log p(c) as given).
// docs/models.md explains every field with examples.
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

  // Where the class scores are among forward()'s outputs (see above).
  enum class LogitsAt {
    kAuto,    // A lone [batch, N] output, or the one as wide as `classes`.
    kNone,    // "logits": null: no class output.
    kOutput,  // The output named `logits_output`.
  };
  LogitsAt logits_at = LogitsAt::kAuto;
  // The output's name: "0", "age", "1.age" (kOutput only).
  std::string logits_output;
  // "output": "log_probs": the class output is log_softmax'ed.
  bool log_probs = false;

  // "tokens": {"prefix": P, "grid": [GH, GW]}: in the model's token layers
  // ([batch, tokens, features]) the first P tokens are not patches (a class
  // token, register or distillation tokens) and the next GH * GW are the
  // patch grid in row-major order. Left out (token_prefix -1), each token
  // layer's grid is inferred from its token count and the input's aspect
  // (see Model's layer catalogue).
  int64_t token_prefix = -1;
  int64_t token_grid_h = 0;
  int64_t token_grid_w = 0;
  // "bands": {"names": [...], "composite": [r, g, b]}: for inputs of other
  // than 1 or 3 channels, each band's name and which bands are shown as the
  // red, green and blue of a picture (one index: a gray composite). Default:
  // bands named by index; the first three (or the first alone) composite.
  std::vector<std::string> band_names;
  std::vector<int64_t> composite;
  // The composite's band indices, defaulted as above.
  std::vector<int64_t> CompositeBands() const;

  // InvalidArgument naming the field for malformed JSON, wrong types,
  // non-positive sizes, mean/std of the wrong length, std <= 0, or a
  // "logits" that is not an index, a key, a path or null.
  static absl::StatusOr<ModelCard> Parse(absl::string_view json);
  static absl::StatusOr<ModelCard> Load(const std::string& path);
  std::string ToJson() const;
};

}  // namespace featviz::core

#endif  // FEATVIZ_CORE_MODEL_CARD_H_
