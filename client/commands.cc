#include "client/commands.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
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
#include "core/npy.h"
#include "core/objective.h"
#include "core/status_macros.h"
#include "proto/tensor_codec.h"

namespace featviz::client {

namespace v1 = featviz::v1;

namespace {

// The state of every device's copy: "loaded" with one device,
// "cuda:0:loaded,cuda:1:unloaded" with several.
std::string StatesText(const v1::Model& m) {
  if (m.copies_size() <= 1) return ModelStateName(m.state());
  std::vector<std::string> states;
  for (const v1::ModelCopy& copy : m.copies()) {
    states.push_back(
        absl::StrCat(copy.device(), ":", ModelStateName(copy.state())));
  }
  return absl::StrJoin(states, ",");
}

std::string InputShape(const v1::InputSpec& input) {
  return absl::StrCat(input.channels(), "x", input.height(), "x",
                      input.width());
}

// Index of the largest value of each row.
std::vector<int64_t> ArgMaxRows(const std::vector<std::vector<float>>& rows) {
  std::vector<int64_t> out;
  for (const std::vector<float>& row : rows) {
    out.push_back(row.empty()
                      ? 0
                      : std::max_element(row.begin(), row.end()) - row.begin());
  }
  return out;
}

std::string ClassName(const std::vector<std::string>& names, int64_t index) {
  return index >= 0 && index < static_cast<int64_t>(names.size())
             ? names[index]
             : std::to_string(index);
}

}  // namespace

absl::Status RunModels(VisualizerClient& client, bool json, std::FILE* out) {
  FEATVIZ_ASSIGN_OR_RETURN(std::vector<v1::Model> models, client.ListModels());
  if (json) {
    nlohmann::ordered_json list = nlohmann::ordered_json::array();
    for (const v1::Model& m : models) list.push_back(ModelToJson(m));
    Print(out, list.dump() + "\n");
    return absl::OkStatus();
  }
  std::vector<std::vector<std::string>> rows;
  const absl::Time now = absl::Now();
  for (const v1::Model& m : models) {
    rows.push_back(
        {m.name(), m.version(), m.content_hash().substr(0, 12),
         InputShape(m.input()), absl::StrCat(m.class_names_size()),
         absl::StrCat(m.layers_size()), StatesText(m),
         absl::StrCat(m.memory_bytes()),
         m.has_last_used_time() ? AgoText(m.last_used_time(), now) : "never"});
  }
  Print(out, FormatTable({"name", "version", "hash", "input", "classes",
                          "layers", "state", "bytes", "last used"},
                         rows));
  return absl::OkStatus();
}

namespace {

// "tokens: 1 + 4x4 patches" for a token layer, else its layout's name.
std::string LayoutText(const v1::Layer& layer) {
  if (layer.layout() != "tokens") return layer.layout();
  if (layer.grid_height() == 0) {
    return absl::StrCat("tokens: ", layer.tokens(), ", no patch grid");
  }
  return absl::StrCat("tokens: ",
                      layer.token_prefix() > 0
                          ? absl::StrCat(layer.token_prefix(), " + ")
                          : std::string(),
                      layer.grid_height(), "x", layer.grid_width(), " patches");
}

// A contact sheet of a render's exemplars: a row of the dataset images,
// each labelled with its index, the unit's value and its label, and under
// it a row of the unit's activation maps over them (when there are maps).
absl::Status WriteExemplarSheet(const v1::Exemplars& exemplars,
                                const std::string& path, int64_t scale) {
  std::vector<at::Tensor> cells;
  core::GridOptions grid;
  const int n = exemplars.examples_size();
  bool maps = true;
  for (const v1::Exemplar& e : exemplars.examples()) {
    maps = maps && !e.activation_png().empty();
  }
  for (const v1::Exemplar& e : exemplars.examples()) {
    FEATVIZ_ASSIGN_OR_RETURN(at::Tensor image, core::DecodePng(e.png()));
    if (image.size(0) == 1) image = image.repeat({3, 1, 1});
    cells.push_back(image.narrow(0, 0, 3));
    grid.labels.push_back(absl::StrFormat(
        "#%d %.3g%s", e.index(), e.value(),
        e.label() >= 0 ? absl::StrCat(" (", e.label(), ")") : ""));
  }
  if (maps) {
    for (const v1::Exemplar& e : exemplars.examples()) {
      FEATVIZ_ASSIGN_OR_RETURN(at::Tensor map,
                               core::DecodePng(e.activation_png()));
      if (map.size(0) == 1) map = map.repeat({3, 1, 1});
      cells.push_back(map.narrow(0, 0, 3));
      grid.labels.push_back("map");
    }
  }
  const at::Tensor stacked = at::stack(cells);
  const core::GridOptions layout =
      SheetLayout(n, stacked.size(3), scale, n);
  grid.columns = n;
  grid.scale = layout.scale;
  FEATVIZ_ASSIGN_OR_RETURN(at::Tensor sheet, core::MakeGrid(stacked, grid));
  FEATVIZ_RETURN_IF_ERROR(MakeParent(path));
  return core::WritePng(sheet, path);
}

}  // namespace

std::string PathSimilarityLine(const v1::PathSimilarity& p) {
  std::vector<std::string> layers;
  for (const v1::LayerPathSimilarity& l : p.layers()) {
    layers.push_back(absl::StrFormat("%s %.2f", l.layer(), l.score()));
  }
  return absl::StrFormat("path similarity %.2f (%s, threshold %g): %s",
                         p.score(), p.reliable() ? "reliable" : "FLAGGED",
                         p.threshold(), absl::StrJoin(layers, ", "));
}

absl::Status RunLayers(VisualizerClient& client, const std::string& model,
                       bool json, std::FILE* out) {
  FEATVIZ_ASSIGN_OR_RETURN(v1::Model m, client.GetModel(model));
  if (json) {
    nlohmann::ordered_json list = nlohmann::ordered_json::array();
    for (const v1::Layer& layer : m.layers())
      list.push_back(LayerToJson(layer));
    Print(out, list.dump() + "\n");
    return absl::OkStatus();
  }
  std::vector<std::vector<std::string>> rows;
  for (const v1::Layer& layer : m.layers()) {
    rows.push_back({layer.path(), layer.kind(),
                    layer.tappable()
                        ? ShapeToString(layer.output_shape())
                        : absl::StrCat("(cannot be tapped: ",
                                       layer.untappable_reason(), ")"),
                    absl::StrCat(layer.channels()), LayoutText(layer)});
  }
  Print(out,
        FormatTable({"path", "kind", "output", "channels", "layout"}, rows));
  // The model's own outputs, which output(name, c) reads.
  std::vector<std::vector<std::string>> outputs;
  for (const v1::ModelOutput& output : m.outputs()) {
    std::string role;
    if (output.name() == m.logits_output()) {
      role = m.log_probs() ? "class log-probabilities" : "class logits";
    }
    outputs.push_back({output.name(), ShapeToString(output.shape()),
                       absl::StrCat(output.channels()), role});
  }
  if (!outputs.empty()) {
    Print(out, "\n");
    Print(out, FormatTable({"output", "shape", "channels", "holds"}, outputs));
  }
  return absl::OkStatus();
}

namespace {

// --accentuate: "dataset:IDX", "dataset:NAME:IDX" or an .npy file (added to
// the request's references).
absl::Status AddAccentuation(const RenderCommandOptions& options,
                             v1::RenderRequest& request) {
  if (options.accentuate.empty()) {
    if (!options.accentuate_layer.empty() || options.accentuate_weight != 0) {
      return absl::InvalidArgumentError(
          "--accentuate_layer and --accentuate_weight need --accentuate");
    }
    return absl::OkStatus();
  }
  if (!std::isfinite(options.accentuate_weight) ||
      options.accentuate_weight < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--accentuate_weight must be a finite number >= 0 (0: the server's "
        "default), got ",
        options.accentuate_weight));
  }
  v1::Accentuation* accentuate = request.mutable_accentuate();
  accentuate->set_layer(options.accentuate_layer);
  accentuate->set_weight(options.accentuate_weight);
  const std::string& spec = options.accentuate;
  if (absl::StartsWith(spec, "dataset:")) {
    const std::vector<std::string> parts = absl::StrSplit(spec, ':');
    int64_t index = -1;
    if (parts.size() < 2 || parts.size() > 3 ||
        !absl::SimpleAtoi(parts.back(), &index) || index < 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--accentuate must be dataset:IDX, dataset:NAME:IDX or an .npy "
          "file, got '",
          spec, "'"));
    }
    v1::DatasetImage* image =
        accentuate->mutable_image()->mutable_dataset_image();
    if (parts.size() == 3) image->set_dataset(parts[1]);
    image->set_index(index);
    return absl::OkStatus();
  }
  absl::StatusOr<std::string> bytes = core::ReadFile(spec);
  if (!bytes.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--accentuate: ", bytes.status().message()));
  }
  absl::StatusOr<at::Tensor> seed = core::DecodeNpy(*bytes);
  if (!seed.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--accentuate ", spec, ": ", seed.status().message()));
  }
  if (seed->scalar_type() != at::kFloat ||
      !(seed->dim() == 3 || (seed->dim() == 4 && seed->size(0) == 1))) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--accentuate ", spec, " must hold float32 [C, H, W] or [1, C, H, W], "
        "got ", core::NumpyTypeName(seed->scalar_type()), " ",
        c10::str(seed->sizes())));
  }
  accentuate->mutable_image()->set_request_index(request.references_size());
  *request.add_references() = wire::TensorToProto(*seed);
  return absl::OkStatus();
}

