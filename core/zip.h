// ZIP archives as NumPy's .npz files use them, and gzip streams: read from bytes (entries
// stored or deflated, ZIP64 sizes and offsets, as numpy.savez and
// numpy.savez_compressed write them) and written (stored, no compression,
// under 4 GiB),
// with zlib for deflate and CRC-32. No encryption, no multi-disk archives.
#ifndef FEATVIZ_CORE_ZIP_H_
#define FEATVIZ_CORE_ZIP_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace featviz::core {

struct ZipEntry {
  std::string name;
  std::string data;  // Uncompressed.
};

// Every entry of the archive `bytes`, in central-directory order. Entries
// may hold at most `max_bytes` uncompressed bytes together, so that a small
// archive cannot inflate into gigabytes. InvalidArgument naming what is
// wrong (not a ZIP archive, a truncated or corrupt entry, a CRC mismatch,
// an unsupported method or encryption); ResourceExhausted past `max_bytes`.
absl::StatusOr<std::vector<ZipEntry>> ReadZip(absl::string_view bytes,
                                              int64_t max_bytes);

// An archive holding `entries` stored uncompressed, in order.
// InvalidArgument when the archive would pass 4 GiB (this writer makes no
// ZIP64 records) or a name passes 65535 bytes.
absl::StatusOr<std::string> WriteZip(const std::vector<ZipEntry>& entries);

// True when `bytes` start with gzip's magic (1f 8b).
bool IsGzip(absl::string_view bytes);

// The gzip stream `bytes` (every member) uncompressed, at most `max_bytes`.
// InvalidArgument for corrupt or truncated data; ResourceExhausted past
// `max_bytes`.
absl::StatusOr<std::string> Gunzip(absl::string_view bytes, int64_t max_bytes);

}  // namespace featviz::core

#endif  // FEATVIZ_CORE_ZIP_H_
