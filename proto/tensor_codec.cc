#include "proto/tensor_codec.h"

#include <cstdint>
#include <cstring>
#include <exception>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/torch_status.h"

namespace featviz::wire {

namespace v1 = featviz::v1;

std::string ShapeText(const google::protobuf::RepeatedField<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

absl::StatusOr<at::Tensor> TensorFromProto(const v1::Tensor& tensor,
                                           absl::string_view field, Dims dims) {
  if (tensor.dtype() != v1::Tensor::DTYPE_FLOAT32) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, ".dtype must be DTYPE_FLOAT32, got ",
        v1::Tensor::DType_IsValid(tensor.dtype())
            ? v1::Tensor::DType_Name(tensor.dtype())
            : absl::StrCat(tensor.dtype())));
  }
  if (dims == Dims::kPositive && tensor.shape_size() == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ".shape must have at least one dimension, got []"));
  }
  const int64_t smallest = dims == Dims::kPositive ? 1 : 0;
  const uint64_t have = tensor.data().size();
  uint64_t need = sizeof(float);
  bool overflow = false;
  for (int64_t dim : tensor.shape()) {
    if (dim < smallest) {
      return absl::InvalidArgumentError(absl::StrCat(
          field, ".shape must have ",
          dims == Dims::kPositive ? "positive" : "non-negative",
          " dimensions, got ", ShapeText(tensor.shape())));
    }
    overflow = overflow || __builtin_mul_overflow(
                               need, static_cast<uint64_t>(dim), &need);
  }
  if (overflow || need != have) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, ".data has ", have, " bytes, but shape ",
        ShapeText(tensor.shape()), " of float32 needs ",
        overflow ? "more bytes than fit in 64 bits" : absl::StrCat(need)));
  }
  try {
    const std::vector<int64_t> shape(tensor.shape().begin(),
                                     tensor.shape().end());
    at::Tensor out = at::empty(shape, at::TensorOptions().dtype(at::kFloat));
    // The wire format is little-endian, as is every host we build for.
    if (have > 0) {
      std::memcpy(out.data_ptr<float>(), tensor.data().data(), have);
    }
    return out;
  } catch (const std::exception& e) {
    return core::TorchError(e, absl::StrCat("decoding ", field));
  }
}

v1::Tensor TensorToProto(const at::Tensor& tensor) {
  v1::Tensor out;
  const at::Tensor t = tensor.detach().to(at::kCPU, at::kFloat).contiguous();
  for (int64_t dim : t.sizes()) out.add_shape(dim);
  out.set_dtype(v1::Tensor::DTYPE_FLOAT32);
  out.set_data(reinterpret_cast<const char*>(t.data_ptr<float>()),
               static_cast<size_t>(t.numel()) * sizeof(float));
  return out;
}

}  // namespace featviz::wire
