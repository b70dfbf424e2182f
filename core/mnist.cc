#include "core/mnist.h"

#include <zlib.h>

#include <cstdint>
#include <cstring>
#include <memory>

#include "absl/strings/str_cat.h"
#include "core/zip.h"

namespace featviz::core {
namespace {

// Reads the whole file, gunzipping when it is gzip'd (gzread passes plain
// files through unchanged).
absl::StatusOr<std::string> ReadMaybeGzipped(const std::string& path) {
  std::unique_ptr<gzFile_s, int (*)(gzFile)> file(gzopen(path.c_str(), "rb"),
                                                  gzclose);
  if (!file) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::string out;
  char buffer[1 << 16];
  int n;
  while ((n = gzread(file.get(), buffer, sizeof(buffer))) > 0) {
    out.append(buffer, n);
  }
  if (n < 0) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": corrupt gzip data"));
  }
  return out;
}

uint32_t BigEndian32(absl::string_view bytes, size_t offset) {
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data()) + offset;
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) |
         (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

// An IDX3 file's bytes (not gzip'd) as [N, 1, H, W] uint8.
absl::StatusOr<at::Tensor> ParseIdxImages(absl::string_view bytes,
                                          absl::string_view what) {
  if (bytes.size() < 16 || BigEndian32(bytes, 0) != 0x803) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " is not an IDX3 image file (magic 0x00000803)"));
  }
  const int64_t n = BigEndian32(bytes, 4);
  const int64_t h = BigEndian32(bytes, 8);
  const int64_t w = BigEndian32(bytes, 12);
  if (h <= 0 || w <= 0 || h > 4096 || w > 4096 ||
      static_cast<int64_t>(bytes.size()) != 16 + n * h * w) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": header says ", n, "x", h, "x", w, " but the file holds ",
        bytes.size() - 16, " pixel bytes"));
  }
  at::Tensor pixels = at::empty({n, 1, h, w}, at::kByte);
  std::memcpy(pixels.data_ptr<uint8_t>(), bytes.data() + 16, n * h * w);
  return pixels;
}

// An IDX1 file's bytes (not gzip'd) as [N] int64.
absl::StatusOr<at::Tensor> ParseIdxLabels(absl::string_view bytes,
                                          absl::string_view what) {
  if (bytes.size() < 8 || BigEndian32(bytes, 0) != 0x801) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " is not an IDX1 label file (magic 0x00000801)"));
  }
  const int64_t n = BigEndian32(bytes, 4);
  if (static_cast<int64_t>(bytes.size()) != 8 + n) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": header says ", n, " labels but the file holds ",
                     bytes.size() - 8));
  }
  at::Tensor labels = at::empty({n}, at::kByte);
  std::memcpy(labels.data_ptr<uint8_t>(), bytes.data() + 8, n);
  return labels.to(at::kLong);
}

// `bytes` gunzipped when they are gzip'd.
absl::StatusOr<std::string> MaybeGunzip(absl::string_view bytes,
                                        absl::string_view what,
                                        int64_t max_bytes) {
  if (!IsGzip(bytes)) return std::string(bytes);
  absl::StatusOr<std::string> plain = Gunzip(bytes, max_bytes);
  if (!plain.ok()) {
    return absl::Status(plain.status().code(),
                        absl::StrCat(what, ": ", plain.status().message()));
  }
  return plain;
}

}  // namespace

absl::StatusOr<at::Tensor> ReadIdxImages(const std::string& path) {
  absl::StatusOr<std::string> bytes = ReadMaybeGzipped(path);
  if (!bytes.ok()) return bytes.status();
  absl::StatusOr<at::Tensor> pixels = ParseIdxImages(*bytes, path);
  if (!pixels.ok()) return pixels.status();
  return pixels->to(at::kFloat) / 255.0;
}

absl::StatusOr<at::Tensor> ReadIdxLabels(const std::string& path) {
  absl::StatusOr<std::string> bytes = ReadMaybeGzipped(path);
  if (!bytes.ok()) return bytes.status();
  return ParseIdxLabels(*bytes, path);
}

absl::StatusOr<at::Tensor> DecodeIdxImages(absl::string_view bytes,
                                           absl::string_view what,
                                           int64_t max_bytes) {
  absl::StatusOr<std::string> plain = MaybeGunzip(bytes, what, max_bytes);
  if (!plain.ok()) return plain.status();
  return ParseIdxImages(*plain, what);
}

absl::StatusOr<at::Tensor> DecodeIdxLabels(absl::string_view bytes,
                                           absl::string_view what,
                                           int64_t max_bytes) {
  absl::StatusOr<std::string> plain = MaybeGunzip(bytes, what, max_bytes);
  if (!plain.ok()) return plain.status();
  return ParseIdxLabels(*plain, what);
}

absl::StatusOr<LabelledImages> LoadMnistTestSet(const std::string& dir) {
  LabelledImages out;
  absl::StatusOr<at::Tensor> images =
      ReadIdxImages(absl::StrCat(dir, "/t10k-images-idx3-ubyte.gz"));
  if (!images.ok()) return images.status();
  absl::StatusOr<at::Tensor> labels =
      ReadIdxLabels(absl::StrCat(dir, "/t10k-labels-idx1-ubyte.gz"));
  if (!labels.ok()) return labels.status();
  if (images->size(0) != labels->size(0)) {
    return absl::InvalidArgumentError(
        absl::StrCat(dir, ": ", images->size(0), " images but ",
                     labels->size(0), " labels"));
  }
  out.images = *std::move(images);
  out.labels = *std::move(labels);
  return out;
}

}  // namespace featviz::core
