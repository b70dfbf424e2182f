#include "client/circuits_commands.h"

#include <algorithm>
#include <filesystem>
#include <functional>
#include <map>

#include <nlohmann/json.hpp>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/time/clock.h"
#include "client/circuits_client.h"
#include "client/progress_bar.h"
#include "core/files.h"
#include "core/image.h"
#include "core/status_macros.h"

namespace featviz::client {

namespace v1 = featviz::v1;
namespace fs = std::filesystem;

namespace {

// A PNG as a [3, H, W] image (gray repeated), for mixed contact sheets.
absl::StatusOr<at::Tensor> Rgb(const std::string& png) {
  FEATVIZ_ASSIGN_OR_RETURN(at::Tensor image, core::DecodePng(png));
  if (image.size(0) == 1) image = image.expand({3, image.size(1), image.size(2)});
  return image.contiguous();
}

v1::RenderRequest BaseRender(const std::string& model, int64_t steps,
                             int64_t seed) {
  v1::RenderRequest request;
  request.set_model(model);
  if (steps > 0) request.mutable_optimizer()->set_steps(steps);
  if (seed >= 0) request.set_seed(static_cast<uint64_t>(seed));
  request.mutable_output()->set_png(true);
  return request;
}

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

// A layer of the atlas and the objective each of its units renders.
struct AtlasLayer {
  v1::Layer layer;
  bool spatial = false;
  // The first convolution: a channel mean of a linear filter on the image is
  // maximised by a flat image, so its units render as the centre neuron.
  bool first_conv = false;
  std::string Objective(int64_t unit) const {
    if (spatial && !first_conv) {
      return absl::StrCat("channel(", layer.path(), ", ", unit, ")");
    }
    return absl::StrCat("neuron(", layer.path(), ", ", unit, ")");
  }
};

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

}  // namespace

absl::Status RunCircuits(VisualizerClient& client,
                         const CircuitsCommandOptions& options, std::FILE* out,
                         std::FILE* err) {
  CircuitsClient circuits(client);
  FEATVIZ_ASSIGN_OR_RETURN(v1::Model model, client.GetModel(options.model));
  v1::FindCircuitRequest request;
  request.set_model(options.model);
  request.set_layer(options.layer);
  request.set_top_k(static_cast<int32_t>(options.top));
  // Empty: the server takes the one labelled dataset that fits the model.
  request.set_dataset(options.dataset);
  request.set_examples_per_class(options.examples);
  for (int64_t c : options.classes) request.add_classes(c);
  *request.mutable_render() = BaseRender(options.model, options.steps, options.seed);
  const absl::Time start = absl::Now();
  FEATVIZ_ASSIGN_OR_RETURN(v1::FindCircuitResponse circuit,
                           circuits.FindCircuit(request));
  const double find_seconds = absl::ToDoubleSeconds(absl::Now() - start);

  std::vector<std::string> ids;
  for (const v1::ClassCircuit& c : circuit.classes()) {
    ids.push_back(c.class_job_id());
    for (const v1::Detector& d : c.detectors()) ids.push_back(d.job_id());
  }
  CountProgress progress(err, ProgressModeFor(err), "circuits: rendering",
                         "jobs done");
  FEATVIZ_ASSIGN_OR_RETURN(
      std::vector<v1::Job> jobs,
      circuits.WaitForJobs(ids, [&](size_t done, size_t total) {
        progress.Update(static_cast<int64_t>(done), static_cast<int64_t>(total));
      }));
  progress.Finish();
  const double total_seconds = absl::ToDoubleSeconds(absl::Now() - start);
  std::map<std::string, const v1::RenderResult*> results;
  for (const v1::Job& job : jobs) {
    if (job.result().png_size() < 1) {
      return absl::InternalError(
          absl::StrCat("job ", job.id(), " returned no PNG"));
    }
    results[job.id()] = &job.result();
  }

  FEATVIZ_RETURN_IF_ERROR(core::MakeDirectories(options.out_dir));
  const int64_t columns = 1 + 2 * options.top;
  std::vector<at::Tensor> all_tiles;
  std::vector<std::string> all_labels;
  nlohmann::ordered_json doc;
  doc["model"] = circuit.model();
  doc["model_version"] = circuit.model_version();
  doc["model_hash"] = circuit.model_hash();
  doc["layer"] = circuit.layer();
  doc["dataset"] = circuit.dataset();
  doc["classes"] = nlohmann::ordered_json::array();
  for (const v1::ClassCircuit& c : circuit.classes()) {
    std::vector<at::Tensor> tiles;
    std::vector<std::string> labels;
    const v1::RenderResult& class_result = *results.at(c.class_job_id());
    FEATVIZ_ASSIGN_OR_RETURN(at::Tensor class_image, Rgb(class_result.png(0)));
    tiles.push_back(class_image);
    labels.push_back(absl::StrCat("class ", c.class_name()));
    nlohmann::ordered_json entry;
    entry["class"] = c.class_index();
    entry["class_name"] = c.class_name();
    entry["class_job"] = c.class_job_id();
    entry["example_index"] = c.example_index();
    entry["images_scored"] = c.images_scored();
    entry["detectors"] = nlohmann::ordered_json::array();
    for (const v1::Detector& d : c.detectors()) {
      FEATVIZ_ASSIGN_OR_RETURN(at::Tensor viz, Rgb(results.at(d.job_id())->png(0)));
      tiles.push_back(viz);
      labels.push_back(absl::StrFormat("ch%d %+.2f", d.channel(), d.score()));
      if (d.activation_png().empty()) {
        return absl::InternalError(absl::StrCat(
            "layer ", circuit.layer(), " has no spatial maps to overlay"));
      }
      FEATVIZ_ASSIGN_OR_RETURN(at::Tensor map, Rgb(d.activation_png()));
      tiles.push_back(map);
      labels.push_back(absl::StrFormat("on #%d", c.example_index()));
      entry["detectors"].push_back(
          {{"channel", d.channel()},
           {"score", d.score()},
           {"job", d.job_id()},
           {"example_activation", d.example_activation()}});
    }
    core::GridOptions grid;
    grid.columns = columns;
    grid.scale = 4;
    grid.labels = labels;
    grid.background = 0.15f;
    FEATVIZ_ASSIGN_OR_RETURN(at::Tensor row, core::MakeGrid(at::stack(tiles), grid));
    FEATVIZ_RETURN_IF_ERROR(core::WritePng(
        row, (fs::path(options.out_dir) / absl::StrCat("class_", c.class_index(), ".png"))
                 .string()));
    all_tiles.insert(all_tiles.end(), tiles.begin(), tiles.end());
    all_labels.insert(all_labels.end(), labels.begin(), labels.end());
    doc["classes"].push_back(std::move(entry));
  }
  core::GridOptions grid;
  grid.columns = columns;
  grid.scale = 4;
  grid.labels = all_labels;
  grid.background = 0.15f;
  FEATVIZ_ASSIGN_OR_RETURN(at::Tensor sheet,
                           core::MakeGrid(at::stack(all_tiles), grid));
  FEATVIZ_RETURN_IF_ERROR(core::WritePng(
      sheet, (fs::path(options.out_dir) / "circuits.png").string()));
  doc["find_seconds"] = find_seconds;
  doc["total_seconds"] = total_seconds;
  FEATVIZ_RETURN_IF_ERROR(core::WriteFile(
      (fs::path(options.out_dir) / "circuits.json").string(), doc.dump(2) + "\n"));
  if (options.json) {
    std::fprintf(out, "%s\n", doc.dump(2).c_str());
    return absl::OkStatus();
  }
  std::fprintf(out, "circuits of %s at %s on %s (%s):\n", circuit.model().c_str(),
               circuit.layer().c_str(), circuit.dataset().c_str(),
               "score = mean gradient x activation for the class logit");
  for (const v1::ClassCircuit& c : circuit.classes()) {
    std::vector<std::string> parts;
    for (const v1::Detector& d : c.detectors()) {
      parts.push_back(absl::StrFormat("ch%-3d %+7.3f", d.channel(), d.score()));
    }
    std::fprintf(out, "  class %-6s %s\n", c.class_name().c_str(),
                 absl::StrJoin(parts, "   ").c_str());
  }
  const std::filesystem::path dir(options.out_dir);
  std::fprintf(out, "wrote %s, %s and %s in %.1f s\n",
               (dir / "circuits.png").c_str(), (dir / "class_<c>.png").c_str(),
               (dir / "circuits.json").c_str(), total_seconds);
  return absl::OkStatus();
}

absl::Status RunAtlas(VisualizerClient& client, const AtlasCommandOptions& options,
                      std::FILE* out, std::FILE* err) {
  CircuitsClient circuits(client);
  const absl::Time start = absl::Now();
  FEATVIZ_ASSIGN_OR_RETURN(v1::Model model, client.GetModel(options.model));
  const std::vector<AtlasLayer> layers = AtlasLayers(model, options.layers);
  if (layers.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "model ", options.model,
        " has no convolutional or linear layers (nor token layers of linear "
        "units)",
        options.layers.empty() ? "" : " among --layers"));
  }
  // The examples' dataset, asked of the server before any render: the one
  // named, else the one that fits the model (several: the user must name
  // one; none: the pages go without examples). The pass it makes for the
  // first layer is cached for the examples below.
  absl::StatusOr<std::string> dataset;
  {
    v1::TopExamplesRequest probe;
    probe.set_model(options.model);
    probe.set_layer(layers.front().layer.path());
    probe.set_dataset(options.dataset);
    probe.set_top_n(1);
    absl::StatusOr<v1::TopExamplesResponse> found = circuits.TopExamples(probe);
    if (found.ok()) {
      dataset = found->dataset();
    } else if (options.dataset.empty() &&
               absl::IsFailedPrecondition(found.status())) {
      dataset = found.status();
      std::fprintf(err, "atlas: %s; pages will have no dataset examples\n",
                   std::string(found.status().message()).c_str());
    } else {
      return found.status();
    }
  }

  // Every unit's render, `window` jobs in flight at a time.
  struct Unit {
    size_t layer;
    int64_t index;
    std::string objective;
    v1::RenderResult result;
  };
  std::vector<Unit> units;
  for (size_t l = 0; l < layers.size(); ++l) {
    for (int64_t u = 0; u < layers[l].layer.channels(); ++u) {
      units.push_back({l, u, layers[l].Objective(u), {}});
    }
  }
  size_t done = 0;
  CountProgress progress(err, ProgressModeFor(err), "atlas", "units rendered");
  for (size_t begin = 0; begin < units.size(); begin += options.window) {
    const size_t end = std::min(units.size(), begin + options.window);
    std::vector<std::string> ids;
    for (size_t i = begin; i < end; ++i) {
      v1::RenderRequest request =
          BaseRender(options.model, options.steps, options.seed);
      request.set_objective_text(units[i].objective);
      FEATVIZ_ASSIGN_OR_RETURN(v1::Job job, circuits.SubmitJob(request));
      ids.push_back(job.id());
    }
    FEATVIZ_ASSIGN_OR_RETURN(
        std::vector<v1::Job> jobs,
        circuits.WaitForJobs(ids, [&](size_t d, size_t) {
          progress.Update(static_cast<int64_t>(done + d),
                          static_cast<int64_t>(units.size()));
        }));
    for (size_t i = begin; i < end; ++i) units[i].result = jobs[i - begin].result();
    done = end;
  }
  progress.Finish();
  const double render_seconds = absl::ToDoubleSeconds(absl::Now() - start);

  // Top dataset examples, one cached pass per layer on the server.
  std::vector<v1::TopExamplesResponse> examples(layers.size());
  if (dataset.ok()) {
    for (size_t l = 0; l < layers.size(); ++l) {
      v1::TopExamplesRequest request;
      request.set_model(options.model);
      request.set_layer(layers[l].layer.path());
      request.set_dataset(*dataset);
      request.set_top_n(static_cast<int32_t>(options.examples));
      request.set_png(true);
      FEATVIZ_ASSIGN_OR_RETURN(examples[l], circuits.TopExamples(request));
    }
  }

  const fs::path root(options.out_dir);
  FEATVIZ_RETURN_IF_ERROR(core::MakeDirectories(root.string()));
  std::string index = absl::StrCat(
      "<h1>Atlas of ", Html(model.name()), "</h1>\n<p>version ",
      Html(model.version()), ", content hash <code>",
      Html(model.content_hash().substr(0, 12)), "</code>; ", units.size(),
      " units rendered", options.steps > 0 ? absl::StrCat(" with ", options.steps, " steps") : "",
      ", seed ", options.seed, dataset.ok() ? absl::StrCat("; dataset examples from <b>", Html(*dataset), "</b>") : "",
      ".</p>\n");
  for (size_t l = 0; l < layers.size(); ++l) {
    const AtlasLayer& layer = layers[l];
    const std::string path = layer.layer.path();
    const fs::path dir = root / path;
    FEATVIZ_RETURN_IF_ERROR(core::MakeDirectories(dir.string()));
    std::vector<const Unit*> mine;
    for (const Unit& unit : units) {
      if (unit.layer == l) mine.push_back(&unit);
    }
    // Contact sheet.
    std::vector<at::Tensor> tiles;
    std::vector<std::string> labels;
    for (const Unit* unit : mine) {
      FEATVIZ_ASSIGN_OR_RETURN(at::Tensor tile, Rgb(unit->result.png(0)));
      tiles.push_back(tile);
      labels.push_back(absl::StrCat(unit->index));
    }
    core::GridOptions grid;
    grid.columns = std::min<int64_t>(16, tiles.size());
    grid.scale = 3;
    grid.labels = labels;
    FEATVIZ_ASSIGN_OR_RETURN(at::Tensor sheet, core::MakeGrid(at::stack(tiles), grid));
    FEATVIZ_RETURN_IF_ERROR(core::WritePng(sheet, (dir / "sheet.png").string()));

    const std::string what = layer.spatial && !layer.first_conv
                                 ? "channel (spatial mean)"
                                 : layer.spatial ? "neuron at the centre of the map"
                                                 : "neuron";
    std::string page = absl::StrCat(
        "<nav><a href=\"../index.html\">atlas</a></nav>\n<h1>",
        Html(model.name()), " / ", Html(path), "</h1>\n<p>", Html(layer.layer.kind()),
        ", output [", absl::StrJoin(layer.layer.output_shape(), ", "), "]; each unit's ",
        what, " maximised.",
        layer.first_conv
            ? " (The first convolution reads the image directly: the spatial mean "
              "of its linear filter is maximised by a flat image, so the centre "
              "neuron shows the filter instead.)"
            : "",
        "</p>\n<img class=\"px\" src=\"sheet.png\" alt=\"contact sheet\" width=\"",
        sheet.size(2), "\">\n<h2>Units</h2>\n<div class=\"units\">\n");
    for (const Unit* unit : mine) {
      const std::string png = absl::StrCat("unit_", unit->index, ".png");
      FEATVIZ_RETURN_IF_ERROR(core::WriteFile((dir / png).string(), unit->result.png(0)));
      absl::StrAppend(&page, "<a class=\"unit\" href=\"unit_", unit->index,
                      ".html\"><img class=\"px\" src=\"", png, "\" alt=\"unit ",
                      unit->index, "\">", unit->index, "</a>\n");

      // The unit's page.
      const v1::RenderResult& r = unit->result;
      std::string body = absl::StrCat(
          "<nav><a href=\"../index.html\">atlas</a><a href=\"index.html\">",
          Html(path), "</a>",
          unit->index > 0 ? absl::StrCat("<a href=\"unit_", unit->index - 1, ".html\">&larr; ", unit->index - 1, "</a>") : "",
          unit->index + 1 < layer.layer.channels() ? absl::StrCat("<a href=\"unit_", unit->index + 1, ".html\">", unit->index + 1, " &rarr;</a>") : "",
          "</nav>\n<h1>", Html(path), " unit ", unit->index, "</h1>\n",
          "<p>objective <code>", Html(r.objective()), "</code>, seed ", r.seed(),
          ", ", r.steps(), " steps</p>\n<img class=\"px\" src=\"", png,
          "\" width=\"224\" height=\"224\" alt=\"visualisation\">\n");
      // Statistics: the unit on its own picture and on the dataset.
      absl::StrAppend(&body, "<h2>Activation statistics</h2>\n<table class=\"stats\">");
      absl::StrAppendFormat(&body, "<tr><td>objective on the picture</td><td>%.4g</td></tr>",
                            r.final_total());
      for (const v1::LayerStats& stats : r.layer_stats()) {
        if (stats.layer() != path || stats.mean().shape_size() != 2) continue;
        const int64_t k = stats.mean().shape(1);
        if (unit->index < k) {
          const float* mean = reinterpret_cast<const float*>(stats.mean().data().data());
          const float* max = reinterpret_cast<const float*>(stats.max().data().data());
          absl::StrAppendFormat(&body,
                                "<tr><td>mean / max on the picture</td><td>%.4g / %.4g</td></tr>",
                                mean[unit->index], max[unit->index]);
        }
      }
      const v1::UnitExamples* ex = nullptr;
      for (const v1::UnitExamples& e : examples[l].units()) {
        if (e.channel() == unit->index) ex = &e;
      }
      if (ex != nullptr && ex->values_size() > 0) {
        absl::StrAppendFormat(&body,
                              "<tr><td>max over %s (top example)</td><td>%.4g</td></tr>",
                              Html(*dataset), ex->values(0));
      }
      absl::StrAppend(&body, "</table>\n");
      if (ex != nullptr) {
        absl::StrAppend(&body, "<h2>Top dataset examples</h2>\n<div class=\"examples\">\n");
        for (int i = 0; i < ex->png_size(); ++i) {
          const std::string name = absl::StrCat("unit_", unit->index, "_ex", i, ".png");
          FEATVIZ_RETURN_IF_ERROR(core::WriteFile((dir / name).string(), ex->png(i)));
          absl::StrAppendFormat(
              &body,
              "<figure><img class=\"px\" src=\"%s\" alt=\"example %d\">"
              "<figcaption>#%d %s<br>%.3g</figcaption></figure>\n",
              name, ex->indices(i), ex->indices(i),
              ex->labels(i) >= 0 ? absl::StrCat("label ", ex->labels(i)) : "",
              ex->values(i));
        }
        absl::StrAppend(&body, "</div>\n");
      }
      if (r.terms_size() > 0) {
        absl::StrAppend(&body, "<h2>Loss curve</h2>\n<p>", Html(r.terms(0).term()),
                        " at each step (with transforms)</p>\n",
                        CurveSvg(r.terms(0).trace()), "\n");
      }
      FEATVIZ_RETURN_IF_ERROR(core::WriteFile(
          (dir / absl::StrCat("unit_", unit->index, ".html")).string(),
          Page(absl::StrCat(model.name(), " ", path, " ", unit->index), body)));
    }
    absl::StrAppend(&page, "</div>\n");
    FEATVIZ_RETURN_IF_ERROR(core::WriteFile(
        (dir / "index.html").string(), Page(absl::StrCat(model.name(), " ", path), page)));
    absl::StrAppend(&index, "<h2><a href=\"", Html(path), "/index.html\">",
                    Html(path), "</a></h2>\n<p>", Html(layer.layer.kind()), ", ",
                    layer.layer.channels(), " units</p>\n<a href=\"", Html(path),
                    "/index.html\"><img class=\"px\" src=\"", Html(path),
                    "/sheet.png\" alt=\"", Html(path), "\" width=\"",
                    std::min<int64_t>(sheet.size(2), 960), "\"></a>\n");
  }
  FEATVIZ_RETURN_IF_ERROR(
      core::WriteFile((root / "index.html").string(), Page(absl::StrCat("Atlas of ", model.name()), index)));
  const double total_seconds = absl::ToDoubleSeconds(absl::Now() - start);
  std::fprintf(out,
               "atlas of %s: %zu unit%s in %zu layer%s, rendered in %.1f s, "
               "site written to %s in %.1f s\n",
               model.name().c_str(), units.size(), units.size() == 1 ? "" : "s",
               layers.size(), layers.size() == 1 ? "" : "s", render_seconds,
               (std::filesystem::path(options.out_dir) / "index.html").c_str(),
               total_seconds);
  return absl::OkStatus();
}

}  // namespace featviz::client
