#include "client/multi_render.h"

#include <algorithm>
#include <map>
#include <optional>
#include <random>
#include <utility>

#include <nlohmann/json.hpp>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "client/json.h"
#include "client/output_files.h"
#include "client/progress_bar.h"
#include "client/proto_convert.h"
#include "client/result_images.h"
#include "client/table.h"
#include "core/bands.h"
#include "core/files.h"
#include "core/image.h"
#include "core/objective.h"
#include "core/status_macros.h"
#include "core/torch_status.h"

namespace featviz::client {

namespace v1 = featviz::v1;
using json = nlohmann::ordered_json;

namespace {

// Compare rows are labelled with the model, its version, the objective
// total and the top class: cells this wide keep such a label readable.
constexpr int64_t kMinCompareCellPixels = 256;

std::string ClassName(const std::vector<std::string>& names, int64_t index) {
  return index >= 0 && index < static_cast<int64_t>(names.size())
             ? names[index]
             : std::to_string(index);
}

// Each image's top class and its probability.
struct Top {
  int64_t index = 0;
  float prob = 0;
};
absl::StatusOr<std::vector<Top>> TopClasses(const v1::RenderResult& result) {
  FEATVIZ_ASSIGN_OR_RETURN(std::vector<std::vector<float>> probs,
                           MatrixFromProto(result.probs()));
  std::vector<Top> tops;
  for (const std::vector<float>& row : probs) {
    Top top;
    if (!row.empty()) {
      top.index = std::max_element(row.begin(), row.end()) - row.begin();
      top.prob = row[top.index];
    }
    tops.push_back(top);
  }
  return tops;
}

// The final value of the term on image `batch` (a unit term
// "channel(conv2, 5, batch=3)": the only terms with batch= in a unit
// render).
std::optional<double> BatchTermValue(const v1::RenderResult& result,
                                     int64_t batch) {
  const std::string suffix = absl::StrCat("batch=", batch, ")");
  for (const v1::TermResult& term : result.terms()) {
    const std::string& text = term.term();
    if (text.size() >= suffix.size() &&
        text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0 &&
        (text.size() == suffix.size() ||
         text[text.size() - suffix.size() - 1] == ' ')) {
      return term.final_value();
    }
  }
  return std::nullopt;
}

// Term labels and weights for a progress display of `objective`.
void TermLabels(const std::string& objective, std::vector<std::string>* labels,
                std::vector<double>* weights) {
  if (absl::StatusOr<core::Objective> parsed = core::Objective::Parse(objective);
      parsed.ok()) {
    for (const core::WeightedTerm& t : parsed->terms()) {
      labels->push_back(t.term.ToString());
      weights->push_back(t.weight);
    }
  }
}

// Stacks pictures of possibly different sizes and channel counts: gray ones
// repeated into RGB next to RGB ones, smaller ones enlarged (nearest) to the
// largest, so that one sheet can hold them.
absl::StatusOr<at::Tensor> StackPictures(const std::vector<at::Tensor>& parts) {
  try {
    int64_t channels = 1, height = 0, width = 0;
    for (const at::Tensor& p : parts) {
      channels = std::max<int64_t>(channels, p.size(1));
      height = std::max<int64_t>(height, p.size(2));
      width = std::max<int64_t>(width, p.size(3));
    }
    std::vector<at::Tensor> same;
    for (at::Tensor p : parts) {
      p = p.to(at::kFloat);
      if (p.size(1) != channels) p = p.expand({p.size(0), channels, p.size(2), p.size(3)});
      if (p.size(2) != height || p.size(3) != width) {
        p = at::upsample_nearest2d(p.contiguous(), {height, width});
      }
      same.push_back(p);
    }
    return at::cat(same, 0);
  } catch (const std::exception& e) {
    return core::TorchError(e, "laying out the sheet");
  }
}

std::string Float(double v) { return absl::StrFormat("%.4g", v); }

}  // namespace

std::string ModelVersionRef(const std::string& model) {
  const size_t slash = model.rfind('/');
  if (slash == std::string::npos || slash == 0 || slash + 1 == model.size() ||
      model.find('@') != std::string::npos) {
    return model;
  }
  return absl::StrCat(model.substr(0, slash), "@", model.substr(slash + 1));
}

absl::StatusOr<UnitRenderPlan> PlanUnitRender(
    VisualizerClient& client, const RenderCommandOptions& options,
    const std::string& units_spec) {
  FEATVIZ_ASSIGN_OR_RETURN(std::optional<UnitTemplate> found,
                           FindUnitTemplate(options.objective));
  if (!found.has_value()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--units needs an objective with '*' for the unit, such as "
        "'channel(conv2, *)' or 'neuron(fc1, *)'; got '",
        options.objective, "'"));
  }
  if (options.exemplars > 0) {
    // A request's exemplars are its first image's unit's: one row for a
    // sheet of many units would be another unit's examples under them all.
    return absl::InvalidArgumentError(
        "--exemplars applies to a render of one unit; with '*' in the "
        "objective, render the unit on its own (--path_similarity works "
        "for every unit)");
  }
  UnitRenderPlan plan;
  plan.unit_template = *std::move(found);
  const UnitTemplate& t = plan.unit_template;
  FEATVIZ_ASSIGN_OR_RETURN(const v1::Model model, client.GetModel(options.model));
  plan.class_names.assign(model.class_names().begin(),
                          model.class_names().end());
  const v1::Layer* layer = nullptr;
  std::vector<std::string> paths;
  for (const v1::Layer& l : model.layers()) {
    paths.push_back(l.path());
    if (l.path() == t.layer) layer = &l;
  }
  if (layer == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        "model ", options.model, " has no layer ", t.layer, " (layers: ",
        absl::StrJoin(paths, ", "), ")"));
  }
  if (!layer->tappable()) {
    return absl::InvalidArgumentError(
        absl::StrCat("layer ", t.layer, " of model ", options.model,
                     " cannot be tapped: ", layer->untappable_reason()));
  }
  plan.channels = layer->channels();
  FEATVIZ_ASSIGN_OR_RETURN(
      plan.units,
      ParseUnits(units_spec.empty() ? "all" : units_spec, t.layer, plan.channels));
  const int64_t per_request = t.UnitsPerRequest();
  for (size_t i = 0; i < plan.units.size(); i += per_request) {
    const size_t end = std::min(plan.units.size(), i + per_request);
    plan.chunks.emplace_back(plan.units.begin() + i, plan.units.begin() + end);
  }
  for (const std::vector<int64_t>& chunk : plan.chunks) {
    RenderCommandOptions o = options;
    o.objective = t.Expand(chunk);
    o.batch = static_cast<int64_t>(chunk.size());
    o.labels.clear();
    FEATVIZ_ASSIGN_OR_RETURN(v1::RenderRequest request, BuildRenderRequest(o));
    plan.requests.push_back(std::move(request));
  }
  return plan;
}

