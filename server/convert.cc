#include "server/convert.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

#include "absl/base/config.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/bands.h"
#include "core/image.h"
#include "core/sha256.h"
#include "core/status_macros.h"
#include "core/torch_status.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"
#include "server/engine/model_registry.h"

#ifndef ABSL_IS_LITTLE_ENDIAN
#error "featviz.v1 tensors are little-endian; this host would need byte swaps"
#endif

namespace featviz::server {
namespace {

constexpr int64_t kDefaultSteps = 256;
// Adam's step is lr per pixel in the parameterisation's units; beyond 10 an
// image only saturates, and the bound keeps lr * bias correction a float.
constexpr double kMaxLr = 10.0;
// A month: longer than any server's default queue timeout, which a request
// may only shorten.
constexpr double kMaxQueueTimeoutSeconds = 30 * 24 * 3600.0;
constexpr double kDefaultDecayPower = 1.0;
constexpr double kMaxDecayPower = 4.0;  // core's bound too.
// Scale factors and rotation angles a custom transform may draw from.
constexpr double kMinScale = 0.1;
constexpr double kMaxScale = 10.0;
constexpr double kMaxRotateDegrees = 360.0;
constexpr int kMaxTransformValues = 1024;
constexpr int kMaxTransforms = 64;

using wire::ShapeText;

std::string ShapeText(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

absl::Status OutsideRange(absl::string_view field, int64_t low, int64_t high,
                          absl::string_view zero_means, int64_t got) {
  return absl::InvalidArgumentError(absl::StrCat(
      field, " must be in [", low, ", ", high, "]",
      zero_means.empty() ? "" : absl::StrCat(" (0 means ", zero_means, ")"),
      ", got ", got));
}

absl::StatusOr<core::TermKind> TermKindFromProto(int kind,
                                                 absl::string_view field) {
  switch (kind) {
    case v1::TERM_KIND_NEURON:
      return core::TermKind::kNeuron;
    case v1::TERM_KIND_CHANNEL:
      return core::TermKind::kChannel;
    case v1::TERM_KIND_LAYER:
      return core::TermKind::kLayer;
    case v1::TERM_KIND_LOGIT:
      return core::TermKind::kLogit;
    case v1::TERM_KIND_PROB:
      return core::TermKind::kProb;
    case v1::TERM_KIND_DIRECTION:
      return core::TermKind::kDirection;
    case v1::TERM_KIND_DIVERSITY:
      return core::TermKind::kDiversity;
    case v1::TERM_KIND_ALIGNMENT:
      return core::TermKind::kAlignment;
    case v1::TERM_KIND_TV:
      return core::TermKind::kTotalVariation;
    case v1::TERM_KIND_L1:
      return core::TermKind::kL1;
    case v1::TERM_KIND_L2:
      return core::TermKind::kL2;
    case v1::TERM_KIND_OUTPUT:
      return core::TermKind::kOutput;
    case v1::TERM_KIND_INVERSION:
      return core::TermKind::kInversion;
    case v1::TERM_KIND_INVERSION_L2:
      return core::TermKind::kInversionL2;
    case v1::TERM_KIND_CARICATURE:
      return core::TermKind::kCaricature;
    case v1::TERM_KIND_UNSPECIFIED:
      return absl::InvalidArgumentError(
          absl::StrCat(field, " must be set, got TERM_KIND_UNSPECIFIED"));
  }
  return absl::InvalidArgumentError(
      absl::StrCat(field, " has unknown value ", kind));
}

// The objective, either form, checked against the model and the batch.
absl::StatusOr<core::Objective> PlanObjective(const v1::RenderRequest& request,
                                              const ModelSummary& model,
                                              int64_t batch) {
  switch (request.objective_case()) {
    case v1::RenderRequest::kObjectiveText: {
      absl::StatusOr<core::Objective> objective =
          core::Objective::Parse(request.objective_text());
      if (!objective.ok()) {
        return Prefixed("objective_text", objective.status());
      }
      const absl::Status valid = objective->Validate(model.Shape(), batch);
      if (!valid.ok()) return Prefixed("objective_text", valid);
      return objective;
    }
    case v1::RenderRequest::kObjectiveTree: {
      FEATVIZ_ASSIGN_OR_RETURN(core::Objective objective,
                               ObjectiveFromProto(request.objective_tree()));
      // Term by term, so that the message says which one is wrong.
      const core::ModelShape shape = model.Shape();
      for (size_t i = 0; i < objective.terms().size(); ++i) {
        const absl::Status valid =
            core::Objective(objective.terms()[i].term).Validate(shape, batch);
        if (!valid.ok()) {
          return Prefixed(absl::StrCat("objective_tree.terms[", i, "].term"),
                          valid);
        }
      }
      return objective;
    }
    case v1::RenderRequest::OBJECTIVE_NOT_SET:
      break;
  }
  return absl::InvalidArgumentError(
      "objective: set objective_text or objective_tree; neither was given");
}

// Sizes of the images to optimise: the request's square side, or the
// model's input size.
struct ImageSize {
  int64_t height = 0;
  int64_t width = 0;
};

absl::StatusOr<at::Tensor> PlanInitImage(const v1::Tensor& tensor,
                                         int64_t channels, ImageSize size,
                                         int64_t batch) {
  constexpr absl::string_view kField = "image.init_image";
  FEATVIZ_ASSIGN_OR_RETURN(at::Tensor image, TensorFromProto(tensor, kField));
  const std::vector<int64_t> shape(image.sizes().begin(), image.sizes().end());
  const bool rank3 = shape.size() == 3 && shape[0] == channels &&
                     shape[1] == size.height && shape[2] == size.width;
  const bool rank4 = shape.size() == 4 &&
                     (shape[0] == 1 || shape[0] == batch) &&
                     shape[1] == channels && shape[2] == size.height &&
                     shape[3] == size.width;
  if (!rank3 && !rank4) {
    return absl::InvalidArgumentError(absl::StrCat(
        kField, ".shape must be [", channels, ", ", size.height, ", ",
        size.width, "] or [N, ", channels, ", ", size.height, ", ", size.width,
        "] with N 1 or the batch (", batch, "), got ", ShapeText(shape)));
  }
  const at::Tensor bad = image.isnan().logical_or(image < 0).logical_or(image > 1);
  if (bad.any().item<bool>()) {
    const int64_t at = bad.flatten().nonzero()[0][0].item<int64_t>();
    return absl::InvalidArgumentError(
        absl::StrCat(kField, ".data must hold values in [0, 1], found ",
                     image.flatten()[at].item<float>(), " at element ", at));
  }
  return image;
}

absl::StatusOr<core::TransformList> PlanTransforms(const v1::Transforms& spec,
                                                   ImageSize size,
                                                   const Limits& limits,
                                                   bool token_model) {
  switch (spec.preset()) {
    case v1::Transforms::PRESET_DEFAULT:
    case v1::Transforms::PRESET_NONE:
      if (spec.list_size() > 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            "transforms.list is only used with PRESET_CUSTOM, but preset is ",
            v1::Transforms::Preset_Name(spec.preset()), " and the list has ",
            spec.list_size(), " transforms"));
      }
      return spec.preset() == v1::Transforms::PRESET_NONE
                 ? core::TransformList{}
                 : core::DefaultTransformsFor(token_model, size.height,
                                              size.width);
    case v1::Transforms::PRESET_CUSTOM:
      break;
    default:
      return absl::InvalidArgumentError(absl::StrCat(
          "transforms.preset has unknown value ", spec.preset()));
  }
  if (spec.list_size() > kMaxTransforms) {
    return absl::InvalidArgumentError(
        absl::StrCat("transforms.list may hold at most ", kMaxTransforms,
                     " transforms, got ", spec.list_size()));
  }
  const int64_t side = std::min(size.height, size.width);
  core::TransformList list;
  for (int i = 0; i < spec.list_size(); ++i) {
    const v1::Transform& t = spec.list(i);
    const std::string field = absl::StrCat("transforms.list[", i, "]");
    core::Transform out;
    switch (t.kind()) {
      case v1::Transform::KIND_PAD:
        // Padding by more than the image is only a way to use memory.
        if (t.pixels() < 0 || t.pixels() > limits.max_image_side) {
          return OutsideRange(absl::StrCat(field, ".pixels (pad)"), 0,
                              limits.max_image_side, "", t.pixels());
        }
        out.kind = core::Transform::Kind::kPad;
        out.pixels = t.pixels();
        break;
      case v1::Transform::KIND_JITTER:
        if (t.pixels() < 0 || t.pixels() >= side) {
          return OutsideRange(absl::StrCat(field, ".pixels (jitter)"), 0,
                              side - 1, "", t.pixels());
        }
        out.kind = core::Transform::Kind::kJitter;
        out.pixels = t.pixels();
        break;
      case v1::Transform::KIND_SCALE:
      case v1::Transform::KIND_ROTATE: {
        const bool scale = t.kind() == v1::Transform::KIND_SCALE;
        const char* what = scale ? "scale" : "rotate";
        if (t.values_size() == 0 || t.values_size() > kMaxTransformValues) {
          return absl::InvalidArgumentError(absl::StrCat(
              field, ".values (", what, ") must hold 1 to ",
              kMaxTransformValues, " values, got ", t.values_size()));
        }
        for (int j = 0; j < t.values_size(); ++j) {
          const double v = t.values(j);
          const bool ok = scale ? (v >= kMinScale && v <= kMaxScale)
                                : std::abs(v) <= kMaxRotateDegrees;
          if (!ok) {
            return absl::InvalidArgumentError(absl::StrCat(
                field, ".values[", j, "] (", what, ") must be in [",
                scale ? kMinScale : -kMaxRotateDegrees, ", ",
                scale ? kMaxScale : kMaxRotateDegrees, "], got ", v));
          }
        }
        out.kind = scale ? core::Transform::Kind::kScale
                         : core::Transform::Kind::kRotate;
        out.values.assign(t.values().begin(), t.values().end());
        break;
      }
      case v1::Transform::KIND_UNSPECIFIED:
        return absl::InvalidArgumentError(
            absl::StrCat(field, ".kind must be set, got KIND_UNSPECIFIED"));
      default:
        return absl::InvalidArgumentError(
            absl::StrCat(field, ".kind has unknown value ", t.kind()));
    }
    list.push_back(std::move(out));
  }
  return list;
}

// Upper bound of the result message's size, so that a render whose result
// gRPC would refuse to send is refused before it runs.
int64_t ResultBytesBound(const RenderPlan& plan, int64_t channels) {
  const core::ParamOptions& p = plan.options.param;
  const int64_t pixels = p.batch * channels * p.height * p.width;
  int64_t bytes = 64 * 1024;  // Names, logits, statistics.
  if (plan.tensor) bytes += 4 * pixels;
  if (p.kind == core::ParamKind::kMaco) {
    // The transparency map: a tensor like the images', RGB PNGs.
    if (plan.tensor) bytes += 4 * pixels;
    if (plan.png) bytes += 3 * pixels * 9 / 8 + p.batch * (p.height + 1024);
  }
  // PNG stores 8-bit rows with a filter byte each; deflate never grows data
  // by more than a few bytes per 16 KiB block.
  if (plan.png) bytes += pixels + pixels / 8 + p.batch * (p.height + 1024);
  if (plan.png && plan.display.shows_bands()) {
    // One band sheet per image: an RGB grid of its bands, magnified to at
    // least 112 pixels wide, with padding and a label row; at worst stored
    // uncompressed.
    const int64_t scale = std::max<int64_t>(1, (112 + p.width - 1) / p.width);
    const int64_t sheet_w = 4 + channels * (p.width * scale + 4);
    const int64_t sheet_h = 4 + p.height * scale + 48 + 4;
    bytes += p.batch * (3 * sheet_w * sheet_h * 9 / 8 + sheet_h + 1024);
  }
  bytes += 4 * plan.options.steps *
           static_cast<int64_t>(plan.objective.terms().size());
  // Exemplars: a dataset image of the model's input size and an RGB overlay
  // of it each, at worst stored uncompressed; path similarity: a few
  // numbers per layer and image.
  const core::ModelCard& card = plan.model->card;
  const int64_t input = card.channels * card.height * card.width;
  bytes += plan.trust.exemplars *
           (4 * input * 9 / 8 + 2 * (card.height + 1024));
  if (plan.trust.path_similarity) {
    bytes += p.batch * (1024 + 64 * static_cast<int64_t>(
                                        plan.model->layers.size()));
  }
  if (plan.preview_png) {
    // Each progress event's preview is an RGB grid with padding; at worst
    // stored uncompressed.
    constexpr int64_t kCellPadding = 8;
    const int64_t preview = 3 * p.batch * (p.height + kCellPadding) *
                                (p.width + kCellPadding) * 9 / 8 +
                            64 * 1024;
    bytes = std::max(bytes, preview);
  }
  return bytes;
}

}  // namespace


grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  const int code = static_cast<int>(status.code());
  // absl and gRPC share the canonical codes 1..16.
  const grpc::StatusCode grpc_code =
      code >= 1 && code <= 16 ? static_cast<grpc::StatusCode>(code)
                              : grpc::StatusCode::UNKNOWN;
  // The message travels in a trailer, which clients cap (8 KiB by default):
  // a message quoting a huge value is cut, so that the code still arrives.
  absl::string_view message = status.message();
  if (message.size() > kMaxStatusMessageBytes) {
    return grpc::Status(
        grpc_code,
        absl::StrCat(message.substr(0, kMaxStatusMessageBytes), "... (",
                     message.size() - kMaxStatusMessageBytes, " bytes cut)"));
  }
  return grpc::Status(grpc_code, std::string(message));
}

absl::StatusOr<core::ReferenceImage> ReferenceFromProto(
    const v1::ReferenceImage& reference, absl::string_view field) {
  switch (reference.source_case()) {
    case v1::ReferenceImage::kDatasetImage: {
      const v1::DatasetImage& image = reference.dataset_image();
      if (image.index() < 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            field, ".dataset_image.index must be >= 0, got ", image.index()));
      }
      if (image.dataset().size() > kMaxNameBytes) {
        return absl::InvalidArgumentError(
            absl::StrCat(field, ".dataset_image.dataset must be at most ",
                         kMaxNameBytes, " bytes"));
      }
      return core::DatasetReference(image.dataset(), image.index());
    }
    case v1::ReferenceImage::kRequestIndex:
      if (reference.request_index() < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat(field, ".request_index must be >= 0, got ",
                         reference.request_index()));
      }
      return core::TensorReference(reference.request_index());
    case v1::ReferenceImage::SOURCE_NOT_SET:
      break;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      field, " must be set (dataset_image or request_index) for an "
             "inversion, inversion_l2, caricature or l2(REF) term"));
}

