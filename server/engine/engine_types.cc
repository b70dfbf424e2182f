#include "server/engine/engine_types.h"

#include <algorithm>
#include <exception>
#include <utility>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/device.h"
#include "core/heatmap.h"
#include "core/image.h"
#include "core/sha256.h"
#include "core/status_macros.h"
#include "core/torch_status.h"
#include "server/engine/heap_bytes.h"

namespace featviz::server {
namespace {

HostArray ToHost(const at::Tensor& tensor) {
  HostArray out;
  const at::Tensor t = tensor.detach().to(at::kCPU, at::kFloat).contiguous();
  out.shape.assign(t.sizes().begin(), t.sizes().end());
  const float* data = t.data_ptr<float>();
  out.values.assign(data, data + t.numel());
  return out;
}

// The heap an array holds beyond its own object.
int64_t HeapBytes(const HostArray& array) {
  return server::HeapBytes(array.shape) + server::HeapBytes(array.values);
}

}  // namespace

ModelSummary Summarize(const core::Model& model, std::string path) {
  ModelSummary out;
  out.card = model.card();
  out.content_hash = model.content_hash();
  const int64_t classes = model.shape().num_classes;
  for (int64_t i = 0; i < classes; ++i) {
    out.class_names.push_back(
        i < static_cast<int64_t>(out.card.classes.size())
            ? out.card.classes[static_cast<size_t>(i)]
            : absl::StrCat(i));
  }
  out.layers = model.layers();
  out.outputs = model.outputs();
  out.logits_output = model.logits_output();
  out.log_probs = !out.logits_output.empty() && out.card.log_probs;
  out.no_classes_reason = model.shape().no_classes_reason;
  out.device = model.device().str();
  out.memory_bytes = model.memory_bytes();
  auto bytes = [](const std::vector<int64_t>& shape) {
    int64_t n = static_cast<int64_t>(sizeof(float));
    for (int64_t dim : shape) n *= std::max<int64_t>(dim, 0);
    return n;
  };
  for (const core::LayerInfo& layer : out.layers) {
    if (layer.tappable) out.activation_bytes += bytes(layer.shape);
  }
  for (const core::OutputInfo& output : out.outputs) {
    out.activation_bytes += bytes(output.shape);
  }
  out.path = std::move(path);
  return out;
}

std::string Bf16Problem(const core::Model& model) {
  try {
    const core::ModelCard& card = model.card();
    at::Tensor images =
        at::zeros({1, card.channels, card.height, card.width},
                  at::TensorOptions().device(model.device()))
            .requires_grad_();
    at::Tensor total;
    {
      core::PrecisionGuard guard(core::Precision::kBf16, model.device());
      absl::StatusOr<core::Taps> taps = model.Forward(images, {});
      if (!taps.ok()) return std::string(taps.status().message());
      for (const auto& [name, output] : taps->outputs) {
        if (!output.is_floating_point() || !output.requires_grad()) continue;
        at::Tensor sum = output.to(at::kFloat).sum();
        total = total.defined() ? total + sum : sum;
      }
    }
    if (total.defined()) total.backward();
    return "";
  } catch (const std::exception& e) {
    return core::FirstLine(e.what());
  }
}

std::string BatchVariance(const core::Model& model,
                          core::Precision precision) {
  try {
    const core::ModelCard& card = model.card();
    at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(20261206);
    const at::Tensor images =
        at::rand({3, card.channels, card.height, card.width}, generator)
            .to(model.device());
    struct Pass {
      std::vector<std::pair<std::string, at::Tensor>> outputs;
      at::Tensor grad;
    };
    auto run = [&](const at::Tensor& x) -> absl::StatusOr<Pass> {
      at::Tensor input = x.clone().requires_grad_();
      Pass pass;
      at::Tensor total;
      {
        core::PrecisionGuard guard(precision, model.device());
        FEATVIZ_ASSIGN_OR_RETURN(core::Taps taps, model.Forward(input, {}));
        for (const auto& [name, output] : taps.outputs) {
          if (!output.is_floating_point()) continue;
          pass.outputs.emplace_back(name, output.detach());
          if (!output.requires_grad()) continue;
          at::Tensor sum = output.to(at::kFloat).square().sum();
          total = total.defined() ? total + sum : sum;
        }
      }
      if (total.defined()) {
        total.backward();
        pass.grad = input.grad();
      }
      return pass;
    };
    absl::StatusOr<Pass> batched = run(images);
    if (!batched.ok()) return std::string(batched.status().message());
    absl::StatusOr<Pass> alone = run(images.narrow(0, 1, 1));
    if (!alone.ok()) return std::string(alone.status().message());
    for (size_t i = 0; i < batched->outputs.size(); ++i) {
      const auto& [name, output] = batched->outputs[i];
      if (!at::equal(output[1], alone->outputs[i].second[0])) {
        return absl::StrCat("output '", name,
                            "' of an image differs alone and in a batch of 3");
      }
    }
    if (batched->grad.defined() && alone->grad.defined() &&
        !at::equal(batched->grad[1], alone->grad[0])) {
      return "the gradient of an image differs alone and in a batch of 3";
    }
    return "";
  } catch (const std::exception& e) {
    return absl::StrCat("the check failed: ", core::FirstLine(e.what()));
  }
}

void CheckArithmetic(const core::Model& model, ModelSummary& summary) {
  summary.bf16_problem = Bf16Problem(model);
  summary.batch_variance[core::Precision::kFloat32] =
      BatchVariance(model, core::Precision::kFloat32);
  if (summary.bf16_problem.empty()) {
    summary.batch_variance[core::Precision::kBf16] =
        BatchVariance(model, core::Precision::kBf16);
  }
}

core::ModelShape ModelSummary::Shape() const {
  core::ModelShape shape;
  shape.layers = layers;
  shape.num_classes = static_cast<int64_t>(class_names.size());
  shape.outputs = outputs;
  shape.model_name = card.name;
  shape.no_classes_reason = no_classes_reason;
  return shape;
}

bool ModelSummary::IsTokenModel() const {
  return std::any_of(
      layers.begin(), layers.end(), [](const core::LayerInfo& l) {
        return l.tappable && l.layout == core::LayerLayout::kTokens;
      });
}

absl::string_view ModelStateName(ModelState state) {
  switch (state) {
    case ModelState::kUnloaded:
      return "unloaded";
    case ModelState::kLoading:
      return "loading";
    case ModelState::kLoaded:
      return "loaded";
    case ModelState::kFailed:
      return "failed";
  }
  return "unknown";
}

namespace {

// Feeds a plan's fields into a SHA-256, each as "name=<length>:<value>;" so
// that no two different plans feed the same bytes.
class PlanHasher {
 public:
  void Text(absl::string_view name, absl::string_view value) {
    hash_.Update(absl::StrCat(name, "=", value.size(), ":"));
    hash_.Update(value);
    hash_.Update(";");
  }
  // Every double exactly (17 significant digits round-trip).
  void Number(absl::string_view name, double value) {
    Text(name, absl::StrFormat("%.17g", value));
  }
  void Tensor(absl::string_view name, const at::Tensor& tensor) {
    if (!tensor.defined()) {
      Text(name, "none");
      return;
    }
    const at::Tensor t = tensor.detach().to(at::kCPU).contiguous();
    Text(name, absl::StrCat(c10::toString(t.scalar_type()), "[",
                            absl::StrJoin(t.sizes(), ","), "]"));
    hash_.Update(absl::string_view(static_cast<const char*>(t.data_ptr()),
                                   t.numel() * t.element_size()));
  }
  std::string HexDigest() { return hash_.HexDigest(); }