// The accentuation lines of a summary: what the unit did, and how far each
// picture moved from its seed (--accentuate).
std::string AccentuationLines(const RenderCommandOptions& options,
                              const v1::RenderResult& result) {
  std::string seed = "its seed";
  if (absl::StartsWith(options.accentuate, "dataset:")) {
    const std::vector<std::string> parts =
        absl::StrSplit(options.accentuate, ':');
    seed = parts.size() == 3
               ? absl::StrCat("image ", parts[2], " of dataset ", parts[1])
               : absl::StrCat("dataset image ", parts.back());
  } else if (!options.accentuate.empty()) {
    seed = options.accentuate;
  }
  std::string lines;
  for (int b = 0; b < result.accentuation_size(); ++b) {
    const v1::AccentuationOutcome& a = result.accentuation(b);
    const std::string factor =
        a.seed_value() > 0
            ? absl::StrFormat(" (x%.3g)", a.value() / a.seed_value())
            : std::string();
    absl::StrAppendFormat(
        &lines,
        "accentuation%s: unit %.4g -> %.4g%s, pixel RMS distance %.3g from "
        "%s\n",
        result.accentuation_size() > 1 ? absl::StrCat(" ", b) : "",
        a.seed_value(), a.value(), factor, a.pixel_distance(), seed);
  }
  return lines;
}

}  // namespace