absl::StatusOr<core::Objective> ObjectiveFromProto(const v1::Objective& tree) {
  if (tree.terms_size() == 0) {
    return absl::InvalidArgumentError(
        "objective_tree.terms must hold at least one term, got none");
  }
  if (tree.terms_size() > core::kMaxObjectiveTerms) {
    return absl::InvalidArgumentError(
        absl::StrCat("objective_tree.terms holds ", tree.terms_size(),
                     " terms, more than the limit of ", core::kMaxObjectiveTerms));
  }
  core::Objective objective;
  for (int i = 0; i < tree.terms_size(); ++i) {
    const v1::WeightedTerm& weighted = tree.terms(i);
    const std::string field = absl::StrCat("objective_tree.terms[", i, "]");
    if (!std::isfinite(weighted.weight()) ||
        std::abs(weighted.weight()) > core::kMaxObjectiveMagnitude) {
      return absl::InvalidArgumentError(absl::StrCat(
          field, ".weight must be finite and at most ",
          core::kMaxObjectiveMagnitude, " in magnitude, got ",
          weighted.weight()));
    }
    const v1::Term& t = weighted.term();
    core::Term term;
    FEATVIZ_ASSIGN_OR_RETURN(
        term.kind, TermKindFromProto(t.kind(), absl::StrCat(field, ".term.kind")));
    term.layer = t.layer();
    term.output = t.output();
    term.index = t.index();
    if (t.has_x() != t.has_y()) {
      return absl::InvalidArgumentError(absl::StrCat(
          field, ".term sets only ", t.has_x() ? "x" : "y",
          "; set both x and y or neither"));
    }
    if (t.has_x()) {
      term.x = t.x();
      term.y = t.y();
    }
    if (t.has_token()) {
      if (t.has_x()) {
        return absl::InvalidArgumentError(absl::StrCat(
            field, ".term sets token ", t.token(),
            " and a position (x, y); set one"));
      }
      if (t.token() < 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            field, ".term.token must be >= 0, got ", t.token()));
      }
      term.token = t.token();
    }
    switch (t.tokens()) {
      case v1::TOKEN_SUBSET_ALL:
        term.tokens = core::TokenSubset::kAll;
        break;
      case v1::TOKEN_SUBSET_CLS:
        term.tokens = core::TokenSubset::kPrefix;
        break;
      case v1::TOKEN_SUBSET_PATCHES:
        term.tokens = core::TokenSubset::kPatches;
        break;
      default:
        return absl::InvalidArgumentError(absl::StrCat(
            field, ".term.tokens: unknown TokenSubset ", t.tokens()));
    }
    term.vector.assign(t.vector().begin(), t.vector().end());
    if (t.has_param()) term.param = t.param();
    if (t.has_batch()) term.batch = t.batch();
    // l2 compares with a reference image when one is given (l2(REF)).
    term.pixel_reference =
        term.kind == core::TermKind::kL2 && t.has_reference();
    if (term.UsesReference()) {
      FEATVIZ_ASSIGN_OR_RETURN(
          term.reference,
          ReferenceFromProto(t.reference(), absl::StrCat(field, ".term.reference")));
    }
    objective = objective + core::Objective(std::move(term)) * weighted.weight();
  }
  if (absl::Status bounds = objective.CheckBounds(); !bounds.ok()) {
    return Prefixed("objective_tree", bounds);
  }
  return objective;
}

namespace {

// The request's `precision`: empty takes the server's; TF32 is a
// process-wide switch of CUDA's (core::ConfigureProcessPrecision), on only
// when the server runs with --precision tf32, so "tf32" is refused elsewhere
// and "fp32" there (its matrix products would be TF32).
absl::StatusOr<core::Precision> RequestPrecision(const std::string& text,
                                                 const Limits& limits) {
  const core::Precision server = limits.step.precision;
  if (text.empty()) return server;
  if (text.size() > 16) {
    return absl::InvalidArgumentError(absl::StrCat(
        "precision must be fp32, tf32, bf16 or empty, got ", text.size(),
        " bytes"));
  }
  // "precision must be fp32, tf32 or bf16, got '...'": names the field.
  FEATVIZ_ASSIGN_OR_RETURN(const core::Precision precision,
                           core::ParsePrecision(text));
  const bool tf32_server = server == core::Precision::kTf32;
  if (precision == core::Precision::kTf32 && !tf32_server) {
    return absl::InvalidArgumentError(absl::StrCat(
        "precision is \"tf32\", but this server computes in ",
        core::PrecisionName(server),
        " (TF32 is a process-wide CUDA switch: featviz-server --precision "
        "tf32 turns it on for every job); ask for \"fp32\" or \"bf16\""));
  }
  if (precision == core::Precision::kFloat32 && tf32_server) {
    return absl::InvalidArgumentError(
        "precision is \"fp32\", but this server runs every CUDA matrix "
        "product in TF32 (featviz-server --precision tf32, a process-wide "
        "switch); ask for \"tf32\" or \"bf16\"");
  }
  return precision;
}

// The model the request names, from the registry's kept summaries.
absl::Status PlanModel(const v1::RenderRequest& request,
                       const ModelRegistry& models, RenderPlan& plan) {
  if (request.model().size() > kMaxNameBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("model must be at most ", kMaxNameBytes,
                     " bytes, got ", request.model().size()));
  }
  if (request.owner().size() > kMaxNameBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("owner must be at most ", kMaxNameBytes,
                     " bytes, got ", request.owner().size()));
  }
  if (request.model().empty()) {
    const std::vector<std::string> names = models.Names();
    return absl::InvalidArgumentError(
        absl::StrCat("model must name a hosted model; models are: ",
                     absl::StrJoin(names, ", ")));
  }
  // Validated against the kept summary: planning never loads a model (the
  // worker that runs the job does, when it is not in memory).
  FEATVIZ_ASSIGN_OR_RETURN(plan.model_ref, models.Summary(request.model()));
  plan.model = plan.model_ref.get();
  const core::ModelCard& card = plan.model->card;
  plan.model_name = card.name;
  plan.model_version = card.version;
  plan.model_hash = plan.model->content_hash;
  return absl::OkStatus();
}

