#include "client/rpc_commands.h"

#include <algorithm>
#include <utility>

#include <nlohmann/json.hpp>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "client/circuits_client.h"
#include "client/json.h"
#include "client/output_files.h"
#include "client/proto_convert.h"
#include "client/result_images.h"
#include "client/table.h"
#include "core/files.h"
#include "core/image.h"
#include "core/status_macros.h"

namespace featviz::client {

namespace v1 = featviz::v1;
using json = nlohmann::ordered_json;

namespace {

absl::Status PrintMessageJson(const google::protobuf::Message& message,
                              std::FILE* out) {
  FEATVIZ_ASSIGN_OR_RETURN(json doc, MessageToJson(message));
  Print(out, doc.dump() + "\n");
  return absl::OkStatus();
}

// A file name part from a layer path ("layer1.0.conv1" stays, "/" goes).
std::string FileSafe(const std::string& text) {
  std::string out = text;
  for (char& c : out) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '.' &&
        c != '-' && c != '_') {
      c = '_';
    }
  }
  return out;
}

// Writes `bytes` into `dir` as `name` and adds the path to `files` (the
// JSON's list of what a command wrote).
absl::Status WriteListed(const std::string& dir, const std::string& name,
                         const std::string& bytes, json& files) {
  const std::string path = JoinPath(dir, name);
  FEATVIZ_RETURN_IF_ERROR(core::WriteFile(path, bytes));
  files.push_back(path);
  return absl::OkStatus();
}

// The images the options name; a slice that names no dataset reads the one
// the server finds fitting the model (it refuses to guess between several).
v1::ImageInput DatasetInput(const DatasetSliceOptions& slice) {
  v1::ImageInput input;
  v1::DatasetSlice* d = input.mutable_dataset();
  d->set_dataset(slice.dataset);
  for (int64_t i : slice.indices) d->add_indices(i);
  d->set_start(slice.start);
  d->set_count(slice.count);
  if (slice.label.has_value()) d->set_label(*slice.label);
  return input;
}

std::string ModelLine(absl::string_view what, const v1::Model& m) {
  return absl::StrFormat("%s %s@%s (%s) from %s, %d bytes per device\n", what,
                         m.name(), m.version(), m.content_hash().substr(0, 12),
                         m.path(), m.memory_bytes());
}

}  // namespace

absl::Status RunDatasets(VisualizerClient& client, bool json_out,
                         std::FILE* out) {
  CircuitsClient circuits(client);
  FEATVIZ_ASSIGN_OR_RETURN(v1::ListDatasetsResponse list,
                           circuits.ListDatasets());
  if (json_out) {
    FEATVIZ_ASSIGN_OR_RETURN(json doc, MessageToJson(list));
    Print(out, doc["datasets"].dump() + "\n");
    return absl::OkStatus();
  }
  std::vector<std::vector<std::string>> rows;
  for (const v1::Dataset& d : list.datasets()) {
    rows.push_back({d.name(), absl::StrCat(d.size()),
                    absl::StrJoin(d.image_shape(), "x"),
                    absl::StrCat(d.class_names_size()), d.source(),
                    d.uploaded() ? d.owner() : "(operator)",
                    absl::StrCat(d.size_bytes())});
  }
  Print(out, FormatTable({"name", "size", "image", "classes", "source",
                          "uploaded by", "bytes"},
                         rows));
  return absl::OkStatus();
}

