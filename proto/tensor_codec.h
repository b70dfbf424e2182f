// featviz.v1.Tensor <-> at::Tensor, the one copy both edges use: the server
// decodes what requests carry and encodes results, the CLI decodes results.
// Lives beside the generated messages because it is about the wire format;
// it depends on core's LibTorch but nothing in core depends on it.
#ifndef FEATVIZ_PROTO_TENSOR_CODEC_H_
#define FEATVIZ_PROTO_TENSOR_CODEC_H_

#include <string>

#include <ATen/ATen.h>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "featviz/v1/featviz.pb.h"

namespace featviz::wire {

// Which shapes a decoder takes.
enum class Dims {
  // A request's tensor: at least one dimension, each at least 1.
  kPositive,
  // A result: any shape, a scalar ([]) or zero-sized dimensions included.
  kAny,
};

// A float32 Tensor message as a CPU float tensor that owns its data. The
// dtype, the shape (multiplied without overflow: shapes come from the wire)
// and the byte length are checked; InvalidArgument names `field` and the
// value ("images.data has 12 bytes, but shape [2, 3] of float32 needs 24").
absl::StatusOr<at::Tensor> TensorFromProto(const featviz::v1::Tensor& tensor,
                                           absl::string_view field,
                                           Dims dims = Dims::kPositive);

// Any numeric tensor, on any device, as float32 little-endian bytes in C
// order.
featviz::v1::Tensor TensorToProto(const at::Tensor& tensor);

// "[1, 32, 8, 8]".
std::string ShapeText(const google::protobuf::RepeatedField<int64_t>& shape);

}  // namespace featviz::wire

#endif  // FEATVIZ_PROTO_TENSOR_CODEC_H_
