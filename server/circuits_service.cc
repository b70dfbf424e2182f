#include "server/circuits_service.h"

#include <algorithm>
#include <map>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/heatmap.h"
#include "core/image.h"
#include "core/objective.h"
#include "core/status_macros.h"
#include "core/torch_status.h"
#include "core/unit_labels.h"
#include "server/convert.h"
#include "server/dataset_upload.h"
#include "spdlog/spdlog.h"

namespace featviz::server {
namespace {

constexpr int64_t kDefaultTopK = 3;
constexpr int64_t kDefaultExamplesPerClass = 64;
constexpr int64_t kDefaultTopN = 9;
// LabelUnits: top examples a unit's class shares are counted over, and the
// classes listed by attribution.
constexpr int64_t kDefaultLabelTopN = 100;
constexpr int64_t kAttributionClasses = 3;

std::vector<int64_t> Int64s(const google::protobuf::RepeatedField<int64_t>& f) {
  return std::vector<int64_t>(f.begin(), f.end());
}

// The layer `path` of `model`, which must have channels; errors name the
// field "layer".
absl::StatusOr<core::LayerInfo> LayerWithChannels(const core::Model& model,
                                                  const std::string& path) {
  absl::StatusOr<core::LayerInfo> layer = model.FindLayer(path);
  if (!layer.ok()) return Prefixed("layer", layer.status());
  if (layer->shape.size() < 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("layer: ", path, " has no channels"));
  }
  return layer;
}

// Checks that every one of `channels` (the request's field "channels") is a
// channel of `layer`, found at `path`.
absl::Status CheckChannels(const core::LayerInfo& layer, const std::string& path,
                           const google::protobuf::RepeatedField<int64_t>& channels) {
  for (int i = 0; i < channels.size(); ++i) {
    if (channels.Get(i) < 0 || channels.Get(i) >= layer.channels) {
      return absl::OutOfRangeError(absl::StrCat(
          "channels[", i, "]: channel ", channels.Get(i),
          " out of range for layer ", path, " with ", layer.channels,
          " channels"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<CircuitsServicePtr> CircuitsService::Create(
    const ModelRegistry* models, DatasetRegistry* datasets, SubmitFn submit,
    const Limits& render_limits, const CircuitLimits& limits,
    const Authenticator* authenticator, UploadLedger* uploads,
    std::shared_ptr<UnitValuesCache> unit_values) {
  if (models == nullptr || datasets == nullptr || !submit) {
    return absl::InvalidArgumentError(
        "circuits: models, datasets and submit are needed");
  }
  if (limits.max_pending < 1 || limits.max_images < 1 || limits.max_top_n < 1 ||
      limits.cache_entries < 1 || limits.max_dataset_bytes < 1) {
    return absl::InvalidArgumentError("circuits: limits must be positive");
  }
  return CircuitsServicePtr(
      new CircuitsService(models, datasets, std::move(submit), render_limits,
                          limits, authenticator, uploads,
                          unit_values != nullptr
                              ? std::move(unit_values)
                              : std::make_shared<UnitValuesCache>(
                                    limits.cache_entries)));
}

CircuitsService::CircuitsService(const ModelRegistry* models,
                                 DatasetRegistry* datasets, SubmitFn submit,
                                 const Limits& render_limits,
                                 const CircuitLimits& limits,
                                 const Authenticator* authenticator,
                                 UploadLedger* uploads,
                                 std::shared_ptr<UnitValuesCache> unit_values)
    : models_(models),
      datasets_(datasets),
      submit_(std::move(submit)),
      auth_(authenticator != nullptr ? *authenticator : open_access_),
      render_limits_(render_limits),
      limits_(limits),
      uploads_(uploads != nullptr ? *uploads : own_uploads_),
      unit_values_(std::move(unit_values)),
      thread_([this] { AnalysisLoop(); }) {}

CircuitsService::~CircuitsService() {
  Shutdown();
  thread_.join();
}

void CircuitsService::RunDetached(std::function<void()> work) {
  bool here = false;
  {
    absl::MutexLock lock(&mu_);
    here = stopping_;
    if (!here) ++detached_;
  }
  if (here) {
    // Shutdown no longer waits for threads: the work runs on this one.
    work();
    return;
  }
  std::thread([this, work = std::move(work)] {
    work();
    absl::MutexLock lock(&mu_);
    --detached_;
  }).detach();
}

void CircuitsService::Shutdown() {
  std::deque<Task> dropped;
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    dropped.swap(pending_);
  }
  for (Task& task : dropped) {
    task.reactor->Finish(grpc::Status(
        grpc::StatusCode::UNAVAILABLE,
        "the server is shutting down; the analysis had not started"));
  }
  // Uploads and deletions in progress end on their own (they point back at
  // the service and finish their calls).
  absl::MutexLock lock(&mu_);
  mu_.Await(absl::Condition(
      +[](CircuitsService* s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(s->mu_) {
        return s->detached_ == 0;
      },
      this));
}

absl::Status CircuitsService::Authorize(grpc::CallbackServerContext* context,
                                        absl::string_view method) const {
  return auth_
      .Authenticate(context, absl::StrCat("/featviz.v1.Circuits/", method))
      .status();
}

grpc::ServerUnaryReactor* CircuitsService::Defer(
    grpc::CallbackServerContext* context, absl::string_view method,
    std::function<absl::Status()> work) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  if (absl::Status allowed = Authorize(context, method); !allowed.ok()) {
    reactor->Finish(ToGrpcStatus(allowed));
    return reactor;
  }
  absl::MutexLock lock(&mu_);
  if (stopping_) {
    reactor->Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE,
                                 "the server is shutting down"));
  } else if (static_cast<int64_t>(pending_.size()) >= limits_.max_pending) {
    reactor->Finish(grpc::Status(
        grpc::StatusCode::RESOURCE_EXHAUSTED,
        absl::StrCat(pending_.size(),
                     " analyses are already waiting (the limit); retry "
                     "later")));
  } else {
    pending_.push_back({reactor, std::move(work)});
  }
  return reactor;
}

void CircuitsService::AnalysisLoop() {
  while (true) {
    Task task;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](CircuitsService* s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(s->mu_) {
            return s->stopping_ || !s->pending_.empty();
          },
          this));
      if (pending_.empty()) return;
      task = std::move(pending_.front());
      pending_.pop_front();
    }
    // The analyses convert LibTorch's errors where they call it; this is
    // the boundary for anything that still escapes, on this thread.
    const absl::Status status =
        core::CatchAtBoundary("analysis failed", task.work);
    task.reactor->Finish(ToGrpcStatus(status));
  }
}