absl::Status RunActivations(VisualizerClient& client,
                            const ActivationsCommandOptions& options,
                            std::FILE* out) {
  CircuitsClient circuits(client);
  v1::ComputeActivationsRequest request;
  request.set_model(options.model);
  *request.mutable_input() = DatasetInput(options.images);
  v1::LayerChannels* layer = request.add_layers();
  layer->set_layer(options.layer);
  for (int64_t c : options.channels) layer->add_channels(c);
  request.set_overlay_png(!options.out_dir.empty());
  FEATVIZ_ASSIGN_OR_RETURN(v1::ComputeActivationsResponse response,
                           circuits.ComputeActivations(request));
  if (response.layers_size() != 1) {
    return absl::InternalError(absl::StrCat(
        "the server answered ", response.layers_size(), " layers for one"));
  }
  const v1::LayerActivations& acts = response.layers(0);
  json files = json::object();
  if (!options.npy.empty()) {
    FEATVIZ_ASSIGN_OR_RETURN(at::Tensor maps, TensorFromProto(acts.maps()));
    FEATVIZ_RETURN_IF_ERROR(core::WriteNpy(maps, options.npy));
    files["npy"] = options.npy;
  }
  if (!options.out_dir.empty()) {
    FEATVIZ_RETURN_IF_ERROR(core::MakeDirectories(options.out_dir));
    const int channels = acts.channels_size();
    json pngs = json::array();
    for (int i = 0; i < acts.overlay_png_size() && channels > 0; ++i) {
      const int64_t index = response.indices_size() > i / channels
                                ? response.indices(i / channels)
                                : i / channels;
      FEATVIZ_RETURN_IF_ERROR(WriteListed(
          options.out_dir,
          absl::StrFormat("%s_%d_image%d.png", FileSafe(acts.layer()),
                          acts.channels(i % channels), index),
          acts.overlay_png(i), pngs));
    }
    files["overlays"] = std::move(pngs);
  }
  if (options.json) {
    json doc = {{"model", response.model()},
                {"model_version", response.model_version()},
                {"model_hash", response.model_hash()},
                {"layer", acts.layer()},
                {"shape", std::vector<int64_t>(acts.maps().shape().begin(),
                                               acts.maps().shape().end())},
                {"indices", std::vector<int64_t>(response.indices().begin(),
                                                 response.indices().end())},
                {"labels", std::vector<int64_t>(response.labels().begin(),
                                                response.labels().end())}};
    json stats = json::array();
    for (const v1::ChannelStats& s : acts.stats()) {
      stats.push_back({{"channel", s.channel()},
                       {"mean", s.mean()},
                       {"max", s.max()},
                       {"fraction_active", s.fraction_active()}});
    }
    doc["stats"] = std::move(stats);
    doc["files"] = std::move(files);
    Print(out, doc.dump() + "\n");
    return absl::OkStatus();
  }
  std::vector<std::vector<std::string>> rows;
  for (const v1::ChannelStats& s : acts.stats()) {
    rows.push_back({absl::StrCat(s.channel()), absl::StrFormat("%.4g", s.mean()),
                    absl::StrFormat("%.4g", s.max()),
                    absl::StrFormat("%.3f", s.fraction_active())});
  }
  Print(out, absl::StrFormat("%s on %d images of %s, maps %s\n", acts.layer(),
                             std::max(response.indices_size(), 1),
                             request.input().dataset().dataset().empty()
                                 ? std::string("the dataset that fits")
                                 : request.input().dataset().dataset(),
                             ShapeToString(acts.maps().shape())));
  Print(out, FormatTable({"channel", "mean", "max", "active"}, rows));
  return absl::OkStatus();
}

absl::Status RunAttribute(VisualizerClient& client,
                          const AttributeCommandOptions& options,
                          std::FILE* out) {
  CircuitsClient circuits(client);
  v1::AttributeRequest request;
  request.set_model(options.model);
  request.set_target(options.target);
  request.set_layer(options.layer);
  *request.mutable_input() = DatasetInput(options.images);
  request.set_gradcam(!options.out_dir.empty());
  request.set_gradcam_png(!options.out_dir.empty());
  FEATVIZ_ASSIGN_OR_RETURN(v1::AttributeResponse response,
                           circuits.Attribute(request));
  json files = json::array();
  if (!options.out_dir.empty()) {
    FEATVIZ_RETURN_IF_ERROR(core::MakeDirectories(options.out_dir));
    for (int i = 0; i < response.gradcam_png_size(); ++i) {
      const int64_t index =
          i < response.indices_size() ? response.indices(i) : i;
      FEATVIZ_RETURN_IF_ERROR(WriteListed(
          options.out_dir, absl::StrFormat("gradcam_image%d.png", index),
          response.gradcam_png(i), files));
    }
  }
  if (options.json) {
    // Every field but the bulky tensors and PNGs.
    v1::AttributeResponse slim = response;
    slim.clear_per_image();
    slim.clear_gradcam();
    slim.clear_gradcam_png();
    FEATVIZ_ASSIGN_OR_RETURN(json doc, MessageToJson(slim));
    doc["files"] = std::move(files);
    Print(out, doc.dump() + "\n");
    return absl::OkStatus();
  }
  std::vector<std::vector<std::string>> rows;
  for (int i = 0; i < response.scores_size() && i < options.top_k; ++i) {
    const v1::ChannelScore& s = response.scores(i);
    rows.push_back({absl::StrCat(i + 1), absl::StrCat(s.channel()),
                    absl::StrFormat("%.5g", s.score())});
  }
  Print(out, absl::StrFormat("%s <- %s over %d images%s\n", response.target(),
                             response.layer(), response.images(),
                             response.linear_path() ? " (linear path)" : ""));
  Print(out, FormatTable({"rank", "channel", "score"}, rows));
  return absl::OkStatus();
}

