// A TorchScript model loaded for feature visualisation: its card, its layer
// catalogue, and one forward pass that returns the activations of any set of
// submodules together with logits and probabilities.
//
// Layers are tapped without hooks and without changing the user's file: the
// forward graph is copied, the calls of the modules on the way to each
// requested path are inlined, and the requested submodules' outputs become
// extra graph outputs. This works for scripted and traced models, nested
// containers, residual blocks and functional ops in forward. A submodule that
// forward() calls only inside control flow (if/loop) cannot be tapped.
#ifndef FEATVIZ_CORE_MODEL_H_
#define FEATVIZ_CORE_MODEL_H_

#include <torch/script.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "core/layer_info.h"
#include "core/model_card.h"

namespace featviz::core {

// How the tapped forward computes the model's linear layers (aten::linear,
// nn.Linear). Process-wide; tap graphs built after a change use the new mode.
// Every mode but kPlain also routes the model's convolutions through
// featviz::invariant_conv (core/invariant_conv.h), which keeps a float32 CPU
// convolution on one backend whatever the batch size.
enum class LinearMode {
  // GEMMs over fixed blocks of kLinearBlockRows rows (the batch
  // zero-padded to a multiple): a row's result has the same bits whatever
  // else shares the batch, so a job renders bitwise the same alone and
  // batched. Costs the padding rows (up to kLinearBlockRows - 1 per layer).
  kBlocked,
  // One [1, K] x [K, N] product per row: also invariant, and the slowest
  // (every row reads the whole weight; the way featviz did it first).
  kRowwise,
  // The module's own addmm: the fastest, but a row's low bits depend on how
  // many rows share the batch (results batched differ from results alone
  // by float rounding, see docs/performance.md).
  kPlain,
  // Default. On the CPU: featviz::invariant_linear (core/invariant_linear.h),
  // one fixed-order sum per output in float32 (bf16 jobs' inputs are cast
  // up), invariant like kBlocked without its padding (a job alone pays for
  // one row, not eight). On CUDA: kBlocked.
  kInvariant,
};
inline constexpr int64_t kLinearBlockRows = 8;

// The memory layout of a CPU model's 4-D weights and input images, chosen
// when a Model is created (process-wide, like LinearMode). Channels-last
// (the default) is oneDNN's own layout: measured 1.0-1.16x contiguous in
// float32 and 1.05-1.54x in bf16 on an MNIST CNN and ResNet-18, 0.95-0.99x
// on the bundled classifier's small 5x5 layers (docs/performance.md,
// "Channels-last"). CUDA models keep LibTorch's contiguous (NCHW) layout.
enum class ConvLayout { kContiguous, kChannelsLast };
void SetConvLayout(ConvLayout layout);
ConvLayout GetConvLayout();
const char* ConvLayoutName(ConvLayout layout);
// "channels_last" or "contiguous"; InvalidArgument otherwise.
absl::StatusOr<ConvLayout> ParseConvLayout(absl::string_view name);
void SetLinearMode(LinearMode mode);
LinearMode GetLinearMode();
const char* LinearModeName(LinearMode mode);
// "invariant", "blocked", "rowwise" or "plain"; InvalidArgument otherwise.
absl::StatusOr<LinearMode> ParseLinearMode(absl::string_view name);

// The result of one forward pass with taps.
struct Taps {
  // Requested layer path -> activation, batch first.
  std::map<std::string, at::Tensor> activations;
  // Every batch-first tensor forward() returns, by output name (OutputInfo).
  std::map<std::string, at::Tensor> outputs;
  // [B, classes]: the card's class output as the model returns it (for a
  // "log_probs" card, log-probabilities); [B, 0] for a model without one.
  at::Tensor logits;
  // [B, classes]: softmax(logits), or exp(logits) for "log_probs".
  at::Tensor probs;

  // Where the patch grid lies among the tokens of each token layer in
  // `activations` (LayerInfo's token_prefix, grid_h, grid_w).
  struct TokenLayout {
    int64_t prefix = 0;
    int64_t grid_h = 0;
    int64_t grid_w = 0;
  };
  std::map<std::string, TokenLayout> token_layouts;
  // Token layers' activations as the model computed them, [B, T, D]: what
  // gradients with respect to the layer are taken of (`activations` holds
  // a transposed view, on no path to the model's outputs).
  std::map<std::string, at::Tensor> token_activations;

  // Rows [start, start + length) of every tensor (for cross-job batches).
  Taps Slice(int64_t start, int64_t length) const;
};

class Model {
 public:
  // Loads a TorchScript file onto `device`, with the card `<stem>.card.json`
  // beside it when present (defaults otherwise). Errors: NotFound for a
  // missing file, InvalidArgument for a file that is not TorchScript, whose
  // code uses an operator the process's OperatorPolicy refuses (checked
  // before anything of the file runs; RefusedOperator names it; see
  // core/operator_policy.h), that does not run on the card's input shape,
  // or whose outputs do not match the card's "logits" and "classes".
  // forward() may return a tensor, or a tuple, list or dict of them
  // (nested); see ModelCard for the logits.
  static absl::StatusOr<std::unique_ptr<Model>> Load(
      const std::string& path, const c10::Device& device = c10::kCPU);
  // The same, with the name and version given by where the file lives (a
  // model repository's `<name>/<version>/model.pt`) instead of the card's.
  static absl::StatusOr<std::unique_ptr<Model>> Load(
      const std::string& path, const c10::Device& device,
      const std::string& name, const std::string& version);