// image: parameterisation, size, batch, colour, decay and start image, then
// the default parameterisation where the request leaves it open.
absl::Status PlanImage(const v1::ImageSpec& image, const Limits& limits,
                       const FittingDatasets& fitting_datasets,
                       RenderPlan& plan) {
  const core::ModelCard& card = plan.model->card;
  core::ParamOptions& param = plan.options.param;
  plan.maco_dataset = image.maco_dataset();
  switch (image.parameterization()) {
    case v1::PARAMETERIZATION_UNSPECIFIED:
    case v1::PARAMETERIZATION_FFT:
      param.kind = core::ParamKind::kFft;
      break;
    case v1::PARAMETERIZATION_PIXEL:
      param.kind = core::ParamKind::kPixel;
      break;
    case v1::PARAMETERIZATION_MACO:
      param.kind = core::ParamKind::kMaco;
      break;
    default:
      return absl::InvalidArgumentError(absl::StrCat(
          "image.parameterization has unknown value ", image.parameterization()));
  }
  if (image.size() < 0 || image.size() > limits.max_image_side) {
    return OutsideRange("image.size", 0, limits.max_image_side,
                        "the model's input size", image.size());
  }
  if (image.height() < 0 || image.height() > limits.max_image_side) {
    return OutsideRange("image.height", 0, limits.max_image_side,
                        "the model's input height", image.height());
  }
  if (image.width() < 0 || image.width() > limits.max_image_side) {
    return OutsideRange("image.width", 0, limits.max_image_side,
                        "the model's input width", image.width());
  }
  if (image.size() != 0 && (image.height() != 0 || image.width() != 0)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "image.size (", image.size(), ") and image.height/width (",
        image.height(), ", ", image.width(),
        ") are both set; set size for a square image or height and width"));
  }
  if (image.batch() < 0 || image.batch() > limits.max_batch) {
    return OutsideRange("image.batch", 0, limits.max_batch, "1", image.batch());
  }
  param.batch = image.batch() == 0 ? 1 : image.batch();
  switch (image.color()) {
    case v1::ImageSpec::COLOR_MODEL:
      param.channels = card.channels;
      break;
    case v1::ImageSpec::COLOR_GRAY:
      if (card.channels != 1 && card.channels != 3) {
        return absl::InvalidArgumentError(absl::StrCat(
            "image.color COLOR_GRAY needs a model of 1 or 3 channels; model ",
            card.name, " takes ", card.channels));
      }
      param.channels = 1;
      break;
    case v1::ImageSpec::COLOR_RGB:
      if (card.channels != 3) {
        return absl::InvalidArgumentError(absl::StrCat(
            "image.color COLOR_RGB: model ", card.name, " takes ",
            card.channels, "-channel images, so colour stimuli cannot be "
            "shown to it"));
      }
      param.channels = 3;
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("image.color has unknown value ", image.color()));
  }
  plan.display = core::BandDisplayFor(card, param.channels);
  ImageSize size{card.height, card.width};
  if (image.size() != 0) size = ImageSize{image.size(), image.size()};
  if (image.height() != 0) size.height = image.height();
  if (image.width() != 0) size.width = image.width();
  param.height = size.height;
  param.width = size.width;
  if (image.decay_power() == 0) {
    param.decay_power = kDefaultDecayPower;
  } else if (!(image.decay_power() > 0 && image.decay_power() <= kMaxDecayPower)) {
    return absl::InvalidArgumentError(
        absl::StrCat("image.decay_power must be in (0, ", kMaxDecayPower,
                     "] (0 means ", kDefaultDecayPower, "), got ",
                     image.decay_power()));
  } else {
    param.decay_power = image.decay_power();
  }
  if (image.has_init_image()) {
    FEATVIZ_ASSIGN_OR_RETURN(
        param.init_image,
        PlanInitImage(image.init_image(), param.channels, size, param.batch));
  }

  // The default parameterisation, where the request leaves every choice
  // open (no kind, FFT decay, start image or MaCo dataset): MaCo for a gray
  // model when exactly one hosted dataset fits it, decided here once (an
  // upload landing before RenderInputs fetches the prior must not make the
  // request ambiguous).
  const bool parameterisation_open =
      image.parameterization() == v1::PARAMETERIZATION_UNSPECIFIED &&
      image.decay_power() == 0 && !image.has_init_image() &&
      image.maco_dataset().empty();
  if (parameterisation_open && fitting_datasets && card.channels == 1 &&
      param.channels == 1) {
    const std::vector<core::DatasetPtr> fitting =
        fitting_datasets(NeedOf(card, 1));
    if (fitting.size() == 1) {
      param.kind = core::ParamKind::kMaco;
      plan.maco_dataset = fitting.front()->name;
    }
  }
  if (param.kind != core::ParamKind::kMaco && !plan.maco_dataset.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "image.maco_dataset is set to '", plan.maco_dataset.substr(0, 80),
        "', but the parameterization is not MaCo"));
  }
  return absl::OkStatus();
}

// optimizer: steps, and lr once the parameterisation is known (and whether
// the render is an accentuation, whose defaults are its own).
absl::Status PlanOptimizer(const v1::Optimizer& optimizer,
                           const Limits& limits, RenderPlan& plan) {
  const core::ParamOptions& param = plan.options.param;
  const bool accentuation = plan.accentuation.has_value();
  const int64_t default_steps =
      accentuation ? kDefaultAccentuationSteps : kDefaultSteps;
  const double default_lr =
      accentuation ? kDefaultAccentuationLr : DefaultLr(param.kind);
  if (optimizer.steps() < 0 || optimizer.steps() > limits.max_steps) {
    return OutsideRange("optimizer.steps", 1, limits.max_steps,
                        absl::StrCat(default_steps), optimizer.steps());
  }
  plan.options.steps = optimizer.steps() == 0 ? default_steps : optimizer.steps();
  if (plan.options.steps > limits.max_steps) {
    // Only when a server's max_steps is below the default.
    return absl::InvalidArgumentError(absl::StrCat(
        "optimizer.steps is 0, meaning ", default_steps,
        ", more than this server's max_steps ", limits.max_steps));
  }
  if (optimizer.lr() == 0) {
    plan.options.lr = default_lr;
  } else if (!(optimizer.lr() > 0 && optimizer.lr() <= kMaxLr)) {
    return absl::InvalidArgumentError(
        absl::StrCat("optimizer.lr must be in (0, ", kMaxLr, "] (0 means ",
                     default_lr, "), got ", optimizer.lr()));
  } else {
    plan.options.lr = optimizer.lr();
  }
  return absl::OkStatus();
}

