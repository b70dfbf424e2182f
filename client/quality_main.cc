// featviz-quality: how good featviz's pictures are, measured against a
// dataset (docs/quality.md). Every unit of a layer (or every class) is
// rendered with each parameterisation at equal steps, in one batch per
// parameterisation, in process over core/. Per picture it measures
//
//  * activation: the objective on the untransformed picture divided by the
//    highest value any held-out dataset image reaches (1.0 = as strong as
//    the strongest real image);
//  * spectrum distance: how far the picture's radially averaged power
//    spectrum is in shape (its overall level removed) from the dataset's,
//    the RMS over spatial frequencies in dB: excess high frequencies
//    (checkerboards) or a missing slope show here;
//  * pixel distance: the Wasserstein-1 distance between the picture's
//    pixel values and the dataset's, per channel (0 = the same histogram):
//    saturated or washed-out pictures show here;
//  * with --classes and --judge: whether an independently trained
//    classifier sees the class in the picture.
//
// None of the plausibility measures asks the model being visualised, which
// an adversarial picture fools by construction. The same measures on the
// dataset's own images are printed first, as the scale.
//
//   featviz-quality models/mnist_classifier.pt --layer conv2
//       --dataset ../shared/data/mnist --held_out 9000:10000 --sheets out/q
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include <torch/script.h>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "core/analysis.h"
#include "core/bands.h"
#include "core/batch.h"
#include "core/dataset.h"
#include "core/device.h"
#include "core/image.h"
#include "core/model.h"
#include "core/objective.h"
#include "core/param.h"
#include "core/render.h"
#include "core/status_macros.h"
#include "core/torch_status.h"

ABSL_FLAG(std::string, dataset, "", "Dataset directory (IDX files or PNG folders) to measure against");
ABSL_FLAG(std::string, held_out, "", "FROM:TO: the dataset images held out from training (default all)");
ABSL_FLAG(std::string, layer, "", "Layer whose every channel is rendered (channel objective)");
ABSL_FLAG(bool, classes, false, "Render every class logit instead of a layer's channels");
ABSL_FLAG(std::string, judge, "", "With --classes: an independently trained classifier (.pt)");
ABSL_FLAG(std::string, params, "pixel,fft,maco", "Parameterisations to compare");
ABSL_FLAG(int64_t, steps, 256, "Optimisation steps");
ABSL_FLAG(double, lr, 0.05, "Adam learning rate");
ABSL_FLAG(std::string, precision, "fp32",
          "Arithmetic of the steps: fp32, bf16 (tf32: CUDA); the measures "
          "are float32 either way");
ABSL_FLAG(double, decay, 1.0, "FFT spectrum decay power");
ABSL_FLAG(std::string, transforms, "default", "default (by the model's kind), cnn, tokens, none, or a list like "
          "'jitter(2), rotate(-5, 5)'");
ABSL_FLAG(int64_t, seed, 0, "Seed of the first picture; each further picture the next seed");
ABSL_FLAG(int64_t, repeats, 1, "Pictures per unit, each from its own seed");
ABSL_FLAG(bool, tone, true, "MaCo: the held-out images' tone (as a server with the dataset)");
ABSL_FLAG(std::string, sheets, "", "Directory for one contact sheet per parameterisation");
ABSL_FLAG(std::string, label, "", "Configuration name in the table and the sheets' names");