absl::StatusOr<v1::RenderRequest> BuildRenderRequest(
    const RenderCommandOptions& options) {
  if (options.model.empty()) {
    return absl::InvalidArgumentError("MODEL is empty");
  }
  if (options.objective.empty()) {
    return absl::InvalidArgumentError("OBJECTIVE is empty");
  }
  auto non_negative = [](absl::string_view flag,
                         int64_t value) -> absl::Status {
    if (value >= 0) return absl::OkStatus();
    return absl::InvalidArgumentError(
        absl::StrCat("--", flag, " must not be negative, got ", value));
  };
  FEATVIZ_RETURN_IF_ERROR(non_negative("steps", options.steps));
  FEATVIZ_RETURN_IF_ERROR(non_negative("size", options.size));
  FEATVIZ_RETURN_IF_ERROR(non_negative("height", options.height));
  FEATVIZ_RETURN_IF_ERROR(non_negative("width", options.width));
  FEATVIZ_RETURN_IF_ERROR(non_negative("scale", options.scale));
  FEATVIZ_RETURN_IF_ERROR(non_negative("columns", options.columns));
  FEATVIZ_RETURN_IF_ERROR(
      non_negative("progress_every", options.progress_every));
  if (options.batch < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--batch must be at least 1, got ", options.batch));
  }
  if (!std::isfinite(options.lr) || options.lr < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--lr must be a finite number >= 0, got ", options.lr));
  }
  if (!std::isfinite(options.decay) || options.decay < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--decay must be a finite number >= 0, got ", options.decay));
  }
  if (!options.labels.empty() &&
      static_cast<int64_t>(options.labels.size()) != options.batch) {
    return absl::InvalidArgumentError(
        absl::StrCat("--labels has ", options.labels.size(),
                     " labels for --batch ", options.batch));
  }

  v1::RenderRequest request;
  request.set_model(options.model);
  request.set_objective_text(options.objective);
  v1::ImageSpec* image = request.mutable_image();
  absl::StatusOr<v1::Parameterization> param =
      ParameterizationFromText(options.param);
  if (!param.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--param: ", param.status().message()));
  }
  image->set_parameterization(*param);
  image->set_size(options.size);
  image->set_height(options.height);
  image->set_width(options.width);
  if (options.gray) image->set_color(v1::ImageSpec::COLOR_GRAY);
  image->set_maco_dataset(options.maco_dataset);
  for (const std::string& path : options.references) {
    absl::StatusOr<at::Tensor> reference = core::ReadPng(path);
    if (!reference.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--reference: ", reference.status().message()));
    }
    *request.add_references() = wire::TensorToProto(*reference);
  }
  FEATVIZ_RETURN_IF_ERROR(AddAccentuation(options, request));
  image->set_batch(options.batch);
  image->set_decay_power(options.decay);
  absl::StatusOr<v1::Transforms> transforms =
      TransformsFromText(options.transforms);
  if (!transforms.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--transforms: ",
        absl::StripPrefix(transforms.status().message(), "transforms: ")));
  }
  *request.mutable_transforms() = *std::move(transforms);
  request.mutable_optimizer()->set_lr(options.lr);
  request.set_precision(options.precision);
  request.mutable_optimizer()->set_steps(options.steps);
  if (options.seed >= 0) request.set_seed(static_cast<uint64_t>(options.seed));
  // Range checks are the server's (trust.exemplars names the bound); a
  // value past int32 would wrap, so it is refused here.
  if (options.exemplars < 0 || options.exemplars > INT32_MAX) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--exemplars must be in [0, 64], got ", options.exemplars));
  }
  request.mutable_trust()->set_exemplars(
      static_cast<int32_t>(options.exemplars));
  request.mutable_trust()->set_path_similarity(options.path_similarity);
  request.mutable_trust()->set_dataset(options.trust_dataset);
  v1::OutputSpec* output = request.mutable_output();
  output->set_tensor(!options.out.empty() || !options.npy.empty());
  output->set_png(!options.png_dir.empty() || !options.transparency.empty());
  output->set_preview_png(!options.previews.empty());
  output->set_progress_every(options.progress_every);
  return request;
}