namespace {

// The class names of `dataset` as the server lists them; none when it is
// unlabelled or cannot be listed (the sheet then shows label numbers).
std::vector<std::string> DatasetClassNames(CircuitsClient& circuits,
                                           const std::string& dataset) {
  absl::StatusOr<v1::ListDatasetsResponse> list = circuits.ListDatasets();
  if (!list.ok()) return {};
  for (const v1::Dataset& d : list->datasets()) {
    if (d.name() == dataset) {
      return {d.class_names().begin(), d.class_names().end()};
    }
  }
  return {};
}

// Under each example: "#<dataset index> [<label>] <value>", the label a
// class name when the dataset has them. (Kept short: one font size serves
// the whole sheet, and the longest label sets it.)
std::string ExampleLabel(const v1::UnitExamples& unit, int rank,
                         const std::vector<std::string>& class_names) {
  std::string label = absl::StrCat("#", unit.indices(rank));
  const int64_t cls = rank < unit.labels_size() ? unit.labels(rank) : -1;
  if (cls >= 0) {
    absl::StrAppend(&label, " [",
                    cls < static_cast<int64_t>(class_names.size())
                        ? class_names[cls]
                        : absl::StrCat(cls),
                    "]");
  }
  if (rank < unit.values_size()) {
    absl::StrAppend(&label, absl::StrFormat(" %.3g", unit.values(rank)));
  }
  return label;
}

// The contact sheet of a TopExamples answer's PNGs: one unit's examples in a
// row (a square past 10), several units a row each.
absl::StatusOr<at::Tensor> TopSheet(const v1::TopExamplesResponse& response,
                                    const std::vector<std::string>& class_names) {
  const bool several = response.units_size() > 1;
  int64_t per_unit = 0;
  for (const v1::UnitExamples& unit : response.units()) {
    per_unit = std::max<int64_t>(per_unit, unit.png_size());
  }
  std::vector<at::Tensor> cells;
  std::vector<std::string> labels;
  int64_t channels = 1;
  for (const v1::UnitExamples& unit : response.units()) {
    for (int r = 0; r < unit.png_size(); ++r) {
      FEATVIZ_ASSIGN_OR_RETURN(at::Tensor image, core::DecodePng(unit.png(r)));
      channels = std::max<int64_t>(channels, image.size(0));
      cells.push_back(std::move(image));
      labels.push_back(ExampleLabel(unit, r, class_names));
    }
    // A unit with fewer examples than the others: blank cells keep the rows
    // aligned.
    for (int64_t r = unit.png_size(); several && r < per_unit; ++r) {
      cells.push_back(at::Tensor());
      labels.emplace_back();
    }
  }
  if (cells.empty()) {
    return absl::InternalError("the server sent no example images");
  }
  int64_t height = 0, width = 0;
  for (const at::Tensor& cell : cells) {
    if (!cell.defined()) continue;
    height = cell.size(1);
    width = cell.size(2);
  }
  for (at::Tensor& cell : cells) {
    if (!cell.defined()) {
      cell = at::ones({channels, height, width});
      continue;
    }
    if (cell.size(1) != height || cell.size(2) != width) {
      return absl::InternalError(absl::StrCat(
          "the server sent example images of different sizes (", height, "x",
          width, " and ", cell.size(1), "x", cell.size(2), ")"));
    }
    // Gray beside RGB: gray made RGB.
    if (cell.size(0) != channels) cell = cell.expand({channels, height, width});
  }
  core::GridOptions grid = SheetLayout(static_cast<int64_t>(cells.size()),
                                       width, 0, several ? per_unit : 0);
  grid.labels = std::move(labels);
  return core::MakeGrid(at::stack(cells), grid);
}

}  // namespace