 private:
  core::Sha256 hash_;
};

}  // namespace

std::string CacheKey(const RenderPlan& plan) {
  if (!plan.seed.has_value()) return "";
  PlanHasher h;
  h.Text("model", absl::StrCat(plan.model_name, "@", plan.model_version));
  h.Text("objective", plan.objective.ToString());
  const core::RenderOptions& o = plan.options;
  const core::ParamOptions& p = o.param;
  h.Text("param", core::ParamKindName(p.kind));
  h.Number("batch", p.batch);
  h.Number("channels", p.channels);
  h.Number("height", p.height);
  h.Number("width", p.width);
  h.Number("decay_power", p.decay_power);
  h.Number("decorrelate", p.decorrelate);
  h.Number("init_std", p.init_std);
  h.Tensor("init_image", p.init_image);
  h.Tensor("magnitude", p.magnitude);
  h.Text("magnitude_source", p.magnitude_source);
  h.Number("tone_gain", p.tone_gain);
  h.Tensor("tone_offset", p.tone_offset);
  h.Text("maco_dataset", plan.maco_dataset);
  if (!o.transforms.has_value()) {
    h.Text("transforms", "model default");
  } else {
    h.Number("transforms", static_cast<double>(o.transforms->size()));
    for (const core::Transform& t : *o.transforms) {
      h.Text("transform", t.ToString());
      h.Number("pixels", static_cast<double>(t.pixels));
      for (double v : t.values) h.Number("value", v);
    }
  }
  h.Number("lr", o.lr);
  h.Number("steps", static_cast<double>(o.steps));
  h.Number("progress_every", static_cast<double>(o.progress_every));
  h.Number("progress_images", o.progress_images);
  for (const auto& [key, image] : o.references) h.Tensor(key, image);
  // An accentuation's result carries its outcome, which the same objective
  // and start image without `accentuate` do not.
  if (o.accentuation_seed.defined()) {
    h.Tensor("accentuation_seed", o.accentuation_seed);
  }
  h.Text("precision", core::PrecisionName(plan.precision));
  h.Number("tensor", plan.tensor);
  h.Number("png", plan.png);
  h.Number("preview_png", plan.preview_png);
  h.Text("composite", absl::StrJoin(plan.display.composite, ","));
  for (const std::string& name : plan.display.names) h.Text("band", name);
  // Only when asked, so that the keys of renders without trust stay as
  // they were. The dataset by name and size: a dataset deleted and uploaded
  // again under its name with other images gets another key when its size
  // differs (a same-sized replacement is served from the cache until the
  // result expires).
  if (plan.trust.asked()) {
    h.Number("trust.exemplars", static_cast<double>(plan.trust.exemplars));
    h.Number("trust.path_similarity", plan.trust.path_similarity);
    for (const core::Term& unit : plan.trust.units) {
      h.Text("trust.unit", unit.ToString());
    }
    h.Text("trust.dataset",
           plan.trust.dataset == nullptr
               ? plan.trust.dataset_name
               : absl::StrCat(plan.trust.dataset->name, "#",
                              plan.trust.dataset->size()));
  }
  return absl::StrCat(plan.model_hash, "/", h.HexDigest(), "/", *plan.seed,
                      "/", plan.linear_mode);
}

namespace {

// Image `b`'s unit under `objective` (core::UnitTermIndex), as the term
// the trust measures read: a neuron is represented by its whole channel.
std::optional<core::Term> UnitOfImage(const core::Objective& objective,
                                      int64_t b) {
  const std::optional<size_t> index = core::UnitTermIndex(objective, b);
  if (!index.has_value()) return std::nullopt;
  const core::Term& t = objective.terms()[*index].term;
  core::Term unit;
  unit.index = t.index;
  if (t.kind == core::TermKind::kLogit || t.kind == core::TermKind::kProb) {
    unit.kind = t.kind;
  } else {
    unit.kind = core::TermKind::kChannel;
    unit.layer = t.layer;
  }
  return unit;
}

}  // namespace

absl::StatusOr<std::vector<core::Term>> TrustUnitsOf(
    const core::Objective& objective, int64_t batch) {
  std::vector<core::Term> units;
  for (int64_t b = 0; b < batch; ++b) {
    std::optional<core::Term> unit = UnitOfImage(objective, b);
    if (!unit.has_value()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "trust: objective ", objective.ToString(), " has no unit",
          batch > 1 ? absl::StrCat(" for image ", b) : "",
          " (a neuron, channel, logit or prob term of positive weight) to "
          "find dataset examples for"));
    }
    units.push_back(*std::move(unit));
  }
  return units;
}