// accentuate: the seed, the keep-close term added to the objective, and a
// parameterisation that can start from the seed. After PlanImage and
// PlanObjective, before PlanOptimizer (whose default lr depends on the
// parameterisation). The seed's pixels are RenderInputs' to fetch.
absl::Status PlanAccentuation(const v1::RenderRequest& request,
                              RenderPlan& plan) {
  if (!request.has_accentuate()) return absl::OkStatus();
  const v1::Accentuation& accentuate = request.accentuate();
  const core::ModelCard& card = plan.model->card;
  core::ParamOptions& param = plan.options.param;
  if (accentuate.image().source_case() == v1::ReferenceImage::SOURCE_NOT_SET) {
    return absl::InvalidArgumentError(
        "accentuate.image must be set (dataset_image or request_index): "
        "accentuation starts from a real image");
  }
  FEATVIZ_ASSIGN_OR_RETURN(
      core::ReferenceImage seed,
      ReferenceFromProto(accentuate.image(), "accentuate.image"));
  if (seed.source == core::ReferenceImage::Source::kTensor &&
      seed.index >= request.references_size()) {
    return absl::OutOfRangeError(absl::StrCat(
        "accentuate.image.request_index ", seed.index,
        " is beyond the request's ", request.references_size(),
        " reference tensors"));
  }
  const double w = accentuate.weight();
  if (!std::isfinite(w) || w < 0 || w > kMaxAccentuationWeight) {
    return absl::InvalidArgumentError(absl::StrCat(
        "accentuate.weight must be finite and in (0, ", kMaxAccentuationWeight,
        "] (0 takes the default), got ", w));
  }
  if (accentuate.layer().size() > kMaxNameBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("accentuate.layer must be at most ", kMaxNameBytes,
                     " bytes, got ", accentuate.layer().size()));
  }
  const v1::ImageSpec& image = request.image();
  if (image.has_init_image()) {
    return absl::InvalidArgumentError(
        "accentuate and image.init_image are both set; an accentuation "
        "starts from its seed image (accentuate.image), so leave "
        "image.init_image unset");
  }
  switch (image.parameterization()) {
    case v1::PARAMETERIZATION_UNSPECIFIED:
      // PlanImage may have picked MaCo for an open request.
      param.kind = kAccentuationParam;
      plan.maco_dataset.clear();
      break;
    case v1::PARAMETERIZATION_MACO:
      return absl::InvalidArgumentError(
          "accentuate needs a parameterisation that starts from the seed "
          "image, but image.parameterization is PARAMETERIZATION_MACO (it "
          "keeps a fixed spectrum magnitude, so it cannot hold a real "
          "image); ask for PARAMETERIZATION_FFT or PARAMETERIZATION_PIXEL, "
          "or leave it unspecified");
    default:
      break;
  }
  if (param.height != card.height || param.width != card.width) {
    return absl::InvalidArgumentError(absl::StrCat(
        "accentuate: the images are ", param.height, "x", param.width,
        ", but a seed image has the model's input size ", card.height, "x",
        card.width, "; leave image.size, height and width 0"));
  }
  if (!core::UnitTermIndex(plan.objective).has_value()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "accentuate needs a unit to accentuate: a neuron, channel, logit or "
        "prob term of positive weight, but the objective is ",
        plan.objective.ToString().substr(0, 200)));
  }
  if (static_cast<int64_t>(plan.objective.terms().size()) >=
      core::kMaxObjectiveTerms) {
    return absl::InvalidArgumentError(absl::StrCat(
        "accentuate adds a term to the objective, which already has the "
        "most terms allowed (", core::kMaxObjectiveTerms, ")"));
  }
  core::Objective keep_close;
  if (accentuate.layer().empty()) {
    keep_close = -(w == 0 ? kDefaultAccentuationPixelWeight : w) *
                 core::L2(seed);
  } else {
    keep_close = (w == 0 ? kDefaultAccentuationLayerWeight : w) *
                 core::InversionL2(accentuate.layer(), seed);
    const absl::Status layer =
        keep_close.Validate(plan.model->Shape(), param.batch);
    if (!layer.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("accentuate.layer: ", layer.message()));
    }
  }
  plan.objective = plan.objective + keep_close;
  plan.accentuation = std::move(seed);
  return absl::OkStatus();
}

// reference tensors, for the objective's reference(k) terms.
absl::Status PlanReferences(const v1::RenderRequest& request,
                            RenderPlan& plan) {
  if (request.references_size() > kMaxReferenceTensors) {
    return absl::InvalidArgumentError(
        absl::StrCat("references must hold at most ", kMaxReferenceTensors,
                     " tensors, got ", request.references_size()));
  }
  for (int k = 0; k < request.references_size(); ++k) {
    FEATVIZ_ASSIGN_OR_RETURN(
        at::Tensor reference,
        TensorFromProto(request.references(k), absl::StrCat("references[", k, "]")));
    plan.reference_tensors.push_back(std::move(reference));
  }
  return absl::OkStatus();
}

// seed, output and precision.
absl::Status PlanOutput(const v1::RenderRequest& request, const Limits& limits,
                        RenderPlan& plan) {
  if (request.has_seed()) {
    plan.seed = request.seed();
    plan.options.seed = request.seed();
  }
  const v1::OutputSpec& output = request.output();
  if (output.progress_every() < 0 || output.progress_every() > limits.max_steps) {
    return OutsideRange("output.progress_every", 0, limits.max_steps,
                        absl::StrCat(limits.default_progress_every),
                        output.progress_every());
  }
  plan.options.progress_every = output.progress_every() == 0
                                    ? limits.default_progress_every
                                    : output.progress_every();
  plan.tensor = output.tensor();
  // A request that asks for neither gets one PNG per image: a render that
  // returns no picture is never what its caller meant.
  plan.png = output.png() || !output.tensor();
  plan.preview_png = output.preview_png();
  plan.options.progress_images = output.preview_png();
  plan.linear_mode = core::LinearModeName(core::GetLinearMode());
  FEATVIZ_ASSIGN_OR_RETURN(plan.precision,
                           RequestPrecision(request.precision(), limits));
  if (plan.precision == core::Precision::kBf16 &&
      !plan.model->bf16_problem.empty()) {
    if (!request.precision().empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "precision is \"bf16\", but model ", plan.model_name,
          " cannot run in bf16 on this server (",
          plan.model->bf16_problem, "); ask for \"fp32\""));
    }
    // The server's bf16 default does not apply to this model.
    plan.precision = core::Precision::kFloat32;
  }
  return absl::OkStatus();
}

