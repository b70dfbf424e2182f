#include "core/npy.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "core/image.h"
#include "core/status_macros.h"
#include "core/zip.h"

namespace featviz::core {
namespace {

constexpr absl::string_view kMagic = "\x93NUMPY";
// More dimensions than any image or label array has.
constexpr size_t kMaxDims = 8;

// The value of `key` in the header's dict literal: the text after "'key':"
// up to the next top-level ',' or '}' (a tuple's commas are inside parens).
absl::StatusOr<std::string> DictValue(absl::string_view header,
                                      absl::string_view key) {
  const std::string quoted[] = {absl::StrCat("'", key, "'"),
                                absl::StrCat("\"", key, "\"")};
  size_t at = absl::string_view::npos;
  for (const std::string& q : quoted) {
    at = header.find(q);
    if (at != absl::string_view::npos) {
      at += q.size();
      break;
    }
  }
  if (at == absl::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("the .npy header has no '", key, "'"));
  }
  absl::string_view rest = absl::StripLeadingAsciiWhitespace(header.substr(at));
  if (!absl::ConsumePrefix(&rest, ":")) {
    return absl::InvalidArgumentError(
        absl::StrCat("the .npy header's '", key, "' has no value"));
  }
  int depth = 0;
  size_t end = 0;
  for (; end < rest.size(); ++end) {
    const char c = rest[end];
    if (c == '(') ++depth;
    if (c == ')') --depth;
    if (depth == 0 && (c == ',' || c == '}')) break;
  }
  return std::string(absl::StripAsciiWhitespace(rest.substr(0, end)));
}

absl::StatusOr<at::ScalarType> TypeOfDescr(const std::string& descr) {
  // One-byte types may be written with any byte-order mark.
  if (descr == "|u1" || descr == "<u1" || descr == ">u1" || descr == "=u1") {
    return at::kByte;
  }
  if (descr == "|i1" || descr == "<i1" || descr == ">i1" || descr == "=i1") {
    return at::kChar;
  }
  if (descr == "<i4") return at::kInt;
  if (descr == "<i8") return at::kLong;
  if (descr == "<f4") return at::kFloat;
  if (descr == "<f8") return at::kDouble;
  return absl::InvalidArgumentError(absl::StrCat(
      "dtype '", descr,
      "' is not supported; supported: uint8, int8, int32, int64, float32, "
      "float64 (little-endian)"));
}

}  // namespace

std::string NumpyTypeName(at::ScalarType type) {
  switch (type) {
    case at::kByte:
      return "uint8";
    case at::kChar:
      return "int8";
    case at::kInt:
      return "int32";
    case at::kLong:
      return "int64";
    case at::kFloat:
      return "float32";
    case at::kDouble:
      return "float64";
    default:
      return std::string(c10::toString(type));
  }
}

