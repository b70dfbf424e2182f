// Conversions between the CLI's words, core/ types and featviz.v1 messages,
// in one place: transform text to Transforms, parameterisation names,
// Tensor messages to at::Tensor, model states and times as text.
#ifndef FEATVIZ_CLIENT_PROTO_CONVERT_H_
#define FEATVIZ_CLIENT_PROTO_CONVERT_H_

#include <cstdint>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "featviz/v1/featviz.pb.h"

namespace featviz::client {

// "default" -> PRESET_DEFAULT (the server scales the set to the image),
// "none" or "" -> PRESET_NONE, else a list in core::ParseTransforms' syntax
// ("pad(2), jitter(1), scale(0.9, 1.1), rotate(-5, 5)") -> PRESET_CUSTOM.
// InvalidArgument names the bad transform or value.
absl::StatusOr<featviz::v1::Transforms> TransformsFromText(
    absl::string_view text);

// "fft", "pixel" or "maco" (any case); "" is the server's default.
absl::StatusOr<featviz::v1::Parameterization> ParameterizationFromText(
    absl::string_view text);

// "fft", "pixel" or "maco"; "" for PARAMETERIZATION_UNSPECIFIED.
std::string ParameterizationText(featviz::v1::Parameterization kind);

// A float32 Tensor message as an owning at::Tensor of its shape.
// InvalidArgument when the dtype is not float32, a dimension is negative or
// the byte count does not match the shape.
absl::StatusOr<at::Tensor> TensorFromProto(const featviz::v1::Tensor& tensor);

// Rows of a [rows, cols] float32 Tensor message, for JSON and tables.
absl::StatusOr<std::vector<std::vector<float>>> MatrixFromProto(
    const featviz::v1::Tensor& tensor);

// "[1, 32, 8, 8]".
std::string ShapeToString(const google::protobuf::RepeatedField<int64_t>& shape);

// A render's objective three ways, so that the numbers a user sees agree:
// the progress line shows Σ weight × term value at each step (the mean over
// the images a term targets, on that step's transformed images); the result
// holds each term's value on the final images without transforms, and
// final_total, the quantity maximised: summed over the images, so that an
// image's gradient does not depend on its batch.
struct ObjectiveFigures {
  double per_image = 0;   // Σ weight × final_value: final images, per image.
  double last_step = 0;   // Σ weight × the trace's last value (transforms).
  bool has_last_step = false;
  double summed = 0;      // final_total: summed over the images.
};
ObjectiveFigures ObjectiveFiguresOf(const featviz::v1::RenderResult& result);

// "loaded", "unloaded", "loading", "failed"; "-" when unspecified.
std::string ModelStateName(featviz::v1::ModelState state);

// A job's state as every human-readable line of the CLI spells it: "queued",
// "running", "succeeded", "failed", "cancelled", "expired" ("unspecified").
// `featviz job --json` keeps the enum's own spelling ("SUCCEEDED").
std::string JobStateName(featviz::v1::JobState state);

// A Timestamp message as RFC 3339 in UTC ("2025-01-31T14:02:11Z").
std::string TimestampText(const google::protobuf::Timestamp& time);

// How long before `now` a Timestamp was, in its largest unit ("12s", "4m",
// "3h", "2d"; "0s" for a time after `now`).
std::string AgoText(const google::protobuf::Timestamp& time, absl::Time now);

}  // namespace featviz::client

#endif  // FEATVIZ_CLIENT_PROTO_CONVERT_H_