// scheduling: priority, owner, queue timeout.
absl::Status PlanScheduling(const v1::RenderRequest& request,
                            RenderPlan& plan) {
  if (request.priority() < kMinPriority || request.priority() > kMaxPriority) {
    return absl::InvalidArgumentError(
        absl::StrCat("priority must be in [", kMinPriority, ", ", kMaxPriority,
                     "], got ", request.priority()));
  }
  plan.priority = request.priority();
  plan.owner = request.owner();
  const double timeout = request.queue_timeout_seconds();
  if (!(timeout >= 0 && timeout <= kMaxQueueTimeoutSeconds)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "queue_timeout_seconds must be in [0, ", kMaxQueueTimeoutSeconds,
        "] (0 means the server's default), got ", timeout));
  }
  if (timeout > 0) plan.queue_timeout = absl::Seconds(timeout);
  return absl::OkStatus();
}

// trust: exemplars and path similarity beside the pictures (the dataset is
// picked by RenderInputs::Resolve).
absl::Status PlanTrust(const v1::TrustSpec& spec, RenderPlan& plan) {
  if (spec.exemplars() < 0 || spec.exemplars() > kMaxTrustExemplars) {
    return OutsideRange("trust.exemplars", 0, kMaxTrustExemplars, "none",
                        spec.exemplars());
  }
  if (spec.dataset().size() > kMaxNameBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("trust.dataset must be at most ", kMaxNameBytes,
                     " bytes, got ", spec.dataset().size()));
  }
  TrustPlan& trust = plan.trust;
  trust.exemplars = spec.exemplars();
  trust.path_similarity = spec.path_similarity();
  trust.dataset_name = spec.dataset();
  // A dataset named without asking for anything asks for nothing.
  if (!trust.asked()) return absl::OkStatus();
  FEATVIZ_ASSIGN_OR_RETURN(
      trust.units,
      TrustUnitsOf(plan.objective, plan.options.param.batch));
  return absl::OkStatus();
}

absl::StatusOr<RenderPlan> PlanRenderUnguarded(const v1::RenderRequest& request,
                                               const ModelRegistry& models,
                                               const Limits& limits,
                                               const FittingDatasets& datasets) {
  RenderPlan plan;
  FEATVIZ_RETURN_IF_ERROR(PlanModel(request, models, plan));
  FEATVIZ_RETURN_IF_ERROR(PlanImage(request.image(), limits, datasets, plan));
  const core::ParamOptions& param = plan.options.param;
  const ImageSize size{param.height, param.width};
  // objective, now that the batch is known
  FEATVIZ_ASSIGN_OR_RETURN(plan.objective,
                           PlanObjective(request, *plan.model, param.batch));
  FEATVIZ_RETURN_IF_ERROR(PlanAccentuation(request, plan));

  // transforms
  FEATVIZ_ASSIGN_OR_RETURN(plan.options.transforms,
                           PlanTransforms(request.transforms(), size, limits,
                                          plan.model->IsTokenModel()));
  FEATVIZ_RETURN_IF_ERROR(PlanOptimizer(request.optimizer(), limits, plan));
  FEATVIZ_RETURN_IF_ERROR(PlanReferences(request, plan));
  FEATVIZ_RETURN_IF_ERROR(PlanOutput(request, limits, plan));
  FEATVIZ_RETURN_IF_ERROR(PlanScheduling(request, plan));
  FEATVIZ_RETURN_IF_ERROR(PlanTrust(request.trust(), plan));

  // The result must fit in one message.
  const core::ModelCard& card = plan.model->card;
  const v1::ImageSpec& image = request.image();
  const int64_t bound = ResultBytesBound(plan, card.channels);
  if (bound > limits.max_message_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the result would be up to ", bound,
        " bytes, more than this server's max_message_bytes ",
        limits.max_message_bytes,
        "; ask for fewer or smaller images (image.batch ", param.batch,
        ", image.size ", image.size(), "), or leave out output.tensor"));
  }
  return plan;
}

}  // namespace

absl::StatusOr<RenderPlan> PlanRender(const v1::RenderRequest& request,
                                      const ModelRegistry& models,
                                      const Limits& limits,
                                      const FittingDatasets& datasets) {
  // Validation runs LibTorch (the init image's checks) on gRPC's threads:
  // its exceptions end here, as the request's error.
  try {
    return PlanRenderUnguarded(request, models, limits, datasets);
  } catch (const std::exception& e) {
    return core::TorchError(e, "validating the request");
  }
}

v1::Parameterization ParameterizationToProto(core::ParamKind kind) {
  switch (kind) {
    case core::ParamKind::kPixel:
      return v1::PARAMETERIZATION_PIXEL;
    case core::ParamKind::kFft:
      return v1::PARAMETERIZATION_FFT;
    case core::ParamKind::kMaco:
      return v1::PARAMETERIZATION_MACO;
  }
  return v1::PARAMETERIZATION_UNSPECIFIED;
}

double DefaultLr(core::ParamKind kind) {
  return kind == core::ParamKind::kMaco ? kDefaultMacoLr : kDefaultLr;
}

namespace {

v1::ModelState ModelStateToProto(ModelState state) {
  switch (state) {
    case ModelState::kUnloaded:
      return v1::MODEL_STATE_UNLOADED;
    case ModelState::kLoading:
      return v1::MODEL_STATE_LOADING;
    case ModelState::kLoaded:
      return v1::MODEL_STATE_LOADED;
    case ModelState::kFailed:
      return v1::MODEL_STATE_FAILED;
  }
  return v1::MODEL_STATE_UNSPECIFIED;
}

void SetTime(absl::Time time, google::protobuf::Timestamp* out) {
  const int64_t seconds = absl::ToUnixSeconds(time);
  out->set_seconds(seconds);
  out->set_nanos(static_cast<int32_t>(
      absl::ToInt64Nanoseconds(time - absl::FromUnixSeconds(seconds))));
}

}  // namespace