absl::Status RunUnitRender(VisualizerClient& client,
                           const RenderCommandOptions& options,
                           const UnitRenderPlan& plan, std::FILE* out,
                           std::FILE* err) {
  const UnitTemplate& t = plan.unit_template;
  const absl::Time start = absl::Now();
  // Every request queued at once, so that the server batches them; then
  // followed in order.
  std::vector<std::string> jobs;
  auto cancel_rest = [&](size_t from) {
    for (size_t k = from; k < jobs.size(); ++k) client.CancelJob(jobs[k]).status().IgnoreError();
  };
  for (const v1::RenderRequest& request : plan.requests) {
    absl::StatusOr<v1::Job> job = client.SubmitJob(request);
    if (!job.ok()) {
      cancel_rest(0);
      return job.status();
    }
    jobs.push_back(job->id());
  }
  std::vector<v1::RenderResult> results;
  {
    const int64_t steps_each = plan.requests.front().optimizer().steps();
    CountProgress progress(
        err, options.progress,
        absl::StrCat(t.layer, ": ", plan.units.size(), " units in ",
                     plan.requests.size(),
                     plan.requests.size() == 1 ? " request" : " requests"),
        "steps");
    for (size_t k = 0; k < jobs.size(); ++k) {
      absl::StatusOr<v1::RenderResult> result = client.WatchJob(
          jobs[k], [&](const v1::RenderProgress& p) -> absl::Status {
            const int64_t total = p.total_steps() > 0 ? p.total_steps() : steps_each;
            progress.Update(static_cast<int64_t>(k) * total + p.step(),
                            static_cast<int64_t>(jobs.size()) * total);
            return absl::OkStatus();
          });
      if (!result.ok()) {
        cancel_rest(k + 1);
        return result.status();
      }
      results.push_back(*std::move(result));
    }
  }
  const double wall_seconds = absl::ToDoubleSeconds(absl::Now() - start);

  // Per unit: its value, its image's top class, where it came from.
  json units = json::array();
  std::vector<std::string> labels;
  std::vector<std::string> rows;
  std::vector<std::string> path_lines;  // --path_similarity, per unit.
  for (size_t k = 0; k < results.size(); ++k) {
    FEATVIZ_ASSIGN_OR_RETURN(const std::vector<Top> tops, TopClasses(results[k]));
    for (size_t i = 0; i < plan.chunks[k].size(); ++i) {
      const int64_t unit = plan.chunks[k][i];
      const std::optional<double> value =
          BatchTermValue(results[k], static_cast<int64_t>(i));
      const std::string name = absl::StrCat(t.layer, ":", unit);
      rows.push_back(name);
      std::string label = value.has_value()
                              ? absl::StrFormat("%s %.2f", name, *value)
                              : name;
      json entry = {{"unit", unit},
                    {"term", t.Term(unit, static_cast<int64_t>(i))},
                    {"value", value.has_value() ? json(*value) : json(nullptr)}};
      if (static_cast<int>(i) < results[k].path_similarity_size()) {
        const v1::PathSimilarity& p =
            results[k].path_similarity(static_cast<int>(i));
        // On the sheet: the score, and "!" for a flagged picture.
        absl::StrAppend(&label, absl::StrFormat(" ps%.2f%s", p.score(),
                                                p.reliable() ? "" : "!"));
        entry["path_similarity"] = {{"score", p.score()},
                                    {"reliable", p.reliable()}};
        path_lines.push_back(
            absl::StrCat(name, ": ", PathSimilarityLine(p), "\n"));
      }
      labels.push_back(std::move(label));
      if (i < tops.size()) {
        entry["top_class"] = tops[i].index;
        entry["top_class_name"] = ClassName(plan.class_names, tops[i].index);
        entry["prob"] = ShortestFloat(tops[i].prob);
      }
      entry["job"] = jobs[k];
      units.push_back(std::move(entry));
    }
  }

  json files = json::object();
  if (!options.out.empty() || !options.npy.empty()) {
    std::vector<at::Tensor> images, pictures;
    for (const v1::RenderResult& result : results) {
      FEATVIZ_ASSIGN_OR_RETURN(at::Tensor im, ResultImages(result));
      FEATVIZ_ASSIGN_OR_RETURN(at::Tensor pic, ResultPictures(result, im));
      images.push_back(std::move(im));
      pictures.push_back(std::move(pic));
    }
    if (!options.out.empty()) {
      FEATVIZ_ASSIGN_OR_RETURN(const at::Tensor all, StackPictures(pictures));
      core::GridOptions grid = SheetLayout(all.size(0), all.size(3),
                                           options.scale, options.columns);
      grid.labels = labels;
      FEATVIZ_ASSIGN_OR_RETURN(const at::Tensor sheet, core::MakeGrid(all, grid));
      FEATVIZ_RETURN_IF_ERROR(MakeParent(options.out));
      FEATVIZ_RETURN_IF_ERROR(core::WritePng(sheet, options.out));
      files["out"] = options.out;
      if (HasBands(results.front())) {
        // One band sheet per request, all as wide (every image has the
        // model's bands), one under another.
        std::vector<at::Tensor> sheets;
        size_t row = 0;
        for (size_t k = 0; k < results.size(); ++k) {
          const std::vector<std::string> chunk_rows(
              rows.begin() + row, rows.begin() + row + plan.chunks[k].size());
          row += plan.chunks[k].size();
          FEATVIZ_ASSIGN_OR_RETURN(
              at::Tensor s,
              ResultBandSheet(results[k], images[k], chunk_rows, options.scale));
          sheets.push_back(std::move(s));
        }
        at::Tensor bands;
        try {
          bands = at::cat(sheets, 1);
        } catch (const std::exception& e) {
          return core::TorchError(e, "joining the band sheets");
        }
        const std::string path = core::BandSheetPath(options.out);
        FEATVIZ_RETURN_IF_ERROR(core::WritePng(bands, path));
        files["bands"] = path;
      }
    }
    if (!options.npy.empty()) {
      at::Tensor all;
      try {
        all = at::cat(images, 0);
      } catch (const std::exception& e) {
        return core::TorchError(e, "joining the units' images");
      }
      FEATVIZ_RETURN_IF_ERROR(MakeParent(options.npy));
      FEATVIZ_RETURN_IF_ERROR(core::WriteNpy(all, options.npy));
      files["npy"] = options.npy;
    }
  }
  if (!options.png_dir.empty()) {
    FEATVIZ_RETURN_IF_ERROR(core::MakeDirectories(options.png_dir));
    std::vector<std::string> pngs;
    for (size_t k = 0; k < results.size(); ++k) {
      for (size_t i = 0; i < plan.chunks[k].size(); ++i) {
        const int b = static_cast<int>(i);
        if (b >= results[k].png_size()) break;
        const int64_t unit = plan.chunks[k][i];
        const std::string path =
            JoinPath(options.png_dir, absl::StrFormat("unit_%d.png", unit));
        FEATVIZ_RETURN_IF_ERROR(core::WriteFile(path, results[k].png(b)));
        pngs.push_back(path);
        if (b < results[k].band_png_size()) {
          const std::string bands = JoinPath(
              options.png_dir, absl::StrFormat("unit_%d.bands.png", unit));
          FEATVIZ_RETURN_IF_ERROR(core::WriteFile(bands, results[k].band_png(b)));
          pngs.push_back(bands);
        }
      }
    }
    files["png"] = pngs;
  }

  const v1::RenderResult& first = results.front();
  if (options.json) {
    json requests = json::array();
    for (size_t k = 0; k < results.size(); ++k) {
      requests.push_back({{"job", jobs[k]},
                          {"units", plan.chunks[k]},
                          {"seed", results[k].seed()},
                          {"objective", results[k].objective()}});
    }
    json report = {{"model", first.model()},
                   {"model_version", first.model_version()},
                   {"model_hash", first.model_hash()},
                   {"objective", t.objective},
                   {"layer", t.layer},
                   {"kind", t.kind},
                   {"channels", plan.channels},
                   {"steps", first.steps()},
                   {"units", std::move(units)},
                   {"requests", std::move(requests)},
                   {"timings", {{"wall_seconds", wall_seconds}}},
                   {"files", std::move(files)}};
    Print(out, report.dump() + "\n");
    return absl::OkStatus();
  }
  for (const std::string& line : path_lines) Print(out, line);
  std::vector<std::string> written;
  for (const char* key : {"out", "bands", "npy"}) {
    if (files.contains(key)) written.push_back(files[key].get<std::string>());
  }
  if (files.contains("png")) {
    written.push_back(absl::StrCat(JoinPath(options.png_dir, "unit_*.png"), " (",
                                   files["png"].size(), ")"));
  }
  Print(out, absl::StrFormat(
                 "%s on %s: %d units of %s in %d %s, %d steps in %.2f s%s\n",
                 t.objective, first.model(), plan.units.size(), t.layer,
                 results.size(), results.size() == 1 ? "request" : "requests",
                 first.steps(), wall_seconds,
                 written.empty()
                     ? ""
                     : absl::StrCat("; wrote ", absl::StrJoin(written, ", "))));
  return absl::OkStatus();
}

