// The render loop: optimise a batch of images so that a model maximises an
// objective. A RenderSession is one job's state (parameterisation, random
// stream, optimiser, trace) and exposes the step in pieces, so that a worker
// can stack several sessions' inputs into one forward/backward pass; Render()
// runs one session alone.
#ifndef FEATVIZ_CORE_RENDER_H_
#define FEATVIZ_CORE_RENDER_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "absl/status/statusor.h"
#include "core/adam.h"
#include "core/device.h"
#include "core/model.h"
#include "core/objective.h"
#include "core/objective_eval.h"
#include "core/param.h"
#include "core/param_pack.h"
#include "core/transform.h"

namespace featviz::core {

class StepCache;  // core/batch.h

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
};

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

  int64_t batch() const { return options_.param.batch; }
  int64_t steps_done() const { return step_; }
  bool done() const { return step_ >= options_.steps; }
  const Objective& objective() const { return objective_; }
  const RenderOptions& options() const { return options_; }

  // The transformed images for this step's forward pass, at the model's
  // input size, differentiable w.r.t. this session's parameters.
  at::Tensor PrepareInput();
  // The loss to minimise (minus the objective) from this session's rows of
  // the taps. Records the step's term values in the trace.
  absl::StatusOr<at::Tensor> Loss(const Taps& taps);
  // After backward(): one optimiser update (by its pack when in one, which
  // StepTogether updates first); advances the step.
  void Update();
  // Progress event for the current step (term values of the last Loss()).
  ProgressEvent Progress(bool with_images) const;
  // Final images and statistics, measured without transforms.
  absl::StatusOr<RenderResult> Finish();

 private:
  RenderSession(const Model& model, Objective objective, RenderOptions options);
  // Steps many sessions at once, reaching into their images and schedules.
  friend absl::Status StepTogether(const Model& model,
                                   const std::vector<RenderSession*>& sessions,
                                   const StepOptions& options,
                                   StepCache* cache);

  // This step's transform matrices, [batch, 2, 3] on the device (one draw
  // shared by the batch); undefined when the transforms are the identity.
  at::Tensor StepMatrices() const;
  // Forgets the gradients of a step that failed half-way, so that a retry
  // does not add to them.
  void ClearGradients();
  // The term values of the last step, [T] on the device (undefined before
  // the first).
  at::Tensor LastTerms() const;
  // Copies the steps recorded in shared_trace_ into trace_ (one copy) and
  // forgets it; called before trace_ is read or written directly.
  void FlushSharedTrace();

  // CUDA-graph mode (BatchStepper): everything that changes from step to
  // step is read from fixed device buffers, which LoadStaticStep() fills
  // before the (captured) step, and CommitStaticStep() books after it:
  // the transform matrix, the optimiser's step number, the term values.
  friend class BatchStepper;
  // Stepping with others: the sessions' variables and moments are rows of a
  // ParamPack, which runs their optimiser.
  friend class ParamPack;
  // Takes its variable and optimiser state back from its pack, if in one.
  void LeavePack();
  void EnterStaticMode();
  void LeaveStaticMode();
  void LoadStaticStep();
  void CommitStaticStep();

  const Model& model_;
  Objective objective_;
  RenderOptions options_;
  TransformList transforms_;
  std::vector<std::string> layers_;
  ImageParamPtr param_;
  std::unique_ptr<Adam> adam_;  // When not in a pack.
  // The pack holding its variable's rows (param_'s variable is then a view
  // of them), and its index there; null when it optimises its own.
  std::shared_ptr<ParamPack> pack_;
  size_t pack_index_ = 0;
  at::Generator generator_;  // On the model's device, seeded per job.
  at::Tensor schedule_;      // [steps, 2, 3]: every step's transform.
  at::Tensor images_;      // Untransformed images of the current step.
  at::Tensor last_terms_;  // [T]
  at::Tensor trace_;       // [steps, T], filled on the session's device.
  // Steps whose term values StepTogether wrote for many sessions at once:
  // rows first_row, first_row + 1, ... of `buffer` ([rows, all terms] on the
  // device, shared by the sessions of one batch) hold steps first_step,
  // first_step + 1, ... up to step_ - 1; this session's terms are columns
  // [column, column + T). Undefined buffer: every step is in trace_.
  struct SharedTrace {
    at::Tensor buffer;
    int64_t first_step = 0;
    int64_t first_row = 0;
    int64_t column = 0;
  };
  SharedTrace shared_trace_;
  // Per term: the reference activations of a reference term (else undefined).
  ReferenceActivations references_;
  // MaCo: the running sum of |d loss / d images_| (else undefined).
  at::Tensor transparency_;
  int64_t step_ = 0;
  // Unique per session for the life of the process: what a captured graph
  // was made for (addresses of freed sessions are reused).
  const uint64_t id_;
  bool static_mode_ = false;
  at::Tensor static_theta_;  // [1, 2, 3]
  at::Tensor static_step_;   // 0-dim float: the step number, 1-based.
  at::Tensor static_terms_;  // [T]
};

// Renders alone: the whole loop of one session, one forward/backward per
// step for the whole batch. Errors: the objective's validation status,
// InvalidArgument for bad options, Cancelled when `progress` returns false
// or when `cancelled` (checked before every step) becomes true.
absl::StatusOr<RenderResult> Render(
    const Model& model, const Objective& objective,
    const RenderOptions& options, const ProgressCallback& progress = nullptr,
    const std::atomic<bool>* cancelled = nullptr,
    const StepOptions& step_options = {});

}  // namespace featviz::core

#endif  // FEATVIZ_CORE_RENDER_H_
