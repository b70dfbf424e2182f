// The one place where protobuf meets core/ and the job engine: a
// RenderRequest becomes a validated RenderPlan (a hosted model, a
// core::Objective and core::RenderOptions); the engine's jobs, progress,
// results and figures (engine_types.h) become featviz.v1 messages; and
// absl::Status becomes grpc::Status. Nothing else in the Visualizer service
// reads or writes featviz.v1 messages field by field.
//
// A render is planned once: PlanRender reads every field of the request
// (reference tensors decoded), sets every default once (the parameterisation
// a request leaves open included, then the learning rate for it) and hands
// on a RenderPlan; RenderInputs fetches what the plan names (MaCo's prior,
// reference images) without reading the request; the result cache's key is
// CacheKey(plan) (server/engine/engine_types.h).
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
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

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
#include "proto/tensor_codec.h"
#include "server/engine/dataset_registry.h"
#include "server/engine/engine_types.h"
#include "server/limits.h"

namespace featviz::server {

class ModelRegistry;

// Longest model reference or owner name a request may give, in bytes.
inline constexpr size_t kMaxNameBytes = 256;
// Longest error message sent to a client; longer ones are cut.
inline constexpr size_t kMaxStatusMessageBytes = 2048;

// Most tensors RenderRequest.references may hold (each is checked when the
// request is planned, referenced or not).
inline constexpr int kMaxReferenceTensors = 1024;

// Bounds of RenderRequest.priority.
inline constexpr int kMinPriority = -10;
inline constexpr int kMaxPriority = 10;

// The hosted datasets whose images fit `need` (DatasetRegistry::Fitting).
using FittingDatasets =
    std::function<std::vector<core::DatasetPtr>(const DatasetNeed& need)>;

// Validates `request` against `limits` and the hosted models and converts
// it. Errors use the codes listed at the top of this file; the model field
// also FAILED_PRECONDITION for a version being unloaded. `datasets` (empty:
// none hosted) decides the default parameterisation of a request that
// leaves it open (docs/quality.md): MaCo from the one hosted dataset that
// fits a one-channel model's gray stimuli, at MaCo's learning rate when lr
// is unset; FFT otherwise.
absl::StatusOr<RenderPlan> PlanRender(const v1::RenderRequest& request,
                                      const ModelRegistry& models,
                                      const Limits& limits,
                                      const FittingDatasets& datasets = nullptr);

// The structured objective in core's terms, checked for what the proto can
// express but core cannot (unset kinds, non-finite weights, x without y).
// Validation against a model is separate (core::Objective::Validate).
absl::StatusOr<core::Objective> ObjectiveFromProto(const v1::Objective& tree);

// The reference image of an inversion or caricature term; errors name
// `field`.
absl::StatusOr<core::ReferenceImage> ReferenceFromProto(
    const v1::ReferenceImage& reference, absl::string_view field);

v1::Parameterization ParameterizationToProto(core::ParamKind kind);

// Adam's learning rate when a request leaves optimizer.lr 0, per
// parameterisation (measured, docs/quality.md): MaCo's variables are
// phases, angles that need larger steps than FFT's spectrum or pixels.
inline constexpr double kDefaultLr = 0.05;
inline constexpr double kDefaultMacoLr = 0.5;
double DefaultLr(core::ParamKind kind);

// Feature accentuation (RenderRequest.accentuate; docs/trust.md, "Feature
// accentuation"): the keep-close term's weight when the request leaves it
// 0, for the pixels (-w * l2(REF)) and for a layer (+w *
// inversion_l2(layer, REF)), measured on the bundled classifier; and the
// largest weight a request may ask for.
inline constexpr double kDefaultAccentuationPixelWeight = 4.0;
inline constexpr double kDefaultAccentuationLayerWeight = 4.0;
inline constexpr double kMaxAccentuationWeight = 1e6;
// An accentuation's optimizer when the request leaves steps and lr 0:
// fewer, smaller steps than a render from noise, because the RMS distance
// pulls back with the same strength however close the picture is, so a
// long run drifts away from the seed (docs/trust.md).
inline constexpr int64_t kDefaultAccentuationSteps = 64;
inline constexpr double kDefaultAccentuationLr = 0.02;
// The parameterisation an accentuation gets when the request leaves it
// open: one that starts exactly from the seed image (MaCo keeps a fixed
// spectrum magnitude, so it cannot).
inline constexpr core::ParamKind kAccentuationParam = core::ParamKind::kFft;

// Tensors in and out (proto/tensor_codec.h, shared with the CLI): a
// request's tensor is checked with its field named.
using wire::TensorFromProto;
using wire::TensorToProto;

// A hosted model as the API describes it.
v1::Model ModelToProto(const ModelSummary& model);
v1::Model ModelToProto(const core::Model& model);


// ---------------------------------------- the job engine's types (engine_types.h)

v1::JobState JobStateToProto(JobState state);
// A listing's state filter: unset for JOB_STATE_UNSPECIFIED; InvalidArgument
// naming the value for a number the enum does not have.
absl::StatusOr<std::optional<JobState>> JobStateFromProto(int state);

// A job as the API describes it (without its result).
v1::Job JobToProto(const JobSnapshot& job);
v1::RenderProgress ProgressToProto(const JobProgress& progress);
v1::RenderResult ResultToProto(const JobResult& result);
v1::Tensor ArrayToProto(const HostArray& array);

// ListJobs: the request as the engine's query (the state checked), and the
// page as the response.
absl::StatusOr<JobQuery> JobQueryFromProto(const v1::ListJobsRequest& request);
v1::ListJobsResponse JobPageToProto(const JobPage& page);
// ListModels, likewise.
ModelQuery ModelQueryFromProto(const v1::ListModelsRequest& request);
v1::ListModelsResponse ModelPageToProto(const ModelPage& page);

v1::ServerStats StatsToProto(const EngineStats& stats);


// The one mapping from absl::Status to grpc::Status: the codes are the same
// numbers, and the message is kept.
grpc::Status ToGrpcStatus(const absl::Status& status);

}  // namespace featviz::server

#endif  // FEATVIZ_SERVER_CONVERT_H_
