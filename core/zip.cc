#include "core/zip.h"

#include <zlib.h>

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace featviz::core {
namespace {

constexpr uint32_t kLocalHeader = 0x04034b50;
constexpr uint32_t kCentralHeader = 0x02014b50;
constexpr uint32_t kEndOfCentral = 0x06054b50;
constexpr uint32_t kZip64EndOfCentral = 0x06064b50;
constexpr uint32_t kZip64Locator = 0x07064b50;
constexpr uint16_t kZip64Extra = 0x0001;
constexpr size_t kLocalHeaderBytes = 30;
constexpr size_t kCentralHeaderBytes = 46;
constexpr size_t kEndOfCentralBytes = 22;
constexpr size_t kZip64LocatorBytes = 20;
constexpr size_t kZip64EndOfCentralBytes = 56;
// Entries an archive may list; .npz files hold a handful.
constexpr uint64_t kMaxEntries = 4096;

// Little-endian reads with bounds checks against the whole archive.
class Reader {
 public:
  explicit Reader(absl::string_view bytes) : bytes_(bytes) {}
  bool Has(uint64_t offset, uint64_t length) const {
    return offset <= bytes_.size() && length <= bytes_.size() - offset;
  }
  uint64_t Le(uint64_t offset, int width) const {
    uint64_t value = 0;
    for (int i = width - 1; i >= 0; --i) {
      value = (value << 8) | static_cast<unsigned char>(bytes_[offset + i]);
    }
    return value;
  }
  absl::string_view Slice(uint64_t offset, uint64_t length) const {
    return bytes_.substr(offset, length);
  }
  uint64_t size() const { return bytes_.size(); }

 private:
  absl::string_view bytes_;
};

void PutLe(std::string& out, uint64_t value, int width) {
  for (int i = 0; i < width; ++i) {
    out.push_back(static_cast<char>((value >> (8 * i)) & 0xff));
  }
}

uint32_t Crc32(absl::string_view data) {
  uLong crc = crc32(0L, Z_NULL, 0);
  // zlib takes uInt lengths: feed large entries in pieces.
  while (!data.empty()) {
    const size_t n = std::min<size_t>(data.size(), 1u << 30);
    crc = crc32(crc, reinterpret_cast<const Bytef*>(data.data()),
                static_cast<uInt>(n));
    data.remove_prefix(n);
  }
  return static_cast<uint32_t>(crc);
}

absl::StatusOr<std::string> Inflate(absl::string_view compressed,
                                    uint64_t expected, const std::string& name) {
  std::string out(expected, '\0');
  z_stream stream = {};
  if (inflateInit2(&stream, -MAX_WBITS) != Z_OK) {
    return absl::InternalError("zlib: inflateInit2 failed");
  }
  stream.next_in =
      reinterpret_cast<Bytef*>(const_cast<char*>(compressed.data()));
  stream.next_out = reinterpret_cast<Bytef*>(out.data());
  uint64_t in_left = compressed.size();
  uint64_t out_left = expected;
  int result = Z_OK;
  while (result == Z_OK) {
    const uInt in_now = static_cast<uInt>(std::min<uint64_t>(in_left, 1u << 30));
    const uInt out_now =
        static_cast<uInt>(std::min<uint64_t>(out_left, 1u << 30));
    stream.avail_in = in_now;
    stream.avail_out = out_now;
    result = inflate(&stream, Z_NO_FLUSH);
    in_left -= in_now - stream.avail_in;
    out_left -= out_now - stream.avail_out;
    if (result == Z_OK && stream.avail_in == in_now &&
        stream.avail_out == out_now) {
      break;  // No progress: the data or the space ran out.
    }
  }
  inflateEnd(&stream);
  if (result != Z_STREAM_END || out_left != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "entry '", name, "' does not inflate to the ", expected,
        " bytes its header declares (corrupt or truncated)"));
  }
  return out;
}

}  // namespace

