// featviz-render: renders a feature visualisation locally, straight over
// core/, without a server.
//
//   featviz-render models/mnist_classifier.pt 'prob(7)' --out seven.png
//   featviz-render models/mnist_classifier.pt 'conv2:5' --batch 4 --out c5.png
#include <cstdio>
#include <iostream>
#include <random>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "core/bands.h"
#include "core/device.h"
#include "core/image.h"
#include "core/model.h"
#include "core/objective.h"
#include "core/render.h"
#include "core/status_macros.h"

ABSL_FLAG(std::string, out, "render.png",
          "PNG file for the images (a grid when batch > 1); for a model with "
          "bands, the card's composite, and x.bands.png beside it every band");
ABSL_FLAG(std::string, npy, "", "Optional .npy file for the float images [B, C, H, W]");
ABSL_FLAG(int64_t, steps, 256, "Optimisation steps");
ABSL_FLAG(int64_t, size, 0, "Image side in pixels; 0 takes the model's input size");
ABSL_FLAG(std::string, param, "fft", "Image parameterisation: fft or pixel");
ABSL_FLAG(double, decay, 1.0, "FFT spectrum decay power");
ABSL_FLAG(int64_t, batch, 1, "Images rendered together");
ABSL_FLAG(int64_t, seed, -1, "Random seed; -1 picks one (and prints it)");
ABSL_FLAG(double, lr, 0.05, "Adam learning rate");
ABSL_FLAG(std::string, transforms, "default",
          "default, none, or a list like 'pad(2), jitter(1), rotate(-5, 5)'");
ABSL_FLAG(std::string, init, "", "Optional PNG to start from");
ABSL_FLAG(int64_t, scale, 0, "Magnification of the PNG; 0 picks one so cells are >= 112 px");

