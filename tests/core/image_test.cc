#include "core/image.h"

#include <ATen/ATen.h>
#include <png.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "gtest/gtest.h"

namespace featviz::core {
namespace {

using ::testing::TempDir;

// Every 8-bit level appears, so a round trip checks the whole quantiser.
at::Tensor AllLevels(int64_t channels, int64_t height, int64_t width) {
  return at::arange(channels * height * width, at::kLong)
      .remainder(256)
      .to(at::kFloat)
      .div(255.0f)
      .reshape({channels, height, width});
}

std::string UniquePath(const std::string& name) {
  return absl::StrCat(TempDir(), "featviz_image_test_", getpid(), "_", name);
}

// PNGs in layouts EncodePng never writes (alpha, palette, 16-bit), made with
// libpng's simplified API so that the test needs no setjmp of its own.
std::string SimplifiedPng(png_uint_32 format, png_uint_32 width,
                          png_uint_32 height, const void* pixels,
                          const void* colormap = nullptr,
                          png_uint_32 colormap_entries = 0) {
  png_image image;
  std::memset(&image, 0, sizeof(image));
  image.version = PNG_IMAGE_VERSION;
  image.width = width;
  image.height = height;
  image.format = format;
  image.colormap_entries = colormap_entries;
  png_alloc_size_t size = 0;
  if (!png_image_write_to_memory(&image, nullptr, &size, 0, pixels, 0,
                                 colormap)) {
    ADD_FAILURE() << "libpng sizing failed: " << image.message;
    return "";
  }
  std::string out(size, '\0');
  if (!png_image_write_to_memory(&image, out.data(), &size, 0, pixels, 0,
                                 colormap)) {
    ADD_FAILURE() << "libpng writing failed: " << image.message;
    return "";
  }
  out.resize(size);
  return out;
}

// IHDR follows the 8-byte signature, 4-byte length and 4-byte type.
int PngBitDepth(const std::string& png) { return png[24]; }
int PngColorType(const std::string& png) { return png[25]; }

// ---------------------------------------------------------------------------
// PNG.

TEST(Png, StartsWithPngSignature) {
  absl::StatusOr<std::string> png = EncodePng(at::zeros({1, 2, 2}));
  ASSERT_TRUE(png.ok()) << png.status();
  ASSERT_GE(png->size(), 8u);
  EXPECT_EQ(png->substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
}

TEST(Png, RoundTripsGrayImageExactly) {
  const at::Tensor image = AllLevels(1, 16, 20);
  absl::StatusOr<std::string> png = EncodePng(image);
  ASSERT_TRUE(png.ok()) << png.status();
  EXPECT_EQ(PngColorType(*png), PNG_COLOR_TYPE_GRAY);
  absl::StatusOr<at::Tensor> decoded = DecodePng(*png);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  ASSERT_EQ(decoded->sizes(), image.sizes());
  EXPECT_TRUE(at::equal(*decoded, image));
}

TEST(Png, RoundTripsRgbImageExactly) {
  const at::Tensor image = AllLevels(3, 9, 31);
  absl::StatusOr<std::string> png = EncodePng(image);
  ASSERT_TRUE(png.ok()) << png.status();
  EXPECT_EQ(PngColorType(*png), PNG_COLOR_TYPE_RGB);
  absl::StatusOr<at::Tensor> decoded = DecodePng(*png);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  ASSERT_EQ(decoded->sizes(), image.sizes());
  EXPECT_TRUE(at::equal(*decoded, image));
}

TEST(Png, QuantisesToNearestEightBitLevel) {
  const at::Tensor image = at::tensor({0.1f, 0.5f, 0.9f}).reshape({1, 1, 3});
  absl::StatusOr<at::Tensor> decoded = DecodePng(EncodePng(image).value());
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_TRUE(
      at::allclose(*decoded, image, /*rtol=*/0, /*atol=*/0.5 / 255 + 1e-6));
}

TEST(Png, ClampsValuesOutsideUnitRange) {
  const at::Tensor image =
      at::tensor({-3.0f, -0.01f, 1.01f, 7.0f, NAN}).reshape({1, 1, 5});
  absl::StatusOr<at::Tensor> decoded = DecodePng(EncodePng(image).value());
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  const at::Tensor expected =
      at::tensor({0.0f, 0.0f, 1.0f, 1.0f, 0.0f}).reshape({1, 1, 5});
  EXPECT_TRUE(at::equal(*decoded, expected)) << *decoded;
}

TEST(Png, AcceptsDoubleAndNonContiguousImages) {
  const at::Tensor image = AllLevels(3, 8, 6).to(at::kDouble).transpose(1, 2);
  absl::StatusOr<at::Tensor> decoded = DecodePng(EncodePng(image).value());
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_TRUE(at::equal(*decoded, image.to(at::kFloat)));
}

TEST(Png, RejectsShapesThatAreNotChannelsHeightWidth) {
  for (const at::Tensor& bad :
       {at::zeros({4, 4}), at::zeros({1, 1, 4, 4}), at::zeros({2, 4, 4}),
        at::zeros({4, 4, 4}), at::zeros({3, 0, 4})}) {
    absl::StatusOr<std::string> png = EncodePng(bad);
    ASSERT_FALSE(png.ok());
    EXPECT_EQ(png.status().code(), absl::StatusCode::kInvalidArgument);
    const std::string shape =
        absl::StrCat("[", absl::StrJoin(bad.sizes(), ", "), "]");
    EXPECT_TRUE(absl::StrContains(png.status().message(), shape))
        << png.status();
  }
}

TEST(Png, RejectsIntegerAndUndefinedImages) {
  EXPECT_EQ(EncodePng(at::zeros({1, 2, 2}, at::kByte)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(EncodePng(at::Tensor()).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(Png, RejectsCorruptBytes) {
  const std::string good = EncodePng(AllLevels(3, 32, 32)).value();
  std::string flipped = good;
  flipped[flipped.size() / 2] ^= 0x55;  // inside IDAT: its CRC fails
  std::string bad_ihdr = good;
  bad_ihdr[17] ^= 0x01;  // width, with a stale CRC
  const std::vector<std::string> corrupt = {
      "",
      "not a png at all",
      good.substr(0, 8),
      good.substr(0, 40),
      good.substr(0, good.size() / 2),
      good.substr(0, good.size() - 5),
      flipped,
      bad_ihdr,
      good.substr(0, 8) + std::string(100, '\xff'),
  };
  for (size_t i = 0; i < corrupt.size(); ++i) {
    absl::StatusOr<at::Tensor> decoded = DecodePng(corrupt[i]);
    ASSERT_FALSE(decoded.ok()) << "case " << i;
    EXPECT_EQ(decoded.status().code(), absl::StatusCode::kInvalidArgument)
        << "case " << i << ": " << decoded.status();
  }
}

TEST(Png, SurvivesRandomlyMutatedBytes) {
  const std::string good = EncodePng(AllLevels(3, 12, 12)).value();
  std::mt19937 rng(1234);
  std::uniform_int_distribution<size_t> position(0, good.size() - 1);
  std::uniform_int_distribution<int> byte(0, 255);
  for (int trial = 0; trial < 500; ++trial) {
    std::string mutated = good;
    for (int k = 0; k < 1 + trial % 4; ++k) {
      mutated[position(rng)] = static_cast<char>(byte(rng));
    }
    absl::StatusOr<at::Tensor> decoded = DecodePng(mutated);
    if (!decoded.ok()) {
      EXPECT_EQ(decoded.status().code(), absl::StatusCode::kInvalidArgument)
          << decoded.status();
    }
  }
}

TEST(Png, DecodesGrayAlphaDroppingAlpha) {
  const uint8_t pixels[] = {0, 255, 128, 0, 255, 10};  // (gray, alpha) x 3
  const std::string png = SimplifiedPng(PNG_FORMAT_GA, 3, 1, pixels);
  ASSERT_EQ(PngColorType(png), PNG_COLOR_TYPE_GRAY_ALPHA);
  absl::StatusOr<at::Tensor> decoded = DecodePng(png);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  const at::Tensor expected =
      at::tensor({0.0f, 128.0f, 255.0f}).div(255.0f).reshape({1, 1, 3});
  EXPECT_TRUE(at::equal(*decoded, expected)) << *decoded;
}

TEST(Png, DecodesRgbaDroppingAlpha) {
  const uint8_t pixels[] = {255, 0, 0, 0, 0, 128, 255, 77};
  const std::string png = SimplifiedPng(PNG_FORMAT_RGBA, 2, 1, pixels);
  ASSERT_EQ(PngColorType(png), PNG_COLOR_TYPE_RGB_ALPHA);
  absl::StatusOr<at::Tensor> decoded = DecodePng(png);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  const at::Tensor expected =
      at::tensor({255.0f, 0.0f, 0.0f, 128.0f, 0.0f, 255.0f})
          .div(255.0f)
          .reshape({3, 1, 2});
  EXPECT_TRUE(at::equal(*decoded, expected)) << *decoded;
}

TEST(Png, DecodesPaletteImageWithTransparencyToRgb) {
  const uint8_t colormap[] = {10, 20, 30, 255, 200, 100, 0, 0};  // RGBA x 2
  const uint8_t indices[] = {0, 1, 1, 0};
  const std::string png =
      SimplifiedPng(PNG_FORMAT_RGBA_COLORMAP, 2, 2, indices, colormap, 2);
  ASSERT_EQ(PngColorType(png), PNG_COLOR_TYPE_PALETTE);
  absl::StatusOr<at::Tensor> decoded = DecodePng(png);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  ASSERT_EQ(decoded->sizes(), (std::vector<int64_t>{3, 2, 2}));
  auto pixels = decoded->accessor<float, 3>();
  EXPECT_EQ(pixels[0][0][0], 10.0f / 255.0f);
  EXPECT_EQ(pixels[1][0][0], 20.0f / 255.0f);
  EXPECT_EQ(pixels[2][0][0], 30.0f / 255.0f);
  EXPECT_EQ(pixels[0][0][1], 200.0f / 255.0f);
  EXPECT_EQ(pixels[1][1][0], 100.0f / 255.0f);
  EXPECT_EQ(pixels[2][1][1], 30.0f / 255.0f);
}

TEST(Png, DecodesSixteenBitGrayWithFullPrecision) {
  const uint16_t pixels[] = {0, 1, 256, 32768, 65534, 65535};
  const std::string png = SimplifiedPng(PNG_FORMAT_LINEAR_Y, 6, 1, pixels);
  ASSERT_EQ(PngBitDepth(png), 16);
  absl::StatusOr<at::Tensor> decoded = DecodePng(png);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  ASSERT_EQ(decoded->sizes(), (std::vector<int64_t>{1, 1, 6}));
  auto decoded_pixels = decoded->accessor<float, 3>();
  for (int x = 0; x < 6; ++x) {
    EXPECT_EQ(decoded_pixels[0][0][x], static_cast<float>(pixels[x]) / 65535.0f)
        << "x = " << x;
  }
}

TEST(Png, WritesAndReadsFiles) {
  const std::string path = UniquePath("round_trip.png");
  const at::Tensor image = AllLevels(3, 5, 7);
  ASSERT_TRUE(WritePng(image, path).ok());
  absl::StatusOr<at::Tensor> read = ReadPng(path);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_TRUE(at::equal(*read, image));
  std::remove(path.c_str());
}

TEST(Png, FileErrorsNameThePath) {
  const std::string unwritable = "/nonexistent-featviz-dir/out.png";
  absl::Status written = WritePng(at::zeros({1, 2, 2}), unwritable);
  ASSERT_FALSE(written.ok());
  EXPECT_TRUE(absl::StrContains(written.message(), unwritable)) << written;

  const std::string missing = UniquePath("missing.png");
  absl::StatusOr<at::Tensor> read = ReadPng(missing);
  ASSERT_FALSE(read.ok());
  EXPECT_EQ(read.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(absl::StrContains(read.status().message(), missing))
      << read.status();

  const std::string garbage = UniquePath("garbage.png");
  std::FILE* file = std::fopen(garbage.c_str(), "wb");
  ASSERT_NE(file, nullptr);
  std::fputs("garbage", file);
  std::fclose(file);
  read = ReadPng(garbage);
  ASSERT_FALSE(read.ok());
  EXPECT_EQ(read.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(read.status().message(), garbage));
  std::remove(garbage.c_str());
}

TEST(Png, EncodesCudaTensors) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA";
  const at::Tensor image = AllLevels(3, 4, 4);
  absl::StatusOr<at::Tensor> decoded =
      DecodePng(EncodePng(image.to(at::kCUDA)).value());
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_TRUE(at::equal(*decoded, image));
}

// ---------------------------------------------------------------------------
// Grids.

at::Tensor Digits(int64_t n, int64_t channels = 1) {
  return at::rand({n, channels, 28, 28}, at::kFloat);
}

std::vector<std::string> DigitLabels(int n) {
  std::vector<std::string> labels;
  for (int i = 0; i < n; ++i) labels.push_back(std::to_string(i));
  return labels;
}

TEST(Grid, HasExpectedSizeWithoutLabels) {
  GridOptions options;
  options.columns = 5;
  options.scale = 2;
  options.padding = 4;
  absl::StatusOr<at::Tensor> grid = MakeGrid(Digits(10), options);
  ASSERT_TRUE(grid.ok()) << grid.status();
  // Width: 4 + 5 * (56 + 4); height: 4 + 2 * (56 + 4).
  EXPECT_EQ(grid->sizes(), (std::vector<int64_t>{3, 124, 304}));
}

TEST(Grid, HasExpectedSizeWithLabels) {
  GridOptions options;
  options.columns = 5;
  options.scale = 2;
  options.padding = 4;
  options.labels = DigitLabels(10);
  absl::StatusOr<at::Tensor> grid = MakeGrid(Digits(10), options);
  ASSERT_TRUE(grid.ok()) << grid.status();
  // Cells 56 px wide get a 1x font: a 12-pixel label row under each cell.
  EXPECT_EQ(grid->sizes(), (std::vector<int64_t>{3, 148, 304}));

  options.scale = 4;
  grid = MakeGrid(Digits(10), options);
  ASSERT_TRUE(grid.ok()) << grid.status();
  // Cells 112 px wide get a 2x font: 24-pixel label rows.
  // Width: 4 + 5 * (112 + 4); height: 4 + 2 * (112 + 24 + 4).
  EXPECT_EQ(grid->sizes(), (std::vector<int64_t>{3, 284, 584}));
}

TEST(Grid, DefaultsToCeilSqrtColumns) {
  GridOptions options;
  options.padding = 1;
  // 10 images: 4 columns, 3 rows.
  absl::StatusOr<at::Tensor> grid = MakeGrid(Digits(10), options);
  ASSERT_TRUE(grid.ok()) << grid.status();
  EXPECT_EQ(grid->sizes(), (std::vector<int64_t>{3, 1 + 3 * 29, 1 + 4 * 29}));
  // 9 images: exactly 3 x 3.
  grid = MakeGrid(Digits(9), options);
  ASSERT_TRUE(grid.ok()) << grid.status();
  EXPECT_EQ(grid->sizes(), (std::vector<int64_t>{3, 1 + 3 * 29, 1 + 3 * 29}));
}

TEST(Grid, UsesNoMoreColumnsThanImages) {
  GridOptions options;
  options.columns = 8;
  options.padding = 2;
  absl::StatusOr<at::Tensor> grid = MakeGrid(Digits(3), options);
  ASSERT_TRUE(grid.ok()) << grid.status();
  EXPECT_EQ(grid->sizes(), (std::vector<int64_t>{3, 2 + 30, 2 + 3 * 30}));
}

TEST(Grid, CellPixelsEqualMagnifiedInput) {
  const at::Tensor images = Digits(10, 3);
  GridOptions options;
  options.columns = 5;
  options.scale = 2;
  options.padding = 4;
  options.labels = DigitLabels(10);
  absl::StatusOr<at::Tensor> grid = MakeGrid(images, options);
  ASSERT_TRUE(grid.ok()) << grid.status();
  auto sheet = grid->accessor<float, 3>();
  auto input = images.accessor<float, 4>();
  // Image 7 sits in row 1, column 2.
  const int64_t x0 = 4 + 2 * (56 + 4);
  const int64_t y0 = 4 + 1 * (56 + 12 + 4);
  for (int64_t c = 0; c < 3; ++c) {
    for (int64_t y = 0; y < 56; ++y) {
      for (int64_t x = 0; x < 56; ++x) {
        ASSERT_EQ(sheet[c][y0 + y][x0 + x], input[7][c][y / 2][x / 2])
            << "c=" << c << " y=" << y << " x=" << x;
      }
    }
  }
  // The padding around it is background.
  EXPECT_EQ(sheet[0][y0 - 1][x0], 1.0f);
  EXPECT_EQ(sheet[1][y0][x0 - 1], 1.0f);
  EXPECT_EQ(sheet[2][y0][x0 + 56], 1.0f);
}

TEST(Grid, ExpandsGrayToRgbAndClamps) {
  const at::Tensor images =
      at::tensor({-1.0f, 0.25f, 0.5f, 2.0f}).reshape({1, 1, 2, 2});
  GridOptions options;
  options.padding = 0;
  absl::StatusOr<at::Tensor> grid = MakeGrid(images, options);
  ASSERT_TRUE(grid.ok()) << grid.status();
  const at::Tensor expected_channel =
      at::tensor({0.0f, 0.25f, 0.5f, 1.0f}).reshape({2, 2});
  ASSERT_EQ(grid->sizes(), (std::vector<int64_t>{3, 2, 2}));
  for (int64_t c = 0; c < 3; ++c) {
    EXPECT_TRUE(at::equal((*grid)[c], expected_channel)) << *grid;
  }
}

TEST(Grid, LabelsPutDarkPixelsOnlyInTheLabelRow) {
  // White pictures on a white sheet: every dark pixel is label ink.
  const at::Tensor images = at::ones({4, 1, 28, 28});
  GridOptions options;
  options.columns = 2;
  options.scale = 2;
  options.padding = 4;
  options.labels = {"0", "1", "22", "label"};
  absl::StatusOr<at::Tensor> grid = MakeGrid(images, options);
  ASSERT_TRUE(grid.ok()) << grid.status();
  const at::Tensor dark = grid->lt(0.5).all(0);  // [H, W]
  const int64_t label_h = 12;
  for (int64_t i = 0; i < 4; ++i) {
    const int64_t x0 = 4 + (i % 2) * (56 + 4);
    const int64_t label_y = 4 + (i / 2) * (56 + label_h + 4) + 56;
    const at::Tensor row = dark.narrow(0, label_y, label_h).narrow(1, x0, 56);
    EXPECT_GT(row.sum().item<int64_t>(), 3) << "label " << i;
    // Centred: ink columns balance around the cell's middle.
    const at::Tensor columns = row.any(0).nonzero();
    const double middle =
        (columns.min().item<int64_t>() + columns.max().item<int64_t>() + 1) /
        2.0;
    EXPECT_NEAR(middle, 28.0, 1.0) << "label " << i;
  }
  // Nothing dark outside label rows and label columns.
  int64_t label_pixels = 0;
  for (int64_t i = 0; i < 4; ++i) {
    const int64_t x0 = 4 + (i % 2) * (56 + 4);
    const int64_t label_y = 4 + (i / 2) * (56 + label_h + 4) + 56;
    label_pixels += dark.narrow(0, label_y, label_h)
                        .narrow(1, x0, 56)
                        .sum()
                        .item<int64_t>();
  }
  EXPECT_EQ(dark.sum().item<int64_t>(), label_pixels);
}

TEST(Grid, DifferentLabelsDrawDifferentGlyphs) {
  GridOptions options;
  options.padding = 0;
  options.columns = 2;
  options.labels = {"1", "7"};
  absl::StatusOr<at::Tensor> grid = MakeGrid(at::ones({2, 1, 28, 28}), options);
  ASSERT_TRUE(grid.ok()) << grid.status();
  const at::Tensor left = grid->narrow(1, 28, 12).narrow(2, 0, 28);
  const at::Tensor right = grid->narrow(1, 28, 12).narrow(2, 28, 28);
  EXPECT_FALSE(at::equal(left, right));
}

TEST(Grid, EveryLabelOfASheetHasTheSameFontSize) {
  // A short and a long class name under neighbouring pictures: the long one
  // needs the smallest size, and the short one is drawn at it too, so that
  // the sheet reads as one (not "sad" large and "sad and stressed" tiny).
  GridOptions options;
  options.padding = 0;
  options.columns = 2;
  options.scale = 5;  // 140-pixel cells.
  options.labels = {"sad", "sad and stressed"};
  absl::StatusOr<at::Tensor> grid = MakeGrid(at::ones({2, 1, 28, 28}), options);
  ASSERT_TRUE(grid.ok()) << grid.status();
  const int64_t cell = 140;
  const at::Tensor labels = grid->narrow(1, cell, grid->size(1) - cell);
  auto ink_rows = [&](int64_t column) {
    const at::Tensor dark =
        labels.narrow(2, column * cell, cell).lt(0.5).all(0);  // [h, w]
    return dark.any(1).sum().item<int64_t>();
  };
  EXPECT_GT(ink_rows(0), 0);
  EXPECT_EQ(ink_rows(0), ink_rows(1));
}

TEST(Grid, DrawsLightTextOnDarkBackground) {
  GridOptions options;
  options.background = 0.0f;
  options.labels = {"8"};
  absl::StatusOr<at::Tensor> grid =
      MakeGrid(at::zeros({1, 1, 28, 28}), options);
  ASSERT_TRUE(grid.ok()) << grid.status();
  EXPECT_GT(grid->gt(0.5).sum().item<int64_t>(), 3);
}

TEST(Grid, ToleratesLongAndNonAsciiLabels) {
  GridOptions options;
  options.labels = {"a label far wider than its tiny cell", "caf\xc3\xa9\n\x7f",
                    ""};
  absl::StatusOr<at::Tensor> grid = MakeGrid(at::ones({3, 1, 8, 8}), options);
  ASSERT_TRUE(grid.ok()) << grid.status();
  // The long label is clipped to its cell: the padding column stays white.
  const int64_t padding = options.padding;
  EXPECT_TRUE(grid->narrow(2, padding + 8, padding).ge(1.0).all().item<bool>());
}

// The label band [H', W'] of cell `column` of a one-row sheet of white
// `cell`-pixel pictures without padding: true where there is ink.
at::Tensor LabelInk(const at::Tensor& sheet, int64_t cell, int64_t column) {
  return sheet.narrow(1, cell, sheet.size(1) - cell)
      .narrow(2, column * cell, cell)
      .lt(0.5)
      .all(0);
}

TEST(Grid, LabelsTooLongForTheirCellsKeepAMarginAndEndInAnEllipsis) {
  // "h_stripes 1.00" under 28-pixel neighbours without padding: each is cut
  // and ends in "...", and a blank column stays at both edges of each cell,
  // so the two never run into one another.
  const std::string label = "h_stripes 1.00";
  GridOptions options;
  options.padding = 0;
  options.columns = 2;
  options.labels = {label, label};
  absl::StatusOr<at::Tensor> grid = MakeGrid(at::ones({2, 1, 28, 28}), options);
  ASSERT_TRUE(grid.ok()) << grid.status();
  for (int64_t column = 0; column < 2; ++column) {
    const at::Tensor ink = LabelInk(*grid, 28, column);
    EXPECT_GT(ink.sum().item<int64_t>(), 3) << "cell " << column;
    EXPECT_FALSE(ink.select(1, 0).any().item<bool>()) << "cell " << column;
    EXPECT_FALSE(ink.select(1, 27).any().item<bool>()) << "cell " << column;
  }
  // What is drawn is the label's start and "...", whole.
  GridOptions one;
  one.padding = 0;
  const at::Tensor drawn = LabelInk(*grid, 28, 0);
  bool found = false;
  for (size_t keep = 0; keep < label.size() && !found; ++keep) {
    std::string shorter = label.substr(0, keep);
    while (!shorter.empty() && shorter.back() == ' ') shorter.pop_back();
    one.labels = {shorter + "..."};
    absl::StatusOr<at::Tensor> alone = MakeGrid(at::ones({1, 1, 28, 28}), one);
    ASSERT_TRUE(alone.ok()) << alone.status();
    found = at::equal(LabelInk(*alone, 28, 0), drawn);
  }
  EXPECT_TRUE(found) << "the cut label is no prefix of it followed by ...";
}

TEST(Grid, LabelsThatFitAreDrawnWholeInsideTheMargins) {
  GridOptions options;
  options.padding = 0;
  options.columns = 2;
  options.scale = 4;  // 112-pixel cells: size 2 unless a label is too long.
  options.labels = {"7 1.00", "h_stripes 1.00"};
  absl::StatusOr<at::Tensor> grid = MakeGrid(at::ones({2, 1, 28, 28}), options);
  ASSERT_TRUE(grid.ok()) << grid.status();
  // The longer label needs size 1 within the margins; the sheet has one
  // size, so its label row is 12 pixels high.
  EXPECT_EQ(grid->size(1), 112 + 12);
  GridOptions alone = options;
  alone.columns = 1;
  alone.labels = {"h_stripes 1.00"};
  absl::StatusOr<at::Tensor> whole =
      MakeGrid(at::ones({1, 1, 28, 28}), alone);
  ASSERT_TRUE(whole.ok()) << whole.status();
  // Not cut: the same ink as when it is alone on its sheet.
  EXPECT_TRUE(at::equal(LabelInk(*grid, 112, 1), LabelInk(*whole, 112, 0)));
}

TEST(Grid, RejectsBadInputs) {
  GridOptions wrong_labels;
  wrong_labels.labels = {"only one"};
  GridOptions zero_scale;
  zero_scale.scale = 0;
  GridOptions negative_padding;
  negative_padding.padding = -1;
  GridOptions negative_columns;
  negative_columns.columns = -2;
  GridOptions bad_background;
  bad_background.background = 2.0f;
  GridOptions huge_scale;
  huge_scale.scale = int64_t{1} << 40;
  const struct {
    at::Tensor images;
    GridOptions options;
  } cases[] = {
      {at::Tensor(), {}},
      {at::zeros({3, 28, 28}), {}},
      {at::zeros({2, 2, 28, 28}), {}},
      {at::zeros({0, 1, 28, 28}), {}},
      {at::zeros({2, 1, 28, 28}, at::kLong), {}},
      {at::zeros({2, 1, 28, 28}), wrong_labels},
      {at::zeros({2, 1, 28, 28}), zero_scale},
      {at::zeros({2, 1, 28, 28}), negative_padding},
      {at::zeros({2, 1, 28, 28}), negative_columns},
      {at::zeros({2, 1, 28, 28}), bad_background},
      {at::zeros({2, 1, 28, 28}), huge_scale},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); ++i) {
    absl::StatusOr<at::Tensor> grid =
        MakeGrid(cases[i].images, cases[i].options);
    ASSERT_FALSE(grid.ok()) << "case " << i;
    EXPECT_EQ(grid.status().code(), absl::StatusCode::kInvalidArgument)
        << "case " << i << ": " << grid.status();
  }
}

// ---------------------------------------------------------------------------
// NumPy.

struct ParsedNpy {
  std::string header;
  std::string data;
};

// Checks the fixed .npy 1.0 preamble and splits header from data.
ParsedNpy ParseNpy(const std::string& npy) {
  EXPECT_GE(npy.size(), 10u);
  EXPECT_EQ(npy.substr(0, 6), "\x93NUMPY");
  EXPECT_EQ(npy[6], '\x01');
  EXPECT_EQ(npy[7], '\x00');
  const size_t header_len =
      static_cast<uint8_t>(npy[8]) |
      (static_cast<size_t>(static_cast<uint8_t>(npy[9])) << 8);
  EXPECT_EQ((10 + header_len) % 64, 0u);
  EXPECT_LE(10 + header_len, npy.size());
  ParsedNpy parsed;
  parsed.header = npy.substr(10, header_len);
  parsed.data = npy.substr(10 + header_len);
  EXPECT_EQ(parsed.header.back(), '\n');
  return parsed;
}

std::string RawBytes(const at::Tensor& tensor) {
  const at::Tensor contiguous = tensor.contiguous();
  return std::string(static_cast<const char*>(contiguous.data_ptr()),
                     contiguous.nbytes());
}

TEST(Npy, HeaderDescribesDtypeOrderAndShape) {
  const ParsedNpy parsed =
      ParseNpy(EncodeNpy(at::zeros({2, 3}, at::kFloat)).value());
  EXPECT_EQ(parsed.header.rfind("{'descr': '<f4', 'fortran_order': False, "
                                "'shape': (2, 3), }",
                                0),
            0u)
      << parsed.header;
  EXPECT_EQ(parsed.header.find_first_not_of(' ', parsed.header.find('}') + 1),
            parsed.header.size() - 1);
}

TEST(Npy, WritesScalarAndOneDimensionalShapesAsPythonTuples) {
  EXPECT_TRUE(absl::StrContains(
      ParseNpy(EncodeNpy(at::scalar_tensor(1.5, at::kDouble)).value()).header,
      "'shape': (), "));
  EXPECT_TRUE(absl::StrContains(
      ParseNpy(EncodeNpy(at::zeros({5})).value()).header, "'shape': (5,), "));
  EXPECT_TRUE(absl::StrContains(
      ParseNpy(EncodeNpy(at::zeros({1, 0, 4})).value()).header,
      "'shape': (1, 0, 4), "));
}

TEST(Npy, DataBytesEqualTheTensor) {
  const at::Tensor tensor = at::randn({3, 4, 5});
  const ParsedNpy parsed = ParseNpy(EncodeNpy(tensor).value());
  EXPECT_EQ(parsed.data, RawBytes(tensor));
}

TEST(Npy, WritesNonContiguousTensorsInCOrder) {
  const at::Tensor tensor = at::arange(12, at::kLong).reshape({3, 4}).t();
  const ParsedNpy parsed = ParseNpy(EncodeNpy(tensor).value());
  EXPECT_TRUE(absl::StrContains(parsed.header, "'shape': (4, 3), "));
  EXPECT_EQ(parsed.data, RawBytes(tensor.contiguous()));
}

TEST(Npy, EncodesEachSupportedDtype) {
  const struct {
    at::ScalarType type;
    const char* descr;
  } cases[] = {{at::kFloat, "'<f4'"},
               {at::kDouble, "'<f8'"},
               {at::kLong, "'<i8'"},
               {at::kByte, "'|u1'"}};
  for (const auto& c : cases) {
    const at::Tensor tensor = at::arange(6, c.type).reshape({2, 3});
    const ParsedNpy parsed = ParseNpy(EncodeNpy(tensor).value());
    EXPECT_TRUE(
        absl::StrContains(parsed.header, absl::StrCat("'descr': ", c.descr)))
        << parsed.header;
    EXPECT_EQ(parsed.data, RawBytes(tensor));
  }
}

TEST(Npy, RejectsUnsupportedDtypes) {
  // int32 is written (labels may be int32); narrower and odd types are not.
  absl::StatusOr<std::string> int32 = EncodeNpy(at::zeros({2}, at::kInt));
  ASSERT_TRUE(int32.ok()) << int32.status();
  EXPECT_TRUE(absl::StrContains(*int32, "'descr': '<i4'"));
  for (at::ScalarType type : {at::kHalf, at::kBool, at::kShort}) {
    absl::StatusOr<std::string> npy = EncodeNpy(at::zeros({2}, type));
    ASSERT_FALSE(npy.ok()) << c10::toString(type);
    EXPECT_EQ(npy.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_TRUE(absl::StrContains(npy.status().message(), c10::toString(type)))
        << npy.status();
  }
  EXPECT_FALSE(EncodeNpy(at::Tensor()).ok());
}

TEST(Npy, WriteErrorsNameThePath) {
  const std::string path = "/nonexistent-featviz-dir/out.npy";
  absl::Status status = WriteNpy(at::zeros({2}), path);
  ASSERT_FALSE(status.ok());
  EXPECT_TRUE(absl::StrContains(status.message(), path)) << status;
}

TEST(Npy, NumpyLoadsWrittenFiles) {
  if (access("/usr/bin/python3", X_OK) != 0 ||
      std::system("/usr/bin/python3 -c 'import numpy' >/dev/null 2>&1") != 0) {
    GTEST_SKIP() << "/usr/bin/python3 with numpy not available";
  }
  const std::string floats = UniquePath("floats.npy");
  const std::string longs = UniquePath("longs.npy");
  const std::string bytes = UniquePath("bytes.npy");
  const std::string scalar = UniquePath("scalar.npy");
  ASSERT_TRUE(
      WriteNpy(at::arange(24, at::kFloat).mul(0.5).reshape({2, 3, 4}), floats)
          .ok());
  ASSERT_TRUE(
      WriteNpy(at::arange(-3, 3, at::kLong).reshape({3, 2}).t(), longs).ok());
  ASSERT_TRUE(WriteNpy(at::arange(250, 256, at::kByte), bytes).ok());
  ASSERT_TRUE(WriteNpy(at::scalar_tensor(2.25, at::kDouble), scalar).ok());
  const std::string script =
      "import sys, numpy as np\n"
      "f, l, b, s = (np.load(p) for p in sys.argv[1:])\n"
      "assert f.dtype == np.float32 and f.shape == (2, 3, 4), f\n"
      "assert (f.ravel() == np.arange(24, dtype=np.float32) * 0.5).all(), f\n"
      "assert l.dtype == np.int64 and l.shape == (2, 3), l\n"
      "assert (l == np.arange(-3, 3).reshape(3, 2).T).all(), l\n"
      "assert b.dtype == np.uint8 and (b == np.arange(250, 256)).all(), b\n"
      "assert s.dtype == np.float64 and s.shape == () and s == 2.25, s\n";
  const std::string command =
      absl::StrCat("/usr/bin/python3 -c \"", script, "\" ", floats, " ", longs,
                   " ", bytes, " ", scalar);
  EXPECT_EQ(std::system(command.c_str()), 0) << command;
  for (const std::string& path : {floats, longs, bytes, scalar}) {
    std::remove(path.c_str());
  }
}

}  // namespace
}  // namespace featviz::core