absl::StatusOr<std::vector<ZipEntry>> ReadZip(absl::string_view bytes,
                                              int64_t max_bytes) {
  const Reader in(bytes);
  if (in.size() < kEndOfCentralBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "not a ZIP archive: ", in.size(), " bytes is too short"));
  }
  // The end record is the last thing, before a comment of at most 64 KiB.
  uint64_t end = in.size() - kEndOfCentralBytes;
  const uint64_t lowest =
      in.size() > kEndOfCentralBytes + 0xffff ? end - 0xffff : 0;
  while (in.Le(end, 4) != kEndOfCentral) {
    if (end == lowest) {
      return absl::InvalidArgumentError(
          "not a ZIP archive: no end-of-central-directory record");
    }
    --end;
  }
  uint64_t entries = in.Le(end + 10, 2);
  uint64_t directory_size = in.Le(end + 12, 4);
  uint64_t directory = in.Le(end + 16, 4);
  if (in.Le(end + 4, 2) != 0 || in.Le(end + 6, 2) != 0) {
    return absl::InvalidArgumentError("multi-disk ZIP archives are not supported");
  }
  if (entries == 0xffff || directory_size == 0xffffffff ||
      directory == 0xffffffff) {
    if (end < kZip64LocatorBytes ||
        in.Le(end - kZip64LocatorBytes, 4) != kZip64Locator) {
      return absl::InvalidArgumentError(
          "corrupt ZIP archive: ZIP64 sizes without a ZIP64 locator");
    }
    const uint64_t record = in.Le(end - kZip64LocatorBytes + 8, 8);
    if (!in.Has(record, kZip64EndOfCentralBytes) ||
        in.Le(record, 4) != kZip64EndOfCentral) {
      return absl::InvalidArgumentError(
          "corrupt ZIP archive: bad ZIP64 end-of-central-directory record");
    }
    entries = in.Le(record + 32, 8);
    directory_size = in.Le(record + 40, 8);
    directory = in.Le(record + 48, 8);
  }
  if (entries > kMaxEntries) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ZIP archive lists ", entries, " entries; at most ", kMaxEntries));
  }
  if (!in.Has(directory, directory_size)) {
    return absl::InvalidArgumentError(
        "corrupt or truncated ZIP archive: the central directory lies outside "
        "the file");
  }

  std::vector<ZipEntry> out;
  uint64_t total = 0;
  uint64_t at = directory;
  for (uint64_t e = 0; e < entries; ++e) {
    if (!in.Has(at, kCentralHeaderBytes) || in.Le(at, 4) != kCentralHeader) {
      return absl::InvalidArgumentError(absl::StrCat(
          "corrupt ZIP archive: central directory entry ", e, " is damaged"));
    }
    const uint64_t flags = in.Le(at + 8, 2);
    const uint64_t method = in.Le(at + 10, 2);
    const uint32_t crc = static_cast<uint32_t>(in.Le(at + 16, 4));
    uint64_t compressed = in.Le(at + 20, 4);
    uint64_t size = in.Le(at + 24, 4);
    const uint64_t name_length = in.Le(at + 28, 2);
    const uint64_t extra_length = in.Le(at + 30, 2);
    const uint64_t comment_length = in.Le(at + 32, 2);
    uint64_t local = in.Le(at + 42, 4);
    if (!in.Has(at + kCentralHeaderBytes,
                name_length + extra_length + comment_length)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "corrupt ZIP archive: central directory entry ", e, " is cut"));
    }
    ZipEntry entry;
    entry.name = std::string(in.Slice(at + kCentralHeaderBytes, name_length));
    // ZIP64: the fields that read 0xffffffff are in the extra field, in
    // this order.
    uint64_t extra = at + kCentralHeaderBytes + name_length;
    const uint64_t extra_end = extra + extra_length;
    while (extra + 4 <= extra_end) {
      const uint64_t id = in.Le(extra, 2);
      const uint64_t length = in.Le(extra + 2, 2);
      if (extra + 4 + length > extra_end) break;
      if (id == kZip64Extra) {
        uint64_t field = extra + 4;
        for (uint64_t* value : {&size, &compressed, &local}) {
          if (*value != 0xffffffff) continue;
          if (field + 8 > extra + 4 + length) {
            return absl::InvalidArgumentError(absl::StrCat(
                "corrupt ZIP archive: entry '", entry.name,
                "' has a short ZIP64 field"));
          }
          *value = in.Le(field, 8);
          field += 8;
        }
      }
      extra += 4 + length;
    }
    at = extra_end + comment_length;

    if (flags & 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          "entry '", entry.name, "' is encrypted, which is not supported"));
    }
    if (method != 0 && method != 8) {
      return absl::InvalidArgumentError(absl::StrCat(
          "entry '", entry.name, "' uses compression method ", method,
          "; supported: 0 (stored) and 8 (deflate)"));
    }
    if (size > static_cast<uint64_t>(max_bytes) ||
        total > static_cast<uint64_t>(max_bytes) - size) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "the archive's entries hold more than ", max_bytes,
          " bytes uncompressed (entry '", entry.name, "' alone ", size, ")"));
    }
    total += size;
    if (!in.Has(local, kLocalHeaderBytes) || in.Le(local, 4) != kLocalHeader) {
      return absl::InvalidArgumentError(absl::StrCat(
          "corrupt or truncated ZIP archive: entry '", entry.name,
          "' has no local header"));
    }
    const uint64_t data = local + kLocalHeaderBytes + in.Le(local + 26, 2) +
                          in.Le(local + 28, 2);
    if (!in.Has(data, compressed)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "truncated ZIP archive: entry '", entry.name, "' is cut short"));
    }
    const absl::string_view raw = in.Slice(data, compressed);
    if (method == 0) {
      if (compressed != size) {
        return absl::InvalidArgumentError(absl::StrCat(
            "corrupt ZIP archive: stored entry '", entry.name, "' has ",
            compressed, " bytes but declares ", size));
      }
      entry.data = std::string(raw);
    } else {
      absl::StatusOr<std::string> inflated = Inflate(raw, size, entry.name);
      if (!inflated.ok()) return inflated.status();
      entry.data = *std::move(inflated);
    }
    if (Crc32(entry.data) != crc) {
      return absl::InvalidArgumentError(absl::StrCat(
          "corrupt ZIP archive: entry '", entry.name, "' fails its CRC-32"));
    }
    out.push_back(std::move(entry));
  }
  return out;
}

