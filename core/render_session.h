// One render job: its options, its result, and RenderSession, which
// validates a request, draws the job's start (JobState: variables, the
// transforms of every step, the trace) and measures its result. Stepping
// it is the stepper's (core/batch.h, core/step_graph.h); Render()
// (core/render.h) runs one job alone.
#ifndef FEATVIZ_CORE_RENDER_SESSION_H_
#define FEATVIZ_CORE_RENDER_SESSION_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "absl/status/statusor.h"
#include "core/job_state.h"
#include "core/model.h"
#include "core/objective.h"
#include "core/param.h"
#include "core/transform.h"

namespace featviz::core {

struct RenderOptions {
  // Batch, kind and size of the images; a size of 0 takes the model's.
  ParamOptions param;
  // Transforms before each forward pass; unset means DefaultTransformsFor
  // the model's kind and the image size, an empty list means none.
  std::optional<TransformList> transforms;
  double lr = 0.05;
  int64_t steps = 256;
  // Seeds the initial images (drawn on the CPU, the same on every device)
  // and the transforms' generator (on the model's device).
  uint64_t seed = 0;
  // Progress events every this many steps (and after the last); 0: none.
  int64_t progress_every = 0;
  // Whether progress events carry the current images.
  bool progress_images = false;
  // The reference images of the objective's inversion, inversion_l2 and
  // caricature terms, by the reference's text (ReferenceImage::ToString():
  // "dataset(mnist, 17)", "reference(0)"): [C, H, W] or [1, C, H, W] in
  // [0, 1] at the model's input size (C = the model's channels, or 1 for a
  // three-channel model). Each is put through the model once, when the
  // session is created, untransformed.
  std::map<std::string, at::Tensor> references;
  // Feature accentuation: the seed image the pictures start from, [C, H, W]
  // (or [1, C, H, W]) of the stimuli's shape in [0, 1]. When defined,
  // Finish() fills RenderResult::accentuation (one more forward pass, of
  // the seed); undefined, nothing is measured.
  at::Tensor accentuation_seed;
};

struct ProgressEvent {
  int64_t step = 0;            // Steps done, 1..steps.
  std::vector<double> values;  // Value of each term at that step.
  at::Tensor images;           // [B, C, H, W] on the CPU, when asked for.
};

// Called with each progress event; returning false cancels the render.
using ProgressCallback = std::function<bool(const ProgressEvent&)>;

struct LayerStats {
  std::string layer;
  at::Tensor mean;  // [B, C] spatial mean of each channel (or the neuron).
  at::Tensor max;   // [B, C] spatial max.
};

// What feature accentuation did to one image of the batch.
struct AccentuationOutcome {
  // The objective's unit (UnitTermIndex) on the seed image and on the
  // final picture; both 0 when the objective has no unit.
  double seed_value = 0;
  double value = 0;
  // Root mean square of (picture - seed) over the image's pixels.
  double pixel_distance = 0;
};

struct RenderResult {
  std::string objective;           // Canonical text.
  std::vector<std::string> terms;  // Each term's text, unweighted.
  std::vector<double> weights;
  at::Tensor images;               // [B, C, H, W] float32 CPU in [0, 1].
  at::Tensor trace;                // [steps, T] term values while optimising.
  // Measured on the final images without transforms:
  std::vector<double> final_values;  // Each term.
  double final_total = 0;            // Weighted sum to maximise.
  at::Tensor logits;                 // [B, classes]
  at::Tensor probs;                  // [B, classes]
  std::vector<LayerStats> layer_stats;  // Each layer the objective names.
  uint64_t seed = 0;
  int64_t steps = 0;
  std::string transforms;  // Text form of the transforms used.
  // MaCo only (undefined otherwise): the transparency map, [B, C, H, W]
  // float32 CPU, the absolute gradient of the objective with respect to
  // each image (untransformed) summed over the steps: where the picture
  // mattered to the objective while it was optimised.
  at::Tensor transparency;
  // MaCo only: where the fixed magnitude came from (ParamOptions).
  std::string magnitude_source;
  // How the images were parameterised (ParamOptions::kind).
  ParamKind parameterization = ParamKind::kFft;
  // What the user should know about the result, one sentence each: a
  // prob(c) term whose softmax saturated (ProbSaturationWarnings).
  std::vector<std::string> warnings;
  // RenderOptions::accentuation_seed: one per image; empty otherwise.
  std::vector<AccentuationOutcome> accentuation;
};

// Above this probability a prob(c) term has saturated: its gradient,
// p(1 - p) times the logit's, has all but vanished, so the images stop
// changing (from a confident model, often a flat grey picture).
inline constexpr double kProbSaturated = 0.999;

// One warning per prob term of `objective` whose class has a probability
// above kProbSaturated in `probs` ([B, classes], CPU float) on an image the
// term reads, suggesting logit(c) (whose gradient does not vanish; for a
// log_probs model, a unit of the layer before the log_softmax).
std::vector<std::string> ProbSaturationWarnings(const Objective& objective,
                                                const at::Tensor& probs,
                                                bool log_probs);

class RenderSession {
 public:
  // Validates the objective against the model and the options (steps >= 1,
  // lr > 0, batch >= 1, a well-formed init image, a reference image of the
  // model's input shape for every reference term: InvalidArgument naming
  // it), fills sizes from the model card, computes the reference terms'
  // activations, and draws the initial images.
  static absl::StatusOr<std::unique_ptr<RenderSession>> Create(
      const Model& model, Objective objective, RenderOptions options);

  RenderSession(const RenderSession&) = delete;
  RenderSession& operator=(const RenderSession&) = delete;

  int64_t batch() const { return state_.batch; }
  int64_t steps_done() const { return state_.step; }
  bool done() const { return state_.done(); }
  const Objective& objective() const { return state_.objective; }
  const RenderOptions& options() const { return options_; }

  // The job's per-step state, which the stepper advances.
  JobState& state() { return state_; }
  const JobState& state() const { return state_; }

  // The step in pieces, for timing them apart (the benchmarks): the job
  // alone as a pack of one, as StepTogether steps it. Not in CUDA-graph
  // mode (it is left).
  // The transformed images for this step's forward pass, at the model's
  // input size, differentiable w.r.t. the job's variable.
  at::Tensor PrepareInput();
  // The loss to minimise (minus the objective) from this session's rows of
  // the taps. Records the step's term values in the trace.
  absl::StatusOr<at::Tensor> Loss(const Taps& taps);
  // After backward(): one Adam update of the job's rows; advances the step.
  void Update();
  // Progress event for the current step (term values of the last step).
  ProgressEvent Progress(bool with_images) const;
  // Final images and statistics, measured without transforms.
  absl::StatusOr<RenderResult> Finish();

 private:
  RenderSession(const Model& model, RenderOptions options);
  // RenderResult::accentuation from the final images and their taps (which
  // hold the objective's layers); one more forward pass, of the seed.
  absl::StatusOr<std::vector<AccentuationOutcome>> MeasureAccentuation(
      const Taps& taps, const at::Tensor& images);

  const Model& model_;
  RenderOptions options_;
  TransformList transforms_;
  std::vector<std::string> layers_;
  at::Generator generator_;  // On the model's device, seeded per job.
  JobState state_;
};

}  // namespace featviz::core

#endif  // FEATVIZ_CORE_RENDER_SESSION_H_
