#include "core/digits.h"

#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <iterator>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/files.h"
#include "core/status_macros.h"

#define STB_TRUETYPE_IMPLEMENTATION
#define STBTT_STATIC
#include <stb_truetype.h>

namespace featviz::core {
namespace {

constexpr int64_t kSide = 28;
constexpr int64_t kBox = 20;
constexpr float kGlyphPixels = 96.0f;

// The glyph of `digit` as a [1, 1, kBox, kBox] coverage map, aspect kept.
absl::StatusOr<at::Tensor> Glyph(const stbtt_fontinfo& font, int digit) {
  const float scale = stbtt_ScaleForPixelHeight(&font, kGlyphPixels);
  int w = 0, h = 0, x0 = 0, y0 = 0;
  unsigned char* bitmap = stbtt_GetCodepointBitmap(
      &font, scale, scale, '0' + digit, &w, &h, &x0, &y0);
  if (bitmap == nullptr || w <= 0 || h <= 0) {
    if (bitmap != nullptr) stbtt_FreeBitmap(bitmap, nullptr);
    return absl::InvalidArgumentError(
        absl::StrCat("the font has no glyph for '", digit, "'"));
  }
  at::Tensor glyph =
      at::from_blob(bitmap, {1, 1, h, w}, at::kByte).to(at::kFloat) / 255.0;
  stbtt_FreeBitmap(bitmap, nullptr);
  // Pad to a square so resizing keeps the aspect ratio, as MNIST's framing.
  const int64_t side = std::max(w, h);
  glyph = at::constant_pad_nd(glyph, {(side - w) / 2, side - w - (side - w) / 2,
                                      (side - h) / 2, side - h - (side - h) / 2});
  return at::upsample_bilinear2d(glyph, {kBox, kBox}, /*align_corners=*/false);
}

}  // namespace

absl::StatusOr<DatasetPtr> DrawDigits(int64_t per_class, uint64_t seed,
                                      const std::string& font_path) {
  FEATVIZ_ASSIGN_OR_RETURN(const std::string file, ReadFile(font_path));
  const std::vector<unsigned char> bytes(file.begin(), file.end());
  stbtt_fontinfo font;
  if (bytes.size() < 12 ||
      !stbtt_InitFont(&font, bytes.data(),
                      stbtt_GetFontOffsetForIndex(bytes.data(), 0))) {
    return absl::InvalidArgumentError(
        absl::StrCat(font_path, " is not a TrueType font"));
  }

  at::NoGradGuard no_grad;
  at::Generator generator = at::detail::createCPUGenerator(seed);
  std::vector<at::Tensor> images;
  std::vector<int64_t> labels;
  for (int digit = 0; digit < 10; ++digit) {
    absl::StatusOr<at::Tensor> glyph = Glyph(font, digit);
    if (!glyph.ok()) return glyph.status();
    const int64_t pad = (kSide - kBox) / 2;
    const at::Tensor framed =
        at::constant_pad_nd(*glyph, {pad, pad, pad, pad})
            .expand({per_class, 1, kSide, kSide})
            .contiguous();
    // One random affine map per image: rotation, scale, shear, shift.
    const at::Tensor u = at::rand({per_class, 5}, generator) * 2 - 1;
    const at::Tensor angle = u.select(1, 0) * (15.0 * M_PI / 180.0);
    const at::Tensor scale = 1.0 + 0.12 * u.select(1, 1);
    const at::Tensor shear = 0.25 * u.select(1, 2);
    const at::Tensor cos = angle.cos() / scale, sin = angle.sin() / scale;
    const at::Tensor theta = at::stack(
        {at::stack({cos, -sin + shear, 0.1 * u.select(1, 3)}, 1),
         at::stack({sin, cos, 0.1 * u.select(1, 4)}, 1)},
        1);
    const at::Tensor grid = at::affine_grid_generator(
        theta, {per_class, 1, kSide, kSide}, /*align_corners=*/false);
    at::Tensor drawn = at::grid_sampler(framed, grid, /*interpolation=*/0,
                                        /*padding=*/0, /*align_corners=*/false);
    // Pen width: thicken about half of them, as handwriting varies.
    const at::Tensor thick = at::max_pool2d(drawn, {2, 2}, {1, 1}, {0, 0});
    const at::Tensor thick_full =
        at::constant_pad_nd(thick, {0, 1, 0, 1}).narrow(2, 0, kSide)
            .narrow(3, 0, kSide);
    const at::Tensor pick =
        (at::rand({per_class, 1, 1, 1}, generator) < 0.5).to(at::kFloat);
    drawn = (pick * thick_full + (1 - pick) * drawn).clamp(0, 1);
    images.push_back(drawn);
    labels.insert(labels.end(), per_class, digit);
  }
  auto dataset = std::make_shared<Dataset>();
  dataset->name = "digits";
  dataset->source = "drawn";
  dataset->images = at::cat(images);
  dataset->labels = at::tensor(labels, at::kLong);
  for (int digit = 0; digit < 10; ++digit) {
    dataset->class_names.push_back(absl::StrCat(digit));
  }
  return dataset;
}

}  // namespace featviz::core
