#include "server/engine/trust.h"

#include <algorithm>
#include <cmath>
#include <exception>
#include <map>
#include <numeric>
#include <random>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/analysis.h"
#include "core/heatmap.h"
#include "core/image.h"
#include "core/status_macros.h"
#include "core/torch_status.h"

namespace featviz::server {
namespace {

bool IsClassUnit(const core::Term& unit) {
  return unit.kind == core::TermKind::kLogit ||
         unit.kind == core::TermKind::kProb;
}

// The cache key of the unit's values: its layer, or the class outputs.
std::string ValuesKey(const core::Term& unit) {
  if (unit.kind == core::TermKind::kLogit) return kLogitsKey;
  if (unit.kind == core::TermKind::kProb) return kProbsKey;
  return unit.layer;
}

// [B, K]: each channel's maximum over the positions (tokens, sequence) of
// a channels-first activation, as a unit's value is taken (core::
// UnitValues); a flat layer's as it is. Not the mean: the spatial mean of a
// convolution's output is linear in the image's mean pixel, so it measures
// the background's brightness (MNIST's black, a picture's grey) more than
// any feature (docs/trust.md).
at::Tensor ChannelProfile(const at::Tensor& activation) {
  const at::Tensor a = activation.detach().to(at::kCPU, at::kDouble);
  if (a.dim() <= 2) return a.reshape({a.size(0), -1});
  return std::get<0>(a.flatten(2).max(2));
}

std::vector<double> Row(const at::Tensor& matrix, int64_t i) {
  const at::Tensor row = matrix[i].contiguous();
  const double* data = row.data_ptr<double>();
  return std::vector<double>(data, data + row.numel());
}

std::vector<double> Ranks(const std::vector<double>& v) {
  std::vector<size_t> order(v.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return v[a] < v[b]; });
  std::vector<double> ranks(v.size());
  for (size_t i = 0; i < order.size();) {
    size_t j = i;
    while (j + 1 < order.size() && v[order[j + 1]] == v[order[i]]) ++j;
    const double mean_rank = (static_cast<double>(i) + j) / 2;
    for (size_t k = i; k <= j; ++k) ranks[order[k]] = mean_rank;
    i = j + 1;
  }
  return ranks;
}

// `n` distinct indices below `size`, the same for the same arguments.
std::vector<int64_t> RandomIndices(int64_t size, int64_t n) {
  std::vector<int64_t> all(static_cast<size_t>(size));
  std::iota(all.begin(), all.end(), 0);
  std::mt19937_64 rng(kPathSeed);
  n = std::min(n, size);
  for (int64_t i = 0; i < n; ++i) {
    // Not std::uniform_int_distribution: its draws differ between standard
    // libraries, and the baseline must not.
    const int64_t j = i + static_cast<int64_t>(rng() % static_cast<uint64_t>(size - i));
    std::swap(all[static_cast<size_t>(i)], all[static_cast<size_t>(j)]);
  }
  all.resize(static_cast<size_t>(n));
  return all;
}

at::Tensor Gather(const at::Tensor& images, const std::vector<int64_t>& idx) {
  return images.index_select(
      0, at::tensor(idx, at::TensorOptions().dtype(at::kLong))
             .to(images.device()));
}

// One layer's comparison: profiles of the top examples `top` [n, K], the
// random images `random` [m, K] and the pictures `pictures` [B, K].
std::vector<LayerPathScore> CompareLayer(const std::string& layer,
                                         const at::Tensor& top,
                                         const at::Tensor& random,
                                         const at::Tensor& pictures) {
  // Standardised against the random natural images: every channel counts
  // in units of its own natural spread, so a few channels of large scale do
  // not decide the ranks alone.
  const at::Tensor mu = random.mean(0);
  const at::Tensor sd = random.std(0, /*unbiased=*/false);
  const at::Tensor scale = sd + 1e-6 * (1.0 + sd.max().item<double>());
  const at::Tensor z_top = (top - mu) / scale;
  const at::Tensor z_random = (random - mu) / scale;
  const at::Tensor z_pictures = (pictures - mu) / scale;
  const int64_t n = z_top.size(0);
  const std::vector<double> prototype = Row(z_top.mean(0, true), 0);
  const at::Tensor sum = z_top.sum(0, true);
  double natural = 0;
  for (int64_t t = 0; t < n; ++t) {
    // Against the others' prototype, so that an example is not compared
    // with itself.
    const at::Tensor others = (sum - z_top[t].unsqueeze(0)) / double(n - 1);
    natural += Spearman(Row(z_top, t), Row(others, 0));
  }
  natural /= static_cast<double>(n);
  double baseline = 0;
  for (int64_t r = 0; r < z_random.size(0); ++r) {
    baseline += Spearman(Row(z_random, r), prototype);
  }
  baseline /= static_cast<double>(z_random.size(0));
  const double gap = natural - baseline;
  std::vector<LayerPathScore> out;
  for (int64_t b = 0; b < z_pictures.size(0); ++b) {
    LayerPathScore s;
    s.layer = layer;
    s.similarity = Spearman(Row(z_pictures, b), prototype);
    s.natural_similarity = natural;
    s.random_similarity = baseline;
    s.informative = gap >= kMinInformativeGap;
    s.score = gap > 0 ? std::clamp((s.similarity - baseline) / gap, 0.0, 1.0)
                      : 0.0;
    out.push_back(std::move(s));
  }
  return out;
}

at::Tensor DropChannel(const at::Tensor& profile, int64_t channel) {
  if (channel < 0) return profile;
  return at::cat({profile.narrow(1, 0, channel),
                  profile.narrow(1, channel + 1,
                                 profile.size(1) - channel - 1)},
                 1);
}

// Each of `layers`' channel profiles (ChannelProfile, every channel) of
// `images` on `model`, a few images at a time: every path layer's
// activations of many images at once would take gigabytes on a large model.
absl::StatusOr<std::vector<at::Tensor>> Profiles(
    const core::Model& model, const std::vector<std::string>& layers,
    const at::Tensor& images) {
  constexpr int64_t kChunk = 16;
  at::NoGradGuard no_grad;
  std::vector<std::vector<at::Tensor>> parts(layers.size());
  for (int64_t start = 0; start < images.size(0); start += kChunk) {
    const int64_t n = std::min(kChunk, images.size(0) - start);
    FEATVIZ_ASSIGN_OR_RETURN(
        core::Taps taps,
        model.Forward(images.narrow(0, start, n).to(model.device(), at::kFloat),
                      layers, core::Model::ForwardOutputs::kTapsOnly));
    for (size_t l = 0; l < layers.size(); ++l) {
      parts[l].push_back(ChannelProfile(taps.activations.at(layers[l])));
    }
  }
  std::vector<at::Tensor> out;
  for (const std::vector<at::Tensor>& p : parts) out.push_back(at::cat(p));
  return out;
}

absl::StatusOr<std::vector<PathScore>> PathSimilarity(
    const core::Model& model, const core::DatasetPtr& dataset,
    const core::Term& unit, const at::Tensor& values,
    const at::Tensor& pictures, UnitValuesCache& cache) {
  const int64_t n = std::min<int64_t>(kPathTopExamples, values.size(0));
  FEATVIZ_ASSIGN_OR_RETURN(std::vector<core::TopUnitExamples> top,
                           core::TopUnits(values, {unit.index}, n));
  const std::vector<std::pair<std::string, int64_t>> layers =
      PathLayers(model, unit);
  std::vector<std::string> paths;
  for (const auto& [path, drop] : layers) paths.push_back(path);
  const int64_t b = pictures.size(0);
  std::vector<PathScore> scores(static_cast<size_t>(b));
  for (PathScore& s : scores) s.threshold = kPathSimilarityThreshold;
  if (paths.empty()) return scores;  // Nothing to compare: unreliable.

  FEATVIZ_ASSIGN_OR_RETURN(const std::vector<at::Tensor> on_pictures,
                           Profiles(model, paths, pictures.detach()));
  FEATVIZ_ASSIGN_OR_RETURN(
      const std::vector<at::Tensor> on_top,
      Profiles(model, paths, Gather(dataset->images, top.front().indices)));
  // The random images' profiles are the same for every unit whose path has
  // these layers (a layer's units in an atlas): one cache entry, the
  // layers' profiles side by side [m, sum K], split by the pictures' widths.
  bool cached = false;
  FEATVIZ_ASSIGN_OR_RETURN(
      const at::Tensor random_joined,
      cache.Get(
          model, dataset,
          absl::StrCat("<path random ", kPathRandomExamples, ">",
                       absl::StrJoin(paths, ",")),
          [&]() -> absl::StatusOr<at::Tensor> {
            FEATVIZ_ASSIGN_OR_RETURN(
                const std::vector<at::Tensor> on_random,
                Profiles(model, paths,
                         Gather(dataset->images,
                                RandomIndices(dataset->size(),
                                              kPathRandomExamples))));
            return at::cat(on_random, 1);
          },
          cached));
  std::vector<int64_t> widths;
  for (const at::Tensor& p : on_pictures) widths.push_back(p.size(1));
  const std::vector<at::Tensor> on_random = random_joined.split_with_sizes(widths, 1);
  for (size_t l = 0; l < layers.size(); ++l) {
    const auto& [path, drop] = layers[l];
    const std::vector<LayerPathScore> layer_scores =
        CompareLayer(path, DropChannel(on_top[l], drop),
                     DropChannel(on_random[l], drop),
                     DropChannel(on_pictures[l], drop));
    for (int64_t i = 0; i < b; ++i) {
      scores[static_cast<size_t>(i)].layers.push_back(layer_scores[i]);
    }
  }
  for (PathScore& s : scores) {
    int64_t informative = 0;
    double sum = 0;
    for (const LayerPathScore& l : s.layers) {
      if (!l.informative) continue;
      ++informative;
      sum += l.score;
    }
    s.score = informative > 0 ? sum / static_cast<double>(informative) : 0.0;
    s.reliable = informative > 0 && s.score >= s.threshold;
  }
  return scores;
}

absl::StatusOr<ExemplarSet> Exemplars(const core::Model& model,
                                      const core::DatasetPtr& dataset,
                                      const core::Term& unit,
                                      const at::Tensor& values, bool cached,
                                      int64_t k) {
  ExemplarSet out;
  out.dataset = dataset->name;
  out.unit = unit.ToString();
  out.cached = cached;
  FEATVIZ_ASSIGN_OR_RETURN(std::vector<core::TopUnitExamples> top,
                           core::TopUnits(values, {unit.index}, k));
  const std::vector<int64_t>& indices = top.front().indices;
  // The unit's map over each exemplar, for a spatial layer and for a token
  // layer whose tokens form a patch grid (the grid's tokens, laid out).
  at::Tensor maps;
  const core::LayerInfo* layer =
      IsClassUnit(unit) ? nullptr : model.Layer(unit.layer);
  const bool spatial =
      layer != nullptr && layer->layout == core::LayerLayout::kSpatial;
  const bool grid = layer != nullptr &&
                    layer->layout == core::LayerLayout::kTokens &&
                    layer->grid_h > 0 && layer->grid_w > 0;
  if ((spatial || grid) && !indices.empty()) {
    at::NoGradGuard no_grad;
    FEATVIZ_ASSIGN_OR_RETURN(
        core::Taps taps,
        model.Forward(Gather(dataset->images, indices).to(model.device()),
                      {unit.layer}, core::Model::ForwardOutputs::kTapsOnly));
    // Token layers come as [B, D, T]: the unit's row, then the grid.
    maps = taps.activations.at(unit.layer).select(1, unit.index);
    if (grid) {
      maps = maps.narrow(1, layer->token_prefix, layer->grid_h * layer->grid_w)
                 .reshape({maps.size(0), layer->grid_h, layer->grid_w});
    }
    maps = maps.to(at::kCPU, at::kFloat);
  }
  const int64_t* labels = dataset->labels.data_ptr<int64_t>();
  for (size_t i = 0; i < indices.size(); ++i) {
    Exemplar& e = out.examples.emplace_back();
    e.index = indices[i];
    e.value = top.front().values[i];
    e.label = labels[e.index];
    const at::Tensor image = dataset->images[e.index];
    FEATVIZ_ASSIGN_OR_RETURN(e.png, core::EncodePng(image));
    if (maps.defined()) {
      // The exemplar's own max shows brightest: its shape, not its scale.
      FEATVIZ_ASSIGN_OR_RETURN(
          e.activation_png,
          core::EncodePng(core::Overlay(image, maps[static_cast<int64_t>(i)], 0)));
    }
  }
  return out;
}

}  // namespace

