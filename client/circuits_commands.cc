#include "client/circuits_commands.h"

#include <algorithm>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>

#include <nlohmann/json.hpp>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "client/atlas_page.h"
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

// A contact sheet of `circuits`: `columns` labelled tiles a row, on dark
// gray.
absl::StatusOr<at::Tensor> CircuitsSheet(const std::vector<at::Tensor>& tiles,
                                         const std::vector<std::string>& labels,
                                         int64_t columns) {
  core::GridOptions grid;
  grid.columns = columns;
  grid.scale = 4;
  grid.labels = labels;
  grid.background = 0.15f;
  return core::MakeGrid(at::stack(tiles), grid);
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
    FEATVIZ_ASSIGN_OR_RETURN(at::Tensor row, CircuitsSheet(tiles, labels, columns));
    FEATVIZ_RETURN_IF_ERROR(core::WritePng(
        row, (fs::path(options.out_dir) / absl::StrCat("class_", c.class_index(), ".png"))
                 .string()));
    all_tiles.insert(all_tiles.end(), tiles.begin(), tiles.end());
    all_labels.insert(all_labels.end(), labels.begin(), labels.end());
    doc["classes"].push_back(std::move(entry));
  }
  FEATVIZ_ASSIGN_OR_RETURN(at::Tensor sheet,
                           CircuitsSheet(all_tiles, all_labels, columns));
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