  // Wraps an already loaded module (copied, put in eval mode, parameters
  // frozen). `card_found` says whether `card` came from a file; when false
  // and the card's input shape does not run, common input shapes are tried.
  // The module's code is checked against the OperatorPolicy before forward
  // runs (InvalidArgument as Load's).
  static absl::StatusOr<std::unique_ptr<Model>> Create(
      torch::jit::Module module, ModelCard card, const c10::Device& device,
      bool card_found = true);

  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  const ModelCard& card() const { return card_; }
  const c10::Device& device() const { return device_; }
  // Every submodule in named_modules() order; those that cannot be tapped
  // are listed with tappable false and the reason.
  const std::vector<LayerInfo>& layers() const { return layers_; }
  // Every batch-first tensor forward() returns, in output order.
  const std::vector<OutputInfo>& outputs() const { return outputs_; }
  // The output holding the class scores ("" when the model has none).
  const std::string& logits_output() const { return logits_output_; }
  // Layers plus class count, for objective validation.
  ModelShape shape() const;
  // NotFound naming the path and the available layers; InvalidArgument for
  // a layer that cannot be tapped, with the reason.
  absl::StatusOr<LayerInfo> FindLayer(const std::string& path) const;
  // True for a layer of LayerLayout::kTokens: Forward() returns its
  // activations transposed to [B, D, T] (channels first).
  bool IsTokenLayer(const std::string& path) const;
  // True when some tappable layer is a token layer (a Vision Transformer,
  // an MLP-mixer): such models get their own default transforms
  // (DefaultTransformsFor).
  bool IsTokenModel() const;
  // The catalogue entry of `path`; nullptr for an unknown path.
  const LayerInfo* Layer(const std::string& path) const;
  // Images with one channel for a three-channel model (gray stimuli) are
  // repeated into its channels; other images are returned as they are.
  at::Tensor ToModelChannels(const at::Tensor& images) const;
  // SHA-256 of the model file's bytes (hex); empty for Create()d models.
  const std::string& content_hash() const { return content_hash_; }
  // Bytes of the module's parameters and buffers on device().
  int64_t memory_bytes() const { return memory_bytes_; }

  // One forward pass of `images` ([B, C, H, W] in the card's [0, 1] pixel
  // space, on device(); C may be 1 for a three-channel model, see
  // ToModelChannels) with the card's normalisation applied first. Every
  // activation is channels first: a token layer's [B, T, D] output is
  // returned as [B, D, T] (a transposed view).
  // Gradients flow back to `images` when it requires them. Thread-safe.
  // With ForwardOutputs::kTapsOnly the pass stops at the deepest tapped
  // layer: the graph's outputs are dropped and TorchScript's dead-code pass
  // removes what only they needed, so `logits`, `probs` and `outputs` come
  // back empty ([B, 0] for the first two). An optimisation step whose terms
  // read only layers runs this way; the taps' values are the same bits.
  enum class ForwardOutputs { kAll, kTapsOnly };
  absl::StatusOr<Taps> Forward(
      const at::Tensor& images, const std::vector<std::string>& layers,
      ForwardOutputs outputs = ForwardOutputs::kAll) const;

 private:
  Model(torch::jit::Module module, ModelCard card, c10::Device device);

  // The forward graph with `layers` tapped (BuildTapGraph in model.cc),
  // built once per distinct set; `conditional` when a tapped call sits
  // inside control flow.
  struct TapFunctionEntry {
    std::shared_ptr<torch::jit::GraphFunction> fn;
    bool conditional = false;
  };
  absl::StatusOr<TapFunctionEntry> TapFunction(
      const std::vector<std::string>& layers, ForwardOutputs outputs) const;
  absl::Status BuildCatalogue();
  at::Tensor Normalise(const at::Tensor& images) const;

  torch::jit::Module module_;
  ModelCard card_;
  c10::Device device_;
  std::string content_hash_;
  int64_t memory_bytes_ = 0;
  // Weights and input images in channels-last (ConvLayout at Create).
  bool channels_last_ = false;
  std::vector<LayerInfo> layers_;
  std::vector<OutputInfo> outputs_;
  std::string logits_output_;
  std::string no_classes_reason_;
  at::Tensor norm_scale_;  // [1, C, 1, 1]
  at::Tensor norm_shift_;  // [1, C, 1, 1]

  mutable absl::Mutex mu_;
  mutable absl::flat_hash_map<std::string, TapFunctionEntry> tap_functions_
      ABSL_GUARDED_BY(mu_);
};

using ModelPtr = std::unique_ptr<Model>;

// A layer's activations (channels first, as Forward returns them) as maps
// over the image: a spatial layer's [B, C, H, W] as they are; a token
// layer's patch tokens as [B, D, grid_h, grid_w] (the tokens before the
// grid left out), or [B, D, 1, T] when it has no grid; a sequence's
// [B, C, L] as [B, C, 1, L]. Flat [B, N] activations are returned as they
// are; other ranks flattened to [B, C, 1, N].
at::Tensor ActivationMaps(const LayerInfo& layer, const at::Tensor& a);

}  // namespace featviz::core

#endif  // FEATVIZ_CORE_MODEL_H_