absl::Status RunCompare(VisualizerClient& client,
                        const RenderCommandOptions& options,
                        const std::vector<std::string>& models, std::FILE* out,
                        std::FILE* err) {
  // One seed for both, drawn here when not given, so that the two renders
  // start from the same image and the same transforms.
  RenderCommandOptions shared = options;
  if (shared.seed < 0) {
    shared.seed = static_cast<int64_t>(std::random_device{}() & 0x7fffffff);
  }
  std::vector<std::string> term_labels;
  std::vector<double> term_weights;
  TermLabels(options.objective, &term_labels, &term_weights);

  std::vector<v1::RenderResult> results;
  std::vector<std::string> jobs;
  for (const std::string& model : models) {
    RenderCommandOptions o = shared;
    o.model = ModelVersionRef(model);
    FEATVIZ_ASSIGN_OR_RETURN(const v1::RenderRequest request,
                             BuildRenderRequest(o));
    std::string job;
    absl::StatusOr<v1::RenderResult> result;
    {
      ProgressBar bar(err, options.progress, term_labels, term_weights);
      result = client.Render(
          request,
          [&](const v1::RenderProgress& p) {
            bar.Update(p);
            return absl::OkStatus();
          },
          &job);
    }
    if (!result.ok()) return result.status();
    results.push_back(*std::move(result));
    jobs.push_back(job);
  }

  // Per model: its label, top classes, class names and layer statistics.
  struct Side {
    std::string label;
    std::vector<Top> tops;
    std::vector<std::string> class_names;
  };
  std::vector<Side> sides;
  for (const v1::RenderResult& r : results) {
    Side side;
    side.label = absl::StrCat(r.model(), "@", r.model_version());
    FEATVIZ_ASSIGN_OR_RETURN(side.tops, TopClasses(r));
    absl::StatusOr<v1::Model> model = client.GetModel(
        r.model_version().empty() ? r.model()
                                  : absl::StrCat(r.model(), "@", r.model_version()));
    if (model.ok()) {
      side.class_names.assign(model->class_names().begin(),
                              model->class_names().end());
    }
    sides.push_back(std::move(side));
  }
  if (sides[0].label == sides[1].label) {
    // The same version twice (say a file and its copy): the hashes tell.
    for (size_t i = 0; i < 2; ++i) {
      absl::StrAppend(&sides[i].label, " ", results[i].model_hash().substr(0, 8));
    }
  }
  auto top_text = [&](size_t side) {
    std::vector<std::string> parts;
    for (const Top& top : sides[side].tops) {
      parts.push_back(absl::StrFormat(
          "%s %.2f", ClassName(sides[side].class_names, top.index), top.prob));
    }
    return absl::StrJoin(parts, ", ");
  };

  json files = json::object();
  if (!options.out.empty()) {
    std::vector<at::Tensor> pictures;
    std::vector<std::string> labels;
    int64_t per_row = 0;
    for (size_t i = 0; i < results.size(); ++i) {
      FEATVIZ_ASSIGN_OR_RETURN(const at::Tensor images, ResultImages(results[i]));
      FEATVIZ_ASSIGN_OR_RETURN(at::Tensor pics, ResultPictures(results[i], images));
      per_row = std::max<int64_t>(per_row, pics.size(0));
      for (size_t b = 0; b < sides[i].tops.size(); ++b) {
        labels.push_back(absl::StrFormat(
            "%s %s | %s %.2f", sides[i].label, Float(results[i].final_total()),
            ClassName(sides[i].class_names, sides[i].tops[b].index),
            sides[i].tops[b].prob));
      }
      pictures.push_back(std::move(pics));
    }
    FEATVIZ_ASSIGN_OR_RETURN(const at::Tensor all, StackPictures(pictures));
    core::GridOptions grid = SheetLayout(all.size(0), all.size(3), options.scale,
                                         per_row, kMinCompareCellPixels);
    grid.labels = labels;
    FEATVIZ_ASSIGN_OR_RETURN(const at::Tensor sheet, core::MakeGrid(all, grid));
    FEATVIZ_RETURN_IF_ERROR(MakeParent(options.out));
    FEATVIZ_RETURN_IF_ERROR(core::WritePng(sheet, options.out));
    files["out"] = options.out;
  }

  // Each objective layer's statistics: the mean over images and channels of
  // the per-channel means, and the largest per-channel max.
  struct Stat {
    double mean = 0;
    double max = 0;
  };
  std::vector<std::string> layer_order;
  std::vector<std::map<std::string, Stat>> stats(results.size());
  for (size_t i = 0; i < results.size(); ++i) {
    for (const v1::LayerStats& s : results[i].layer_stats()) {
      FEATVIZ_ASSIGN_OR_RETURN(const std::vector<std::vector<float>> mean,
                               MatrixFromProto(s.mean()));
      FEATVIZ_ASSIGN_OR_RETURN(const std::vector<std::vector<float>> max,
                               MatrixFromProto(s.max()));
      Stat stat;
      int64_t n = 0;
      bool first = true;
      for (const auto& row : mean) {
        for (float v : row) {
          stat.mean += v;
          ++n;
        }
      }
      if (n > 0) stat.mean /= static_cast<double>(n);
      for (const auto& row : max) {
        for (float v : row) {
          stat.max = first ? v : std::max<double>(stat.max, v);
          first = false;
        }
      }
      if (std::find(layer_order.begin(), layer_order.end(), s.layer()) ==
          layer_order.end()) {
        layer_order.push_back(s.layer());
      }
      stats[i][s.layer()] = stat;
    }
  }

  if (options.json) {
    json entries = json::array();
    for (size_t i = 0; i < results.size(); ++i) {
      FEATVIZ_ASSIGN_OR_RETURN(json report,
                               RenderResultToJson(results[i], sides[i].class_names));
      json layers = json::array();
      for (const std::string& layer : layer_order) {
        auto it = stats[i].find(layer);
        if (it == stats[i].end()) continue;
        layers.push_back({{"layer", layer},
                          {"mean", it->second.mean},
                          {"max", it->second.max}});
      }
      json entry = {{"label", sides[i].label},
                    {"model", results[i].model()},
                    {"model_version", results[i].model_version()},
                    {"model_hash", results[i].model_hash()},
                    {"final_total", report["final_total"]},
                    {"terms", report["terms"]},
                    {"top_class", report["top_class"]},
                    {"top_class_name", report["top_class_name"]},
                    {"probs", report["probs"]},
                    {"layers", std::move(layers)},
                    {"layer_stats", report["layer_stats"]},
                    {"job", jobs[i]}};
      entries.push_back(std::move(entry));
    }
    json report = {{"objective", results[0].objective()},
                   {"seed", results[0].seed()},
                   {"steps", results[0].steps()},
                   {"models", std::move(entries)},
                   {"files", std::move(files)}};
    Print(out, report.dump() + "\n");
    return absl::OkStatus();
  }

  std::vector<std::vector<std::string>> rows;
  rows.push_back({"objective total", Float(results[0].final_total()),
                  Float(results[1].final_total())});
  for (int k = 0; k < results[0].terms_size(); ++k) {
    rows.push_back({results[0].terms(k).term(),
                    Float(results[0].terms(k).final_value()),
                    k < results[1].terms_size()
                        ? Float(results[1].terms(k).final_value())
                        : std::string("-")});
  }
  rows.push_back({"top class", top_text(0), top_text(1)});
  for (const std::string& layer : layer_order) {
    for (const char* what : {"mean", "max"}) {
      std::vector<std::string> row = {absl::StrCat(layer, " ", what)};
      for (size_t i = 0; i < results.size(); ++i) {
        auto it = stats[i].find(layer);
        row.push_back(it == stats[i].end()
                          ? "-"
                          : Float(std::string(what) == "mean" ? it->second.mean
                                                              : it->second.max));
      }
      rows.push_back(std::move(row));
    }
  }
  Print(out, absl::StrFormat("%s, seed %d, %d steps\n", results[0].objective(),
                             results[0].seed(), results[0].steps()));
  // Model names are case-sensitive, and table headers are upper-cased: the
  // models go in the first row.
  rows.insert(rows.begin(), {"model", sides[0].label, sides[1].label});
  Print(out, FormatTable({"", "A", "B"}, rows));
  if (files.contains("out")) {
    Print(out, absl::StrCat("wrote ", files["out"].get<std::string>(), "\n"));
  }
  return absl::OkStatus();
}

}  // namespace featviz::client