namespace {

// The dataset of the atlas's examples, asked of the server before any
// render: the one named, else the one that fits the model (several: the
// user must name one; none: the pages go without examples, which `err`
// says). The pass it makes for `first_layer` is cached for the examples.
absl::StatusOr<std::optional<std::string>> AtlasDataset(
    CircuitsClient& circuits, const AtlasCommandOptions& options,
    const std::string& first_layer, std::FILE* err) {
  v1::TopExamplesRequest probe;
  probe.set_model(options.model);
  probe.set_layer(first_layer);
  probe.set_dataset(options.dataset);
  probe.set_top_n(1);
  absl::StatusOr<v1::TopExamplesResponse> found = circuits.TopExamples(probe);
  if (found.ok()) return found->dataset();
  if (options.dataset.empty() && absl::IsFailedPrecondition(found.status())) {
    std::fprintf(err, "atlas: %s; pages will have no dataset examples\n",
                 std::string(found.status().message()).c_str());
    return std::nullopt;
  }
  return found.status();
}

// `requests` run as jobs, `window` in flight at a time, with a progress
// line on `err` ("atlas: K/N `what`"); their results, in order.
absl::StatusOr<std::vector<v1::RenderResult>> RunAtlasJobs(
    CircuitsClient& circuits, const std::vector<v1::RenderRequest>& requests,
    size_t window, const char* what, std::FILE* err) {
  std::vector<v1::RenderResult> results(requests.size());
  size_t done = 0;
  CountProgress progress(err, ProgressModeFor(err), "atlas", what);
  for (size_t begin = 0; begin < requests.size(); begin += window) {
    const size_t end = std::min(requests.size(), begin + window);
    std::vector<std::string> ids;
    for (size_t i = begin; i < end; ++i) {
      FEATVIZ_ASSIGN_OR_RETURN(v1::Job job, circuits.SubmitJob(requests[i]));
      ids.push_back(job.id());
    }
    FEATVIZ_ASSIGN_OR_RETURN(
        std::vector<v1::Job> jobs,
        circuits.WaitForJobs(ids, [&](size_t d, size_t) {
          progress.Update(static_cast<int64_t>(done + d),
                          static_cast<int64_t>(requests.size()));
        }));
    for (size_t i = begin; i < end; ++i) results[i] = jobs[i - begin].result();
    done = end;
  }
  progress.Finish();
  return results;
}

// Every unit of `layers` rendered as a job; with a dataset, each render also
// brings the unit's exemplars and its picture's path similarity
// (RenderRequest.trust).
absl::StatusOr<std::vector<AtlasUnit>> RenderAtlasUnits(
    CircuitsClient& circuits, const AtlasCommandOptions& options,
    const std::vector<AtlasLayer>& layers,
    const std::optional<std::string>& dataset, std::FILE* err) {
  std::vector<AtlasUnit> units;
  std::vector<v1::RenderRequest> requests;
  for (size_t l = 0; l < layers.size(); ++l) {
    for (int64_t u = 0; u < layers[l].layer.channels(); ++u) {
      AtlasUnit& unit = units.emplace_back();
      unit.layer = l;
      unit.index = u;
      unit.objective = layers[l].Objective(u);
      v1::RenderRequest& request = requests.emplace_back(
          BaseRender(options.model, options.steps, options.seed));
      request.set_objective_text(unit.objective);
      if (dataset.has_value()) {
        v1::TrustSpec* trust = request.mutable_trust();
        trust->set_exemplars(static_cast<int32_t>(options.examples));
        trust->set_path_similarity(true);
        trust->set_dataset(*dataset);
      }
    }
  }
  FEATVIZ_ASSIGN_OR_RETURN(
      std::vector<v1::RenderResult> results,
      RunAtlasJobs(circuits, requests, options.window, "units rendered", err));
  for (size_t i = 0; i < units.size(); ++i) units[i].result = std::move(results[i]);
  return units;
}

// Each unit's top exemplar accentuated (RenderRequest.accentuate), for the
// units that have exemplars.
absl::Status AccentuateAtlasUnits(CircuitsClient& circuits,
                                  const AtlasCommandOptions& options,
                                  const std::string& dataset,
                                  std::vector<AtlasUnit>& units, std::FILE* err) {
  std::vector<v1::RenderRequest> requests;
  std::vector<size_t> which;
  for (size_t i = 0; i < units.size(); ++i) {
    const v1::Exemplars& exemplars = units[i].result.exemplars();
    if (exemplars.examples_size() == 0) continue;
    v1::RenderRequest& request = requests.emplace_back(
        BaseRender(options.model, options.steps, options.seed));
    request.set_objective_text(units[i].objective);
    v1::DatasetImage* seed =
        request.mutable_accentuate()->mutable_image()->mutable_dataset_image();
    seed->set_dataset(dataset);
    seed->set_index(exemplars.examples(0).index());
    which.push_back(i);
  }
  FEATVIZ_ASSIGN_OR_RETURN(
      std::vector<v1::RenderResult> results,
      RunAtlasJobs(circuits, requests, options.window, "exemplars accentuated",
                   err));
  for (size_t k = 0; k < which.size(); ++k) {
    units[which[k]].accentuated = std::move(results[k]);
  }
  return absl::OkStatus();
}

// Each unit's label (Circuits.LabelUnits, one call per layer). A dataset
// without labels gives none, which `err` says once.
absl::Status LabelAtlasUnits(CircuitsClient& circuits,
                             const AtlasCommandOptions& options,
                             const std::vector<AtlasLayer>& layers,
                             const std::string& dataset,
                             std::vector<AtlasUnit>& units, std::FILE* err) {
  for (size_t l = 0; l < layers.size(); ++l) {
    v1::LabelUnitsRequest request;
    request.set_model(options.model);
    request.set_layer(layers[l].layer.path());
    request.set_dataset(dataset);
    absl::StatusOr<v1::LabelUnitsResponse> labels = circuits.LabelUnits(request);
    if (absl::IsFailedPrecondition(labels.status())) {
      std::fprintf(err, "atlas: %s; pages will have no unit labels\n",
                   std::string(labels.status().message()).c_str());
      return absl::OkStatus();
    }
    if (!labels.ok()) return labels.status();
    std::map<int64_t, const v1::UnitLabel*> by_channel;
    for (const v1::UnitLabel& label : labels->units()) {
      by_channel[label.channel()] = &label;
    }
    for (AtlasUnit& unit : units) {
      if (unit.layer != l) continue;
      auto it = by_channel.find(unit.index);
      if (it != by_channel.end()) unit.label = *it->second;
    }
  }
  return absl::OkStatus();
}

// What accentuation changed: the seed dimmed, with red where the picture
// is brighter than its seed and blue where it is darker, scaled to the
// largest change. [3, H, W] in [0, 1].
absl::StatusOr<at::Tensor> ChangeImage(const std::string& seed_png,
                                       const std::string& picture_png) {
  FEATVIZ_ASSIGN_OR_RETURN(const at::Tensor seed, Rgb(seed_png));
  FEATVIZ_ASSIGN_OR_RETURN(const at::Tensor picture, Rgb(picture_png));
  if (seed.sizes() != picture.sizes()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "accentuated picture ", c10::str(picture.sizes()),
        " differs in size from its seed ", c10::str(seed.sizes())));
  }
  const at::Tensor diff = (picture - seed).mean(0);
  const double scale = std::max(diff.abs().max().item<double>(), 1e-6);
  const at::Tensor base = 0.3 * seed.mean(0);
  const at::Tensor added = diff.clamp_min(0) / scale;
  const at::Tensor removed = (-diff).clamp_min(0) / scale;
  return at::stack({base + added, base, base + removed}).clamp(0, 1).contiguous();
}