absl::Status RunRender(VisualizerClient& client,
                       const RenderCommandOptions& options,
                       const v1::RenderRequest& request, std::FILE* out,
                       std::FILE* err) {
  return FollowRender(
      client, options,
      [&](const VisualizerClient::ProgressCallback& on_progress,
          std::string* job_id) {
        return client.Render(request, on_progress, job_id);
      },
      out, err);
}

absl::Status FollowRender(VisualizerClient& client,
                          const RenderCommandOptions& options,
                          const RenderStream& stream, std::FILE* out,
                          std::FILE* err) {
  // The bar names the terms the way the server will; the server still
  // parses the text and is the one to reject it.
  std::vector<std::string> term_labels;
  std::vector<double> term_weights;
  if (absl::StatusOr<core::Objective> objective =
          core::Objective::Parse(options.objective);
      objective.ok()) {
    for (const core::WeightedTerm& t : objective->terms()) {
      term_labels.push_back(t.term.ToString());
      term_weights.push_back(t.weight);
    }
  }
  FEATVIZ_RETURN_IF_ERROR(core::MakeDirectories(options.previews));

  nlohmann::ordered_json files = nlohmann::ordered_json::object();
  std::vector<std::string> previews;
  const absl::Time start = absl::Now();
  absl::StatusOr<v1::RenderResult> rendered;
  std::string job_id;
  {
    ProgressBar bar(err, options.progress, term_labels, term_weights);
    rendered = stream(
        [&](const v1::RenderProgress& progress) -> absl::Status {
          bar.Update(progress);
          if (options.previews.empty() || progress.preview_png().empty()) {
            return absl::OkStatus();
          }
          const std::string path =
              JoinPath(options.previews,
                       absl::StrFormat("step_%05d.png", progress.step()));
          FEATVIZ_RETURN_IF_ERROR(core::WriteFile(path, progress.preview_png()));
          previews.push_back(path);
          return absl::OkStatus();
        },
        &job_id);
  }
  if (!rendered.ok()) return rendered.status();
  const double wall_seconds = absl::ToDoubleSeconds(absl::Now() - start);
  const v1::RenderResult& result = *rendered;
  // On stderr whatever stdout carries (the JSON has them too): a saturated
  // prob(c) explains a flat picture.
  for (const std::string& warning : result.warnings()) {
    Print(err, absl::StrCat("warning: ", warning, "\n"));
  }

  FEATVIZ_ASSIGN_OR_RETURN(std::vector<std::vector<float>> probs,
                           MatrixFromProto(result.probs()));
  const std::vector<int64_t> top = ArgMaxRows(probs);
  // Class names label the grid, the JSON and the summary line alike, with or
  // without a file; a model that vanished since the render only costs the
  // names.
  std::vector<std::string> class_names;
  if (absl::StatusOr<v1::Model> model = client.GetModel(result.model());
      model.ok()) {
    class_names.assign(model->class_names().begin(),
                       model->class_names().end());
  }

  at::Tensor images;
  if (!options.out.empty() || !options.npy.empty()) {
    FEATVIZ_ASSIGN_OR_RETURN(images, ResultImages(result));
  }
  if (!options.out.empty()) {
    FEATVIZ_ASSIGN_OR_RETURN(const at::Tensor pictures,
                             ResultPictures(result, images));
    core::GridOptions grid = SheetLayout(pictures.size(0), pictures.size(3),
                                         options.scale, options.columns);
    if (!options.labels.empty()) {
      grid.labels = options.labels;
    } else {
      for (size_t b = 0; b < top.size(); ++b) {
        grid.labels.push_back(absl::StrFormat(
            "%s %.2f", ClassName(class_names, top[b]), probs[b][top[b]]));
      }
    }
    FEATVIZ_ASSIGN_OR_RETURN(at::Tensor sheet, core::MakeGrid(pictures, grid));
    FEATVIZ_RETURN_IF_ERROR(MakeParent(options.out));
    FEATVIZ_RETURN_IF_ERROR(core::WritePng(sheet, options.out));
    files["out"] = options.out;
    if (result.has_exemplars() && result.exemplars().examples_size() > 0) {
      // Beside the pictures, the unit's dataset examples: x.png ->
      // x.exemplars.png.
      const std::string path = core::SiblingPngPath(options.out, "exemplars");
      FEATVIZ_RETURN_IF_ERROR(
          WriteExemplarSheet(result.exemplars(), path, options.scale));
      files["exemplars"] = path;
    }
    if (HasBands(result)) {
      // Beside the composite, every band on its own: x.png -> x.bands.png.
      FEATVIZ_ASSIGN_OR_RETURN(
          const at::Tensor bands,
          ResultBandSheet(result, images, {}, options.scale));
      const std::string path = core::BandSheetPath(options.out);
      FEATVIZ_RETURN_IF_ERROR(core::WritePng(bands, path));
      files["bands"] = path;
    }
  }
  if (!options.npy.empty()) {
    FEATVIZ_RETURN_IF_ERROR(MakeParent(options.npy));
    FEATVIZ_RETURN_IF_ERROR(core::WriteNpy(images, options.npy));
    files["npy"] = options.npy;
  }
  if (!options.png_dir.empty()) {
    FEATVIZ_RETURN_IF_ERROR(core::MakeDirectories(options.png_dir));
    std::vector<std::string> pngs;
    for (int b = 0; b < result.png_size(); ++b) {
      const std::string path =
          JoinPath(options.png_dir, absl::StrFormat("image_%d.png", b));
      FEATVIZ_RETURN_IF_ERROR(core::WriteFile(path, result.png(b)));
      pngs.push_back(path);
      if (b < result.band_png_size()) {
        const std::string bands = JoinPath(
            options.png_dir, absl::StrFormat("image_%d.bands.png", b));
        FEATVIZ_RETURN_IF_ERROR(core::WriteFile(bands, result.band_png(b)));
        pngs.push_back(bands);
      }
    }
    files["png"] = pngs;
  }
  if (!previews.empty()) files["previews"] = previews;
  if (!options.transparency.empty()) {
    if (result.transparency_png_size() == 0) {
      return absl::FailedPreconditionError(
          "--transparency: the result has no transparency map (only "
          "--parameterization maco renders have one)");
    }
    std::vector<at::Tensor> maps;
    for (const std::string& png : result.transparency_png()) {
      FEATVIZ_ASSIGN_OR_RETURN(at::Tensor map, core::DecodePng(png));
      maps.push_back(std::move(map));
    }
    at::Tensor stacked = at::stack(maps);
    const core::GridOptions grid = SheetLayout(
        stacked.size(0), stacked.size(3), options.scale, options.columns);
    FEATVIZ_ASSIGN_OR_RETURN(at::Tensor sheet, core::MakeGrid(stacked, grid));
    FEATVIZ_RETURN_IF_ERROR(MakeParent(options.transparency));
    FEATVIZ_RETURN_IF_ERROR(core::WritePng(sheet, options.transparency));
    files["transparency"] = options.transparency;
  }

  if (options.json) {
    FEATVIZ_ASSIGN_OR_RETURN(nlohmann::ordered_json report,
                             RenderResultToJson(result, class_names));
    report["timings"]["wall_seconds"] = wall_seconds;
    // Which replica ran it, when the server advertises one ("17@host:port").
    report["job"] = job_id;
    report["files"] = std::move(files);
    Print(out, report.dump() + "\n");
    return absl::OkStatus();
  }
  std::vector<std::string> tops;
  for (size_t b = 0; b < top.size(); ++b) {
    tops.push_back(absl::StrFormat("%s (%.3f)", ClassName(class_names, top[b]),
                                   probs[b][top[b]]));
  }
  std::vector<std::string> written;
  // One line per picture: whether its path through the network looks like
  // that of the natural images that drive its unit.
  for (int b = 0; b < result.path_similarity_size(); ++b) {
    Print(out, absl::StrCat(result.path_similarity_size() > 1
                                ? absl::StrCat("image ", b, ": ")
                                : "",
                            PathSimilarityLine(result.path_similarity(b)),
                            "\n"));
  }
  for (const char* key : {"out", "exemplars", "bands", "npy", "transparency"}) {
    if (files.contains(key)) written.push_back(files[key].get<std::string>());
  }
  if (files.contains("png")) {
    written.push_back(absl::StrCat(JoinPath(options.png_dir, "image_*.png"),
                                   " (", files["png"].size(), ")"));
  }
  if (files.contains("previews")) {
    written.push_back(absl::StrCat(JoinPath(options.previews, "step_*.png"),
                                   " (", files["previews"].size(), ")"));
  }
  // The job's own compute time: a `watch` that attached half way (or a
  // cached result) has seen only part of it.
  const double job_seconds = result.timings().compute_seconds() > 0
                                 ? result.timings().compute_seconds()
                                 : wall_seconds;
  // Three figures of one objective, each named (ObjectiveFigures).
  const ObjectiveFigures objective = ObjectiveFiguresOf(result);
  const int64_t image_count = static_cast<int64_t>(probs.size());
  std::string figures =
      absl::StrFormat("objective %.5g per image on the final images",
                      objective.per_image);
  if (objective.has_last_step) {
    absl::StrAppendFormat(&figures, " (%.5g at the last step, with transforms",
                          objective.last_step);
    if (image_count > 1) {
      absl::StrAppendFormat(&figures, "; %.5g summed over the %d images",
                            objective.summed, image_count);
    }
    figures += ")";
  }
  Print(out,
        absl::StrFormat(
            "%s on %s: %d steps in %.2f s (%.1f steps/s), seed %d, %s, top "
            "%s %s%s\n",
            result.objective(), result.model(), result.steps(), job_seconds,
            job_seconds > 0 ? result.steps() / job_seconds : 0.0,
            result.seed(), figures,
            tops.size() == 1 ? "class" : "classes", absl::StrJoin(tops, ", "),
            written.empty()
                ? ""
                : absl::StrCat("; wrote ", absl::StrJoin(written, ", "))));
  Print(out, AccentuationLines(options, result));
  return absl::OkStatus();
}

