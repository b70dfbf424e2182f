// NumPy's .npy files and .npz archives (core/npy.h), their ZIP container and
// gzip (core/zip.h), from bytes written here the way NumPy writes them.
#include "core/npy.h"

#include <zlib.h>

#include <cstring>
#include <map>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/image.h"
#include "core/zip.h"

namespace featviz::core {
namespace {

// A version 1.0 .npy file with `header` (the dict) and `data`.
std::string Npy(const std::string& header, const std::string& data) {
  std::string dict = header;
  while ((10 + dict.size() + 1) % 64 != 0) dict.push_back(' ');
  dict.push_back('\n');
  std::string out("\x93NUMPY\x01\x00", 8);
  out.push_back(static_cast<char>(dict.size() & 0xff));
  out.push_back(static_cast<char>(dict.size() >> 8));
  return out + dict + data;
}

template <typename T>
std::string Bytes(const std::vector<T>& values) {
  return std::string(reinterpret_cast<const char*>(values.data()),
                     values.size() * sizeof(T));
}

std::string Deflate(const std::string& data, int window_bits) {
  z_stream stream = {};
  deflateInit2(&stream, Z_BEST_COMPRESSION, Z_DEFLATED, window_bits, 8,
               Z_DEFAULT_STRATEGY);
  std::string out(deflateBound(&stream, data.size()) + 64, '\0');
  stream.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data.data()));
  stream.avail_in = data.size();
  stream.next_out = reinterpret_cast<Bytef*>(out.data());
  stream.avail_out = out.size();
  deflate(&stream, Z_FINISH);
  out.resize(stream.total_out);
  deflateEnd(&stream);
  return out;
}

TEST(DecodeNpy, ReadsEachSupportedTypeAndShape) {
  absl::StatusOr<at::Tensor> u8 = DecodeNpy(
      Npy("{'descr': '|u1', 'fortran_order': False, 'shape': (2, 3), }",
          Bytes(std::vector<uint8_t>{0, 1, 2, 253, 254, 255})));
  ASSERT_TRUE(u8.ok()) << u8.status();
  EXPECT_EQ(u8->scalar_type(), at::kByte);
  EXPECT_EQ(u8->sizes(), (std::vector<int64_t>{2, 3}));
  EXPECT_EQ((*u8)[1][2].item<int64_t>(), 255);

  absl::StatusOr<at::Tensor> f32 = DecodeNpy(
      Npy("{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }",
          Bytes(std::vector<float>{0.25f, 0.5f, 1.0f})));
  ASSERT_TRUE(f32.ok()) << f32.status();
  EXPECT_EQ(f32->scalar_type(), at::kFloat);
  EXPECT_FLOAT_EQ((*f32)[1].item<float>(), 0.5f);

  absl::StatusOr<at::Tensor> i32 = DecodeNpy(
      Npy("{'descr': '<i4', 'fortran_order': False, 'shape': (2,), }",
          Bytes(std::vector<int32_t>{7, -1})));
  ASSERT_TRUE(i32.ok()) << i32.status();
  EXPECT_EQ(i32->scalar_type(), at::kInt);
  EXPECT_EQ((*i32)[1].item<int64_t>(), -1);

  // What EncodeNpy writes reads back.
  const at::Tensor longs = at::arange(12, at::kLong).view({3, 4});
  absl::StatusOr<std::string> encoded = EncodeNpy(longs);
  ASSERT_TRUE(encoded.ok());
  absl::StatusOr<at::Tensor> decoded = DecodeNpy(*encoded);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_TRUE(at::equal(*decoded, longs));
}

TEST(DecodeNpy, FortranOrderIsTransposedIntoPlace) {
  // numpy.asfortranarray([[0, 1, 2], [3, 4, 5]]) stores columns first.
  absl::StatusOr<at::Tensor> t = DecodeNpy(
      Npy("{'descr': '|u1', 'fortran_order': True, 'shape': (2, 3), }",
          Bytes(std::vector<uint8_t>{0, 3, 1, 4, 2, 5})));
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_TRUE(at::equal(*t, at::arange(6, at::kByte).view({2, 3})));
  EXPECT_TRUE(t->is_contiguous());
}

TEST(DecodeNpy, RefusesWhatItCannotReadNamingTheProblem) {
  const std::string four = Bytes(std::vector<float>{0, 0, 0, 0});
  struct Case {
    std::string bytes;
    std::string says;
  };
  for (const Case& c : std::vector<Case>{
           {"PK\x03\x04 not numpy", "not an .npy file"},
           {Npy("{'descr': '>f4', 'fortran_order': False, 'shape': (4,), }", four),
            "dtype '>f4' is not supported"},
           {Npy("{'descr': '|O', 'fortran_order': False, 'shape': (4,), }", four),
            "dtype '|O'"},
           {Npy("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (4,), }",
                four),
            "structured"},
           {Npy("{'descr': '<f4', 'fortran_order': False, 'shape': (5,), }", four),
            "says float32 [5] (20 bytes) but 16 bytes"},
           {Npy("{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }", four),
            "truncated or padded"},
           {Npy("{'descr': '<f4', 'fortran_order': False, 'shape': "
                "(4294967296, 4294967296, 4294967296), }",
                four),
            "more than 2^64"},
           {Npy("{'descr': '<f4', 'fortran_order': False, 'shape': (-4,), }", four),
            "not a tuple of sizes"},
           {Npy("{'descr': '<f4', 'shape': (4,), }", four), "no 'fortran_order'"},
           {std::string("\x93NUMPY\x01\x00\xff\x7f{", 11), "truncated .npy file"},
       }) {
    absl::StatusOr<at::Tensor> t = DecodeNpy(c.bytes);
    ASSERT_FALSE(t.ok()) << c.says;
    EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_TRUE(absl::StrContains(t.status().message(), c.says))
        << t.status().message() << " should say " << c.says;
  }
}