bool IsFinal(JobState state) {
  return state == JobState::kSucceeded || state == JobState::kFailed ||
         state == JobState::kCancelled || state == JobState::kExpired;
}

absl::string_view JobStateName(JobState state) {
  switch (state) {
    case JobState::kQueued:
      return "queued";
    case JobState::kRunning:
      return "running";
    case JobState::kSucceeded:
      return "succeeded";
    case JobState::kFailed:
      return "failed";
    case JobState::kCancelled:
      return "cancelled";
    case JobState::kExpired:
      return "expired";
  }
  return "unknown";
}

int64_t JobResult::bytes() const {
  // The object and shared_ptr's control block, in one make_shared chunk.
  int64_t total = HeapChunk(static_cast<int64_t>(sizeof(JobResult)) + 16);
  for (const std::string* text :
       {&model, &model_version, &model_hash, &objective, &maco_magnitude,
        &transforms, &linear_mode, &precision}) {
    total += HeapBytes(*text);
  }
  total += HeapChunk(static_cast<int64_t>(terms.capacity() * sizeof(TermOutcome)));
  for (const TermOutcome& term : terms) {
    total += HeapBytes(term.term) + HeapBytes(term.trace);
  }
  if (images.has_value()) total += HeapBytes(*images);
  total += HeapBytes(png) + HeapBytes(band_png) + HeapBytes(band_names) +
           HeapBytes(transparency_png) + HeapBytes(composite) +
           HeapBytes(warnings);
  total += HeapChunk(static_cast<int64_t>(accentuation.capacity() *
                                          sizeof(core::AccentuationOutcome)));
  total += HeapBytes(logits) + HeapBytes(probs);
  total += HeapChunk(
      static_cast<int64_t>(layer_stats.capacity() * sizeof(LayerSummary)));
  for (const LayerSummary& s : layer_stats) {
    total += HeapBytes(s.layer) + HeapBytes(s.mean) + HeapBytes(s.max);
  }
  if (transparency.has_value()) total += HeapBytes(*transparency);
  if (exemplars.has_value()) {
    total += HeapBytes(exemplars->dataset) + HeapBytes(exemplars->unit);
    total += HeapChunk(static_cast<int64_t>(exemplars->examples.capacity() *
                                            sizeof(Exemplar)));
    for (const Exemplar& e : exemplars->examples) {
      total += HeapBytes(e.png) + HeapBytes(e.activation_png);
    }
  }
  total += HeapChunk(
      static_cast<int64_t>(path_similarity.capacity() * sizeof(PathScore)));
  for (const PathScore& p : path_similarity) {
    total += HeapChunk(
        static_cast<int64_t>(p.layers.capacity() * sizeof(LayerPathScore)));
    for (const LayerPathScore& l : p.layers) total += HeapBytes(l.layer);
  }
  return total;
}

