#include "client/proto_convert.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "absl/time/time.h"
#include "core/transform.h"
#include "proto/tensor_codec.h"

namespace featviz::client {

namespace v1 = featviz::v1;

absl::StatusOr<v1::Transforms> TransformsFromText(absl::string_view text) {
  const std::string trimmed =
      absl::AsciiStrToLower(absl::StripAsciiWhitespace(text));
  v1::Transforms out;
  if (trimmed == "default") {
    out.set_preset(v1::Transforms::PRESET_DEFAULT);
    return out;
  }
  if (trimmed.empty() || trimmed == "none") {
    out.set_preset(v1::Transforms::PRESET_NONE);
    return out;
  }
  // The syntax is checked here; the limits that depend on the image size
  // (jitter smaller than the image) are the server's to check, so the size
  // given is one that no limit reaches.
  constexpr int64_t kAnySide = int64_t{1} << 30;
  absl::StatusOr<core::TransformList> list =
      core::ParseTransforms(text, kAnySide, kAnySide);
  if (!list.ok()) return list.status();
  out.set_preset(v1::Transforms::PRESET_CUSTOM);
  for (const core::Transform& t : *list) {
    v1::Transform* p = out.add_list();
    switch (t.kind) {
      case core::Transform::Kind::kPad:
        p->set_kind(v1::Transform::KIND_PAD);
        break;
      case core::Transform::Kind::kJitter:
        p->set_kind(v1::Transform::KIND_JITTER);
        break;
      case core::Transform::Kind::kScale:
        p->set_kind(v1::Transform::KIND_SCALE);
        break;
      case core::Transform::Kind::kRotate:
        p->set_kind(v1::Transform::KIND_ROTATE);
        break;
    }
    p->set_pixels(t.pixels);
    for (double v : t.values) p->add_values(v);
  }
  return out;
}

absl::StatusOr<v1::Parameterization> ParameterizationFromText(
    absl::string_view text) {
  const std::string name =
      absl::AsciiStrToLower(absl::StripAsciiWhitespace(text));
  if (name.empty()) return v1::PARAMETERIZATION_UNSPECIFIED;
  if (name == "fft") return v1::PARAMETERIZATION_FFT;
  if (name == "pixel") return v1::PARAMETERIZATION_PIXEL;
  if (name == "maco") return v1::PARAMETERIZATION_MACO;
  return absl::InvalidArgumentError(absl::StrCat(
      "parameterisation must be fft, pixel or maco, got '", text, "'"));
}

std::string ParameterizationText(v1::Parameterization kind) {
  switch (kind) {
    case v1::PARAMETERIZATION_FFT:
      return "fft";
    case v1::PARAMETERIZATION_PIXEL:
      return "pixel";
    case v1::PARAMETERIZATION_MACO:
      return "maco";
    default:
      return "";
  }
}

absl::StatusOr<at::Tensor> TensorFromProto(const v1::Tensor& tensor) {
  return wire::TensorFromProto(tensor, "tensor", wire::Dims::kAny);
}

absl::StatusOr<std::vector<std::vector<float>>> MatrixFromProto(
    const v1::Tensor& tensor) {
  if (tensor.shape_size() != 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        "expected a [rows, cols] tensor, got shape ", ShapeToString(tensor.shape())));
  }
  absl::StatusOr<at::Tensor> t = TensorFromProto(tensor);
  if (!t.ok()) return t.status();
  std::vector<std::vector<float>> rows(tensor.shape(0));
  const float* data = t->data_ptr<float>();
  for (int64_t r = 0; r < tensor.shape(0); ++r) {
    rows[r].assign(data + r * tensor.shape(1), data + (r + 1) * tensor.shape(1));
  }
  return rows;
}

std::string ShapeToString(
    const google::protobuf::RepeatedField<int64_t>& shape) {
  return wire::ShapeText(shape);
}

std::string ModelStateName(v1::ModelState state) {
  switch (state) {
    case v1::MODEL_STATE_UNLOADED:
      return "unloaded";
    case v1::MODEL_STATE_LOADING:
      return "loading";
    case v1::MODEL_STATE_LOADED:
      return "loaded";
    case v1::MODEL_STATE_FAILED:
      return "failed";
    default:
      return "-";
  }
}

std::string JobStateName(v1::JobState state) {
  return absl::AsciiStrToLower(
      absl::StripPrefix(v1::JobState_Name(state), "JOB_STATE_"));
}

namespace {

absl::Time TimeOf(const google::protobuf::Timestamp& time) {
  return absl::FromUnixSeconds(time.seconds()) +
         absl::Nanoseconds(time.nanos());
}

}  // namespace

std::string TimestampText(const google::protobuf::Timestamp& time) {
  return absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", TimeOf(time),
                          absl::UTCTimeZone());
}

std::string AgoText(const google::protobuf::Timestamp& time, absl::Time now) {
  const int64_t seconds =
      std::max<int64_t>(0, absl::ToInt64Seconds(now - TimeOf(time)));
  if (seconds >= 86400) return absl::StrCat(seconds / 86400, "d");
  if (seconds >= 3600) return absl::StrCat(seconds / 3600, "h");
  if (seconds >= 60) return absl::StrCat(seconds / 60, "m");
  return absl::StrCat(seconds, "s");
}

ObjectiveFigures ObjectiveFiguresOf(const featviz::v1::RenderResult& result) {
  ObjectiveFigures out;
  out.summed = result.final_total();
  out.has_last_step = result.terms_size() > 0;
  for (const featviz::v1::TermResult& term : result.terms()) {
    out.per_image += term.weight() * term.final_value();
    if (term.trace_size() == 0) {
      out.has_last_step = false;
    } else {
      out.last_step += term.weight() * term.trace(term.trace_size() - 1);
    }
  }
  return out;
}

}  // namespace featviz::client
