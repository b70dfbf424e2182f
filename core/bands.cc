#include "core/bands.h"

#include <algorithm>
#include <exception>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/files.h"
#include "core/image.h"
#include "core/status_macros.h"
#include "core/torch_status.h"

namespace featviz::core {
namespace {

// Grid cells are magnified until they are at least this many pixels wide,
// as in the clients' contact sheets, so that a 32x32 band and its label can
// be read.
constexpr int64_t kMinPanelPixels = 112;

std::string Shape(const at::Tensor& t) {
  return absl::StrCat("[", absl::StrJoin(t.sizes(), ", "), "]");
}

absl::Status CheckBatch(const at::Tensor& images, const char* what) {
  if (!images.defined() || images.dim() != 4 || images.size(1) < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, " must be [B, C, H, W], got shape ",
        images.defined() ? Shape(images) : std::string("(undefined)")));
  }
  if (!c10::isFloatingType(images.scalar_type())) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " must be floating-point in [0, 1], got ",
                     c10::toString(images.scalar_type())));
  }
  return absl::OkStatus();
}

}  // namespace

BandDisplay BandDisplayFor(const ModelCard& card, int64_t image_channels) {
  BandDisplay display;
  if (image_channels != card.channels) return display;  // Gray stimuli.
  const bool plain = card.channels == 1 || card.channels == 3;
  if (plain && card.band_names.empty() && card.composite.empty()) {
    return display;
  }
  display.composite = card.CompositeBands();
  display.names = card.band_names;
  for (int64_t k = static_cast<int64_t>(display.names.size());
       k < card.channels; ++k) {
    display.names.push_back(absl::StrCat("band ", k));
  }
  return display;
}

absl::StatusOr<at::Tensor> CompositeImages(
    const at::Tensor& images, const std::vector<int64_t>& composite) {
  FEATVIZ_RETURN_IF_ERROR(CheckBatch(images, "images to composite"));
  const int64_t channels = images.size(1);
  if (composite.empty()) {
    if (channels == 1 || channels == 3) return images;
    return absl::InvalidArgumentError(absl::StrCat(
        "images of shape ", Shape(images), " have ", channels,
        " bands, and no composite says which make the picture (a model "
        "card's \"bands\": {\"composite\": [r, g, b]})"));
  }
  if (composite.size() != 1 && composite.size() != 3) {
    return absl::InvalidArgumentError(absl::StrCat(
        "composite [", absl::StrJoin(composite, ", "), "] must list 3 band "
        "indices (red, green, blue) or 1 (gray)"));
  }
  for (int64_t band : composite) {
    if (band < 0 || band >= channels) {
      return absl::InvalidArgumentError(absl::StrCat(
          "composite band ", band, " is out of range for images of ",
          channels, " bands (shape ", Shape(images), ")"));
    }
  }
  try {
    const at::Tensor index =
        at::tensor(composite, at::kLong).to(images.device());
    return images.index_select(1, index);
  } catch (const std::exception& e) {
    return TorchError(e, "compositing bands");
  }
}

absl::StatusOr<at::Tensor> BandSheet(const at::Tensor& images,
                                     const std::vector<std::string>& names,
                                     const std::vector<std::string>& rows,
                                     int64_t scale) {
  FEATVIZ_RETURN_IF_ERROR(CheckBatch(images, "images for a band sheet"));
  const int64_t batch = images.size(0);
  const int64_t channels = images.size(1);
  if (!names.empty() && static_cast<int64_t>(names.size()) != channels) {
    return absl::InvalidArgumentError(
        absl::StrCat("band sheet has ", names.size(), " band names for ",
                     channels, " bands (shape ", Shape(images), ")"));
  }
  if (!rows.empty() && static_cast<int64_t>(rows.size()) != batch) {
    return absl::InvalidArgumentError(
        absl::StrCat("band sheet has ", rows.size(), " row labels for ", batch,
                     " images"));
  }
  if (scale < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("band sheet scale must not be negative, got ", scale));
  }
  GridOptions options;
  options.columns = channels;
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t c = 0; c < channels; ++c) {
      const std::string name =
          names.empty() ? absl::StrCat("band ", c) : names[c];
      if (!rows.empty()) {
        options.labels.push_back(absl::StrCat(rows[b], " ", name));
      } else {
        options.labels.push_back(batch > 1 ? absl::StrCat(b, ": ", name)
                                           : name);
      }
    }
  }
  options.scale = scale > 0 ? scale
                            : std::max<int64_t>(1, (kMinPanelPixels +
                                                    images.size(3) - 1) /
                                                       std::max<int64_t>(
                                                           images.size(3), 1));
  at::Tensor panels;
  try {
    panels = images.reshape({batch * channels, 1, images.size(2),
                             images.size(3)});
  } catch (const std::exception& e) {
    return TorchError(e, "laying out the band sheet");
  }
  return MakeGrid(panels, options);
}

std::string BandSheetPath(const std::string& path) {
  return SiblingPngPath(path, "bands");
}

}  // namespace featviz::core