std::vector<std::pair<std::string, int64_t>> PathLayers(
    const core::Model& model, const core::Term& unit) {
  std::vector<std::pair<std::string, int64_t>> out;
  const bool by_class = IsClassUnit(unit);
  for (const core::LayerInfo& layer : model.layers()) {
    if (!by_class && layer.path == unit.layer) {
      if (layer.channels >= 4) out.emplace_back(layer.path, unit.index);
      break;
    }
    // An ancestor of the unit's layer runs after it.
    if (!by_class && absl::StartsWith(unit.layer, layer.path + ".")) continue;
    if (!layer.tappable || layer.shape.size() < 2 || layer.channels < 3) {
      continue;
    }
    out.emplace_back(layer.path, -1);
  }
  // A class unit's last layer is, in most classifiers, the class output
  // itself: the class's own value leaves its profile, as a unit's own
  // channel leaves its layer's.
  if (by_class && !out.empty()) {
    const core::LayerInfo* last = model.Layer(out.back().first);
    if (last != nullptr && last->layout == core::LayerLayout::kFlat &&
        last->channels == model.shape().num_classes &&
        last->channels >= 4 && unit.index < last->channels) {
      out.back().second = unit.index;
    }
  }
  return out;
}

double Spearman(const std::vector<double>& a, const std::vector<double>& b) {
  if (a.size() != b.size() || a.size() < 2) return 0;
  const std::vector<double> ra = Ranks(a);
  const std::vector<double> rb = Ranks(b);
  const double mean = (static_cast<double>(a.size()) - 1) / 2;
  double sab = 0, saa = 0, sbb = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    sab += (ra[i] - mean) * (rb[i] - mean);
    saa += (ra[i] - mean) * (ra[i] - mean);
    sbb += (rb[i] - mean) * (rb[i] - mean);
  }
  if (saa <= 0 || sbb <= 0) return 0;
  return sab / std::sqrt(saa * sbb);
}

