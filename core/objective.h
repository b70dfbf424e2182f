// Objectives: what a render maximises. An objective is a weighted sum of
// terms (a linear combination), built from the text syntax or in code, and
// prints back to the canonical text it parses from:
//
//   channel(conv2, 5) + 0.5 * prob(7) - 0.01 * tv()
//   conv2:5                          (Lucid's shorthand for channel(conv2, 5))
//   channel(conv2, 3, batch=1)       (only image 1 of the batch)
//   channel('0', 3) + output(age, 2) (a quoted layer path; a model output)
//
// Layer paths and output names are written bare when they look like
// `name.0.part` (a letter or '_' first, then letters, digits, '_' and
// single dots), or quoted with ' or " for any other text ('0', 'block-1.conv';
// a backslash escapes a quote or a backslash). In an argument, a bare path
// may also start with a digit (channel(0, 3), channel(1.conv, 2)), and
// `0:3` is channel('0', 3). Canonical text quotes what does not start with
// a letter or '_' and uses single quotes.
//
// Terms (each may take `batch=N` to target one image of the batch):
//   neuron(layer, c[, x, y])   one unit; the centre of the map when x, y unset
//   neuron(layer, d, t)        feature d of token t of a token layer
//   channel(layer, c)          spatial mean of channel c (for a token layer
//                              [B, T, D]: feature c averaged over tokens;
//                              tokens=cls or tokens=patches averages over the
//                              tokens before the patch grid, or the grid's)
//   layer(layer)               mean of squared activations (DeepDream)
//   logit(c), prob(c)          pre-softmax logit / post-softmax probability
//                              (only for a model with a class output; for a
//                              "log_probs" card, logit(c) is log p(c))
//   output(name, c)            spatial mean of channel (or unit) c of the
//                              model output `name` ("0", "age", "1.age")
//   direction(layer, [v...])   spatial mean of the dot product with v
//   diversity(layer)           negative mean cosine similarity of the images'
//                              Gram matrices across the batch
//   alignment(layer[, decay])  negative distance between consecutive images'
//                              activations (for interpolations)
//   tv(), l1([c]), l2([c])     image regularisers: total variation, mean |x-c|,
//                              root mean square of (x-c); c defaults to 0.5
//   l2(REF)                    root mean square of (x - the reference image's
//                              pixels): how far the picture is from a real
//                              image (feature accentuation keeps it close)
//   inversion(layer, REF)      feature inversion: cosine similarity of the
//                              image's activations at `layer` (all of them,
//                              flattened) with the reference image's
//   inversion_l2(layer, REF)   feature inversion, L2 form: minus the mean
//                              squared difference of the activations,
//                              divided by the reference's mean square (so
//                              0 is a perfect match, -1 an all-zero image)
//   caricature(layer, REF)     the dot product of the activations with the
//                              reference's, divided by the reference's
//                              squared norm (1 when they are equal; larger
//                              exaggerates what the layer sees in it)
// where REF is a reference image, computed through the model once per job
// (untransformed): dataset(name, i) is image i of a dataset the server
// hosts (dataset(i): its only dataset), reference(k) the k-th reference
// tensor sent with the request.
//
// Parsing checks syntax only; Validate() checks the objective against a
// model's layer catalogue.
#ifndef FEATVIZ_CORE_OBJECTIVE_H_
#define FEATVIZ_CORE_OBJECTIVE_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/layer_info.h"

namespace featviz::core {

enum class TermKind {
  kNeuron,
  kChannel,
  kLayer,
  kLogit,
  kProb,
  kDirection,
  kDiversity,
  kAlignment,
  kTotalVariation,
  kL1,
  kL2,
  kOutput,
  kInversion,
  kInversionL2,
  kCaricature,
};

// The function name of a term kind in the text syntax ("neuron", "tv", ...).
const char* TermKindName(TermKind kind);

// The reference image of an inversion, caricature or l2(REF) term.
struct ReferenceImage {
  enum class Source { kDataset, kTensor };
  Source source = Source::kTensor;
  // kDataset: the dataset's name; empty for the server's only dataset.
  std::string dataset;
  // kDataset: the image's index in the dataset; kTensor: the index of the
  // request's reference tensor.
  int64_t index = 0;

  bool operator==(const ReferenceImage& other) const {
    return source == other.source && dataset == other.dataset &&
           index == other.index;
  }
  // "dataset(mnist, 17)", "dataset(17)" or "reference(0)": the text syntax,
  // and the key of RenderOptions::references.
  std::string ToString() const;
};

// One term of an objective. Which fields matter depends on `kind`.
struct Term {
  TermKind kind = TermKind::kChannel;
  // neuron, channel, layer, direction, diversity, alignment.
  std::string layer;
  // neuron, channel, output: the channel; logit, prob: the class index.
  int64_t index = 0;
  // output: the output's name (OutputInfo::name).
  std::string output;
  // neuron: position in the map; the centre when unset. Both or neither.
  // On a token layer with a patch grid, (x, y) is the grid's patch.
  std::optional<int64_t> x;
  std::optional<int64_t> y;
  // neuron on a token layer: the token's index (the class token when the
  // layer has one and neither this nor x, y is set; else the centre patch).
  std::optional<int64_t> token;
  // channel, direction, layer on a token layer: the tokens averaged over.
  TokenSubset tokens = TokenSubset::kAll;
  // direction: one weight per channel of `layer`.
  std::vector<double> vector;
  // alignment: decay ratio (default 2); l1, l2: the constant (default 0.5).
  std::optional<double> param;
  // Only this image of the batch; every image when unset.
  std::optional<int64_t> batch;
  // inversion, inversion_l2, caricature, and l2 when pixel_reference is
  // set: the image to compare with.
  ReferenceImage reference;
  // l2 only: compare with `reference`'s pixels (l2(REF)) instead of the
  // constant `param`. A flag rather than an optional `reference` because
  // every other reference term always has one.
  bool pixel_reference = false;