absl::Status RunTop(VisualizerClient& client, const TopCommandOptions& options,
                    std::FILE* out) {
  CircuitsClient circuits(client);
  v1::TopExamplesRequest request;
  request.set_model(options.model);
  request.set_layer(options.layer);
  for (int64_t c : options.channels) request.add_channels(c);
  request.set_dataset(options.dataset);
  request.set_top_n(static_cast<int32_t>(options.top_n));
  request.set_png(!options.out_dir.empty());
  FEATVIZ_ASSIGN_OR_RETURN(v1::TopExamplesResponse response,
                           circuits.TopExamples(request));
  json files = json::array();
  if (!options.out_dir.empty()) {
    FEATVIZ_RETURN_IF_ERROR(core::MakeDirectories(options.out_dir));
    for (const v1::UnitExamples& unit : response.units()) {
      for (int r = 0; r < unit.png_size(); ++r) {
        FEATVIZ_RETURN_IF_ERROR(WriteListed(
            options.out_dir,
            absl::StrFormat("%s_%d_top%d.png", FileSafe(response.layer()),
                            unit.channel(), r + 1),
            unit.png(r), files));
      }
    }
  }
  std::string sheet_path;
  if (!options.out_dir.empty() && !files.empty()) {
    FEATVIZ_ASSIGN_OR_RETURN(
        const at::Tensor sheet,
        TopSheet(response, DatasetClassNames(circuits, response.dataset())));
    sheet_path = JoinPath(options.out_dir,
                          absl::StrCat(FileSafe(response.layer()), "_top.png"));
    FEATVIZ_RETURN_IF_ERROR(core::WritePng(sheet, sheet_path));
  }
  if (options.json) {
    json doc = {{"model", response.model()},
                {"model_version", response.model_version()},
                {"model_hash", response.model_hash()},
                {"layer", response.layer()},
                {"dataset", response.dataset()},
                {"cached", response.cached()}};
    json units = json::array();
    for (const v1::UnitExamples& unit : response.units()) {
      json values = json::array();
      for (float v : unit.values()) values.push_back(ShortestFloat(v));
      units.push_back(
          {{"channel", unit.channel()},
           {"indices", std::vector<int64_t>(unit.indices().begin(),
                                            unit.indices().end())},
           {"values", std::move(values)},
           {"labels", std::vector<int64_t>(unit.labels().begin(),
                                           unit.labels().end())}});
    }
    doc["units"] = std::move(units);
    doc["files"] = std::move(files);
    if (!sheet_path.empty()) doc["sheet"] = sheet_path;
    Print(out, doc.dump() + "\n");
    return absl::OkStatus();
  }
  std::vector<std::vector<std::string>> rows;
  for (const v1::UnitExamples& unit : response.units()) {
    std::vector<std::string> examples;
    for (int r = 0; r < unit.indices_size(); ++r) {
      examples.push_back(absl::StrFormat("%d(%.3g)", unit.indices(r),
                                         unit.values(r)));
    }
    rows.push_back({absl::StrCat(unit.channel()), absl::StrJoin(examples, " ")});
  }
  Print(out, FormatTable({"channel", "dataset index (value), best first"}, rows));
  if (!sheet_path.empty()) {
    std::vector<int64_t> channels;
    for (const v1::UnitExamples& unit : response.units()) {
      channels.push_back(unit.channel());
    }
    Print(out, absl::StrFormat(
                   "wrote %s (%s; under each image: #dataset index [label] "
                   "value) and %d images %s\n",
                   sheet_path,
                   channels.size() == 1
                       ? absl::StrCat("channel ", channels[0])
                       : absl::StrCat("a row per channel: ",
                                      absl::StrJoin(channels, ", ")),
                   files.size(),
                   JoinPath(options.out_dir,
                            absl::StrCat(FileSafe(response.layer()),
                                         "_<channel>_top<rank>.png"))));
  }
  return absl::OkStatus();
}