absl::Status AddTrust(const core::Model& model, const RenderPlan& plan,
                      const at::Tensor& images, UnitValuesCache& cache,
                      JobResult& result) {
  const TrustPlan& trust = plan.trust;
  if (!trust.asked()) return absl::OkStatus();
  if (trust.dataset == nullptr || trust.units.empty()) {
    return absl::InternalError("trust: the render's dataset was not resolved");
  }
  // The dataset pass of `unit`'s layer (or the class outputs).
  auto values_of = [&](const core::Term& unit,
                       bool& cached) -> absl::StatusOr<at::Tensor> {
    FEATVIZ_ASSIGN_OR_RETURN(
        at::Tensor values,
        cache.Get(model, trust.dataset, ValuesKey(unit), cached));
    if (unit.index < 0 || unit.index >= values.size(1)) {
      return absl::OutOfRangeError(absl::StrCat(
          "trust: unit ", unit.ToString(), " out of range for ",
          values.size(1), " values"));
    }
    return values;
  };
  try {
    if (trust.exemplars > 0) {
      bool cached = false;
      const core::Term& unit = trust.units.front();
      FEATVIZ_ASSIGN_OR_RETURN(const at::Tensor values,
                               values_of(unit, cached));
      FEATVIZ_ASSIGN_OR_RETURN(
          result.exemplars, Exemplars(model, trust.dataset, unit, values,
                                      cached, trust.exemplars));
    }
    if (trust.path_similarity) {
      // The images of each unit together (a render of a layer's units has
      // one image per unit).
      std::map<std::string, std::vector<int64_t>> by_unit;
      std::map<std::string, const core::Term*> units;
      for (size_t b = 0; b < trust.units.size(); ++b) {
        const std::string key = trust.units[b].ToString();
        by_unit[key].push_back(static_cast<int64_t>(b));
        units[key] = &trust.units[b];
      }
      result.path_similarity.assign(trust.units.size(), PathScore{});
      for (const auto& [key, indices] : by_unit) {
        bool cached = false;
        FEATVIZ_ASSIGN_OR_RETURN(const at::Tensor values,
                                 values_of(*units[key], cached));
        FEATVIZ_ASSIGN_OR_RETURN(
            std::vector<PathScore> scores,
            PathSimilarity(model, trust.dataset, *units[key], values,
                           Gather(images, indices), cache));
        for (size_t i = 0; i < indices.size(); ++i) {
          result.path_similarity[static_cast<size_t>(indices[i])] =
              std::move(scores[i]);
        }
      }
    }
  } catch (const std::exception& e) {
    return core::TorchError(e, "checking the pictures against the dataset");
  }
  return absl::OkStatus();
}

}  // namespace featviz::server