v1::Model ModelToProto(const ModelSummary& model) {
  const core::ModelCard& card = model.card;
  v1::Model out;
  out.set_name(card.name);
  out.set_version(card.version);
  out.set_content_hash(model.content_hash);
  out.set_description(card.description);
  v1::InputSpec* input = out.mutable_input();
  input->set_channels(card.channels);
  input->set_height(card.height);
  input->set_width(card.width);
  input->set_range_min(card.range_min);
  input->set_range_max(card.range_max);
  for (double m : card.mean) input->add_mean(m);
  for (double s : card.std) input->add_std(s);
  for (const std::string& name : card.band_names) input->add_band_names(name);
  for (int64_t band : card.CompositeBands()) input->add_composite(band);
  for (const std::string& name : model.class_names) out.add_class_names(name);
  for (const core::LayerInfo& info : model.layers) {
    v1::Layer* layer = out.add_layers();
    layer->set_path(info.path);
    layer->set_kind(info.kind);
    for (int64_t dim : info.shape) layer->add_output_shape(dim);
    layer->set_channels(info.channels);
    layer->set_tappable(info.tappable);
    layer->set_untappable_reason(info.untappable_reason);
    if (info.tappable) layer->set_layout(core::LayerLayoutName(info.layout));
    layer->set_tokens(info.tokens);
    layer->set_token_prefix(info.token_prefix);
    layer->set_grid_height(info.grid_h);
    layer->set_grid_width(info.grid_w);
  }
  for (const core::OutputInfo& info : model.outputs) {
    v1::ModelOutput* output = out.add_outputs();
    output->set_name(info.name);
    for (int64_t dim : info.shape) output->add_shape(dim);
    output->set_channels(info.channels);
  }
  out.set_logits_output(model.logits_output);
  out.set_log_probs(model.log_probs);
  out.set_device(model.device);
  out.set_memory_bytes(model.memory_bytes);
  out.set_path(model.path);
  out.set_activation_bytes(model.activation_bytes);
  std::optional<absl::Time> last_used;
  for (const ModelCopy& copy : model.copies) {
    v1::ModelCopy* c = out.add_copies();
    c->set_device(copy.device);
    c->set_state(ModelStateToProto(copy.state));
    c->set_bytes(copy.bytes);
    c->set_users(copy.users);
    if (copy.last_used.has_value()) {
      SetTime(*copy.last_used, c->mutable_last_used_time());
      if (!last_used.has_value() || *copy.last_used > *last_used) {
        last_used = copy.last_used;
      }
    }
    c->set_error(copy.error);
  }
  if (!model.copies.empty()) {
    out.set_state(ModelStateToProto(model.copies.front().state));
  }
  if (last_used.has_value()) SetTime(*last_used, out.mutable_last_used_time());
  return out;
}

v1::Model ModelToProto(const core::Model& model) {
  return ModelToProto(Summarize(model));
}

// ---------------------------------------- the job engine's types

v1::JobState JobStateToProto(JobState state) {
  switch (state) {
    case JobState::kQueued:
      return v1::JOB_STATE_QUEUED;
    case JobState::kRunning:
      return v1::JOB_STATE_RUNNING;
    case JobState::kSucceeded:
      return v1::JOB_STATE_SUCCEEDED;
    case JobState::kFailed:
      return v1::JOB_STATE_FAILED;
    case JobState::kCancelled:
      return v1::JOB_STATE_CANCELLED;
    case JobState::kExpired:
      return v1::JOB_STATE_EXPIRED;
  }
  return v1::JOB_STATE_UNSPECIFIED;
}

absl::StatusOr<std::optional<JobState>> JobStateFromProto(int state) {
  switch (state) {
    case v1::JOB_STATE_UNSPECIFIED:
      return std::optional<JobState>();
    case v1::JOB_STATE_QUEUED:
      return JobState::kQueued;
    case v1::JOB_STATE_RUNNING:
      return JobState::kRunning;
    case v1::JOB_STATE_SUCCEEDED:
      return JobState::kSucceeded;
    case v1::JOB_STATE_FAILED:
      return JobState::kFailed;
    case v1::JOB_STATE_CANCELLED:
      return JobState::kCancelled;
    case v1::JOB_STATE_EXPIRED:
      return JobState::kExpired;
    default:
      break;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("state has unknown value ", state));
}

v1::Job JobToProto(const JobSnapshot& job) {
  v1::Job out;
  out.set_id(job.id);
  out.set_owner(job.owner);
  out.set_priority(job.priority);
  out.set_state(JobStateToProto(job.state));
  out.set_model(job.model);
  out.set_model_version(job.model_version);
  out.set_model_hash(job.model_hash);
  out.set_objective(job.objective);
  out.set_steps_done(job.steps_done);
  out.set_total_steps(job.total_steps);
  SetTime(job.create_time, out.mutable_create_time());
  if (job.start_time.has_value()) {
    SetTime(*job.start_time, out.mutable_start_time());
  }
  if (job.end_time.has_value()) SetTime(*job.end_time, out.mutable_end_time());
  if (!job.status.ok()) {
    out.set_error_code(static_cast<int32_t>(job.status.code()));
    out.set_error_message(std::string(job.status.message()));
  }
  out.set_cached(job.cached);
  out.set_device(job.device);
  return out;
}

v1::RenderProgress ProgressToProto(const JobProgress& progress) {
  v1::RenderProgress out;
  out.set_step(progress.step);
  out.set_total_steps(progress.total_steps);
  out.mutable_term_values()->Add(progress.term_values.begin(),
                                 progress.term_values.end());
  out.set_preview_png(progress.preview_png);
  return out;
}

v1::Tensor ArrayToProto(const HostArray& array) {
  v1::Tensor out;
  out.mutable_shape()->Add(array.shape.begin(), array.shape.end());
  out.set_dtype(v1::Tensor::DTYPE_FLOAT32);
  out.set_data(reinterpret_cast<const char*>(array.values.data()),
               array.values.size() * sizeof(float));
  return out;
}