absl::Status RunJob(VisualizerClient& client, const std::string& id,
                    bool cancel, bool json, std::FILE* out) {
  FEATVIZ_ASSIGN_OR_RETURN(const v1::Job job, cancel
                                                  ? client.CancelJob(id)
                                                  : client.GetJob(id, false));
  if (json) {
    // The enum's spelling, which scripts read; the text below spells the
    // state as `jobs` does.
    const std::string state(
        absl::StripPrefix(v1::JobState_Name(job.state()), "JOB_STATE_"));
    nlohmann::ordered_json report = {{"id", job.id()},
                                     {"state", state},
                                     {"owner", job.owner()},
                                     {"model", job.model()},
                                     {"objective", job.objective()},
                                     {"steps_done", job.steps_done()},
                                     {"total_steps", job.total_steps()},
                                     {"device", job.device()},
                                     {"cached", job.cached()},
                                     {"error_code", job.error_code()},
                                     {"error_message", job.error_message()}};
    Print(out, report.dump() + "\n");
    return absl::OkStatus();
  }
  Print(out,
        absl::StrFormat(
            "%s %s %s '%s' %d/%d steps%s%s%s\n", job.id(),
            JobStateName(job.state()), job.model(),
            job.objective(), job.steps_done(), job.total_steps(),
            job.device().empty() ? "" : absl::StrCat(" on ", job.device()),
            job.cached() ? " (cached)" : "",
            job.error_message().empty()
                ? ""
                : absl::StrCat(": ", job.error_message())));
  return absl::OkStatus();
}

}  // namespace featviz::client