absl::StatusOr<JobResult> MakeJobResult(const core::RenderResult& result,
                                        const RenderPlan& plan,
                                        double queue_seconds,
                                        double compute_seconds) {
  JobResult out;
  out.model = plan.model_name;
  out.model_version = plan.model_version;
  out.model_hash = plan.model_hash;
  out.objective = result.objective;
  try {
    const at::Tensor trace = result.trace.to(at::kCPU, at::kFloat).contiguous();
    for (size_t i = 0; i < result.terms.size(); ++i) {
      TermOutcome& term = out.terms.emplace_back();
      term.term = result.terms[i];
      term.weight = result.weights[i];
      term.final_value = result.final_values[i];
      const at::Tensor column =
          trace.select(1, static_cast<int64_t>(i)).contiguous();
      term.trace.assign(column.data_ptr<float>(),
                        column.data_ptr<float>() + column.numel());
    }
    out.final_total = result.final_total;
    if (plan.tensor) out.images = ToHost(result.images);
    const core::BandDisplay& display = plan.display;
    if (display.shows_bands()) {
      out.composite = display.composite;
      out.band_names = display.names;
    }
    if (plan.png) {
      FEATVIZ_ASSIGN_OR_RETURN(
          const at::Tensor pictures,
          core::CompositeImages(result.images, display.composite));
      for (int64_t b = 0; b < pictures.size(0); ++b) {
        FEATVIZ_ASSIGN_OR_RETURN(out.png.emplace_back(),
                                 core::EncodePng(pictures[b]));
        if (!display.shows_bands()) continue;
        FEATVIZ_ASSIGN_OR_RETURN(
            const at::Tensor sheet,
            core::BandSheet(result.images.narrow(0, b, 1), display.names));
        FEATVIZ_ASSIGN_OR_RETURN(out.band_png.emplace_back(),
                                 core::EncodePng(sheet));
      }
    }
    out.logits = ToHost(result.logits);
    out.probs = ToHost(result.probs);
    if (result.transparency.defined()) {
      out.maco_magnitude = result.magnitude_source;
      if (plan.tensor) out.transparency = ToHost(result.transparency);
      if (plan.png) {
        FEATVIZ_ASSIGN_OR_RETURN(out.transparency_png,
                                 TransparencyPngs(result.transparency));
      }
    }
    for (const core::LayerStats& stats : result.layer_stats) {
      out.layer_stats.push_back(
          LayerSummary{stats.layer, ToHost(stats.mean), ToHost(stats.max)});
    }
  } catch (const std::exception& e) {
    return core::TorchError(e, "copying the result to the host");
  }
  out.parameterization = result.parameterization;
  out.warnings = result.warnings;
  out.accentuation = result.accentuation;
  out.seed = result.seed;
  out.steps = result.steps;
  out.transforms = result.transforms;
  out.linear_mode = plan.linear_mode;
  out.precision = core::PrecisionName(plan.precision);
  out.queue_seconds = queue_seconds;
  out.compute_seconds = compute_seconds;
  // Kept for a while: no slack from growing containers.
  out.terms.shrink_to_fit();
  out.layer_stats.shrink_to_fit();
  for (std::vector<std::string>* pngs :
       {&out.png, &out.band_png, &out.transparency_png}) {
    pngs->shrink_to_fit();
    for (std::string& p : *pngs) p.shrink_to_fit();
  }
  return out;
}

