#include "core/analysis.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/csrc/autograd/autograd.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "core/objective_eval.h"
#include "core/status_macros.h"
#include "core/torch_status.h"

namespace featviz::core {
namespace {

constexpr int64_t kChunk = 256;

// Every channel of `info` when `channels` is empty; OutOfRange for a channel
// outside it.
absl::StatusOr<std::vector<int64_t>> ResolveChannels(
    const LayerInfo& info, const std::vector<int64_t>& channels) {
  if (info.shape.size() < 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("layer ", info.path, " has no channels (output rank ",
                     info.shape.size(), ")"));
  }
  if (channels.empty()) {
    std::vector<int64_t> all(info.channels);
    for (int64_t c = 0; c < info.channels; ++c) all[c] = c;
    return all;
  }
  for (int64_t c : channels) {
    if (c < 0 || c >= info.channels) {
      return absl::OutOfRangeError(
          absl::StrCat("channel ", c, " out of range for layer ", info.path,
                       " with ", info.channels, " channels"));
    }
  }
  return channels;
}

// [B, K] reduction of [B, K, ...] over everything after the channel axis.
at::Tensor PerUnit(const at::Tensor& a, bool max) {
  if (a.dim() == 2) return a;
  const at::Tensor flat = a.flatten(2);
  return max ? std::get<0>(flat.max(2)) : flat.sum(2);
}

}  // namespace