absl::StatusOr<SharedModel> CircuitsService::FindModel(
    const std::string& name) const {
  absl::StatusOr<SharedModel> model = models_->Resolve(name);
  if (!model.ok()) return Prefixed("model", model.status());
  return model;
}

grpc::ServerUnaryReactor* CircuitsService::ListDatasets(
    grpc::CallbackServerContext* context, const v1::ListDatasetsRequest*,
    v1::ListDatasetsResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  if (absl::Status allowed = Authorize(context, "ListDatasets");
      !allowed.ok()) {
    reactor->Finish(ToGrpcStatus(allowed));
    return reactor;
  }
  for (const core::DatasetPtr& dataset : datasets_->List()) {
    *response->add_datasets() = DatasetToProto(*dataset);
  }
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerReadReactor<v1::UploadDatasetRequest>*
CircuitsService::UploadDataset(grpc::CallbackServerContext* context,
                               v1::Dataset* response) {
  absl::StatusOr<Identity> caller = auth_.Authenticate(
      context, "/featviz.v1.Circuits/UploadDataset");
  absl::Status refused = caller.status();
  if (refused.ok()) {
    absl::MutexLock lock(&mu_);
    if (stopping_) refused = absl::UnavailableError("server is shutting down");
  }
  DatasetUploadContext upload;
  upload.datasets = datasets_;
  upload.ledger = &uploads_;
  upload.max_bytes = limits_.max_dataset_bytes;
  upload.run_detached = [this](std::function<void()> work) {
    RunDetached(std::move(work));
  };
  return StartDatasetUpload(std::move(upload),
                            caller.ok() ? *caller : Identity{},
                            context->peer(), response, refused);
}

grpc::ServerUnaryReactor* CircuitsService::DeleteDataset(
    grpc::CallbackServerContext* context,
    const v1::DeleteDatasetRequest* request,
    v1::DeleteDatasetResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::StatusOr<Identity> caller = auth_.Authenticate(
      context, "/featviz.v1.Circuits/DeleteDataset");
  if (!caller.ok()) {
    reactor->Finish(ToGrpcStatus(caller.status()));
    return reactor;
  }
  if (request->name().empty()) {
    reactor->Finish(ToGrpcStatus(absl::InvalidArgumentError(
        "DeleteDataset: name must name an uploaded dataset, got ''")));
    return reactor;
  }
  // Removing the files may take a while: not on gRPC's thread.
  RunDetached([this, reactor, request, response, caller = *caller,
               peer = context->peer()] {
    absl::StatusOr<core::DatasetPtr> removed =
        datasets_->Remove(request->name(), caller.name, caller.admin());
    absl::Status status = removed.status();
    if (removed.ok()) {
      *response->mutable_dataset() = DatasetToProto(**removed);
    } else {
      status = Prefixed("DeleteDataset", status);
    }
    spdlog::info("DeleteDataset client={} peer={} name={} outcome={}{}",
                 caller.name, peer, request->name(),
                 absl::StatusCodeToString(status.code()),
                 status.ok() ? ""
                             : absl::StrCat(" (", status.message(), ")"));
    reactor->Finish(ToGrpcStatus(status));
  });
  return reactor;
}

grpc::ServerUnaryReactor* CircuitsService::ComputeActivations(
    grpc::CallbackServerContext* context,
    const v1::ComputeActivationsRequest* request,
    v1::ComputeActivationsResponse* response) {
  return Defer(context, "ComputeActivations", [this, request, response] {
    return DoComputeActivations(*request, *response);
  });
}

grpc::ServerUnaryReactor* CircuitsService::Attribute(
    grpc::CallbackServerContext* context, const v1::AttributeRequest* request,
    v1::AttributeResponse* response) {
  return Defer(context, "Attribute", [this, request, response] {
    return DoAttribute(*request, *response);
  });
}

grpc::ServerUnaryReactor* CircuitsService::FindCircuit(
    grpc::CallbackServerContext* context,
    const v1::FindCircuitRequest* request,
    v1::FindCircuitResponse* response) {
  return Defer(context, "FindCircuit", [this, context, request, response] {
    return DoFindCircuit(context, *request, *response);
  });
}

grpc::ServerUnaryReactor* CircuitsService::TopExamples(
    grpc::CallbackServerContext* context,
    const v1::TopExamplesRequest* request,
    v1::TopExamplesResponse* response) {
  return Defer(context, "TopExamples", [this, request, response] {
    return DoTopExamples(*request, *response);
  });
}

grpc::ServerUnaryReactor* CircuitsService::LabelUnits(
    grpc::CallbackServerContext* context, const v1::LabelUnitsRequest* request,
    v1::LabelUnitsResponse* response) {
  return Defer(context, "LabelUnits", [this, request, response] {
    return DoLabelUnits(*request, *response);
  });
}

absl::Status CircuitsService::DoComputeActivations(
    const v1::ComputeActivationsRequest& request,
    v1::ComputeActivationsResponse& response) {
  // Held for the whole call: an unload waits for it.
  FEATVIZ_ASSIGN_OR_RETURN(const SharedModel held, FindModel(request.model()));
  const core::Model* model = held.get();
  if (request.layers_size() == 0) {
    return absl::InvalidArgumentError("layers: name at least one layer");
  }
  std::vector<std::pair<std::string, std::vector<int64_t>>> layers;
  for (int i = 0; i < request.layers_size(); ++i) {
    const v1::LayerChannels& l = request.layers(i);
    layers.emplace_back(l.layer(), Int64s(l.channels()));
  }
  FEATVIZ_ASSIGN_OR_RETURN(
      ResolvedImages input,
      ResolveImages(request.input(), *model, *datasets_, limits_.max_images,
                    "input"));
  absl::StatusOr<std::vector<core::LayerActivations>> maps =
      core::ComputeActivations(*model, input.images, layers);
  if (!maps.ok()) return Prefixed("layers", maps.status());
  SetModelIdentity(*model, response);
  for (const core::LayerActivations& layer : *maps) {
    FEATVIZ_ASSIGN_OR_RETURN(
        *response.add_layers(),
        ActivationsToProto(layer, input.images, request.overlay_png()));
  }
  for (int64_t i : input.indices) response.add_indices(i);
  for (int64_t l : input.labels) response.add_labels(l);
  return absl::OkStatus();
}

absl::Status CircuitsService::DoAttribute(const v1::AttributeRequest& request,
                                          v1::AttributeResponse& response) {
  // Held for the whole call: an unload waits for it.
  FEATVIZ_ASSIGN_OR_RETURN(const SharedModel held, FindModel(request.model()));
  const core::Model* model = held.get();
  absl::StatusOr<core::Objective> target =
      core::Objective::Parse(request.target());
  if (!target.ok()) return Prefixed("target", target.status());
  absl::StatusOr<core::LayerInfo> layer = model->FindLayer(request.layer());
  if (!layer.ok()) return Prefixed("layer", layer.status());
  FEATVIZ_ASSIGN_OR_RETURN(
      ResolvedImages input,
      ResolveImages(request.input(), *model, *datasets_, limits_.max_images,
                    "input"));
  absl::StatusOr<core::Attribution> attribution =
      core::Attribute(*model, *target, request.layer(), input.images,
                      request.gradcam() || request.gradcam_png());
  if (!attribution.ok()) {
    // Errors about the target or the layer; say which.
    const bool about_layer =
        absl::StrContains(attribution.status().message(), "gradcam") ||
        absl::StrContains(attribution.status().message(), "has no channels");
    return Prefixed(about_layer ? "layer" : "target", attribution.status());
  }
  FEATVIZ_ASSIGN_OR_RETURN(
      response, AttributionToProto(*attribution, input.images,
                                   request.gradcam_png()));
  SetModelIdentity(*model, response);
  response.set_target(target->ToString());
  for (int64_t i : input.indices) response.add_indices(i);
  return absl::OkStatus();
}

absl::Status CircuitsService::DoFindCircuit(
    grpc::CallbackServerContext* context,
    const v1::FindCircuitRequest& request, v1::FindCircuitResponse& response) {
  // Held for the whole call: an unload waits for it.
  FEATVIZ_ASSIGN_OR_RETURN(const SharedModel held, FindModel(request.model()));
  const core::Model* model = held.get();
  FEATVIZ_ASSIGN_OR_RETURN(const core::LayerInfo layer,
                           LayerWithChannels(*model, request.layer()));
  DatasetNeed need = NeedOf(*model);
  need.labelled = true;
  absl::StatusOr<core::DatasetPtr> dataset =
      datasets_->Pick(request.dataset(), need, "dataset");
  if (!dataset.ok()) return dataset.status();
  if (!(*dataset)->labelled()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "dataset: ", request.dataset(),
        " has no labels; circuits score channels on images of each class"));
  }
  FEATVIZ_RETURN_IF_ERROR(
      Prefixed("dataset", core::CheckImagesFit(*model, (*dataset)->images)));
  const int64_t classes = model->shape().num_classes;
  std::vector<int64_t> wanted = Int64s(request.classes());
  if (wanted.empty()) {
    for (int64_t c = 0; c < classes; ++c) wanted.push_back(c);
  }
  for (size_t i = 0; i < wanted.size(); ++i) {
    if (wanted[i] < 0 || wanted[i] >= classes) {
      return absl::OutOfRangeError(absl::StrCat(
          "classes[", i, "]: class ", wanted[i], " out of range for model ",
          model->card().name, " with ", classes, " classes"));
    }
  }
  const int64_t k = request.top_k() == 0 ? kDefaultTopK : request.top_k();
  if (k < 1 || k > layer.channels) {
    return absl::OutOfRangeError(absl::StrCat(
        "top_k must be in [1, ", layer.channels, "] for layer ",
        request.layer(), ", got ", request.top_k()));
  }
  const int64_t per_class = request.examples_per_class() == 0
                                ? kDefaultExamplesPerClass
                                : request.examples_per_class();
  if (per_class < 1 || per_class > limits_.max_images) {
    return absl::InvalidArgumentError(
        absl::StrCat("examples_per_class must be in [1, ", limits_.max_images,
                     "], got ", request.examples_per_class()));
  }

  // The renders' settings are checked before any analysis or job.
  v1::RenderRequest render = request.render();
  render.set_model(request.model());
  render.mutable_output()->set_png(true);
  if (!request.skip_renders()) {
    v1::RenderRequest probe = render;
    probe.set_objective_text(core::Logit(wanted.front()).ToString());
    absl::StatusOr<RenderPlan> plan = PlanRender(probe, *models_, render_limits_);
    if (!plan.ok()) return Prefixed("render", plan.status());
  }

  SetModelIdentity(*model, response);
  response.set_layer(request.layer());
  response.set_dataset((*dataset)->name);
  std::map<int64_t, std::string> detector_jobs;  // Shared between classes.
  auto submit = [&](const core::Objective& objective)
      -> absl::StatusOr<std::string> {
    v1::RenderRequest job = render;
    job.set_objective_text(objective.ToString());
    absl::StatusOr<v1::Job> queued = submit_(context, job);
    if (!queued.ok()) {
      return Prefixed(absl::StrCat("render of ", objective.ToString()),
                      queued.status());
    }
    return queued->id();
  };
  for (int64_t c : wanted) {
    const ResolvedImages images = ClassImages(**dataset, c, per_class);
    if (images.indices.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "dataset: ", (*dataset)->name, " has no images of class ", c));
    }
    absl::StatusOr<core::ClassDetectors> found = core::FindDetectors(
        *model, images.images, c, request.layer(), k);
    if (!found.ok()) return Prefixed("layer", found.status());

    v1::ClassCircuit* out = response.add_classes();
    out->set_class_index(c);
    out->set_class_name(c < static_cast<int64_t>(model->card().classes.size())
                            ? model->card().classes[c]
                            : absl::StrCat(c));
    out->set_images_scored(images.indices.size());
    out->set_example_index(images.indices[found->example]);
    const at::Tensor example = images.images[found->example];
    FEATVIZ_ASSIGN_OR_RETURN(*out->mutable_example_png(),
                             core::EncodePng(example));
    if (!request.skip_renders()) {
      FEATVIZ_ASSIGN_OR_RETURN(*out->mutable_class_job_id(),
                               submit(core::Logit(c)));
    }
    for (const core::Detector& d : found->detectors) {
      v1::Detector* detector = out->add_detectors();
      detector->set_channel(d.channel);
      detector->set_score(d.score);
      detector->set_example_activation(d.example_max);
      *detector->mutable_activation_map() = TensorToProto(d.example_map);
      if (d.example_map.dim() == 2) {
        // Scaled to the detector's top activation over the class's images
        // would hide weak examples; the example's own max shows its shape.
        FEATVIZ_ASSIGN_OR_RETURN(
            *detector->mutable_activation_png(),
            core::EncodePng(core::Overlay(example, d.example_map, 0)));
      }
      if (!request.skip_renders()) {
        auto it = detector_jobs.find(d.channel);
        if (it == detector_jobs.end()) {
          FEATVIZ_ASSIGN_OR_RETURN(
              std::string id,
              submit(core::Channel(request.layer(), d.channel)));
          it = detector_jobs.emplace(d.channel, id).first;
        }
        detector->set_job_id(it->second);
      }
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<at::Tensor> CircuitsService::CachedUnitValues(
    const core::Model& model, const core::DatasetPtr& dataset,
    const std::string& layer, bool& cached) {
  return unit_values_->Get(model, dataset, layer, cached);
}

absl::StatusOr<at::Tensor> CircuitsService::CachedClassAttribution(
    const core::Model& model, const core::DatasetPtr& dataset,
    const std::string& layer, bool& cached) {
  return unit_values_->Get(
      model, dataset, absl::StrCat(layer, "\nclass attribution"),
      [&] {
        return core::ClassAttributionScores(
            model, dataset->images, dataset->labels,
            static_cast<int64_t>(dataset->class_names.size()), layer,
            kDefaultExamplesPerClass);
      },
      cached);
}

absl::Status CircuitsService::DoTopExamples(
    const v1::TopExamplesRequest& request, v1::TopExamplesResponse& response) {
  // Held for the whole call: an unload waits for it.
  FEATVIZ_ASSIGN_OR_RETURN(const SharedModel held, FindModel(request.model()));
  const core::Model* model = held.get();
  FEATVIZ_ASSIGN_OR_RETURN(const core::LayerInfo layer,
                           LayerWithChannels(*model, request.layer()));
  FEATVIZ_RETURN_IF_ERROR(
      CheckChannels(layer, request.layer(), request.channels()));
  const int64_t n = request.top_n() == 0 ? kDefaultTopN : request.top_n();
  if (n < 1 || n > limits_.max_top_n) {
    return absl::InvalidArgumentError(absl::StrCat(
        "top_n must be in [1, ", limits_.max_top_n, "], got ", request.top_n()));
  }
  absl::StatusOr<core::DatasetPtr> dataset =
      datasets_->Pick(request.dataset(), NeedOf(*model), "dataset");
  if (!dataset.ok()) return dataset.status();
  const at::Tensor images = (*dataset)->images;
  FEATVIZ_RETURN_IF_ERROR(
      Prefixed("dataset", core::CheckImagesFit(*model, images)));
  bool cached = false;
  FEATVIZ_ASSIGN_OR_RETURN(
      at::Tensor values,
      CachedUnitValues(*model, *dataset, request.layer(), cached));
  FEATVIZ_ASSIGN_OR_RETURN(
      std::vector<core::TopUnitExamples> top,
      core::TopUnits(values, Int64s(request.channels()), n));
  SetModelIdentity(*model, response);
  response.set_layer(request.layer());
  response.set_dataset((*dataset)->name);
  response.set_cached(cached);
  const int64_t* labels = (*dataset)->labels.data_ptr<int64_t>();
  for (const core::TopUnitExamples& unit : top) {
    v1::UnitExamples* out = response.add_units();
    out->set_channel(unit.channel);
    for (size_t i = 0; i < unit.indices.size(); ++i) {
      out->add_indices(unit.indices[i]);
      out->add_values(unit.values[i]);
      out->add_labels(labels[unit.indices[i]]);
      if (request.png()) {
        FEATVIZ_ASSIGN_OR_RETURN(*out->add_png(),
                                 core::EncodePng(images[unit.indices[i]]));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status CircuitsService::DoLabelUnits(const v1::LabelUnitsRequest& request,
                                           v1::LabelUnitsResponse& response) {
  // Held for the whole call: an unload waits for it.
  FEATVIZ_ASSIGN_OR_RETURN(const SharedModel held, FindModel(request.model()));
  const core::Model* model = held.get();
  FEATVIZ_ASSIGN_OR_RETURN(const core::LayerInfo layer,
                           LayerWithChannels(*model, request.layer()));
  FEATVIZ_RETURN_IF_ERROR(
      CheckChannels(layer, request.layer(), request.channels()));
  // A server whose --max_top_n is below 100 counts over its limit.
  const int64_t n = request.top_n() == 0
                        ? std::min(kDefaultLabelTopN, limits_.max_top_n)
                        : request.top_n();
  if (n < 1 || n > limits_.max_top_n) {
    return absl::InvalidArgumentError(absl::StrCat(
        "top_n must be in [1, ", limits_.max_top_n, "], got ", request.top_n()));
  }
  if (request.limit() < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "limit must be >= 0 (0: every unit), got ", request.limit()));
  }
  DatasetNeed need = NeedOf(*model);
  need.labelled = true;
  absl::StatusOr<core::DatasetPtr> dataset =
      datasets_->Pick(request.dataset(), need, "dataset");
  if (!dataset.ok()) return dataset.status();
  if (!(*dataset)->labelled()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "dataset: ", (*dataset)->name,
        " has no labels; unit labels count the classes of each unit's top "
        "examples"));
  }
  FEATVIZ_RETURN_IF_ERROR(
      Prefixed("dataset", core::CheckImagesFit(*model, (*dataset)->images)));
  const std::vector<std::string>& names = (*dataset)->class_names;
  const int64_t classes = static_cast<int64_t>(names.size());
  if (request.has_label() &&
      (request.label() < 0 || request.label() >= classes)) {
    return absl::OutOfRangeError(absl::StrCat(
        "label: class ", request.label(), " out of range for dataset ",
        (*dataset)->name, " with ", classes, " classes"));
  }

  bool values_cached = false;
  FEATVIZ_ASSIGN_OR_RETURN(
      at::Tensor values,
      CachedUnitValues(*model, *dataset, request.layer(), values_cached));
  absl::StatusOr<std::vector<core::UnitClassSelectivity>> units =
      core::ClassSelectivity(values, (*dataset)->labels, classes,
                             Int64s(request.channels()), n);
  if (!units.ok()) return Prefixed("dataset", units.status());
  // Attribution needs logits that the dataset's labels name; without them
  // the units are labelled by their top examples alone.
  at::Tensor attribution;
  bool attribution_cached = true;
  if (model->shape().num_classes == classes) {
    FEATVIZ_ASSIGN_OR_RETURN(
        attribution, CachedClassAttribution(*model, *dataset, request.layer(),
                                            attribution_cached));
  }

  if (request.has_label()) {
    const int64_t wanted = request.label();
    // Units with none of the class among their top examples are not
    // selective for it at all.
    units->erase(std::remove_if(units->begin(), units->end(),
                                [&](const core::UnitClassSelectivity& u) {
                                  return u.FractionOf(wanted) == 0;
                                }),
                 units->end());
    std::stable_sort(units->begin(), units->end(),
                     [&](const core::UnitClassSelectivity& a,
                         const core::UnitClassSelectivity& b) {
                       return a.FractionOf(wanted) > b.FractionOf(wanted);
                     });
    if (request.limit() > 0 &&
        static_cast<int64_t>(units->size()) > request.limit()) {
      units->resize(request.limit());
    }
  }

  SetModelIdentity(*model, response);
  response.set_layer(request.layer());
  response.set_dataset((*dataset)->name);
  response.set_top_n(std::min<int64_t>(n, values.size(0)));
  response.set_cached(values_cached && attribution_cached);
  for (const core::UnitClassSelectivity& unit : *units) {
    v1::UnitLabel* out = response.add_units();
    out->set_channel(unit.channel);
    for (const core::ClassCount& c : unit.classes) {
      v1::ClassShare* share = out->add_classes();
      share->set_class_index(c.class_index);
      share->set_class_name(names[c.class_index]);
      share->set_count(c.count);
      share->set_fraction(c.fraction);
    }
    out->set_selectivity(unit.selectivity);
    const core::ClassCount& first = unit.classes.front();
    out->set_label(core::UnitLabelText(names[first.class_index], first.fraction,
                                       unit.top_n, unit.max_value));
    if (!attribution.defined()) continue;
    const at::Tensor scores = attribution.select(1, unit.channel);
    auto [top, index] =
        scores.topk(std::min<int64_t>(kAttributionClasses, classes));
    for (int64_t i = 0; i < top.size(0); ++i) {
      // A class the unit pushes down (or not at all: a unit that never
      // fires past its ReLU scores 0 everywhere) is not one it feeds.
      if (top[i].item<double>() <= 0) break;
      const int64_t c = index[i].item<int64_t>();
      v1::ClassAttribution* a = out->add_attribution();
      a->set_class_index(c);
      a->set_class_name(names[c]);
      a->set_score(top[i].item<double>());
    }
  }
  return absl::OkStatus();
}

}  // namespace featviz::server