TEST(Zip, WrittenArchivesReadBackAndNpzHoldsNamedArrays) {
  std::map<std::string, at::Tensor> arrays = {
      {"images", at::arange(24, at::kByte).view({2, 3, 4})},
      {"labels", at::tensor({4, 2}, at::kLong)}};
  absl::StatusOr<std::string> npz = EncodeNpz(arrays);
  ASSERT_TRUE(npz.ok()) << npz.status();
  absl::StatusOr<std::vector<ZipEntry>> entries = ReadZip(*npz, 1 << 20);
  ASSERT_TRUE(entries.ok()) << entries.status();
  ASSERT_EQ(entries->size(), 2u);
  EXPECT_EQ((*entries)[0].name, "images.npy");
  absl::StatusOr<std::map<std::string, at::Tensor>> back = DecodeNpz(*npz, 1 << 20);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_TRUE(at::equal(back->at("images"), arrays["images"]));
  EXPECT_TRUE(at::equal(back->at("labels"), arrays["labels"]));
}

// numpy.savez_compressed: deflated entries, and (numpy always forces it)
// ZIP64 extra fields; the central directory's sizes read 0xffffffff here so
// that the reader must take them from the ZIP64 field.
TEST(Zip, ReadsDeflatedEntriesWithZip64Sizes) {
  const std::string data = Npy(
      "{'descr': '|u1', 'fortran_order': False, 'shape': (1000,), }",
      std::string(1000, '\x07'));
  const std::string packed = Deflate(data, -MAX_WBITS);
  const uint32_t crc = static_cast<uint32_t>(
      crc32(0, reinterpret_cast<const Bytef*>(data.data()), data.size()));
  auto le = [](std::string& out, uint64_t v, int n) {
    for (int i = 0; i < n; ++i) out.push_back(static_cast<char>(v >> (8 * i)));
  };
  const std::string name = "images.npy";
  std::string zip;
  le(zip, 0x04034b50, 4);
  le(zip, 45, 2);
  le(zip, 0, 2);
  le(zip, 8, 2);
  le(zip, 0, 4);
  le(zip, crc, 4);
  le(zip, 0xffffffff, 4);
  le(zip, 0xffffffff, 4);
  le(zip, name.size(), 2);
  le(zip, 20, 2);
  zip += name;
  le(zip, 1, 2);
  le(zip, 16, 2);
  le(zip, data.size(), 8);
  le(zip, packed.size(), 8);
  zip += packed;
  const uint64_t directory = zip.size();
  std::string central;
  le(central, 0x02014b50, 4);
  le(central, 45, 2);
  le(central, 45, 2);
  le(central, 0, 2);
  le(central, 8, 2);
  le(central, 0, 4);
  le(central, crc, 4);
  le(central, 0xffffffff, 4);
  le(central, 0xffffffff, 4);
  le(central, name.size(), 2);
  le(central, 20, 2);
  le(central, 0, 2);
  le(central, 0, 2);
  le(central, 0, 2);
  le(central, 0, 4);
  le(central, 0, 4);
  central += name;
  le(central, 1, 2);
  le(central, 16, 2);
  le(central, data.size(), 8);
  le(central, packed.size(), 8);
  zip += central;
  le(zip, 0x06054b50, 4);
  le(zip, 0, 4);
  le(zip, 1, 2);
  le(zip, 1, 2);
  le(zip, central.size(), 4);
  le(zip, directory, 4);
  le(zip, 0, 2);

  absl::StatusOr<std::map<std::string, at::Tensor>> arrays = DecodeNpz(zip, 1 << 20);
  ASSERT_TRUE(arrays.ok()) << arrays.status();
  EXPECT_EQ(arrays->at("images").size(0), 1000);
  EXPECT_EQ(arrays->at("images")[999].item<int64_t>(), 7);

  // The same archive may not inflate past the caller's bound.
  absl::StatusOr<std::vector<ZipEntry>> bomb = ReadZip(zip, 500);
  EXPECT_EQ(bomb.status().code(), absl::StatusCode::kResourceExhausted);
  // A flipped data byte fails the CRC or the inflate.
  std::string corrupt = zip;
  corrupt[30 + name.size() + 20 + 3] ^= 0x55;
  EXPECT_EQ(ReadZip(corrupt, 1 << 20).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(Zip, RefusesWhatIsNotAWholeArchive) {
  absl::StatusOr<std::string> npz =
      EncodeNpz({{"images", at::zeros({2, 2}, at::kByte)}});
  ASSERT_TRUE(npz.ok());
  EXPECT_TRUE(absl::StrContains(ReadZip("hello", 100).status().message(),
                                "not a ZIP archive"));
  // Cut in the middle: the end record is gone.
  EXPECT_EQ(ReadZip(npz->substr(0, npz->size() / 2), 1 << 20).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(Gunzip, InflatesGzipAndBoundsTheOutput) {
  const std::string text(100000, 'a');
  const std::string gz = Deflate(text, 16 + MAX_WBITS);
  EXPECT_TRUE(IsGzip(gz));
  EXPECT_FALSE(IsGzip(text));
  absl::StatusOr<std::string> back = Gunzip(gz, 1 << 20);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, text);
  EXPECT_EQ(Gunzip(gz, 1000).status().code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(Gunzip(gz.substr(0, gz.size() / 2), 1 << 20).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace featviz::core
