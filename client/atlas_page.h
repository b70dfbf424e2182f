// The HTML of `featviz atlas`'s static site, as text: the index, a page per
// layer and a page per unit. RunAtlas (circuits_commands.cc) renders the
// units and writes these pages beside the PNGs they name.
#ifndef FEATVIZ_CLIENT_ATLAS_PAGE_H_
#define FEATVIZ_CLIENT_ATLAS_PAGE_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "featviz/v1/circuits.pb.h"
#include "featviz/v1/featviz.pb.h"

namespace featviz::client {

// A layer of the atlas and the objective each of its units renders.
struct AtlasLayer {
  featviz::v1::Layer layer;
  bool spatial = false;
  // The first convolution: a channel mean of a linear filter on the image is
  // maximised by a flat image, so its units render as the centre neuron.
  bool first_conv = false;
  std::string Objective(int64_t unit) const;
};

// The layers of `model` an atlas shows: every convolution (spatial output)
// and linear layer (flat, or over tokens), in model order, and any other
// layer with channels that `wanted` names; only those `wanted` names when it
// is not empty.
std::vector<AtlasLayer> AtlasLayers(const featviz::v1::Model& model,
                                    const std::vector<std::string>& wanted);

// A unit of the atlas: unit `index` of the atlas's layer number `layer`,
// its render and what says how far to believe it (docs/trust.md). With a
// dataset, `result` carries the unit's exemplars and the picture's path
// similarity (RenderRequest.trust).
struct AtlasUnit {
  size_t layer = 0;
  int64_t index = 0;
  std::string objective;
  featviz::v1::RenderResult result;
  // The unit's label (Circuits.LabelUnits); unset without a labelled dataset.
  std::optional<featviz::v1::UnitLabel> label;
  // The unit's top exemplar accentuated (RenderRequest.accentuate); empty
  // (no png) without a dataset.
  featviz::v1::RenderResult accentuated;
};

// What the index says of the whole atlas.
struct AtlasSummary {
  size_t units = 0;   // Units rendered, over every layer.
  int64_t steps = 0;  // Render steps; 0: the server's default (not named).
  int64_t seed = 0;
  // The dataset the examples come from; none: the pages have no examples.
  std::optional<std::string> dataset;
};

// The files a unit's pages name, in its layer's folder.
std::string AtlasUnitPng(int64_t unit);                  // unit_<u>.png
std::string AtlasExamplePng(int64_t unit, int example);  // unit_<u>_ex<i>.png
// unit_<u>_ex<i>_map.png: the unit's activation map over example i.
std::string AtlasExampleMapPng(int64_t unit, int example);
std::string AtlasAccentPng(int64_t unit);  // unit_<u>_accent.png
// unit_<u>_change.png: the accentuated picture minus its seed.
std::string AtlasChangePng(int64_t unit);
std::string AtlasUnitHtml(int64_t unit);                 // unit_<u>.html

// index.html: the summary, then `entries` (AtlasIndexEntry's, in order).
std::string AtlasIndexPage(const featviz::v1::Model& model,
                           const AtlasSummary& summary,
                           const std::vector<std::string>& entries);

// A layer's entry on index.html: its name, kind, unit count and contact
// sheet (`sheet_width` pixels wide, shown at most 960).
std::string AtlasIndexEntry(const AtlasLayer& layer, int64_t sheet_width);

// <layer>/index.html: what its units maximise, its contact sheet
// (sheet.png, `sheet_width` pixels wide) and a link to each of `units`.
std::string AtlasLayerPage(const featviz::v1::Model& model,
                           const AtlasLayer& layer, int64_t sheet_width,
                           const std::vector<const AtlasUnit*>& units);

// <layer>/unit_<u>.html: the unit's picture, its label, the picture's
// path-similarity score, its accentuated top exemplar, its statistics (on
// the picture, from the result's layer_stats; the top example's value on
// `dataset`), its exemplars with their activation maps and the loss curve.
// InvalidArgument for layer statistics that are not [batch, channels]
// float32 tensors.
absl::StatusOr<std::string> AtlasUnitPage(const featviz::v1::Model& model,
                                          const AtlasLayer& layer,
                                          const AtlasUnit& unit,
                                          const std::string& dataset);

}  // namespace featviz::client

#endif  // FEATVIZ_CLIENT_ATLAS_PAGE_H_