namespace featviz::core {
namespace {

// [N, R - 1]: the power spectrum of each image (channels averaged, each
// image minus its mean) averaged over rings of radius 1 .. R - 1 cycles
// per image, R = half the shorter side; DC and the corners are left out.
at::Tensor RadialPower(const at::Tensor& images) {
  const int64_t n = images.size(0), h = images.size(2), w = images.size(3);
  const at::Tensor x = images - images.mean({2, 3}, true);
  const at::Tensor power = at::fft_rfft2(x).abs().pow(2).mean(1).flatten(1);
  const at::Tensor fy = at::fft_fftfreq(h).view({h, 1});
  const at::Tensor fx = at::fft_rfftfreq(w).view({1, w / 2 + 1});
  const int64_t side = std::min(h, w), rings = side / 2;
  const at::Tensor ring = ((fy * fy + fx * fx).sqrt() * side)
                              .round()
                              .to(at::kLong)
                              .clamp_max(rings)
                              .flatten();
  const at::Tensor sums = at::zeros({n, rings + 1}).scatter_add_(
      1, ring.unsqueeze(0).expand_as(power), power);
  const at::Tensor counts = at::zeros({rings + 1}).scatter_add_(
      0, ring, at::ones({ring.size(0)}));
  return (sums / counts).slice(1, 1, rings);
}

double Median(const at::Tensor& v) { return v.median().item<double>(); }

// The dataset's side of the plausibility measures.
struct Reference {
  at::Tensor spectrum_db;  // [R - 1]: 10 log10 of the dataset's mean power.
  at::Tensor quantiles;    // [C, H * W]: the dataset's pixel quantiles.
};

Reference MakeReference(const at::Tensor& images) {
  Reference ref;
  ref.spectrum_db = 10 * (RadialPower(images).mean(0) + 1e-12).log10();
  const int64_t c = images.size(1), pixels = images.size(2) * images.size(3);
  const at::Tensor sorted =
      std::get<0>(images.transpose(0, 1).reshape({c, -1}).sort(1));
  const at::Tensor at_p = ((at::arange(pixels, at::kDouble) + 0.5) / pixels *
                           sorted.size(1))
                              .to(at::kLong)
                              .clamp_max(sorted.size(1) - 1);
  ref.quantiles = sorted.index_select(1, at_p);
  return ref;
}

// [N] spectrum distance in dB and [N] pixel Wasserstein-1 distance of
// `images` ([N, C, H, W] in [0, 1]) from the reference.
std::pair<at::Tensor, at::Tensor> Plausibility(const at::Tensor& images,
                                               const Reference& ref) {
  const at::Tensor d =
      10 * (RadialPower(images) + 1e-12).log10() - ref.spectrum_db;
  const at::Tensor spectrum =
      (d - d.mean(1, true)).pow(2).mean(1).sqrt();
  const at::Tensor sorted = std::get<0>(images.flatten(2).sort(2));
  const at::Tensor pixel =
      (sorted - ref.quantiles.unsqueeze(0)).abs().mean({1, 2});
  return {spectrum, pixel};
}

absl::StatusOr<std::pair<int64_t, int64_t>> ParseRange(const std::string& text,
                                                       int64_t size) {
  if (text.empty()) return std::make_pair<int64_t, int64_t>(0, int64_t{size});
  std::vector<std::string> parts = absl::StrSplit(text, ':');
  int64_t from = 0, to = 0;
  if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &from) ||
      !absl::SimpleAtoi(parts[1], &to) || from < 0 || to > size || from >= to) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--held_out must be FROM:TO within the dataset's ", size,
        " images, got '", text, "'"));
  }
  return std::make_pair(from, to);
}

// Per unit: the objective's text and the highest value a held-out image
// gives it.
struct Units {
  std::vector<std::string> objectives;
  std::vector<std::string> names;
  at::Tensor dataset_max;  // [K]
};

