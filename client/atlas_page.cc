#include "client/atlas_page.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/match.h"
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
img.sheet { max-width: 100%; height: auto; }
.units { display: flex; flex-wrap: wrap; gap: 8px; }
.unit { text-align: center; font-size: 12px; }
.unit img { width: 84px; height: 84px; display: block; border: 1px solid #ddd; }
.examples { display: flex; flex-wrap: wrap; gap: 10px; }
.examples figure { margin: 0; text-align: center; font-size: 12px; }
.examples img { width: 84px; height: 84px; display: block; }
table.stats td, table.stats th { padding: 2px 10px; text-align: left; }
.badge { display: inline-block; padding: 1px 6px; border-radius: 3px;
         color: #fff; font-size: 12px; }
.badge.ok { background: #27864a; }
.badge.flag { background: #b03a2e; }
.label { font-size: 15px; }
.trust { display: flex; flex-wrap: wrap; gap: 32px; align-items: flex-start; }
.unit .caption { display: block; max-width: 84px; overflow-wrap: anywhere; }
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
  const v1::Exemplars& exemplars = r.exemplars();
  if (exemplars.examples_size() > 0) {
    absl::StrAppendFormat(
        &rows, "<tr><td>max over %s (top example)</td><td>%.4g</td></tr>",
        Html(dataset), exemplars.examples(0).value());
  }
  return rows;
}

// The unit's top dataset examples, each with its activation map, index,
// label and value.
std::string ExampleFigures(const AtlasUnit& unit,
                           const v1::Exemplars& exemplars) {
  std::string out = absl::StrCat(
      "<h2>Top dataset examples</h2>\n<p>The images of <b>",
      Html(exemplars.dataset()), "</b> with the highest value of <code>",
      Html(exemplars.unit()),
      "</code>, each with the unit's map over it.</p>\n"
      "<div class=\"examples\">\n");
  for (int i = 0; i < exemplars.examples_size(); ++i) {
    const v1::Exemplar& e = exemplars.examples(i);
    absl::StrAppendFormat(
        &out,
        "<figure><img class=\"px\" src=\"%s\" alt=\"example %d\">%s"
        "<figcaption>#%d %s<br>%.3g</figcaption></figure>\n",
        AtlasExamplePng(unit.index, i), e.index(),
        e.activation_png().empty()
            ? ""
            : absl::StrFormat("<img class=\"px\" src=\"%s\" alt=\"map %d\">",
                              AtlasExampleMapPng(unit.index, i), e.index()),
        e.index(), e.label() >= 0 ? absl::StrCat("label ", e.label()) : "",
        e.value());
  }
  absl::StrAppend(&out, "</div>\n");
  return out;
}

// Two decimals, rounded down: a flagged 0.496 reads 0.49, never the
// threshold 0.50.
double Floor2(double x) { return std::floor(x * 100 + 1e-9) / 100; }

std::string PathBadgeText(const v1::PathSimilarity& p) {
  return absl::StrFormat(
      "<span class=\"badge %s\" title=\"path similarity, threshold "
      "%.2f\">%.2f %s</span>",
      p.reliable() ? "ok" : "flag", p.threshold(), Floor2(p.score()),
      p.reliable() ? "reliable" : "flagged");
}

// The path-similarity score of the picture as a coloured badge; empty
// without one.
std::string PathBadge(const v1::RenderResult& r) {
  if (r.path_similarity_size() == 0) return "";
  return PathBadgeText(r.path_similarity(0));
}

// The unit's label: its top examples' classes and the classes it feeds.
std::string LabelSection(const v1::UnitLabel& label) {
  std::string out = absl::StrCat("<h2>Label</h2>\n<p class=\"label\">",
                                 Html(label.label()), "</p>\n<p>");
  absl::StrAppendFormat(&out, "class selectivity %.2f", label.selectivity());
  std::vector<std::string> shares;
  for (const v1::ClassShare& c : label.classes()) {
    if (shares.size() == 4) break;
    shares.push_back(absl::StrFormat("%s %.0f %%", Html(c.class_name()),
                                     100 * c.fraction()));
  }
  if (!shares.empty()) {
    absl::StrAppend(&out, "; top examples' classes: ", absl::StrJoin(shares, ", "));
  }
  std::vector<std::string> feeds;
  for (const v1::ClassAttribution& c : label.attribution()) {
    feeds.push_back(absl::StrFormat("%s (%+.3g)", Html(c.class_name()), c.score()));
  }
  if (!feeds.empty()) {
    absl::StrAppend(&out, "; feeds most (attribution): ", absl::StrJoin(feeds, ", "));
  }
  absl::StrAppend(&out, ".</p>\n");
  return out;
}

// The picture's path similarity, layer by layer.
std::string PathSection(const v1::PathSimilarity& p) {
  std::string out = absl::StrCat(
      "<h2>Path similarity</h2>\n<p>", PathBadgeText(p), " ",
      p.reliable()
          ? "The picture reaches the unit along a path like the one its top "
            "dataset examples take."
          : "The picture reaches the unit along a path its top dataset "
            "examples do not take: believe the examples over the picture.",
      absl::StrFormat(" Threshold %.2f; 0 is as similar as random dataset "
                      "images, 1 as similar as the top examples are to each "
                      "other (docs/trust.md).</p>\n",
                      p.threshold()),
      "<table class=\"stats\"><tr><th>layer</th><th>score</th><th>picture</th>"
      "<th>top examples</th><th>random images</th></tr>\n");
  for (const v1::LayerPathSimilarity& l : p.layers()) {
    absl::StrAppendFormat(&out,
                          "<tr><td>%s</td><td>%.2f</td><td>%.2f</td><td>%.2f</td>"
                          "<td>%.2f</td></tr>\n",
                          Html(l.layer()), Floor2(l.score()), l.similarity(),
                          l.natural_similarity(), l.random_similarity());
  }
  absl::StrAppend(&out, "</table>\n");
  return out;
}

// The top exemplar beside its accentuated picture.
std::string AccentSection(const AtlasUnit& unit) {
  const v1::RenderResult& a = unit.accentuated;
  const v1::Exemplars& exemplars = unit.result.exemplars();
  if (a.png_size() == 0 || exemplars.examples_size() == 0) return "";
  std::string out =
      "<h2>Accentuated exemplar</h2>\n<p>The top example, changed to raise "
      "the unit while staying close to it: what in this image the unit "
      "responds to.</p>\n<div class=\"examples\">\n";
  absl::StrAppendFormat(
      &out,
      "<figure><img class=\"px\" src=\"%s\" alt=\"seed\">"
      "<figcaption>seed #%d</figcaption></figure>\n",
      AtlasExamplePng(unit.index, 0), exemplars.examples(0).index());
  std::string caption = "accentuated";
  if (a.accentuation_size() > 0) {
    const v1::AccentuationOutcome& o = a.accentuation(0);
    caption = absl::StrFormat("accentuated<br>%.3g &rarr; %.3g<br>RMS %.3f",
                              o.seed_value(), o.value(), o.pixel_distance());
  }
  absl::StrAppendFormat(
      &out,
      "<figure><img class=\"px\" src=\"%s\" alt=\"accentuated\">"
      "<figcaption>%s</figcaption></figure>\n"
      "<figure><img class=\"px\" src=\"%s\" alt=\"change\">"
      "<figcaption>change: <span style=\"color:#c0392b\">added</span>, "
      "<span style=\"color:#2e86c1\">removed</span></figcaption></figure>\n"
      "</div>\n",
      AtlasAccentPng(unit.index), caption, AtlasChangePng(unit.index));
  return out;
}

}  // namespace

std::vector<AtlasLayer> AtlasLayers(const v1::Model& model,
                                    const std::vector<std::string>& wanted) {
  std::vector<AtlasLayer> out;
  bool seen_conv = false;
  for (const v1::Layer& layer : model.layers()) {
    const bool conv = absl::StrContains(layer.kind(), "Conv") &&
                      layer.output_shape_size() == 4;
    const bool linear = layer.kind() == "Linear" && layer.output_shape_size() == 2;
    // A transformer's or mixer's linear layers over tokens: their units are
    // features, rendered as the mean over the tokens.
    const bool tokens = layer.kind() == "Linear" && layer.layout() == "tokens";
    // Any other layer with channels, when --layers names it.
    const bool named =
        layer.tappable() && layer.channels() > 0 &&
        std::find(wanted.begin(), wanted.end(), layer.path()) != wanted.end();
    if (!conv && !linear && !tokens && !named) continue;
    AtlasLayer entry;
    entry.layer = layer;
    entry.spatial = conv || layer.output_shape_size() >= 3;
    entry.first_conv = conv && !seen_conv;
    seen_conv = seen_conv || conv;
    if (!wanted.empty() &&
        std::find(wanted.begin(), wanted.end(), layer.path()) == wanted.end()) {
      continue;
    }
    out.push_back(std::move(entry));
  }
  return out;
}

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

std::string AtlasExampleMapPng(int64_t unit, int example) {
  return absl::StrCat("unit_", unit, "_ex", example, "_map.png");
}

std::string AtlasAccentPng(int64_t unit) {
  return absl::StrCat("unit_", unit, "_accent.png");
}

std::string AtlasChangePng(int64_t unit) {
  return absl::StrCat("unit_", unit, "_change.png");
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
      "</p>\n<img class=\"px sheet\" src=\"sheet.png\" alt=\"contact sheet\" width=\"",
      sheet_width, "\">\n<h2>Units</h2>\n");
  int checked = 0, reliable = 0;
  for (const AtlasUnit* unit : units) {
    if (unit->result.path_similarity_size() == 0) continue;
    ++checked;
    if (unit->result.path_similarity(0).reliable()) ++reliable;
  }
  if (checked > 0) {
    absl::StrAppend(
        &body, "<p>Under each unit: its picture's path-similarity score (",
        reliable, " of ", checked,
        " reliable; red: flagged, believe the unit's dataset examples over its "
        "picture) and the class most of its top examples belong to.</p>\n");
  }
  absl::StrAppend(&body, "<div class=\"units\">\n");
  for (const AtlasUnit* unit : units) {
    absl::StrAppend(&body, "<a class=\"unit\" href=\"",
                    AtlasUnitHtml(unit->index), "\"><img class=\"px\" src=\"",
                    AtlasUnitPng(unit->index), "\" alt=\"unit ", unit->index,
                    "\">", unit->index, " ", PathBadge(unit->result));
    if (unit->label.has_value() && unit->label->classes_size() > 0) {
      const v1::ClassShare& top = unit->label->classes(0);
      absl::StrAppendFormat(&body, "<span class=\"caption\">%s: %.0f %%</span>",
                            Html(top.class_name()), 100 * top.fraction());
    }
    absl::StrAppend(&body, "</a>\n");
  }
  absl::StrAppend(&body, "</div>\n");
  return Page(absl::StrCat(model.name(), " ", path), body);
}

absl::StatusOr<std::string> AtlasUnitPage(const v1::Model& model,
                                          const AtlasLayer& layer,
                                          const AtlasUnit& unit,
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
  if (unit.label.has_value()) absl::StrAppend(&body, LabelSection(*unit.label));
  if (r.path_similarity_size() > 0) {
    absl::StrAppend(&body, PathSection(r.path_similarity(0)));
  }
  absl::StrAppend(&body, AccentSection(unit));
  FEATVIZ_ASSIGN_OR_RETURN(const std::string stats,
                           StatisticsRows(layer, unit, dataset));
  absl::StrAppend(&body, "<h2>Activation statistics</h2>\n<table class=\"stats\">",
                  stats, "</table>\n");
  if (r.exemplars().examples_size() > 0) {
    absl::StrAppend(&body, ExampleFigures(unit, r.exemplars()));
  }
  if (r.terms_size() > 0) {
    absl::StrAppend(&body, "<h2>Loss curve</h2>\n<p>", Html(r.terms(0).term()),
                    " at each step (with transforms)</p>\n",
                    CurveSvg(r.terms(0).trace()), "\n");
  }
  return Page(absl::StrCat(model.name(), " ", path, " ", u), body);
}

}  // namespace featviz::client