absl::Status CheckImagesFit(const Model& model, const at::Tensor& images) {
  const ModelCard& card = model.card();
  if (!images.defined() || images.dim() != 4 || images.size(0) < 1 ||
      images.size(1) != card.channels || images.size(2) != card.height ||
      images.size(3) != card.width) {
    return absl::InvalidArgumentError(absl::StrCat(
        "model ", card.name, " takes images of shape [B, ", card.channels, ", ",
        card.height, ", ", card.width, "] with B >= 1, got ",
        images.defined() ? c10::str(images.sizes()) : "no images"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<LayerActivations>> ComputeActivations(
    const Model& model, const at::Tensor& images,
    const std::vector<std::pair<std::string, std::vector<int64_t>>>& layers) {
  FEATVIZ_RETURN_IF_ERROR(CheckImagesFit(model, images));
  if (layers.empty()) {
    return absl::InvalidArgumentError("layers: name at least one layer");
  }
  std::vector<LayerActivations> out;
  std::vector<std::string> paths;
  std::vector<LayerInfo> infos;
  for (const auto& [path, channels] : layers) {
    FEATVIZ_ASSIGN_OR_RETURN(LayerInfo info, model.FindLayer(path));
    infos.push_back(info);
    LayerActivations layer;
    layer.layer = path;
    FEATVIZ_ASSIGN_OR_RETURN(layer.channels, ResolveChannels(info, channels));
    out.push_back(std::move(layer));
    paths.push_back(path);
  }
  at::NoGradGuard no_grad;
  std::vector<std::vector<at::Tensor>> chunks(out.size());
  try {
    for (int64_t start = 0; start < images.size(0); start += kChunk) {
      const int64_t n = std::min(kChunk, images.size(0) - start);
      FEATVIZ_ASSIGN_OR_RETURN(
          Taps taps,
          model.Forward(images.narrow(0, start, n).to(model.device()), paths));
      for (size_t i = 0; i < out.size(); ++i) {
        const at::Tensor index = at::tensor(out[i].channels, at::kLong);
        // Token layers as maps over their patch grid.
        const at::Tensor a =
            ActivationMaps(infos[i], taps.activations.at(out[i].layer));
        chunks[i].push_back(
            a.index_select(1, index.to(a.device())).to(at::kCPU, at::kFloat));
      }
    }
    for (size_t i = 0; i < out.size(); ++i) {
      LayerActivations& layer = out[i];
      layer.maps = at::cat(chunks[i]);
      // [K, everything else]: statistics per channel over images and positions.
      const at::Tensor per_channel =
          layer.maps.transpose(0, 1).reshape({layer.maps.size(1), -1});
      layer.mean = per_channel.mean(1);
      layer.max = std::get<0>(per_channel.max(1));
      layer.fraction_active = (per_channel > 0).to(at::kFloat).mean(1);
    }
  } catch (const std::exception& e) {
    return TorchError(e,
                      absl::StrCat("activations of model ", model.card().name));
  }
  return out;
}

absl::StatusOr<Attribution> Attribute(const Model& model,
                                      const Objective& target,
                                      const std::string& layer,
                                      const at::Tensor& images, bool gradcam) {
  FEATVIZ_RETURN_IF_ERROR(CheckImagesFit(model, images));
  if (target.empty()) return absl::InvalidArgumentError("target is empty");
  for (const WeightedTerm& w : target.terms()) {
    if (w.term.kind == TermKind::kDiversity ||
        w.term.kind == TermKind::kAlignment || w.term.batch.has_value()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "target: ", w.term.ToString(),
          " couples the images of a batch; attribute a per-image term "
          "(logit, prob, channel, neuron, layer, direction)"));
    }
  }
  FEATVIZ_RETURN_IF_ERROR(target.Validate(model.shape(), images.size(0)));
  FEATVIZ_ASSIGN_OR_RETURN(LayerInfo info, model.FindLayer(layer));
  if (info.shape.size() < 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("layer ", layer, " has no channels"));
  }
  const bool has_maps =
      info.layout == LayerLayout::kSpatial ||
      (info.layout == LayerLayout::kTokens && info.grid_h > 0);
  if (gradcam && !has_maps) {
    return absl::InvalidArgumentError(absl::StrCat(
        "gradcam needs a layer with spatial maps (or a token layer with a "
        "patch grid); ",
        layer, " has shape ", c10::str(c10::IntArrayRef(info.shape))));
  }

  std::vector<std::string> paths = target.Layers();
  if (std::find(paths.begin(), paths.end(), layer) == paths.end()) {
    paths.push_back(layer);
  }
  const int64_t b = images.size(0);
  Attribution out;
  out.layer = layer;
  try {
    // Two seeded noise images join the batch as probes of linearity: the
    // gradient of a linear path is the same for every input.
    at::Generator generator = at::detail::createCPUGenerator(/*seed=*/7);
    const at::Tensor probes = at::rand(
        {2, images.size(1), images.size(2), images.size(3)}, generator);
    at::Tensor input = at::cat({images.to(at::kCPU, at::kFloat), probes})
                           .to(model.device())
                           .set_requires_grad(true);
    FEATVIZ_ASSIGN_OR_RETURN(Taps taps, model.Forward(input, paths));
    FEATVIZ_ASSIGN_OR_RETURN(ObjectiveValue value,
                             EvaluateObjective(target, taps, input));
    const at::Tensor a = taps.activations.at(layer);
    // A token layer's gradient is taken of the tensor the model computed
    // and turned channels first like its activations.
    auto token = taps.token_activations.find(layer);
    std::vector<at::Tensor> grads = torch::autograd::grad(
        {value.total},
        {token == taps.token_activations.end() ? a : token->second},
        /*grad_outputs=*/{}, /*retain_graph=*/false,
        /*create_graph=*/false, /*allow_unused=*/true);
    if (grads[0].defined() && token != taps.token_activations.end()) {
      grads[0] = grads[0].transpose(1, 2);
    }
    if (!grads[0].defined()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "target ", target.ToString(), " does not depend on layer ", layer,
          " (the layer must come before the target)"));
    }
    at::NoGradGuard no_grad;
    const at::Tensor g = grads[0].detach().to(at::kCPU, at::kFloat);
    const at::Tensor act = a.detach().to(at::kCPU, at::kFloat);
    const at::Tensor real_g = g.narrow(0, 0, b);
    const at::Tensor real_a = act.narrow(0, 0, b);
    out.per_image = PerUnit(real_g * real_a, /*max=*/false);
    out.scores = out.per_image.mean(0);

    const at::Tensor reference = g[0];
    const double tolerance =
        1e-4 * (reference.abs().max().item<double>() + 1e-12);
    out.linear_path =
        (g - reference.unsqueeze(0)).abs().max().item<double>() <= tolerance;
    if (out.linear_path) {
      out.direct_weights = PerUnit(reference.unsqueeze(0), false)[0];
    }

    if (gradcam) {
      const at::Tensor g_maps = ActivationMaps(info, real_g);
      const at::Tensor a_maps = ActivationMaps(info, real_a);
      const at::Tensor alpha = g_maps.flatten(2).mean(2);  // [B, K]
      at::Tensor cam =
          (alpha.unsqueeze(2).unsqueeze(3) * a_maps).sum(1).clamp_min(0);
      cam = at::upsample_bilinear2d(cam.unsqueeze(1),
                                    {images.size(2), images.size(3)},
                                    /*align_corners=*/false)
                .squeeze(1);
      const at::Tensor peak =
          std::get<0>(cam.flatten(1).max(1)).clamp_min(1e-12);
      out.gradcam = cam / peak.view({b, 1, 1});
    }
  } catch (const std::exception& e) {
    return TorchError(e,
                      absl::StrCat("attribution on model ", model.card().name));
  }
  return out;
}