absl::StatusOr<Units> MakeUnitsOnce(const Model& model, const at::Tensor& held) {
  Units units;
  if (absl::GetFlag(FLAGS_classes)) {
    const std::vector<std::string>& classes = model.card().classes;
    if (classes.empty()) {
      return absl::InvalidArgumentError("--classes: the model has no classes");
    }
    std::vector<at::Tensor> logits;
    at::NoGradGuard no_grad;
    for (int64_t i = 0; i < held.size(0); i += 256) {
      FEATVIZ_ASSIGN_OR_RETURN(
          Taps taps,
          model.Forward(held.slice(0, i, i + 256).to(model.device()), {}));
      logits.push_back(taps.logits.cpu());
    }
    units.dataset_max = std::get<0>(at::cat(logits).max(0));
    for (size_t c = 0; c < classes.size(); ++c) {
      units.objectives.push_back(absl::StrCat("logit(", c, ")"));
      units.names.push_back(classes[c]);
    }
    return units;
  }
  const std::string layer = absl::GetFlag(FLAGS_layer);
  if (layer.empty()) {
    return absl::InvalidArgumentError("give --layer NAME or --classes");
  }
  FEATVIZ_ASSIGN_OR_RETURN(std::vector<LayerActivations> acts,
                           ComputeActivations(model, held, {{layer, {}}}));
  const at::Tensor maps = acts[0].maps;
  const at::Tensor per_image = maps.dim() > 2 ? maps.flatten(2).mean(2) : maps;
  units.dataset_max = std::get<0>(per_image.max(0)).cpu();
  for (int64_t k = 0; k < per_image.size(1); ++k) {
    units.objectives.push_back(absl::StrCat("channel(", layer, ", ", k, ")"));
    units.names.push_back(absl::StrCat(k));
  }
  return units;
}

// MakeUnitsOnce with every unit repeated --repeats times in a row.
absl::StatusOr<Units> MakeUnits(const Model& model, const at::Tensor& held) {
  FEATVIZ_ASSIGN_OR_RETURN(Units once, MakeUnitsOnce(model, held));
  const int64_t repeats = absl::GetFlag(FLAGS_repeats);
  if (repeats < 1 || repeats > 64) {
    return absl::InvalidArgumentError(
        absl::StrCat("--repeats must be in [1, 64], got ", repeats));
  }
  Units units;
  for (size_t u = 0; u < once.objectives.size(); ++u) {
    for (int64_t r = 0; r < repeats; ++r) {
      units.objectives.push_back(once.objectives[u]);
      units.names.push_back(once.names[u]);
    }
  }
  units.dataset_max = once.dataset_max.repeat_interleave(repeats);
  return units;
}

struct Rendered {
  at::Tensor images;  // [K, C, H, W]
  at::Tensor values;  // [K] objective on the untransformed picture.
  double seconds = 0;
};

absl::StatusOr<Rendered> RenderUnits(const Model& model, const Units& units,
                                     ParamKind kind, const at::Tensor& held) {
  RenderOptions options;
  options.param.kind = kind;
  options.param.decay_power = absl::GetFlag(FLAGS_decay);
  options.steps = absl::GetFlag(FLAGS_steps);
  options.lr = absl::GetFlag(FLAGS_lr);
  FEATVIZ_ASSIGN_OR_RETURN(
      options.transforms,
      ParseTransforms(absl::GetFlag(FLAGS_transforms), model.card().height,
                      model.card().width, model.IsTokenModel()));
  if (kind == ParamKind::kMaco) {
    // One tensor for every session, so that they share a pack.
    FEATVIZ_ASSIGN_OR_RETURN(
        options.param.magnitude,
        MacoMagnitudeFromImages(held, model.card().height, model.card().width));
    options.param.magnitude_source = "held-out dataset";
    if (absl::GetFlag(FLAGS_tone)) {
      FEATVIZ_ASSIGN_OR_RETURN(MacoTone tone, MacoToneFromImages(held));
      options.param.tone_gain = tone.gain;
      options.param.tone_offset = tone.offset;
    }
  }
  std::vector<std::unique_ptr<RenderSession>> sessions;
  std::vector<RenderSession*> all;
  for (size_t u = 0; u < units.objectives.size(); ++u) {
    FEATVIZ_ASSIGN_OR_RETURN(Objective objective,
                             Objective::Parse(units.objectives[u]));
    options.seed = static_cast<uint64_t>(absl::GetFlag(FLAGS_seed)) + u;
    FEATVIZ_ASSIGN_OR_RETURN(auto session,
                             RenderSession::Create(model, objective, options));
    all.push_back(session.get());
    sessions.push_back(std::move(session));
  }
  FEATVIZ_ASSIGN_OR_RETURN(const Precision precision,
                           ParsePrecision(absl::GetFlag(FLAGS_precision)));
  ConfigureProcessPrecision(precision);  // TF32's switch is process-wide.
  StepOptions step_options;
  step_options.precision = precision;
  const absl::Time start = absl::Now();
  while (!all.front()->done()) {
    FEATVIZ_RETURN_IF_ERROR(StepTogether(model, all, step_options));
  }
  Rendered out;
  out.seconds = absl::ToDoubleSeconds(absl::Now() - start);
  std::vector<at::Tensor> images;
  std::vector<double> values;
  for (RenderSession* s : all) {
    FEATVIZ_ASSIGN_OR_RETURN(RenderResult r, s->Finish());
    images.push_back(r.images);
    values.push_back(r.final_values[0]);
  }
  out.images = at::cat(images);
  out.values = at::tensor(values, at::kDouble);
  return out;
}

