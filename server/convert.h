// The one place where protobuf meets core/: a RenderRequest becomes a
// validated RenderPlan (a hosted model, a core::Objective and
// core::RenderOptions), core results become RenderEvents, and absl::Status
// becomes grpc::Status. Nothing else in featviz reads or writes featviz.v1
// messages field by field.
//
// Status codes of request errors; every message names the field and the
// value, e.g. "optimizer.steps must be in [1, 10000], got 1000000000":
//   NOT_FOUND          an unknown model, or a layer the model does not have.
//   OUT_OF_RANGE       an index into the model or the batch that does not
//                      exist (channel, class, neuron x/y, batch index): the
//                      request is well formed, this model just has fewer.
//   INVALID_ARGUMENT   everything else a request can get wrong, including
//                      numbers outside the server's Limits (steps, size,
//                      batch): they are wrong whatever the server is doing,
//                      so retrying cannot help.
//   RESOURCE_EXHAUSTED is kept for capacity that frees up over time (the
//                      render queue is full; gRPC's own message size limit),
//                      which a client may retry later.
#ifndef FEATVIZ_SERVER_CONVERT_H_
#define FEATVIZ_SERVER_CONVERT_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include <ATen/ATen.h>
#include <grpcpp/support/status.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "core/model.h"
#include "core/objective.h"
#include "core/render.h"
#include "featviz/v1/featviz.pb.h"
#include "server/limits.h"

namespace featviz::server {

class ModelRegistry;

// A render request after validation, in core's terms.
struct RenderPlan {
  // The model the request names, as resolved when it was accepted. The
  // pointer is valid only while the caller of PlanRender holds `model_ref`
  // (the registry may unload the model later); a job keeps the identity
  // below and takes its device's copy from the registry when it starts.
  const core::Model* model = nullptr;
  std::shared_ptr<const core::Model> model_ref;
  std::string model_name;
  std::string model_version;
  std::string model_hash;  // SHA-256 hex of the model file.
  core::Objective objective;
  // Defaults filled in (steps, lr, sizes, progress_every); options.seed is
  // meaningful only when `seed` is set.
  core::RenderOptions options;
  // The request's seed; unset when the server is to pick one.
  std::optional<uint64_t> seed;
  // What the result carries (OutputSpec).
  bool tensor = false;
  bool png = false;
  bool preview_png = false;
  // Scheduling, as requested: the owner ("" means the caller's address), the
  // priority (checked to be in [-10, 10]) and the queue timeout (unset when
  // the request leaves it to the server).
  std::string owner;
  int priority = 0;
  std::optional<absl::Duration> queue_timeout;
};

// Longest model reference or owner name a request may give, in bytes.
inline constexpr size_t kMaxNameBytes = 256;
// Longest error message sent to a client; longer ones are cut.
inline constexpr size_t kMaxStatusMessageBytes = 2048;

// Bounds of RenderRequest.priority.
inline constexpr int kMinPriority = -10;
inline constexpr int kMaxPriority = 10;

// Validates `request` against `limits` and the hosted models and converts
// it. Errors use the codes listed at the top of this file; the model field
// also FAILED_PRECONDITION for a version being unloaded.
absl::StatusOr<RenderPlan> PlanRender(const v1::RenderRequest& request,
                                      const ModelRegistry& models,
                                      const Limits& limits);

// `request` in the one form that every equivalent request shares, for the
// result cache: the objective as canonical text, every default filled in from
// `plan` (PlanRender's result for it), and the scheduling fields (owner,
// priority, queue timeout) cleared. Serialize it deterministically to compare.
v1::RenderRequest CanonicalRequest(const v1::RenderRequest& request,
                                   const RenderPlan& plan);

// The structured objective in core's terms, checked for what the proto can
// express but core cannot (unset kinds, non-finite weights, x without y).
// Validation against a model is separate (core::Objective::Validate).
absl::StatusOr<core::Objective> ObjectiveFromProto(const v1::Objective& tree);

// The reference image of an inversion or caricature term; errors name
// `field`.
absl::StatusOr<core::ReferenceImage> ReferenceFromProto(
    const v1::ReferenceImage& reference, absl::string_view field);

v1::Parameterization ParameterizationToProto(core::ParamKind kind);

// MaCo's outputs of `result` into `out` (nothing for other
// parameterisations): the magnitude's source, the transparency map as a
// tensor (`tensor`) and as PNGs (`png`, see TransparencyPngs).
absl::Status AddMacoOutputs(const core::RenderResult& result, bool tensor,
                            bool png, v1::RenderResult& out);

// A float32 tensor from the wire: dtype, shape and byte length are checked;
// errors name `field`. The result is a CPU float tensor that owns its data.
absl::StatusOr<at::Tensor> TensorFromProto(const v1::Tensor& tensor,
                                           absl::string_view field);
// Any numeric tensor as float32 little-endian bytes in C order.
v1::Tensor TensorToProto(const at::Tensor& tensor);

// A hosted model as the API describes it.
v1::Model ModelToProto(const core::Model& model);

// One progress event; `preview_png` attaches the current images as a PNG
// grid (the event must carry images then).
absl::StatusOr<v1::RenderProgress> ProgressToProto(
    const core::ProgressEvent& event, int64_t total_steps, bool preview_png);

// The final result, with the outputs the plan asked for.
absl::StatusOr<v1::RenderResult> ResultToProto(const core::RenderResult& result,
                                               const RenderPlan& plan,
                                               double queue_seconds,
                                               double compute_seconds);

// `status` with `prefix` and ": " in front of its message, code kept.
absl::Status Prefixed(absl::string_view prefix, const absl::Status& status);

// The one mapping from absl::Status to grpc::Status: the codes are the same
// numbers, and the message is kept.
grpc::Status ToGrpcStatus(const absl::Status& status);

}  // namespace featviz::server

#endif  // FEATVIZ_SERVER_CONVERT_H_