absl::StatusOr<at::Tensor> UnitValues(const Model& model,
                                      const at::Tensor& images,
                                      const std::string& layer, int64_t chunk) {
  FEATVIZ_RETURN_IF_ERROR(CheckImagesFit(model, images));
  FEATVIZ_ASSIGN_OR_RETURN(LayerInfo info, model.FindLayer(layer));
  if (info.shape.size() < 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("layer ", layer, " has no channels"));
  }
  at::NoGradGuard no_grad;
  std::vector<at::Tensor> parts;
  try {
    for (int64_t start = 0; start < images.size(0); start += chunk) {
      const int64_t n = std::min(chunk, images.size(0) - start);
      FEATVIZ_ASSIGN_OR_RETURN(
          Taps taps,
          model.Forward(images.narrow(0, start, n).to(model.device()),
                        {layer}));
      parts.push_back(PerUnit(taps.activations.at(layer), /*max=*/true)
                          .to(at::kCPU, at::kFloat));
    }
  } catch (const std::exception& e) {
    return TorchError(e,
                      absl::StrCat("unit values of model ", model.card().name));
  }
  return at::cat(parts);
}

absl::StatusOr<std::vector<TopUnitExamples>> TopUnits(
    const at::Tensor& values, const std::vector<int64_t>& channels, int64_t n) {
  const int64_t k = values.size(1);
  std::vector<int64_t> wanted = channels;
  if (wanted.empty()) {
    for (int64_t c = 0; c < k; ++c) wanted.push_back(c);
  }
  n = std::min(n, values.size(0));
  std::vector<TopUnitExamples> out;
  for (int64_t c : wanted) {
    if (c < 0 || c >= k) {
      return absl::OutOfRangeError(
          absl::StrCat("channel ", c, " out of range for ", k, " channels"));
    }
    auto [top, index] = values.select(1, c).topk(n);
    TopUnitExamples unit;
    unit.channel = c;
    for (int64_t i = 0; i < n; ++i) {
      unit.indices.push_back(index[i].item<int64_t>());
      unit.values.push_back(top[i].item<float>());
    }
    out.push_back(std::move(unit));
  }
  return out;
}

absl::StatusOr<ClassDetectors> FindDetectors(const Model& model,
                                             const at::Tensor& images,
                                             int64_t class_index,
                                             const std::string& layer,
                                             int64_t k) {
  FEATVIZ_ASSIGN_OR_RETURN(
      Attribution attribution,
      Attribute(model, Logit(class_index), layer, images, /*gradcam=*/false));
  const int64_t channels = attribution.scores.size(0);
  if (k < 1 || k > channels) {
    return absl::OutOfRangeError(absl::StrCat("top_k ", k,
                                              " out of range for layer ", layer,
                                              " with ", channels, " channels"));
  }
  ClassDetectors out;
  out.class_index = class_index;
  FEATVIZ_ASSIGN_OR_RETURN(LayerInfo info, model.FindLayer(layer));
  at::NoGradGuard no_grad;
  try {
    FEATVIZ_ASSIGN_OR_RETURN(Taps taps,
                             model.Forward(images.to(model.device()), {layer}));
    const at::Tensor predicted = taps.logits.argmax(1).to(at::kCPU);
    const at::Tensor correct = (predicted == class_index).nonzero();
    out.example = correct.size(0) > 0 ? correct[0][0].item<int64_t>() : 0;
    const at::Tensor example =
        ActivationMaps(info, taps.activations.at(layer))[out.example].to(
            at::kCPU, at::kFloat);
    auto [top, index] = attribution.scores.topk(k);
    for (int64_t i = 0; i < k; ++i) {
      Detector detector;
      detector.channel = index[i].item<int64_t>();
      detector.score = top[i].item<double>();
      detector.example_map = example[detector.channel];
      if (detector.example_map.dim() == 0) {
        detector.example_map = detector.example_map.reshape({1});
      }
      detector.example_max = detector.example_map.max().item<double>();
      out.detectors.push_back(std::move(detector));
    }
  } catch (const std::exception& e) {
    return TorchError(e,
                      absl::StrCat("detectors of model ", model.card().name));
  }
  return out;
}

}  // namespace featviz::core