absl::StatusOr<std::string> WriteZip(const std::vector<ZipEntry>& entries) {
  constexpr uint64_t kLimit = 0xfffffffe;
  std::string out;
  std::string directory;
  for (const ZipEntry& entry : entries) {
    if (entry.name.size() > 0xffff) {
      return absl::InvalidArgumentError(absl::StrCat(
          "ZIP entry name of ", entry.name.size(), " bytes; at most 65535"));
    }
    const uint64_t offset = out.size();
    if (offset + kLocalHeaderBytes + entry.name.size() + entry.data.size() >
        kLimit) {
      return absl::InvalidArgumentError(
          "the archive would pass 4 GiB, which this writer does not support");
    }
    const uint32_t crc = Crc32(entry.data);
    // Version 2.0, no flags, stored, a fixed 1980-01-01 time stamp.
    auto common = [&](std::string& to) {
      PutLe(to, 20, 2);
      PutLe(to, 0, 2);
      PutLe(to, 0, 2);
      PutLe(to, 0, 2);
      PutLe(to, 0x21, 2);
      PutLe(to, crc, 4);
      PutLe(to, entry.data.size(), 4);
      PutLe(to, entry.data.size(), 4);
      PutLe(to, entry.name.size(), 2);
      PutLe(to, 0, 2);
    };
    PutLe(out, kLocalHeader, 4);
    common(out);
    out += entry.name;
    out += entry.data;
    PutLe(directory, kCentralHeader, 4);
    PutLe(directory, 20, 2);  // Made by: version 2.0.
    common(directory);
    PutLe(directory, 0, 2);  // Comment length.
    PutLe(directory, 0, 2);  // Disk.
    PutLe(directory, 0, 2);  // Internal attributes.
    PutLe(directory, 0, 4);  // External attributes.
    PutLe(directory, offset, 4);
    directory += entry.name;
  }
  const uint64_t directory_offset = out.size();
  if (directory_offset + directory.size() + kEndOfCentralBytes > kLimit ||
      entries.size() > 0xffff) {
    return absl::InvalidArgumentError(
        "the archive would pass 4 GiB or 65535 entries, which this writer "
        "does not support");
  }
  out += directory;
  PutLe(out, kEndOfCentral, 4);
  PutLe(out, 0, 2);
  PutLe(out, 0, 2);
  PutLe(out, entries.size(), 2);
  PutLe(out, entries.size(), 2);
  PutLe(out, directory.size(), 4);
  PutLe(out, directory_offset, 4);
  PutLe(out, 0, 2);
  return out;
}

bool IsGzip(absl::string_view bytes) {
  return bytes.size() >= 2 && static_cast<unsigned char>(bytes[0]) == 0x1f &&
         static_cast<unsigned char>(bytes[1]) == 0x8b;
}

absl::StatusOr<std::string> Gunzip(absl::string_view bytes, int64_t max_bytes) {
  z_stream stream = {};
  // 16 + MAX_WBITS: a gzip wrapper, not zlib's.
  if (inflateInit2(&stream, 16 + MAX_WBITS) != Z_OK) {
    return absl::InternalError("zlib: inflateInit2 failed");
  }
  std::string out;
  char buffer[1 << 16];
  absl::string_view in = bytes;
  int result = Z_OK;
  while (true) {
    if (stream.avail_in == 0 && !in.empty()) {
      const size_t n = std::min<size_t>(in.size(), 1u << 30);
      stream.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
      stream.avail_in = static_cast<uInt>(n);
      in.remove_prefix(n);
    }
    stream.next_out = reinterpret_cast<Bytef*>(buffer);
    stream.avail_out = sizeof(buffer);
    result = inflate(&stream, Z_NO_FLUSH);
    const size_t produced = sizeof(buffer) - stream.avail_out;
    if (static_cast<int64_t>(out.size() + produced) > max_bytes) {
      inflateEnd(&stream);
      return absl::ResourceExhaustedError(absl::StrCat(
          "the gzip data inflates to more than ", max_bytes, " bytes"));
    }
    out.append(buffer, produced);
    if (result == Z_STREAM_END) {
      // Concatenated members (gzip allows them): go on with the next.
      if (stream.avail_in == 0 && in.empty()) break;
      if (inflateReset(&stream) != Z_OK) break;
      continue;
    }
    if (result != Z_OK) break;
    if (produced == 0 && stream.avail_in == 0 && in.empty()) {
      result = Z_BUF_ERROR;  // The data ended inside a member.
      break;
    }
  }
  inflateEnd(&stream);
  if (result != Z_STREAM_END) {
    return absl::InvalidArgumentError(
        "corrupt or truncated gzip data");
  }
  return out;
}

}  // namespace featviz::core
