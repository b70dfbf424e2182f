#include "client/result_images.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "client/proto_convert.h"
#include "core/bands.h"
#include "core/status_macros.h"

namespace featviz::client {

namespace v1 = featviz::v1;

core::GridOptions SheetLayout(int64_t count, int64_t width, int64_t scale,
                              int64_t columns, int64_t min_cell) {
  core::GridOptions grid;
  grid.scale = scale > 0 ? scale
                         : std::max<int64_t>(1, (min_cell + width - 1) /
                                                    std::max<int64_t>(width, 1));
  grid.columns = columns > 0 ? columns
                 : count <= 10
                     ? count
                     : static_cast<int64_t>(std::ceil(std::sqrt(count)));
  return grid;
}

absl::StatusOr<at::Tensor> ResultImages(const v1::RenderResult& result) {
  if (result.has_images()) {
    FEATVIZ_ASSIGN_OR_RETURN(at::Tensor images,
                             TensorFromProto(result.images()));
    if (images.dim() != 4) {
      return absl::InternalError(absl::StrCat(
          "the server sent images of shape ",
          ShapeToString(result.images().shape()), ", not [B, C, H, W]"));
    }
    return images;
  }
  if (result.png_size() == 0) {
    return absl::InvalidArgumentError(
        "the result carries no images (neither a tensor nor PNGs)");
  }
  // A job submitted without tensors: its PNGs (8 bits) will do.
  std::vector<at::Tensor> decoded;
  for (const std::string& png : result.png()) {
    FEATVIZ_ASSIGN_OR_RETURN(at::Tensor image, core::DecodePng(png));
    decoded.push_back(std::move(image));
  }
  return at::stack(decoded);
}

bool HasBands(const v1::RenderResult& result) {
  return result.composite_size() > 0;
}

absl::StatusOr<at::Tensor> ResultPictures(const v1::RenderResult& result,
                                          const at::Tensor& images) {
  // Decoded PNGs are pictures already.
  if (!HasBands(result) || !result.has_images()) {
    return core::CompositeImages(images, {});
  }
  return core::CompositeImages(
      images, std::vector<int64_t>(result.composite().begin(),
                                   result.composite().end()));
}

absl::StatusOr<at::Tensor> ResultBandSheet(
    const v1::RenderResult& result, const at::Tensor& images,
    const std::vector<std::string>& row_labels, int64_t scale) {
  if (!HasBands(result)) {
    return absl::FailedPreconditionError(
        "the result's images have no bands to show");
  }
  if (result.has_images()) {
    return core::BandSheet(
        images,
        std::vector<std::string>(result.band_names().begin(),
                                 result.band_names().end()),
        row_labels, scale);
  }
  // Only PNGs came back: the server's sheet of each image, one under
  // another.
  if (result.band_png_size() == 0) {
    return absl::FailedPreconditionError(
        "the result carries neither image tensors nor band sheets");
  }
  std::vector<at::Tensor> sheets;
  for (const std::string& png : result.band_png()) {
    FEATVIZ_ASSIGN_OR_RETURN(at::Tensor sheet, core::DecodePng(png));
    sheets.push_back(std::move(sheet));
  }
  core::GridOptions rows;
  rows.columns = 1;
  rows.padding = 0;
  if (row_labels.size() == sheets.size()) rows.labels = row_labels;
  return core::MakeGrid(at::stack(sheets), rows);
}

}  // namespace featviz::client