absl::Status RunJobs(VisualizerClient& client, const std::string& owner,
                     const std::string& state, bool json_out, std::FILE* out) {
  v1::JobState wanted = v1::JOB_STATE_UNSPECIFIED;
  if (!state.empty() &&
      !v1::JobState_Parse(absl::StrCat("JOB_STATE_", absl::AsciiStrToUpper(state)),
                          &wanted)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--state: '", state,
        "' is not queued, running, succeeded, failed, cancelled or expired"));
  }
  FEATVIZ_ASSIGN_OR_RETURN(std::vector<v1::Job> jobs,
                           client.ListJobs(owner, wanted));
  if (json_out) {
    json list = json::array();
    for (const v1::Job& job : jobs) {
      FEATVIZ_ASSIGN_OR_RETURN(json doc, MessageToJson(job));
      doc["state"] = JobStateName(job.state());
      list.push_back(std::move(doc));
    }
    Print(out, list.dump() + "\n");
    return absl::OkStatus();
  }
  std::vector<std::vector<std::string>> rows;
  for (const v1::Job& job : jobs) {
    rows.push_back({job.id(), JobStateName(job.state()), job.owner(), job.model(),
                    job.objective(),
                    absl::StrCat(job.steps_done(), "/", job.total_steps()),
                    job.device()});
  }
  Print(out, FormatTable({"id", "state", "owner", "model", "objective",
                          "steps", "device"},
                         rows));
  return absl::OkStatus();
}

absl::Status RunSubmit(VisualizerClient& client, v1::RenderRequest request,
                       const std::string& owner, int32_t priority,
                       bool json_out, std::FILE* out) {
  // `featviz watch` (or `featviz job`) may want any of them later.
  request.mutable_output()->set_tensor(true);
  request.mutable_output()->set_png(true);
  request.set_owner(owner);
  request.set_priority(priority);
  FEATVIZ_ASSIGN_OR_RETURN(v1::Job job, client.SubmitJob(request));
  if (json_out) {
    FEATVIZ_ASSIGN_OR_RETURN(json doc, MessageToJson(job));
    doc["state"] = JobStateName(job.state());
    Print(out, doc.dump() + "\n");
    return absl::OkStatus();
  }
  Print(out, job.id() + "\n");
  return absl::OkStatus();
}

absl::Status RunWatch(VisualizerClient& client, const std::string& id,
                      RenderCommandOptions options, std::FILE* out,
                      std::FILE* err) {
  // The objective names the progress bar's terms.
  FEATVIZ_ASSIGN_OR_RETURN(v1::Job job, client.GetJob(id, false));
  options.model = job.model();
  options.objective = job.objective();
  return FollowRender(
      client, options,
      [&](const VisualizerClient::ProgressCallback& on_progress,
          std::string* job_id) {
        if (job_id != nullptr) *job_id = id;
        return client.WatchJob(id, on_progress);
      },
      out, err);
}