  bool operator==(const Term& other) const;
  bool operator!=(const Term& other) const { return !(*this == other); }

  // Canonical text, e.g. "channel(conv2, 3, batch=1)".
  std::string ToString() const;

  // True for terms that read a layer's activations (not logit/prob/regularisers).
  bool UsesLayer() const;
  // True for inversion, inversion_l2 and caricature, and for l2(REF): they
  // need `reference` (its activations at `layer`, or for l2 its pixels).
  bool UsesReference() const;
  // True for one unit's value: neuron, channel, logit and prob (what
  // exemplars, path similarity and accentuation are about).
  bool IsUnit() const;
};

struct WeightedTerm {
  double weight = 1.0;
  Term term;
  bool operator==(const WeightedTerm& other) const {
    return weight == other.weight && term == other.term;
  }
};

// Bounds on every objective, from text or built in code, so that neither
// its size nor its numbers can make a render unbounded or overflow the
// float arithmetic of a step. Parse() and Validate() refuse anything beyond
// them with InvalidArgument naming the limit.
inline constexpr int64_t kMaxObjectiveTextBytes = 128 * 1024;
inline constexpr int64_t kMaxObjectiveTerms = 256;
// Largest magnitude of a weight, a direction value or a term's constant.
inline constexpr double kMaxObjectiveMagnitude = 1e6;

class Objective {
 public:
  Objective() = default;
  explicit Objective(Term term) { terms_.push_back({1.0, std::move(term)}); }

  // Parses the text syntax above. Errors are InvalidArgument and name the
  // 1-based column and what was expected there, e.g.
  // "column 12: expected ',' or ')' after channel index".
  // Weights must be finite; an empty text is an error, and so is one beyond
  // the bounds above (CheckBounds).
  static absl::StatusOr<Objective> Parse(absl::string_view text);

  // The model-independent bounds: at most kMaxObjectiveTerms terms, every
  // weight, direction value and constant finite and within
  // kMaxObjectiveMagnitude. Validate() checks them too.
  absl::Status CheckBounds() const;

  // Canonical text: terms in order, joined by " + " / " - ", weights other
  // than 1 written as "w * term" with the shortest text that reads back to
  // the same double. Parse(x.ToString()) == x for every objective.
  std::string ToString() const;

  // Checks every term against a model: unknown layer, channel or class out
  // of range, neuron position outside the map, direction length different
  // from the channel count, batch index >= batch_size. The message names the
  // offending value, e.g. "channel 70 out of range for layer conv2 with 64
  // channels". Returns NotFound for unknown layers, OutOfRange for indices,
  // InvalidArgument otherwise.
  absl::Status Validate(const ModelShape& model, int64_t batch_size) const;

  // Every distinct layer path the terms read, in first-use order.
  std::vector<std::string> Layers() const;
  // Whether a term reads the model's outputs (logit, prob, output): only
  // then does an optimisation step need the network past its tapped layers.
  bool ReadsOutputs() const;

  const std::vector<WeightedTerm>& terms() const { return terms_; }
  bool empty() const { return terms_.empty(); }

  Objective operator+(const Objective& other) const;
  Objective operator-(const Objective& other) const;
  Objective operator-() const;
  Objective operator*(double scale) const;
  bool operator==(const Objective& other) const { return terms_ == other.terms_; }

 private:
  std::vector<WeightedTerm> terms_;
};

inline Objective operator*(double scale, const Objective& objective) {
  return objective * scale;
}

// Convenience constructors for code (tests, tools).
Objective Neuron(std::string layer, int64_t channel);
Objective Neuron(std::string layer, int64_t channel, int64_t x, int64_t y);
Objective Channel(std::string layer, int64_t channel);
Objective LayerObjective(std::string layer);
Objective Logit(int64_t class_index);
Objective Prob(int64_t class_index);
Objective Output(std::string output, int64_t channel);
Objective Direction(std::string layer, std::vector<double> vector);
Objective Diversity(std::string layer);
Objective Alignment(std::string layer);
Objective TotalVariation();
Objective L1();
Objective L2();
// l2(REF): the root mean square distance to a reference image's pixels.
Objective L2(ReferenceImage reference);
Objective Inversion(std::string layer, ReferenceImage reference);
Objective InversionL2(std::string layer, ReferenceImage reference);
Objective Caricature(std::string layer, ReferenceImage reference);
// Convenience: the two sources of a reference image.
ReferenceImage DatasetReference(std::string dataset, int64_t index);
ReferenceImage TensorReference(int64_t index);
// The same objective restricted to one image of the batch (every term).
Objective ForBatch(Objective objective, int64_t batch_index);

// The objective's unit: the index of its first term of positive weight that
// measures a neuron, channel, logit or prob; nullopt when it has none. With
// `image`, only terms that read that image of the batch count (no `batch`,
// or that index): the unit a render's trust measures give each image. Feature
// accentuation reports the objective's unit, whatever image it reads.
std::optional<size_t> UnitTermIndex(const Objective& objective,
                                    std::optional<int64_t> image = std::nullopt);

}  // namespace featviz::core

#endif  // FEATVIZ_CORE_OBJECTIVE_H_