absl::Status Run(const std::string& model_path) {
  FEATVIZ_ASSIGN_OR_RETURN(auto model, Model::Load(model_path));
  const ModelCard& card = model->card();
  FEATVIZ_ASSIGN_OR_RETURN(
      DatasetPtr dataset,
      LoadDataset(absl::GetFlag(FLAGS_dataset), "reference"));
  FEATVIZ_ASSIGN_OR_RETURN(auto range,
                           ParseRange(absl::GetFlag(FLAGS_held_out), dataset->size()));
  const at::Tensor held = dataset->images.slice(0, range.first, range.second);
  if (held.size(1) != card.channels || held.size(2) != card.height ||
      held.size(3) != card.width) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--dataset images are ", held.size(1), "x", held.size(2), "x",
        held.size(3), ", the model takes ", card.channels, "x", card.height,
        "x", card.width));
  }
  FEATVIZ_ASSIGN_OR_RETURN(Units units, MakeUnits(*model, held));
  std::unique_ptr<Model> judge;
  if (!absl::GetFlag(FLAGS_judge).empty()) {
    FEATVIZ_ASSIGN_OR_RETURN(judge, Model::Load(absl::GetFlag(FLAGS_judge)));
  }
  const Reference ref = MakeReference(held);
  const std::string label = absl::GetFlag(FLAGS_label);
  const std::string what = absl::GetFlag(FLAGS_classes)
                               ? std::string("classes")
                               : absl::GetFlag(FLAGS_layer);

  std::printf("| %s | %s | param | pictures | activation / dataset max: median [min, max] "
              "| spectrum dist dB | pixel W1 | judge agrees (mean p) | s |\n",
              "model", "what");
  std::printf("|---|---|---|---|---|---|---|---|---|\n");
  {
    const at::Tensor sample = held.slice(0, 0, std::min<int64_t>(held.size(0), 256));
    auto [spectrum, pixel] = Plausibility(sample, ref);
    std::string judged = " - |";
    if (judge && dataset->labelled()) {  // The judge's accuracy.
      at::NoGradGuard no_grad;
      FEATVIZ_ASSIGN_OR_RETURN(Taps taps,
                               judge->Forward(held.to(judge->device()), {}));
      const at::Tensor labels =
          dataset->labels.slice(0, range.first, range.second);
      const at::Tensor probs = taps.probs.cpu();
      judged = absl::StrFormat(
          " %.0f%% (%.2f) |",
          100 * (probs.argmax(1) == labels).to(at::kDouble).mean().item<double>(),
          probs.gather(1, labels.unsqueeze(1)).mean().item<double>());
    }
    std::printf("| %s | %s | dataset images | %lld | 1 (by definition) | %.2f | %.3f |%s |\n",
                card.name.c_str(), what.c_str(),
                static_cast<long long>(sample.size(0)), Median(spectrum),
                Median(pixel), judged.c_str());
  }
  const std::vector<std::string> params =
      absl::StrSplit(absl::GetFlag(FLAGS_params), ',', absl::SkipEmpty());
  for (const std::string& name : params) {
    FEATVIZ_ASSIGN_OR_RETURN(ParamKind kind, ParseParamKind(name));
    FEATVIZ_ASSIGN_OR_RETURN(Rendered r, RenderUnits(*model, units, kind, held));
    // Units no held-out image drives above zero have no scale to compare to.
    const at::Tensor scale = units.dataset_max.to(at::kDouble);
    const at::Tensor usable = scale > 1e-6;
    const at::Tensor ratio = (r.values / scale.clamp_min(1e-6)).masked_select(usable);
    auto [spectrum, pixel] = Plausibility(r.images, ref);
    std::string judged = " - |";
    if (judge) {
      at::NoGradGuard no_grad;
      FEATVIZ_ASSIGN_OR_RETURN(Taps taps,
                               judge->Forward(r.images.to(judge->device()), {}));
      const at::Tensor probs = taps.probs.cpu();
      const at::Tensor target =
          at::arange(probs.size(0)).div(absl::GetFlag(FLAGS_repeats), "floor");
      const double agree =
          (probs.argmax(1) == target).to(at::kDouble).mean().item<double>();
      const double p = probs.gather(1, target.unsqueeze(1)).mean().item<double>();
      judged = absl::StrFormat(" %.0f%% (%.2f) |", 100 * agree, p);
    }
    const std::string param =
        label.empty() ? name : absl::StrCat(name, ", ", label);
    if (ratio.numel() > 0) {
      std::printf("| %s | %s | %s | %lld | %.2f [%.2f, %.2f] | %.2f | %.3f |%s %.1f |\n",
                  card.name.c_str(), what.c_str(), param.c_str(),
                  static_cast<long long>(ratio.numel()), Median(ratio),
                  ratio.min().item<double>(), ratio.max().item<double>(),
                  Median(spectrum), Median(pixel), judged.c_str(), r.seconds);
    } else {
      std::printf("| %s | %s | %s | 0 | no unit fires on the dataset | %.2f | %.3f |%s %.1f |\n",
                  card.name.c_str(), what.c_str(), param.c_str(),
                  Median(spectrum), Median(pixel), judged.c_str(), r.seconds);
    }
    std::fflush(stdout);
    if (!absl::GetFlag(FLAGS_sheets).empty()) {
      GridOptions grid;
      grid.scale = std::max<int64_t>(1, 96 / card.height);
      grid.columns = absl::GetFlag(FLAGS_repeats) > 1
                         ? absl::GetFlag(FLAGS_repeats)
                         : std::min<int64_t>(r.images.size(0), 16);
      for (size_t u = 0; u < units.names.size(); ++u) {
        const double s = units.dataset_max[u].item<double>();
        grid.labels.push_back(
            s > 1e-6 ? absl::StrFormat("%s %.2f", units.names[u],
                                       r.values[u].item<double>() / s)
                     : units.names[u]);
      }
      FEATVIZ_ASSIGN_OR_RETURN(
          const at::Tensor pictures,
          CompositeImages(r.images,
                          BandDisplayFor(card, r.images.size(1)).composite));
      FEATVIZ_ASSIGN_OR_RETURN(at::Tensor sheet, MakeGrid(pictures, grid));
      std::string file = absl::StrCat(absl::GetFlag(FLAGS_sheets), "/",
                                      card.name, "_", what, "_", name);
      if (!label.empty()) absl::StrAppend(&file, "_", label);
      FEATVIZ_RETURN_IF_ERROR(WritePng(sheet, absl::StrCat(file, ".png")));
    }
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace featviz::core

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "featviz-quality MODEL.pt --dataset DIR (--layer NAME | --classes) "
      "[--held_out FROM:TO] [--judge J.pt] [--sheets DIR]");
  std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  if (args.size() != 2) {
    std::fprintf(stderr, "usage: %s\n", absl::ProgramUsageMessage().data());
    return 2;
  }
  featviz::core::KeepFreedHostMemory();
  absl::Status status = featviz::core::CatchAtBoundary(
      "featviz-quality", [&] { return featviz::core::Run(args[1]); });
  if (!status.ok()) {
    std::fprintf(stderr, "featviz-quality: %s\n", status.ToString().c_str());
    return 1;
  }
  return 0;
}