absl::Status RunStats(VisualizerClient& client, bool json_out, std::FILE* out) {
  FEATVIZ_ASSIGN_OR_RETURN(v1::ServerStats stats, client.GetServerStats());
  if (json_out) return PrintMessageJson(stats, out);
  std::vector<std::string> queue;
  for (const v1::QueueDepth& q : stats.queue_depth()) {
    queue.push_back(absl::StrFormat("%d at priority %d", q.jobs(), q.priority()));
  }
  Print(out,
        absl::StrFormat(
            "jobs: %d queued%s, %d running; since start %d submitted, %d "
            "succeeded, %d failed, %d cancelled, %d expired\n"
            "cache: %d hits, %d misses; %d results kept (%d bytes)\n",
            stats.queued_jobs(),
            queue.empty() ? "" : absl::StrCat(" (", absl::StrJoin(queue, ", "), ")"),
            stats.running_jobs(), stats.jobs_submitted(), stats.jobs_succeeded(),
            stats.jobs_failed(), stats.jobs_cancelled(), stats.jobs_expired(),
            stats.cache_hits(), stats.cache_misses(), stats.results_stored(),
            stats.result_bytes()));
  if (!stats.default_precision().empty()) {
    Print(out, absl::StrCat("precision: ", stats.default_precision(),
                            " unless a request asks for another\n"));
  }
  Print(out,
        absl::StrFormat("datasets: %d hosted, %d bytes in memory (budget %s)\n",
                        stats.datasets(), stats.dataset_bytes(),
                        stats.dataset_memory_bytes() > 0
                            ? absl::StrCat(stats.dataset_memory_bytes())
                            : std::string("none")));
  std::vector<std::string> removed;
  for (const char* why : {"expired", "evicted", "owner_share", "forgotten"}) {
    auto it = stats.results_removed().find(why);
    removed.push_back(absl::StrCat(
        it == stats.results_removed().end() ? 0 : it->second, " ", why));
  }
  Print(out,
        absl::StrFormat(
            "memory: results %s of %s (one owner at most %s); removed %s\n"
            "        job records %d of %d kept (%s), %d forgotten\n"
            "        heap %s in use, %s held\n",
            HumanBytes(stats.result_bytes()),
            HumanBytes(stats.result_max_bytes()),
            HumanBytes(stats.result_owner_max_bytes()),
            absl::StrJoin(removed, ", "), stats.job_records(),
            stats.max_job_records(), HumanBytes(stats.job_record_bytes()),
            stats.job_records_forgotten(), HumanBytes(stats.heap_in_use_bytes()),
            HumanBytes(stats.heap_held_bytes())));
  if (!stats.result_owners().empty()) {
    std::vector<std::vector<std::string>> owners;
    for (const v1::OwnerResultUsage& owner : stats.result_owners()) {
      owners.push_back({owner.owner(), absl::StrCat(owner.results()),
                        HumanBytes(owner.bytes()),
                        absl::StrFormat(
                            "%.0f%%", stats.result_owner_max_bytes() > 0
                                          ? 100.0 * static_cast<double>(owner.bytes()) /
                                                static_cast<double>(stats.result_owner_max_bytes())
                                          : 0.0)});
    }
    Print(out, FormatTable({"owner", "results", "bytes", "of share"}, owners));
  }
  if (!stats.uploads().empty()) {
    std::vector<std::vector<std::string>> uploads;
    for (const v1::OwnerResultUsage& upload : stats.uploads()) {
      uploads.push_back({upload.owner(), HumanBytes(upload.bytes())});
    }
    Print(out, FormatTable({"uploader", "uploaded"}, uploads));
  }
  std::vector<std::vector<std::string>> rows;
  for (const v1::DeviceStats& d : stats.devices()) {
    rows.push_back(
        {d.device(), absl::StrCat(d.running_jobs()),
         absl::StrFormat("%.2f", d.batch_occupancy()),
         absl::StrFormat("%.1f", d.steps_per_second()),
         absl::StrFormat("%.1f", d.image_steps_per_second()),
         absl::StrCat(d.steps_total()),
         absl::StrCat(d.models_loaded(), "/",
                      d.models_loaded() + d.models_unloaded()),
         absl::StrCat(d.model_bytes()),
         d.model_memory_bytes() > 0 ? absl::StrCat(d.model_memory_bytes())
                                    : std::string("none"),
         absl::StrCat(d.model_loads()), absl::StrCat(d.model_evictions())});
  }
  Print(out, FormatTable({"device", "running", "occupancy", "steps/s",
                          "image-steps/s", "steps", "models loaded",
                          "model bytes", "budget", "loads", "evictions"},
                         rows));
  return absl::OkStatus();
}

absl::Status RunLoad(VisualizerClient& client, const std::string& path,
                     bool json_out, std::FILE* out) {
  FEATVIZ_ASSIGN_OR_RETURN(v1::LoadModelResponse response,
                           client.LoadModel(path));
  if (json_out) return PrintMessageJson(response, out);
  Print(out, ModelLine("loaded", response.model()));
  return absl::OkStatus();
}

absl::Status RunUnload(VisualizerClient& client, const std::string& name,
                       const std::string& version, bool json_out,
                       std::FILE* out) {
  FEATVIZ_ASSIGN_OR_RETURN(v1::UnloadModelResponse response,
                           client.UnloadModel(name, version));
  if (json_out) return PrintMessageJson(response, out);
  for (const v1::Model& m : response.models()) Print(out, ModelLine("unloaded", m));
  return absl::OkStatus();
}

absl::Status RunReload(VisualizerClient& client, const std::string& name,
                       bool json_out, std::FILE* out) {
  FEATVIZ_ASSIGN_OR_RETURN(v1::ReloadModelResponse response,
                           client.ReloadModel(name));
  if (json_out) return PrintMessageJson(response, out);
  for (const v1::Model& m : response.unloaded()) Print(out, ModelLine("unloaded", m));
  for (const v1::Model& m : response.loaded()) Print(out, ModelLine("loaded", m));
  for (const std::string& f : response.failed()) Print(out, "failed " + f + "\n");
  if (response.loaded().empty() && response.unloaded().empty() &&
      response.failed().empty()) {
    Print(out, "nothing changed\n");
  }
  return absl::OkStatus();
}

}  // namespace featviz::client