// A layer's folder, `dir`: its contact sheet (sheet.png), each unit's
// picture, examples and page, and its index.html. The sheet's width in
// pixels, for the atlas's index.
absl::StatusOr<int64_t> WriteAtlasLayer(
    const fs::path& dir, const v1::Model& model, const AtlasLayer& layer,
    const std::vector<const AtlasUnit*>& units, const std::string& dataset) {
  FEATVIZ_RETURN_IF_ERROR(core::MakeDirectories(dir.string()));
  std::vector<at::Tensor> tiles;
  std::vector<std::string> labels;
  for (const AtlasUnit* unit : units) {
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
  const int64_t sheet_width = sheet.size(2);

  for (const AtlasUnit* unit : units) {
    FEATVIZ_RETURN_IF_ERROR(core::WriteFile(
        (dir / AtlasUnitPng(unit->index)).string(), unit->result.png(0)));
    const v1::Exemplars& exemplars = unit->result.exemplars();
    for (int i = 0; i < exemplars.examples_size(); ++i) {
      const v1::Exemplar& e = exemplars.examples(i);
      FEATVIZ_RETURN_IF_ERROR(core::WriteFile(
          (dir / AtlasExamplePng(unit->index, i)).string(), e.png()));
      if (!e.activation_png().empty()) {
        FEATVIZ_RETURN_IF_ERROR(core::WriteFile(
            (dir / AtlasExampleMapPng(unit->index, i)).string(),
            e.activation_png()));
      }
    }
    if (unit->accentuated.png_size() > 0 && exemplars.examples_size() > 0) {
      FEATVIZ_RETURN_IF_ERROR(
          core::WriteFile((dir / AtlasAccentPng(unit->index)).string(),
                          unit->accentuated.png(0)));
      FEATVIZ_ASSIGN_OR_RETURN(
          const at::Tensor change,
          ChangeImage(exemplars.examples(0).png(), unit->accentuated.png(0)));
      FEATVIZ_RETURN_IF_ERROR(
          core::WritePng(change, (dir / AtlasChangePng(unit->index)).string()));
    }
    FEATVIZ_ASSIGN_OR_RETURN(const std::string page,
                             AtlasUnitPage(model, layer, *unit, dataset));
    FEATVIZ_RETURN_IF_ERROR(core::WriteFile(
        (dir / AtlasUnitHtml(unit->index)).string(), page));
  }
  FEATVIZ_RETURN_IF_ERROR(
      core::WriteFile((dir / "index.html").string(),
                      AtlasLayerPage(model, layer, sheet_width, units)));
  return sheet_width;
}

}  // namespace

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
  FEATVIZ_ASSIGN_OR_RETURN(
      const std::optional<std::string> dataset,
      AtlasDataset(circuits, options, layers.front().layer.path(), err));
  FEATVIZ_ASSIGN_OR_RETURN(
      std::vector<AtlasUnit> units,
      RenderAtlasUnits(circuits, options, layers, dataset, err));
  if (dataset.has_value()) {
    FEATVIZ_RETURN_IF_ERROR(
        AccentuateAtlasUnits(circuits, options, *dataset, units, err));
    FEATVIZ_RETURN_IF_ERROR(
        LabelAtlasUnits(circuits, options, layers, *dataset, units, err));
  }
  const double render_seconds = absl::ToDoubleSeconds(absl::Now() - start);

  const fs::path root(options.out_dir);
  FEATVIZ_RETURN_IF_ERROR(core::MakeDirectories(root.string()));
  std::vector<std::string> entries;
  for (size_t l = 0; l < layers.size(); ++l) {
    std::vector<const AtlasUnit*> mine;
    for (const AtlasUnit& unit : units) {
      if (unit.layer == l) mine.push_back(&unit);
    }
    FEATVIZ_ASSIGN_OR_RETURN(
        const int64_t sheet_width,
        WriteAtlasLayer(root / layers[l].layer.path(), model, layers[l], mine,
                        dataset.value_or("")));
    entries.push_back(AtlasIndexEntry(layers[l], sheet_width));
  }
  AtlasSummary summary;
  summary.units = units.size();
  summary.steps = options.steps;
  summary.seed = options.seed;
  summary.dataset = dataset;
  FEATVIZ_RETURN_IF_ERROR(core::WriteFile(
      (root / "index.html").string(), AtlasIndexPage(model, summary, entries)));
  const double total_seconds = absl::ToDoubleSeconds(absl::Now() - start);
  std::fprintf(out,
               "atlas of %s: %zu unit%s in %zu layer%s, rendered in %.1f s, "
               "site written to %s in %.1f s\n",
               model.name().c_str(), units.size(), units.size() == 1 ? "" : "s",
               layers.size(), layers.size() == 1 ? "" : "s", render_seconds,
               (root / "index.html").c_str(), total_seconds);
  return absl::OkStatus();
}

}  // namespace featviz::client
