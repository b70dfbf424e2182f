#include "core/bands.h"

#include <ATen/ATen.h>
#include <unistd.h>

#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/image.h"
#include "core/model.h"
#include "core/model_card.h"
#include "core/objective.h"
#include "core/render.h"
#include "gtest/gtest.h"
#include "tests/core/test_paths.h"

namespace featviz::core {
namespace {

ModelCard Card(int64_t channels, std::vector<std::string> names = {},
               std::vector<int64_t> composite = {}) {
  ModelCard card;
  card.name = "m";
  card.channels = channels;
  card.height = 8;
  card.width = 8;
  card.band_names = std::move(names);
  card.composite = std::move(composite);
  return card;
}

// [1, C, 2, 2] whose band k is filled with k / 10.
at::Tensor Banded(int64_t channels) {
  return (at::arange(channels, at::kFloat) / 10.0f)
      .view({1, channels, 1, 1})
      .expand({1, channels, 2, 2})
      .contiguous();
}

TEST(BandDisplayFor, ShowsGrayAndRgbModelsAsTheyAre) {
  EXPECT_FALSE(BandDisplayFor(Card(1), 1).shows_bands());
  EXPECT_FALSE(BandDisplayFor(Card(3), 3).shows_bands());
  // Gray stimuli for an RGB model are one gray picture.
  EXPECT_FALSE(BandDisplayFor(Card(3, {}, {2, 1, 0}), 1).shows_bands());
}

TEST(BandDisplayFor, TakesTheCardsCompositeAndNamesForFourBands) {
  const BandDisplay d =
      BandDisplayFor(Card(4, {"red", "green", "blue", "nir"}, {0, 1, 3}), 4);
  ASSERT_TRUE(d.shows_bands());
  EXPECT_EQ(d.composite, (std::vector<int64_t>{0, 1, 3}));
  EXPECT_EQ(d.names, (std::vector<std::string>{"red", "green", "blue", "nir"}));
}

TEST(BandDisplayFor, DefaultsToTheFirstBandsAndIndexNames) {
  const BandDisplay four = BandDisplayFor(Card(4), 4);
  EXPECT_EQ(four.composite, (std::vector<int64_t>{0, 1, 2}));
  EXPECT_EQ(four.names,
            (std::vector<std::string>{"band 0", "band 1", "band 2", "band 3"}));
  // Two bands: the first alone, gray.
  EXPECT_EQ(BandDisplayFor(Card(2), 2).composite, (std::vector<int64_t>{0}));
}

TEST(BandDisplayFor, ShowsAThreeBandCardWithBandsAsBands) {
  // A BGR model: its card says which band is red.
  const BandDisplay d = BandDisplayFor(Card(3, {}, {2, 1, 0}), 3);
  ASSERT_TRUE(d.shows_bands());
  EXPECT_EQ(d.composite, (std::vector<int64_t>{2, 1, 0}));
}

TEST(CompositeImages, PicksTheCompositeBandsInOrder) {
  absl::StatusOr<at::Tensor> rgb = CompositeImages(Banded(5), {4, 0, 2});
  ASSERT_TRUE(rgb.ok()) << rgb.status();
  ASSERT_EQ(rgb->sizes(), (at::IntArrayRef{1, 3, 2, 2}));
  EXPECT_FLOAT_EQ((*rgb)[0][0][0][0].item<float>(), 0.4f);
  EXPECT_FLOAT_EQ((*rgb)[0][1][1][1].item<float>(), 0.0f);
  EXPECT_FLOAT_EQ((*rgb)[0][2][0][1].item<float>(), 0.2f);

  absl::StatusOr<at::Tensor> gray = CompositeImages(Banded(2), {1});
  ASSERT_TRUE(gray.ok()) << gray.status();
  EXPECT_EQ(gray->size(1), 1);
  EXPECT_FLOAT_EQ((*gray)[0][0][0][0].item<float>(), 0.1f);
}

TEST(CompositeImages, PassesGrayAndRgbWithoutACompositeAndRefusesOthers) {
  for (int64_t c : {1, 3}) {
    absl::StatusOr<at::Tensor> same = CompositeImages(Banded(c), {});
    ASSERT_TRUE(same.ok()) << same.status();
    EXPECT_EQ(same->size(1), c);
  }
  absl::StatusOr<at::Tensor> four = CompositeImages(Banded(4), {});
  ASSERT_FALSE(four.ok());
  EXPECT_TRUE(absl::StrContains(four.status().message(), "have 4 bands"))
      << four.status();
  EXPECT_TRUE(absl::StrContains(four.status().message(), "composite"))
      << four.status();
}

TEST(CompositeImages, RejectsABandOutOfRangeAndTwoBands) {
  absl::StatusOr<at::Tensor> out = CompositeImages(Banded(4), {0, 1, 4});
  ASSERT_FALSE(out.ok());
  EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(out.status().message(),
                                "composite band 4 is out of range for images "
                                "of 4 bands"))
      << out.status();
  absl::StatusOr<at::Tensor> two = CompositeImages(Banded(4), {0, 1});
  ASSERT_FALSE(two.ok());
  EXPECT_TRUE(absl::StrContains(two.status().message(), "3 band indices"))
      << two.status();
}

TEST(EncodePng, NamesTheWayToShowOtherBandCounts) {
  absl::StatusOr<std::string> png = EncodePng(Banded(4)[0]);
  ASSERT_FALSE(png.ok());
  EXPECT_TRUE(absl::StrContains(png.status().message(), "[4, 2, 2]"))
      << png.status();
  EXPECT_TRUE(absl::StrContains(png.status().message(), "core/bands.h"))
      << png.status();
}

TEST(BandSheet, HasOneLabelledGrayPanelPerBand) {
  const at::Tensor images = at::rand({1, 4, 32, 32});
  absl::StatusOr<at::Tensor> sheet =
      BandSheet(images, {"red", "green", "blue", "nir"});
  ASSERT_TRUE(sheet.ok()) << sheet.status();
  // 32-pixel bands are magnified 4x to 128; 4 panels and 5 paddings of 4.
  ASSERT_EQ(sheet->size(0), 3);
  EXPECT_EQ(sheet->size(2), 4 + 4 * (128 + 4));
  EXPECT_GT(sheet->size(1), 4 + 128 + 4);  // A label row under the panels.
  for (int64_t k = 0; k < 4; ++k) {
    const int64_t x = 4 + k * 132;
    const at::Tensor pixel = sheet->select(2, x).select(1, 4);  // [3]
    // Gray: the band's value in every colour.
    EXPECT_NEAR(pixel[0].item<float>(), images[0][k][0][0].item<float>(), 1e-6);
    EXPECT_NEAR(pixel[1].item<float>(), pixel[0].item<float>(), 1e-6);
    EXPECT_NEAR(pixel[2].item<float>(), pixel[0].item<float>(), 1e-6);
  }
}

TEST(BandSheet, LaysOutOneRowPerImage) {
  absl::StatusOr<at::Tensor> one = BandSheet(at::rand({1, 4, 16, 16}), {});
  absl::StatusOr<at::Tensor> two = BandSheet(at::rand({2, 4, 16, 16}), {});
  ASSERT_TRUE(one.ok()) << one.status();
  ASSERT_TRUE(two.ok()) << two.status();
  EXPECT_EQ(two->size(2), one->size(2));
  EXPECT_EQ(two->size(1), 2 * (one->size(1) - 4) + 4);
}

TEST(BandSheet, RejectsNamesAndRowsOfTheWrongCount) {
  absl::StatusOr<at::Tensor> names = BandSheet(at::rand({1, 4, 8, 8}), {"a", "b"});
  ASSERT_FALSE(names.ok());
  EXPECT_TRUE(absl::StrContains(names.status().message(),
                                "2 band names for 4 bands"))
      << names.status();
  absl::StatusOr<at::Tensor> rows =
      BandSheet(at::rand({2, 4, 8, 8}), {}, {"only one"});
  ASSERT_FALSE(rows.ok());
  EXPECT_TRUE(absl::StrContains(rows.status().message(),
                                "1 row labels for 2 images"))
      << rows.status();
}

TEST(BandSheetPath, PutsBandsBeforeThePngSuffix) {
  EXPECT_EQ(BandSheetPath("out/x.png"), "out/x.bands.png");
  EXPECT_EQ(BandSheetPath("X.PNG"), "X.bands.png");
  EXPECT_EQ(BandSheetPath("sheet"), "sheet.bands.png");
}

// A 4-band (RGB + NIR) model rendered in process: its composite and its
// band sheet encode to PNGs of the expected sizes.
TEST(MultiBandRender, RendersAFourBandModelToACompositeAndABandSheet) {
  absl::StatusOr<std::unique_ptr<Model>> model =
      Model::Load(testing::TestModel("multiband.pt"));
  ASSERT_TRUE(model.ok()) << model.status();
  ASSERT_EQ((*model)->card().channels, 4);
  ASSERT_EQ((*model)->card().band_names,
            (std::vector<std::string>{"red", "green", "blue", "nir"}));
  RenderOptions options;
  options.steps = 16;
  options.param.batch = 2;
  absl::StatusOr<RenderResult> result =
      Render(**model, Channel("conv2", 3), options);
  ASSERT_TRUE(result.ok()) << result.status();
  ASSERT_EQ(result->images.sizes(), (at::IntArrayRef{2, 4, 32, 32}));

  const BandDisplay display = BandDisplayFor((*model)->card(), 4);
  ASSERT_TRUE(display.shows_bands());
  absl::StatusOr<at::Tensor> pictures =
      CompositeImages(result->images, display.composite);
  ASSERT_TRUE(pictures.ok()) << pictures.status();
  absl::StatusOr<std::string> png = EncodePng((*pictures)[0]);
  ASSERT_TRUE(png.ok()) << png.status();
  absl::StatusOr<at::Tensor> decoded = DecodePng(*png);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(decoded->sizes(), (at::IntArrayRef{3, 32, 32}));
  // The composite's red is band 0, within 8-bit rounding.
  EXPECT_LT(((*decoded)[0] - result->images[0][0].clamp(0, 1)).abs().max().item<float>(),
            1.0f / 255 + 1e-6);

  absl::StatusOr<at::Tensor> sheet =
      BandSheet(result->images.narrow(0, 0, 1), display.names);
  ASSERT_TRUE(sheet.ok()) << sheet.status();
  absl::StatusOr<std::string> sheet_png = EncodePng(*sheet);
  ASSERT_TRUE(sheet_png.ok()) << sheet_png.status();
  absl::StatusOr<at::Tensor> sheet_decoded = DecodePng(*sheet_png);
  ASSERT_TRUE(sheet_decoded.ok()) << sheet_decoded.status();
  EXPECT_EQ(sheet_decoded->size(0), 3);
  EXPECT_EQ(sheet_decoded->size(2), 4 + 4 * (128 + 4));

  // Left for a person to look at.
  const std::string dir =
      absl::StrCat(::testing::TempDir(), "featviz_bands_test_", getpid());
  std::filesystem::create_directories(dir);
  ASSERT_TRUE(WritePng((*pictures)[0], dir + "/composite.png").ok());
  ASSERT_TRUE(WritePng(*sheet, dir + "/composite.bands.png").ok());
  std::printf("pictures in %s\n", dir.c_str());
}

}  // namespace
}  // namespace featviz::core