absl::StatusOr<at::Tensor> DecodeNpy(absl::string_view bytes) {
  if (bytes.size() < 10 || !absl::StartsWith(bytes, kMagic)) {
    return absl::InvalidArgumentError(
        "not an .npy file (it does not start with \\x93NUMPY)");
  }
  const int major = static_cast<unsigned char>(bytes[6]);
  size_t header_length = 0;
  size_t preamble = 0;
  if (major == 1) {
    header_length = static_cast<unsigned char>(bytes[8]) |
                    (static_cast<size_t>(static_cast<unsigned char>(bytes[9])) << 8);
    preamble = 10;
  } else if (major == 2 || major == 3) {
    if (bytes.size() < 12) {
      return absl::InvalidArgumentError("truncated .npy header");
    }
    for (int i = 3; i >= 0; --i) {
      header_length = (header_length << 8) |
                      static_cast<unsigned char>(bytes[8 + i]);
    }
    preamble = 12;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat(".npy format version ", major, " is not supported (1 to 3)"));
  }
  if (header_length > bytes.size() - preamble) {
    return absl::InvalidArgumentError(absl::StrCat(
        "truncated .npy file: its header needs ", header_length, " bytes, ",
        bytes.size() - preamble, " follow"));
  }
  const absl::string_view header = bytes.substr(preamble, header_length);
  FEATVIZ_ASSIGN_OR_RETURN(std::string descr, DictValue(header, "descr"));
  FEATVIZ_ASSIGN_OR_RETURN(std::string order, DictValue(header, "fortran_order"));
  FEATVIZ_ASSIGN_OR_RETURN(std::string shape_text, DictValue(header, "shape"));
  if (descr.size() < 2 || (descr.front() != '\'' && descr.front() != '"') ||
      descr.back() != descr.front()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "dtype ", descr.substr(0, 40),
        " is not supported (structured arrays and objects are not images)"));
  }
  descr = descr.substr(1, descr.size() - 2);
  FEATVIZ_ASSIGN_OR_RETURN(const at::ScalarType type, TypeOfDescr(descr));
  if (order != "False" && order != "True") {
    return absl::InvalidArgumentError(absl::StrCat(
        "the .npy header's fortran_order is '", order.substr(0, 20), "'"));
  }
  const bool fortran = order == "True";
  absl::string_view inner = shape_text;
  if (!absl::ConsumePrefix(&inner, "(") || !absl::ConsumeSuffix(&inner, ")")) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the .npy header's shape '", shape_text.substr(0, 40),
        "' is not a tuple"));
  }
  std::vector<int64_t> shape;
  const uint64_t item = c10::elementSize(type);
  const uint64_t data_bytes = bytes.size() - preamble - header_length;
  uint64_t count = 1;
  bool overflow = false;
  for (absl::string_view part : absl::StrSplit(inner, ',', absl::SkipWhitespace())) {
    int64_t dim = 0;
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(part), &dim) || dim < 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "the .npy header's shape '", shape_text.substr(0, 40),
          "' is not a tuple of sizes"));
    }
    const uint64_t d = static_cast<uint64_t>(dim);
    if (d > 0 && count > std::numeric_limits<uint64_t>::max() / item / d) {
      overflow = true;
    } else {
      count *= d;
    }
    shape.push_back(dim);
  }
  if (shape.size() > kMaxDims) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the array has ", shape.size(), " dimensions; at most ", kMaxDims));
  }
  if (overflow || count * item != data_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the .npy header says ", NumpyTypeName(type), " [",
        absl::StrJoin(shape, ", "), "] (",
        overflow ? std::string("more than 2^64") : absl::StrCat(count * item),
        " bytes) but ", data_bytes,
        " bytes of data follow (truncated or padded file)"));
  }
  std::vector<int64_t> stored = shape;
  if (fortran) std::reverse(stored.begin(), stored.end());
  at::Tensor tensor = at::empty(stored, at::TensorOptions().dtype(type));
  if (data_bytes > 0) {
    std::memcpy(tensor.data_ptr(), bytes.data() + preamble + header_length,
                data_bytes);
  }
  if (fortran && tensor.dim() > 1) {
    std::vector<int64_t> reverse(tensor.dim());
    for (int64_t d = 0; d < tensor.dim(); ++d) reverse[d] = tensor.dim() - 1 - d;
    tensor = tensor.permute(reverse).contiguous();
  }
  return tensor;
}

absl::StatusOr<std::map<std::string, at::Tensor>> DecodeNpz(
    absl::string_view bytes, int64_t max_bytes) {
  FEATVIZ_ASSIGN_OR_RETURN(std::vector<ZipEntry> entries,
                           ReadZip(bytes, max_bytes));
  std::map<std::string, at::Tensor> out;
  for (ZipEntry& entry : entries) {
    absl::string_view name = entry.name;
    if (!absl::ConsumeSuffix(&name, ".npy")) continue;  // Not an array.
    absl::StatusOr<at::Tensor> array = DecodeNpy(entry.data);
    if (!array.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(entry.name, ": ", array.status().message()));
    }
    out[std::string(name)] = *std::move(array);
    entry.data = std::string();  // The array has its own copy.
  }
  return out;
}

absl::StatusOr<std::string> EncodeNpz(
    const std::map<std::string, at::Tensor>& arrays) {
  std::vector<ZipEntry> entries;
  for (const auto& [name, tensor] : arrays) {
    absl::StatusOr<std::string> npy = EncodeNpy(tensor);
    if (!npy.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, ": ", npy.status().message()));
    }
    entries.push_back({absl::StrCat(name, ".npy"), *std::move(npy)});
  }
  return WriteZip(entries);
}

}  // namespace featviz::core
