// Reading NumPy's files: .npy arrays (format 1.0 to 3.0, C or Fortran order)
// and .npz archives of them (core/zip.h), into CPU tensors; and writing .npz
// archives of tensors. Writing one .npy is EncodeNpy (core/image.h).
#ifndef FEATVIZ_CORE_NPY_H_
#define FEATVIZ_CORE_NPY_H_

#include <cstdint>
#include <map>
#include <string>

#include <ATen/ATen.h>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace featviz::core {

// NumPy's name of a dtype this reader takes, for messages: "uint8",
// "int32", "int64", "float32", "float64".
std::string NumpyTypeName(at::ScalarType type);

// The array in `bytes` (a whole .npy file) as a contiguous CPU tensor of
// its own type: uint8 (|u1), int8 (|i1), int32 (<i4), int64 (<i8), float32
// (<f4) or float64 (<f8). InvalidArgument naming the problem: not an .npy
// file, a header that does not parse, another dtype (big-endian, object,
// ...) or data that is shorter or longer than the shape says.
absl::StatusOr<at::Tensor> DecodeNpy(absl::string_view bytes);

// The arrays of an .npz archive by name ("images" for images.npy), at most
// `max_bytes` uncompressed. Errors as ReadZip's and DecodeNpy's, naming
// the entry.
absl::StatusOr<std::map<std::string, at::Tensor>> DecodeNpz(
    absl::string_view bytes, int64_t max_bytes);

// An .npz archive (stored, as numpy.savez writes it) holding each tensor as
// `<name>.npy`; types as EncodeNpy.
absl::StatusOr<std::string> EncodeNpz(
    const std::map<std::string, at::Tensor>& arrays);

}  // namespace featviz::core

#endif  // FEATVIZ_CORE_NPY_H_
