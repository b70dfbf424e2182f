// Pictures of images whose channels are bands (RGB + near infrared,
// multispectral: any count from 1 to the model's): the composite the model
// card chooses (`"bands": {"composite": [r, g, b]}`) as one gray or RGB
// picture, and a sheet with one gray panel per band, labelled with the
// band's name. PNGs and contact sheets (core/image.h) take 1 or 3 channels;
// these turn any other count into something they can show.
#ifndef FEATVIZ_CORE_BANDS_H_
#define FEATVIZ_CORE_BANDS_H_

#include <cstdint>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "absl/status/statusor.h"
#include "core/model_card.h"

namespace featviz::core {

// How a render's images are shown.
struct BandDisplay {
  // 3 band indices (red, green, blue) or 1 (gray) that make the picture;
  // empty: the images are shown as they are (1 or 3 channels).
  std::vector<int64_t> composite;
  // Every band's name (set exactly when `composite` is).
  std::vector<std::string> names;

  // Whether the images are bands to composite (and get a band sheet).
  bool shows_bands() const { return !composite.empty(); }
};

// The display of `image_channels`-channel images rendered for the model of
// `card`. Images with the model's channels are bands when there are other
// than 1 or 3 of them, or when the card has a "bands" key (a BGR model, three
// spectral bands): then the card's composite (CompositeBands()) and names
// (band k is "band k" when unnamed). Anything else (a gray or RGB model, gray
// stimuli for an RGB model) is shown as it is.
BandDisplay BandDisplayFor(const ModelCard& card, int64_t image_channels);

// `images` ([B, C, H, W]) as pictures: [B, 3, H, W] (three composite bands)
// or [B, 1, H, W] (one), the bands of `composite` in its order. An empty
// `composite` returns 1- and 3-channel images as they are and refuses others.
// InvalidArgument names a band index outside [0, C - 1] or a composite of
// other than 1 or 3 bands.
absl::StatusOr<at::Tensor> CompositeImages(
    const at::Tensor& images, const std::vector<int64_t>& composite);

// A contact sheet ([3, H', W']) of `images` ([B, C, H, W]) band by band:
// one row per image, one gray panel per band labelled with its name from
// `names` (one per band; empty: "band k"), prefixed with the image's row
// label (`rows`, one per image) or, when `rows` is empty and B > 1, its
// index ("1: nir"). `scale` magnifies the panels; 0 makes them at least 112
// pixels wide, so that a 32x32 band and its label can be read.
absl::StatusOr<at::Tensor> BandSheet(const at::Tensor& images,
                                     const std::vector<std::string>& names,
                                     const std::vector<std::string>& rows = {},
                                     int64_t scale = 0);

// Where a band sheet goes beside the picture at `path`: "x.png" ->
// "x.bands.png" ("x" -> "x.bands.png").
std::string BandSheetPath(const std::string& path);

}  // namespace featviz::core

#endif  // FEATVIZ_CORE_BANDS_H_