v1::RenderResult ResultToProto(const JobResult& result) {
  v1::RenderResult out;
  out.set_model(result.model);
  out.set_model_version(result.model_version);
  out.set_model_hash(result.model_hash);
  out.set_objective(result.objective);
  for (const TermOutcome& term : result.terms) {
    v1::TermResult* t = out.add_terms();
    t->set_term(term.term);
    t->set_weight(term.weight);
    t->set_final_value(term.final_value);
    t->mutable_trace()->Add(term.trace.begin(), term.trace.end());
  }
  out.set_final_total(result.final_total);
  if (result.images.has_value()) {
    *out.mutable_images() = ArrayToProto(*result.images);
  }
  for (const std::string& png : result.png) out.add_png(png);
  for (int64_t band : result.composite) out.add_composite(band);
  for (const std::string& name : result.band_names) out.add_band_names(name);
  for (const std::string& png : result.band_png) out.add_band_png(png);
  *out.mutable_logits() = ArrayToProto(result.logits);
  *out.mutable_probs() = ArrayToProto(result.probs);
  if (result.transparency.has_value()) {
    *out.mutable_transparency() = ArrayToProto(*result.transparency);
  }
  for (const std::string& png : result.transparency_png) {
    out.add_transparency_png(png);
  }
  out.set_maco_magnitude(result.maco_magnitude);
  out.set_parameterization(ParameterizationToProto(result.parameterization));
  for (const std::string& warning : result.warnings) out.add_warnings(warning);
  for (const core::AccentuationOutcome& a : result.accentuation) {
    v1::AccentuationOutcome* outcome = out.add_accentuation();
    outcome->set_seed_value(a.seed_value);
    outcome->set_value(a.value);
    outcome->set_pixel_distance(a.pixel_distance);
  }
  for (const LayerSummary& stats : result.layer_stats) {
    v1::LayerStats* s = out.add_layer_stats();
    s->set_layer(stats.layer);
    *s->mutable_mean() = ArrayToProto(stats.mean);
    *s->mutable_max() = ArrayToProto(stats.max);
  }
  out.set_seed(result.seed);
  out.set_steps(result.steps);
  out.set_transforms(result.transforms);
  out.set_linear_mode(result.linear_mode);
  out.set_precision(result.precision);
  if (result.exemplars.has_value()) {
    const ExemplarSet& set = *result.exemplars;
    v1::Exemplars* exemplars = out.mutable_exemplars();
    exemplars->set_dataset(set.dataset);
    exemplars->set_unit(set.unit);
    exemplars->set_cached(set.cached);
    for (const Exemplar& e : set.examples) {
      v1::Exemplar* x = exemplars->add_examples();
      x->set_index(e.index);
      x->set_value(e.value);
      x->set_label(e.label);
      x->set_png(e.png);
      x->set_activation_png(e.activation_png);
    }
  }
  for (const PathScore& score : result.path_similarity) {
    v1::PathSimilarity* p = out.add_path_similarity();
    p->set_score(score.score);
    p->set_threshold(score.threshold);
    p->set_reliable(score.reliable);
    for (const LayerPathScore& l : score.layers) {
      v1::LayerPathSimilarity* layer = p->add_layers();
      layer->set_layer(l.layer);
      layer->set_score(l.score);
      layer->set_similarity(l.similarity);
      layer->set_natural_similarity(l.natural_similarity);
      layer->set_random_similarity(l.random_similarity);
    }
  }
  out.mutable_timings()->set_queue_seconds(result.queue_seconds);
  out.mutable_timings()->set_compute_seconds(result.compute_seconds);
  return out;
}

absl::StatusOr<JobQuery> JobQueryFromProto(const v1::ListJobsRequest& request) {
  JobQuery query;
  query.owner = request.owner();
  FEATVIZ_ASSIGN_OR_RETURN(query.state, JobStateFromProto(request.state()));
  query.page_size = request.page_size();
  query.page_token = request.page_token();
  return query;
}

v1::ListJobsResponse JobPageToProto(const JobPage& page) {
  v1::ListJobsResponse out;
  for (const JobSnapshot& job : page.jobs) *out.add_jobs() = JobToProto(job);
  out.set_next_page_token(page.next_page_token);
  return out;
}

ModelQuery ModelQueryFromProto(const v1::ListModelsRequest& request) {
  ModelQuery query;
  query.page_size = request.page_size();
  query.page_token = request.page_token();
  return query;
}

v1::ListModelsResponse ModelPageToProto(const ModelPage& page) {
  v1::ListModelsResponse out;
  for (const ModelSummary& model : page.models) {
    *out.add_models() = ModelToProto(model);
  }
  out.set_next_page_token(page.next_page_token);
  return out;
}

v1::ServerStats StatsToProto(const EngineStats& stats) {
  v1::ServerStats out;
  for (const auto& [priority, jobs] : stats.queue_depth) {
    v1::QueueDepth* depth = out.add_queue_depth();
    depth->set_priority(priority);
    depth->set_jobs(jobs);
  }
  out.set_queued_jobs(stats.queued_jobs);
  out.set_running_jobs(stats.running_jobs);
  out.set_cache_hits(stats.cache_hits);
  out.set_cache_misses(stats.cache_misses);
  out.set_results_stored(stats.results_stored);
  out.set_result_bytes(stats.result_bytes);
  out.set_jobs_submitted(stats.jobs_submitted);
  out.set_jobs_succeeded(stats.jobs_succeeded);
  out.set_jobs_failed(stats.jobs_failed);
  out.set_jobs_cancelled(stats.jobs_cancelled);
  out.set_jobs_expired(stats.jobs_expired);
  out.set_result_max_bytes(stats.result_max_bytes);
  out.set_result_owner_max_bytes(stats.result_owner_max_bytes);
  for (const auto& [why, count] : stats.results_removed) {
    (*out.mutable_results_removed())[why] = count;
  }
  for (const EngineStats::OwnerUsage& owner : stats.result_owners) {
    v1::OwnerResultUsage* usage = out.add_result_owners();
    usage->set_owner(owner.owner);
    usage->set_results(owner.results);
    usage->set_bytes(owner.bytes);
  }
  for (const EngineStats::OwnerUsage& upload : stats.uploads) {
    v1::OwnerResultUsage* usage = out.add_uploads();
    usage->set_owner(upload.owner);
    usage->set_bytes(upload.bytes);
  }
  out.set_heap_in_use_bytes(stats.heap_in_use_bytes);
  out.set_heap_held_bytes(stats.heap_held_bytes);
  out.set_job_records(stats.job_records);
  out.set_job_record_bytes(stats.job_record_bytes);
  out.set_max_job_records(stats.max_job_records);
  out.set_job_records_forgotten(stats.job_records_forgotten);
  for (const DeviceStats& device : stats.devices) {
    v1::DeviceStats* d = out.add_devices();
    d->set_device(device.device);
    d->set_running_jobs(device.running_jobs);
    d->set_batch_occupancy(device.batch_occupancy);
    d->set_steps_per_second(device.steps_per_second);
    d->set_image_steps_per_second(device.image_steps_per_second);
    d->set_steps_total(device.steps_total);
    for (const ModelMemoryStats& memory : stats.model_memory) {
      if (memory.device != device.device) continue;
      auto count = [&](ModelState state) {
        auto it = memory.copies.find(state);
        return it == memory.copies.end() ? int64_t{0} : it->second;
      };
      d->set_model_bytes(memory.used_bytes);
      d->set_model_memory_bytes(memory.budget_bytes);
      d->set_models_loaded(count(ModelState::kLoaded));
      d->set_models_unloaded(count(ModelState::kUnloaded) +
                             count(ModelState::kFailed));
      d->set_model_loads(memory.loads);
      d->set_model_load_seconds(memory.load_seconds);
      d->set_model_evictions(memory.evictions);
      d->set_model_loads_waiting(memory.waiting_loads);
    }
  }
  out.set_datasets(stats.datasets);
  out.set_dataset_bytes(stats.dataset_bytes);
  out.set_dataset_memory_bytes(stats.dataset_budget_bytes);
  return out;
}

}  // namespace featviz::server
