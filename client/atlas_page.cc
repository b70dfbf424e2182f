#include "client/atlas_page.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "client/proto_convert.h"
#include "core/status_macros.h"

namespace featviz::client {

namespace v1 = featviz::v1;

namespace {

std::string Html(absl::string_view text) {
  return absl::StrReplaceAll(text, {{"&", "&amp;"},
                                    {"<", "&lt;"},
                                    {">", "&gt;"},
                                    {"\"", "&quot;"}});
}

// A loss curve: `trace` as an SVG polyline with its range marked.
std::string CurveSvg(const google::protobuf::RepeatedField<float>& trace) {
  if (trace.empty()) return "<p>no trace</p>";
  constexpr double kW = 360, kH = 140, kPad = 28;
  const auto [lo_it, hi_it] = std::minmax_element(trace.begin(), trace.end());
  double lo = *lo_it, hi = *hi_it;
  if (hi - lo < 1e-12) hi = lo + 1;
  std::string points;
  for (int i = 0; i < trace.size(); ++i) {
    const double x = kPad + (kW - 2 * kPad) * i / std::max(1, trace.size() - 1);
    const double y = kH - kPad - (kH - 2 * kPad) * (trace[i] - lo) / (hi - lo);
    absl::StrAppendFormat(&points, "%.1f,%.1f ", x, y);
  }
  return absl::StrFormat(
      "<svg class=\"curve\" width=\"%.0f\" height=\"%.0f\" "
      "viewBox=\"0 0 %.0f %.0f\">"
      "<rect x=\"%.0f\" y=\"%.0f\" width=\"%.0f\" height=\"%.0f\" "
      "fill=\"none\" stroke=\"#ccc\"/>"
      "<polyline fill=\"none\" stroke=\"#c0392b\" stroke-width=\"1.5\" "
      "points=\"%s\"/>"
      "<text x=\"2\" y=\"%.0f\" font-size=\"10\">%.3g</text>"
      "<text x=\"2\" y=\"%.0f\" font-size=\"10\">%.3g</text>"
      "<text x=\"%.0f\" y=\"%.0f\" font-size=\"10\">step</text></svg>",
      kW, kH, kW, kH, kPad, kPad, kW - 2 * kPad, kH - 2 * kPad, points,
      kPad + 4, hi, kH - kPad, lo, kW / 2, kH - 6);
}

constexpr char kStyle[] = R"(<style>
body { font-family: sans-serif; margin: 24px; color: #222; }
img.px { image-rendering: pixelated; }
.units { display: flex; flex-wrap: wrap; gap: 8px; }
.unit { text-align: center; font-size: 12px; }
.unit img { width: 84px; height: 84px; display: block; border: 1px solid #ddd; }
.examples { display: flex; flex-wrap: wrap; gap: 10px; }
.examples figure { margin: 0; text-align: center; font-size: 12px; }
.examples img { width: 84px; height: 84px; display: block; }
table.stats td { padding: 2px 10px; }
nav a { margin-right: 12px; }
</style>)";

// Marks on <body> how many images loaded, for tests and curious readers.
constexpr char kImageCheck[] = R"(<script>
window.addEventListener('load', function () {
  var images = Array.prototype.slice.call(document.images);
  var ok = images.filter(function (i) { return i.complete && i.naturalWidth > 0; });
  document.body.setAttribute('data-images', ok.length + '/' + images.length);
});
</script>)";

std::string Page(const std::string& title, const std::string& body) {
  return absl::StrCat("<!doctype html>\n<html><head><meta charset=\"utf-8\">"
                      "<title>",
                      Html(title), "</title>", kStyle, kImageCheck,
                      "</head>\n<body>\n", body, "\n</body></html>\n");
}

// The statistics table's rows: the unit on its own picture (the objective,
// and its layer's mean and max from the result's layer_stats) and on the
// dataset (its top example's value).
absl::StatusOr<std::string> StatisticsRows(const AtlasLayer& layer,
                                           const AtlasUnit& unit,
                                           const v1::UnitExamples* examples,
                                           const std::string& dataset) {
  const v1::RenderResult& r = unit.result;
  std::string rows = absl::StrFormat(
      "<tr><td>objective on the picture</td><td>%.4g</td></tr>",
      r.final_total());
  for (const v1::LayerStats& stats : r.layer_stats()) {
    if (stats.layer() != layer.layer.path() || stats.mean().shape_size() != 2) {
      continue;
    }
    FEATVIZ_ASSIGN_OR_RETURN(const std::vector<std::vector<float>> mean,
                             MatrixFromProto(stats.mean()));
    FEATVIZ_ASSIGN_OR_RETURN(const std::vector<std::vector<float>> max,
                             MatrixFromProto(stats.max()));
    // Row 0: the atlas renders one image a unit.
    if (mean.empty() || max.empty()) continue;
    const auto index = static_cast<size_t>(unit.index);
    if (index < mean[0].size() && index < max[0].size()) {
      absl::StrAppendFormat(
          &rows, "<tr><td>mean / max on the picture</td><td>%.4g / %.4g</td></tr>",
          mean[0][index], max[0][index]);
    }
  }
  if (examples != nullptr && examples->values_size() > 0) {
    absl::StrAppendFormat(
        &rows, "<tr><td>max over %s (top example)</td><td>%.4g</td></tr>",
        Html(dataset), examples->values(0));
  }
  return rows;
}

// The unit's top dataset examples, each with its index, label and value.
std::string ExampleFigures(const AtlasUnit& unit,
                           const v1::UnitExamples& examples) {
  std::string out = "<h2>Top dataset examples</h2>\n<div class=\"examples\">\n";
  for (int i = 0; i < examples.png_size(); ++i) {
    absl::StrAppendFormat(
        &out,
        "<figure><img class=\"px\" src=\"%s\" alt=\"example %d\">"
        "<figcaption>#%d %s<br>%.3g</figcaption></figure>\n",
        AtlasExamplePng(unit.index, i), examples.indices(i),
        examples.indices(i),
        examples.labels(i) >= 0 ? absl::StrCat("label ", examples.labels(i))
                                : "",
        examples.values(i));
  }
  absl::StrAppend(&out, "</div>\n");
  return out;
}

}  // namespace

std::string AtlasLayer::Objective(int64_t unit) const {
  if (spatial && !first_conv) {
    return absl::StrCat("channel(", layer.path(), ", ", unit, ")");
  }
  return absl::StrCat("neuron(", layer.path(), ", ", unit, ")");
}

std::string AtlasUnitPng(int64_t unit) {
  return absl::StrCat("unit_", unit, ".png");
}

std::string AtlasExamplePng(int64_t unit, int example) {
  return absl::StrCat("unit_", unit, "_ex", example, ".png");
}

std::string AtlasUnitHtml(int64_t unit) {
  return absl::StrCat("unit_", unit, ".html");
}

std::string AtlasIndexPage(const v1::Model& model, const AtlasSummary& summary,
                           const std::vector<std::string>& entries) {
  std::string body = absl::StrCat(
      "<h1>Atlas of ", Html(model.name()), "</h1>\n<p>version ",
      Html(model.version()), ", content hash <code>",
      Html(model.content_hash().substr(0, 12)), "</code>; ", summary.units,
      " units rendered",
      summary.steps > 0 ? absl::StrCat(" with ", summary.steps, " steps") : "",
      ", seed ", summary.seed,
      summary.dataset.has_value()
          ? absl::StrCat("; dataset examples from <b>", Html(*summary.dataset),
                         "</b>")
          : "",
      ".</p>\n");
  for (const std::string& entry : entries) absl::StrAppend(&body, entry);
  return Page(absl::StrCat("Atlas of ", model.name()), body);
}

std::string AtlasIndexEntry(const AtlasLayer& layer, int64_t sheet_width) {
  const std::string& path = layer.layer.path();
  return absl::StrCat("<h2><a href=\"", Html(path), "/index.html\">",
                      Html(path), "</a></h2>\n<p>", Html(layer.layer.kind()),
                      ", ", layer.layer.channels(), " units</p>\n<a href=\"",
                      Html(path), "/index.html\"><img class=\"px\" src=\"",
                      Html(path), "/sheet.png\" alt=\"", Html(path),
                      "\" width=\"", std::min<int64_t>(sheet_width, 960),
                      "\"></a>\n");
}

std::string AtlasLayerPage(const v1::Model& model, const AtlasLayer& layer,
                           int64_t sheet_width,
                           const std::vector<const AtlasUnit*>& units) {
  const std::string& path = layer.layer.path();
  const std::string what = layer.spatial && !layer.first_conv
                               ? "channel (spatial mean)"
                           : layer.spatial ? "neuron at the centre of the map"
                                           : "neuron";
  std::string body = absl::StrCat(
      "<nav><a href=\"../index.html\">atlas</a></nav>\n<h1>",
      Html(model.name()), " / ", Html(path), "</h1>\n<p>",
      Html(layer.layer.kind()), ", output [",
      absl::StrJoin(layer.layer.output_shape(), ", "), "]; each unit's ", what,
      " maximised.",
      layer.first_conv
          ? " (The first convolution reads the image directly: the spatial mean "
            "of its linear filter is maximised by a flat image, so the centre "
            "neuron shows the filter instead.)"
          : "",
      "</p>\n<img class=\"px\" src=\"sheet.png\" alt=\"contact sheet\" width=\"",
      sheet_width, "\">\n<h2>Units</h2>\n<div class=\"units\">\n");
  for (const AtlasUnit* unit : units) {
    absl::StrAppend(&body, "<a class=\"unit\" href=\"",
                    AtlasUnitHtml(unit->index), "\"><img class=\"px\" src=\"",
                    AtlasUnitPng(unit->index), "\" alt=\"unit ", unit->index,
                    "\">", unit->index, "</a>\n");
  }
  absl::StrAppend(&body, "</div>\n");
  return Page(absl::StrCat(model.name(), " ", path), body);
}

absl::StatusOr<std::string> AtlasUnitPage(const v1::Model& model,
                                          const AtlasLayer& layer,
                                          const AtlasUnit& unit,
                                          const v1::UnitExamples* examples,
                                          const std::string& dataset) {
  const std::string& path = layer.layer.path();
  const v1::RenderResult& r = unit.result;
  const int64_t u = unit.index;
  std::string body = absl::StrCat(
      "<nav><a href=\"../index.html\">atlas</a><a href=\"index.html\">",
      Html(path), "</a>",
      u > 0 ? absl::StrCat("<a href=\"", AtlasUnitHtml(u - 1), "\">&larr; ",
                           u - 1, "</a>")
            : "",
      u + 1 < layer.layer.channels()
          ? absl::StrCat("<a href=\"", AtlasUnitHtml(u + 1), "\">", u + 1,
                         " &rarr;</a>")
          : "",
      "</nav>\n<h1>", Html(path), " unit ", u, "</h1>\n",
      "<p>objective <code>", Html(r.objective()), "</code>, seed ", r.seed(),
      ", ", r.steps(), " steps</p>\n<img class=\"px\" src=\"", AtlasUnitPng(u),
      "\" width=\"224\" height=\"224\" alt=\"visualisation\">\n");
  FEATVIZ_ASSIGN_OR_RETURN(const std::string stats,
                           StatisticsRows(layer, unit, examples, dataset));
  absl::StrAppend(&body, "<h2>Activation statistics</h2>\n<table class=\"stats\">",
                  stats, "</table>\n");
  if (examples != nullptr) absl::StrAppend(&body, ExampleFigures(unit, *examples));
  if (r.terms_size() > 0) {
    absl::StrAppend(&body, "<h2>Loss curve</h2>\n<p>", Html(r.terms(0).term()),
                    " at each step (with transforms)</p>\n",
                    CurveSvg(r.terms(0).trace()), "\n");
  }
  return Page(absl::StrCat(model.name(), " ", path, " ", u), body);
}

}  // namespace featviz::client
