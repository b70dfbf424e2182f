// A render result's images as the CLI shows them: the float images (the
// tensor, else the PNGs decoded), their pictures (the composite of images
// with bands, RenderResult.composite), the band sheet of such images, and
// the contact-sheet geometry every command shares.
#ifndef FEATVIZ_CLIENT_RESULT_IMAGES_H_
#define FEATVIZ_CLIENT_RESULT_IMAGES_H_

#include <cstdint>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "absl/status/statusor.h"
#include "core/image.h"
#include "featviz/v1/featviz.pb.h"

namespace featviz::client {

// Grid cells are magnified until they are at least this many pixels wide, so
// that a 28x28 digit can be seen.
inline constexpr int64_t kMinCellPixels = 112;

// A contact sheet's layout for `count` images `width` pixels wide: `scale`
// (0: cells of at least `min_cell` pixels) and `columns` (0: one row up to 10
// images, else a square).
core::GridOptions SheetLayout(int64_t count, int64_t width, int64_t scale,
                              int64_t columns,
                              int64_t min_cell = kMinCellPixels);

// The result's images [B, C, H, W]: its tensor, else its PNGs decoded (8
// bits; pictures already, so the composite of images with bands).
// InvalidArgument when it carries neither.
absl::StatusOr<at::Tensor> ResultImages(const featviz::v1::RenderResult& result);

// `images` (from ResultImages) as pictures of 1 or 3 channels: the result's
// composite of images with bands, the images themselves otherwise.
absl::StatusOr<at::Tensor> ResultPictures(const featviz::v1::RenderResult& result,
                                          const at::Tensor& images);

// Whether the result's images are bands to show one by one.
bool HasBands(const featviz::v1::RenderResult& result);

// The band sheet of `images` (from ResultImages, with bands): one row per
// image labelled `row_labels[i]` (empty: by index), one gray panel per band
// named as the result names it; from the result's band PNGs when `images`
// are already pictures (decoded PNGs).
absl::StatusOr<at::Tensor> ResultBandSheet(
    const featviz::v1::RenderResult& result, const at::Tensor& images,
    const std::vector<std::string>& row_labels, int64_t scale);

}  // namespace featviz::client

#endif  // FEATVIZ_CLIENT_RESULT_IMAGES_H_