namespace featviz::core {
namespace {

absl::Status Run(const std::string& model_path, const std::string& text) {
  FEATVIZ_ASSIGN_OR_RETURN(auto model, Model::Load(model_path));
  FEATVIZ_ASSIGN_OR_RETURN(Objective objective, Objective::Parse(text));
  RenderOptions options;
  FEATVIZ_ASSIGN_OR_RETURN(options.param.kind,
                           ParseParamKind(absl::GetFlag(FLAGS_param)));
  options.param.batch = absl::GetFlag(FLAGS_batch);
  options.param.decay_power = absl::GetFlag(FLAGS_decay);
  const int64_t size = absl::GetFlag(FLAGS_size);
  if (size < 0 || size > 4096) {
    return absl::InvalidArgumentError(
        absl::StrCat("--size must be in [0, 4096], got ", size));
  }
  options.param.height = size;
  options.param.width = size;
  const int64_t side = size > 0 ? size : model->card().height;
  FEATVIZ_ASSIGN_OR_RETURN(
      options.transforms,
      ParseTransforms(absl::GetFlag(FLAGS_transforms), side, side,
                      model->IsTokenModel()));
  if (!absl::GetFlag(FLAGS_init).empty()) {
    const int64_t channels = model->card().channels;
    if (channels != 1 && channels != 3) {
      // A PNG holds gray or RGB pixels, never another band count.
      return absl::InvalidArgumentError(absl::StrCat(
          "--init: a PNG holds 1 or 3 channels, but model ", model->card().name,
          " takes ", channels, "-channel images; start from noise instead"));
    }
    FEATVIZ_ASSIGN_OR_RETURN(options.param.init_image,
                             ReadPng(absl::GetFlag(FLAGS_init)));
  }
  options.steps = absl::GetFlag(FLAGS_steps);
  options.lr = absl::GetFlag(FLAGS_lr);
  const int64_t seed = absl::GetFlag(FLAGS_seed);
  options.seed = seed >= 0 ? static_cast<uint64_t>(seed)
                           : std::random_device{}() & 0x7fffffff;
  options.progress_every = std::max<int64_t>(1, options.steps / 8);

  const absl::Time start = absl::Now();
  FEATVIZ_ASSIGN_OR_RETURN(
      RenderResult result,
      Render(*model, objective, options, [&](const ProgressEvent& e) {
        std::vector<std::string> values;
        for (double v : e.values) values.push_back(absl::StrFormat("%.4g", v));
        std::fprintf(stderr, "step %4lld  %s\n", static_cast<long long>(e.step),
                     absl::StrJoin(values, "  ").c_str());
        return true;
      }));
  const double seconds = absl::ToDoubleSeconds(absl::Now() - start);

  GridOptions grid;
  grid.scale = absl::GetFlag(FLAGS_scale) > 0
                   ? absl::GetFlag(FLAGS_scale)
                   : std::max<int64_t>(1, 112 / result.images.size(3));
  grid.columns = std::min<int64_t>(result.images.size(0), 8);
  // Each cell says what the classifier makes of the image.
  for (int64_t b = 0; b < result.probs.size(0); ++b) {
    const int64_t top = result.probs[b].argmax().item<int64_t>();
    grid.labels.push_back(absl::StrFormat("%s %.2f",
                                          model->card().classes[top],
                                          result.probs[b][top].item<double>()));
  }
  // Images with bands show the card's composite, and each band beside it.
  const BandDisplay display =
      BandDisplayFor(model->card(), result.images.size(1));
  FEATVIZ_ASSIGN_OR_RETURN(const at::Tensor pictures,
                           CompositeImages(result.images, display.composite));
  FEATVIZ_ASSIGN_OR_RETURN(at::Tensor sheet, MakeGrid(pictures, grid));
  FEATVIZ_RETURN_IF_ERROR(WritePng(sheet, absl::GetFlag(FLAGS_out)));
  std::string bands_path;
  if (display.shows_bands()) {
    FEATVIZ_ASSIGN_OR_RETURN(
        const at::Tensor bands,
        BandSheet(result.images, display.names, {}, absl::GetFlag(FLAGS_scale)));
    bands_path = BandSheetPath(absl::GetFlag(FLAGS_out));
    FEATVIZ_RETURN_IF_ERROR(WritePng(bands, bands_path));
  }
  if (!absl::GetFlag(FLAGS_npy).empty()) {
    FEATVIZ_RETURN_IF_ERROR(WriteNpy(result.images, absl::GetFlag(FLAGS_npy)));
  }

  std::printf("objective  %s\n", result.objective.c_str());
  std::printf("model      %s (%s)\n", model->card().name.c_str(),
              model->content_hash().substr(0, 12).c_str());
  std::printf("seed       %llu\n", static_cast<unsigned long long>(result.seed));
  std::printf("steps      %lld in %.2f s (%.1f steps/s)\n",
              static_cast<long long>(result.steps), seconds,
              result.steps / seconds);
  std::printf("transforms %s\n", result.transforms.c_str());
  for (size_t i = 0; i < result.terms.size(); ++i) {
    std::printf("term       %-32s %.5g\n", result.terms[i].c_str(),
                result.final_values[i]);
  }
  const at::Tensor probs = result.probs;
  for (int64_t b = 0; b < probs.size(0); ++b) {
    const int64_t top = probs[b].argmax().item<int64_t>();
    std::printf("image %lld   top class %s  p=%.4f\n",
                static_cast<long long>(b), model->card().classes[top].c_str(),
                probs[b][top].item<double>());
  }
  std::printf("wrote      %s\n", absl::GetFlag(FLAGS_out).c_str());
  if (!bands_path.empty()) std::printf("wrote      %s\n", bands_path.c_str());
  return absl::OkStatus();
}

}  // namespace
}  // namespace featviz::core

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "featviz-render MODEL.pt 'OBJECTIVE' [--out x.png] [--steps N] ...");
  std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  if (args.size() != 3) {
    std::fprintf(stderr, "usage: %s\n", absl::ProgramUsageMessage().data());
    return 2;
  }
  featviz::core::KeepFreedHostMemory();
  absl::Status status = featviz::core::Run(args[1], args[2]);
  if (!status.ok()) {
    std::fprintf(stderr, "featviz-render: %s\n", status.ToString().c_str());
    return 1;
  }
  return 0;
}