absl::StatusOr<std::vector<std::string>> TransparencyPngs(
    const at::Tensor& transparency) {
  std::vector<std::string> pngs;
  try {
    at::Tensor map = transparency.to(at::kCPU, at::kFloat).sum(1);  // [B, H, W]
    for (int64_t b = 0; b < map.size(0); ++b) {
      at::Tensor m = map[b];
      const float max = m.max().item<float>();
      if (max > 0) m = m / max;
      FEATVIZ_ASSIGN_OR_RETURN(std::string png,
                               core::EncodePng(core::Colourise(m)));
      pngs.push_back(std::move(png));
    }
  } catch (const std::exception& e) {
    return core::TorchError(e, "drawing the transparency map");
  }
  return pngs;
}

absl::StatusOr<JobProgress> MakeJobProgress(
    const core::ProgressEvent& event, int64_t total_steps, bool preview_png,
    const std::vector<int64_t>& composite) {
  JobProgress out;
  out.step = event.step;
  out.total_steps = total_steps;
  out.term_values = event.values;
  if (preview_png && event.images.defined()) {
    FEATVIZ_ASSIGN_OR_RETURN(const at::Tensor pictures,
                             core::CompositeImages(event.images, composite));
    FEATVIZ_ASSIGN_OR_RETURN(at::Tensor grid, core::MakeGrid(pictures));
    FEATVIZ_ASSIGN_OR_RETURN(out.preview_png, core::EncodePng(grid));
  }
  return out;
}

}  // namespace featviz::server
