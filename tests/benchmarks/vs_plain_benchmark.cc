// featviz's batched step against a plain LibTorch loop doing the same
// optimisation, side by side in one process: each benchmark iteration runs
// one featviz step and one plain step (alternating which goes first) and
// times each, so the two see the same machine load and their ratio is fair
// even on a shared, noisy box.
//
// The optimisation, on both sides: N images, FFT parameterisation with a
// 1/f spectrum (Lucid's scale), sigmoid; the default robust transforms (one
// affine matrix per image and step, drawn ahead, bilinear with reflected
// border) or none; the card's normalisation; the model's forward; minus a
// sum of class logits (image i: class i % 10, or class 0 for a one-job
// request); Adam (lr 0.05).
//   featviz: core::BatchStepper::Step (what a worker runs) over
//     jobs/N         N single-image sessions, objective logit(j % 10),
//     one_job/N      one session of N images, objective logit(0) (a request
//                    of N images; featviz draws one transform per step for
//                    the request, the plain loop one per image: same cost),
//   plain: torch::jit::load, weights frozen, one leaf [N, 1, 28, 15, 2],
//     irfft2, sigmoid, affine_grid + grid_sample, module.forward, gather,
//     backward, one Adam update of the leaf.
// Models: the bundled classifier (models/mnist_classifier.pt) and PyTorch's
// MNIST example network (classic_cnn, built by
// tests/models/make_bench_models.py at build time).
//
// Counters: featviz and plain images*steps/s, and ratio = plain's time /
// featviz's time (>= 1: featviz is faster); each side's share_of_peak, the
// multiply-adds of its forward and backward-to-input per second as a share
// of this machine's matrix-product limit for its precision (PeakFlops). BM_LinearModes, BM_StopAtTap
// and BM_Threads (below) compare featviz with itself: linear-layer modes,
// the forward pass ending at the objective's layer or running the whole
// network, thread counts. Prints figures, asserts nothing; see
// docs/performance.md ("featviz against plain loops").
//
//   build/tests/benchmarks/vs_plain_benchmark --benchmark_min_time=1
//   build/tests/benchmarks/vs_plain_benchmark --benchmark_filter='classic_jobs'
//   build/tests/benchmarks/vs_plain_benchmark --benchmark_filter=LinearModes
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <benchmark/benchmark.h>
#include <torch/script.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/adam.h"
#include "core/device.h"
#include "core/model.h"
#include "core/objective.h"
#include "core/render.h"
#include "core/step_graph.h"
#include "core/transform.h"
#include "tests/benchmarks/bench_support.h"

namespace featviz::core {
namespace {

constexpr int kWarmupSteps = 3;
// Sessions live this long; recreated (untimed) if a run ever gets there.
constexpr int64_t kSessionSteps = 100000;
// The plain loop's transforms: this many steps of matrices drawn ahead,
// used in turn.
constexpr int64_t kScheduleSteps = 64;

std::string ModelPath(bool classic) {
  return classic ? std::string(FEATVIZ_BENCH_MODELS_DIR) + "/classic_cnn.pt"
                 : ::featviz::bench::MnistPath();
}

const Model* LoadedModel(bool classic) {
  static const Model* models[2] = {nullptr, nullptr};
  static bool tried[2] = {false, false};
  const int i = classic ? 1 : 0;
  if (!tried[i]) {
    tried[i] = true;
    absl::StatusOr<ModelPtr> m = Model::Load(ModelPath(classic));
    if (m.ok()) models[i] = m->release();
  }
  return models[i];
}

// A benchmark model of build/bench_models by name, loaded once.
const Model* LoadedBenchModel(const std::string& name) {
  static auto* models = new std::map<std::string, const Model*>;
  auto it = models->find(name);
  if (it != models->end()) return it->second;
  absl::StatusOr<ModelPtr> m = Model::Load(
      absl::StrCat(FEATVIZ_BENCH_MODELS_DIR, "/", name, ".pt"));
  const Model* loaded = m.ok() ? m->release() : nullptr;
  (*models)[name] = loaded;
  return loaded;
}

double Seconds(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() -
                                       start)
      .count();
}

struct FeatvizSide {
  std::vector<std::unique_ptr<RenderSession>> sessions;
  std::vector<RenderSession*> pointers;
  std::unique_ptr<BatchStepper> stepper;
  // Job j's objective when set (default: the class logits above), and the
  // worker's step options.
  std::function<Objective(int64_t j)> objective;
  StepOptions step_options;

  absl::Status Create(const Model& model, int64_t n, bool one_job,
                      bool transforms) {
    sessions.clear();
    pointers.clear();
    const int64_t jobs = one_job ? 1 : n;
    for (int64_t j = 0; j < jobs; ++j) {
      RenderOptions options;
      options.param.kind = ParamKind::kFft;
      options.param.batch = one_job ? n : 1;
      options.steps = kSessionSteps;
      options.seed = static_cast<uint64_t>(j);
      if (!transforms) options.transforms = TransformList{};
      absl::StatusOr<std::unique_ptr<RenderSession>> s = RenderSession::Create(
          model,
          objective ? objective(j) : one_job ? Logit(0) : Logit(j % 10),
          options);
      if (!s.ok()) return s.status();
      pointers.push_back(s->get());
      sessions.push_back(*std::move(s));
    }
    stepper = std::make_unique<BatchStepper>(model, step_options);
    return absl::OkStatus();
  }

  absl::Status Step(const Model& model, int64_t n, bool one_job,
                    bool transforms) {
    if (pointers.front()->done()) {
      absl::Status s = Create(model, n, one_job, transforms);
      if (!s.ok()) return s;
    }
    return stepper->Step(pointers);
  }
};

// The optimisation as a researcher would write it in LibTorch.
struct PlainSide {
  torch::jit::Module module;
  at::Tensor variable;  // [N, 1, H, W/2+1, 2]
  at::Tensor scale;     // [H, W/2+1]
  at::Tensor schedule;  // [kScheduleSteps, N, 2, 3], or undefined
  at::Tensor classes;   // [N, 1]
  std::unique_ptr<Adam> adam;
  int64_t height = 28, width = 28;
  int64_t step = 0;

  absl::Status Create(const std::string& path, const ModelCard& card,
                      int64_t n, bool one_job, bool transforms) {
    try {
      module = torch::jit::load(path);
      module.eval();
      for (at::Tensor p : module.parameters()) p.requires_grad_(false);
      height = card.height;
      width = card.width;
      const at::Tensor fy = at::fft_fftfreq(height).view({-1, 1});
      const at::Tensor fx = at::fft_rfftfreq(width).view({1, -1});
      scale = (fy * fy + fx * fx)
                  .sqrt()
                  .clamp_min(1.0 / std::max(height, width))
                  .pow(-1.0)
                  .to(at::kFloat);
      variable = (at::randn({n, card.channels, height, width / 2 + 1, 2}) *
                  0.01)
                     .requires_grad_();
      adam = std::make_unique<Adam>(std::vector<at::Tensor>{variable},
                                    AdamOptions{});
      at::Generator gen = at::detail::createCPUGenerator(1);
      if (transforms) {
        schedule = TransformMatrices(DefaultTransforms(height, width),
                                     kScheduleSteps * n, height, width, gen)
                       .view({kScheduleSteps, n, 2, 3});
      }
      classes = one_job ? at::zeros({n, 1}, at::kLong)
                        : at::arange(n, at::kLong).remainder(10).view({n, 1});
    } catch (const std::exception& e) {
      return absl::InternalError(e.what());
    }
    return absl::OkStatus();
  }

  void Step() {
    at::Tensor pre = at::fft_irfft2(at::view_as_complex(variable) * scale,
                                    c10::IntArrayRef{height, width}, {-2, -1},
                                    "ortho");
    at::Tensor x = at::sigmoid(pre / 4.0);
    if (schedule.defined()) {
      at::Tensor theta = schedule[step % kScheduleSteps];
      at::Tensor grid = at::affine_grid_generator(
          theta, {x.size(0), x.size(1), height, width}, false);
      x = at::grid_sampler(x, grid, 0, 2, false);
    }
    at::Tensor logits =
        module.forward({(x - 0.1307) / 0.3081}).toTensor();
    at::Tensor loss = -logits.gather(1, classes).sum();
    loss.backward();
    adam->Step();
    ++step;
  }
};

// One image's forward multiply-adds in the model's convolutions and linear
// layers: for each `<path>.weight` of rank 2 (linear, [N, K]) or 3-4
// (convolution, [O, I/groups, k...]) whose module `path` is a layer of known
// output shape, the output's elements times the weight's per-output length.
// Elementwise work, pooling and the parameterisation are not counted.
double ForwardMacs(const std::string& file, const Model& model) {
  std::map<std::string, const LayerInfo*> layers;
  for (const LayerInfo& layer : model.layers()) layers[layer.path] = &layer;
  const torch::jit::Module module = torch::jit::load(file);
  double macs = 0;
  for (const auto& p : module.named_parameters()) {
    if (!absl::EndsWith(p.name, ".weight")) continue;
    const auto it = layers.find(p.name.substr(0, p.name.size() - 7));
    if (it == layers.end() || it->second->shape.size() < 2) continue;
    const at::Tensor& w = p.value;
    if (w.dim() < 2 || w.dim() > 4) continue;
    double outputs = 1;
    for (size_t d = 1; d < it->second->shape.size(); ++d) {
      outputs *= static_cast<double>(it->second->shape[d]);
    }
    macs += outputs * static_cast<double>(w.numel() / w.size(0));
  }
  return macs;
}

// The machine's limit for `precision` on this thread count, in FLOP/s: the
// faster of a 1024 x 1024 x 1024 matrix product (BLAS; oneDNN for bf16)
// and a 3x3 convolution of 256 to 256 channels at 32 x 32, batch 8
// (oneDNN), each the best of five after two warm-ups. On the 2-core Xeon of
// docs/performance.md: 22 and 123 GFLOP/s in float32 (OpenBLAS's product is
// far from the core's limit), 838 and 680 in bf16 (AMX). Measured once.
double PeakFlops(Precision precision) {
  static auto* measured = new std::map<Precision, double>;
  if (auto it = measured->find(precision); it != measured->end()) {
    return it->second;
  }
  const at::ScalarType type =
      precision == Precision::kBf16 ? at::kBFloat16 : at::kFloat;
  auto best_rate = [](double flops, const std::function<void()>& run) {
    double best = 1e30;
    for (int i = 0; i < 7; ++i) {
      const auto start = std::chrono::steady_clock::now();
      run();
      if (i >= 2) best = std::min(best, Seconds(start));
    }
    return flops / best;
  };
  const at::Tensor a = at::randn({1024, 1024}).to(type);
  const at::Tensor b = at::randn({1024, 1024}).to(type);
  const at::Tensor x = at::randn({8, 256, 32, 32}).to(type);
  const at::Tensor w = at::randn({256, 256, 3, 3}).to(type);
  at::NoGradGuard no_grad;
  const double mm = best_rate(2.0 * 1024 * 1024 * 1024, [&] { at::mm(a, b); });
  const double conv = best_rate(2.0 * 8 * 256 * 256 * 9 * 32 * 32,
                                [&] { at::conv2d(x, w, {}, 1, 1); });
  return (*measured)[precision] = std::max(mm, conv);
}

// Adds `<side>_share_of_peak`: the side's multiply-adds of the forward pass
// and its backward to the input (about twice the forward's) per second,
// as a share of PeakFlops(precision).
void AddShareOfPeak(benchmark::State& state, const std::string& side,
                    double forward_macs, Precision precision) {
  const double rate = state.counters[side + "_img*steps/s"].value;
  state.counters[side + "_share_of_peak"] =
      rate * 4.0 * forward_macs / PeakFlops(precision);
}

// Runs `a` and `b` once per iteration, alternating which goes first, and
// reports each one's images*steps/s and ratio = time of b / time of a (> 1:
// a is faster). Warm-up steps first.
void Interleave(benchmark::State& state, int64_t n, const char* a_name,
                const std::function<absl::Status()>& a, const char* b_name,
                const std::function<absl::Status()>& b) {
  absl::Status s;
  try {
    for (int i = 0; s.ok() && i < kWarmupSteps; ++i) {
      s = a();
      if (s.ok()) s = b();
    }
  } catch (const std::exception& e) {
    s = absl::InternalError(e.what());
  }
  if (!s.ok()) {
    state.SkipWithError(s.ToString().c_str());
    return;
  }
  double a_s = 0, b_s = 0;
  bool a_first = true;
  for (auto _ : state) {
    double ta = 0, tb = 0;
    try {
      for (int k = 0; k < 2 && s.ok(); ++k) {
        const auto start = std::chrono::steady_clock::now();
        if ((k == 0) == a_first) {
          s = a();
          ta = Seconds(start);
        } else {
          s = b();
          tb = Seconds(start);
        }
      }
    } catch (const std::exception& e) {
      s = absl::InternalError(e.what());
    }
    if (!s.ok()) {
      state.SkipWithError(s.ToString().c_str());
      return;
    }
    a_first = !a_first;
    a_s += ta;
    b_s += tb;
    state.SetIterationTime(ta + tb);
  }
  const double images =
      static_cast<double>(state.iterations()) * static_cast<double>(n);
  state.counters[absl::StrCat(a_name, "_img*steps/s")] = images / a_s;
  state.counters[absl::StrCat(b_name, "_img*steps/s")] = images / b_s;
  state.counters["ratio"] = b_s / a_s;
}

void BM_VsPlain(benchmark::State& state, bool classic, bool one_job,
                Precision precision = Precision::kFloat32) {
  const int64_t n = state.range(0);
  const bool transforms = state.range(1) != 0;
  const Model* model = LoadedModel(classic);
  if (model == nullptr) {
    state.SkipWithError(("cannot load " + ModelPath(classic)).c_str());
    return;
  }
  FeatvizSide featviz;
  featviz.step_options.precision = precision;
  PlainSide plain;
  absl::Status s = featviz.Create(*model, n, one_job, transforms);
  if (s.ok()) s = plain.Create(ModelPath(classic), model->card(), n, one_job,
                               transforms);
  if (!s.ok()) {
    state.SkipWithError(s.ToString().c_str());
    return;
  }
  Interleave(
      state, n, "featviz",
      [&] { return featviz.Step(*model, n, one_job, transforms); }, "plain",
      [&] {
        plain.Step();
        return absl::OkStatus();
      });
  // The share of the machine's limit for each side's precision (the plain
  // loop is float32).
  static auto* macs = new std::map<bool, double>;
  if (!macs->count(classic)) (*macs)[classic] = ForwardMacs(ModelPath(classic), *model);
  AddShareOfPeak(state, "featviz", macs->at(classic), precision);
  AddShareOfPeak(state, "plain", macs->at(classic), Precision::kFloat32);
}

// Arguments {n, transforms}: each size with the default transforms, then
// each without.
void SizesWithAndWithoutTransforms(benchmark::internal::Benchmark* b,
                                   std::initializer_list<int64_t> sizes) {
  for (int64_t transforms : {1, 0}) {
    for (int64_t n : sizes) b->Args({n, transforms});
  }
  b->ArgNames({"n", "transforms"});
  b->Unit(benchmark::kMillisecond)->UseManualTime();
}

void Sizes(benchmark::internal::Benchmark* b) {
  SizesWithAndWithoutTransforms(b, {1, 16, 64, 256});
}

BENCHMARK_CAPTURE(BM_VsPlain, bundled_jobs, false, false)->Apply(Sizes);
BENCHMARK_CAPTURE(BM_VsPlain, classic_jobs, true, false)->Apply(Sizes);
BENCHMARK_CAPTURE(BM_VsPlain, bundled_one_job, false, true)->Apply(Sizes);
// featviz in bf16 (the server's default where the CPU computes it natively:
// --precision auto) against the plain loop in fp32, as a researcher's
// notebook runs it.
BENCHMARK_CAPTURE(BM_VsPlain, classic_jobs_bf16, true, false,
                  Precision::kBf16)
    ->Apply(Sizes);
BENCHMARK_CAPTURE(BM_VsPlain, classic_one_job, true, true)->Apply(Sizes);

// What batch invariance costs: featviz's step (n one-image jobs, default
// transforms) with its linear layers computed in `a` and in `b` mode
// (core::LinearMode), interleaved; ratio = time in b / time in a.
void BM_LinearModes(benchmark::State& state, bool classic, LinearMode a,
                    LinearMode b) {
  const int64_t n = state.range(0);
  const Model* model = LoadedModel(classic);
  if (model == nullptr) {
    state.SkipWithError(("cannot load " + ModelPath(classic)).c_str());
    return;
  }
  FeatvizSide side_a, side_b;
  absl::Status s = side_a.Create(*model, n, false, true);
  if (s.ok()) s = side_b.Create(*model, n, false, true);
  if (!s.ok()) {
    state.SkipWithError(s.ToString().c_str());
    return;
  }
  const LinearMode before = GetLinearMode();
  Interleave(
      state, n, LinearModeName(a),
      [&] {
        SetLinearMode(a);
        return side_a.Step(*model, n, false, true);
      },
      LinearModeName(b),
      [&] {
        SetLinearMode(b);
        return side_b.Step(*model, n, false, true);
      });
  SetLinearMode(before);
}

void JobSizes(benchmark::internal::Benchmark* b) {
  for (int64_t n : {1, 16, 64, 256}) b->Args({n});
  b->ArgNames({"n"})->Unit(benchmark::kMillisecond)->UseManualTime();
}

BENCHMARK_CAPTURE(BM_LinearModes, classic_blocked_vs_plain, true,
                  LinearMode::kBlocked, LinearMode::kPlain)
    ->Apply(JobSizes);
BENCHMARK_CAPTURE(BM_LinearModes, bundled_blocked_vs_plain, false,
                  LinearMode::kBlocked, LinearMode::kPlain)
    ->Apply(JobSizes);
BENCHMARK_CAPTURE(BM_LinearModes, classic_blocked_vs_rowwise, true,
                  LinearMode::kBlocked, LinearMode::kRowwise)
    ->Apply(JobSizes);
// The invariant product against the two it replaces (issue 26, point 4).
BENCHMARK_CAPTURE(BM_LinearModes, classic_invariant_vs_blocked, true,
                  LinearMode::kInvariant, LinearMode::kBlocked)
    ->Apply(JobSizes);
BENCHMARK_CAPTURE(BM_LinearModes, classic_invariant_vs_plain, true,
                  LinearMode::kInvariant, LinearMode::kPlain)
    ->Apply(JobSizes);
BENCHMARK_CAPTURE(BM_LinearModes, bundled_invariant_vs_blocked, false,
                  LinearMode::kInvariant, LinearMode::kBlocked)
    ->Apply(JobSizes);

// What stopping at the deepest tap saves (StepOptions::stop_at_deepest_tap):
// featviz's step of n one-image jobs, objective channel(layer, j % channels)
// (default transforms), with the forward pass ending at `layer` and running
// the whole network, as a plain loop with a hook does; interleaved; ratio =
// time of the whole network / time stopped at the tap.
void BM_StopAtTap(benchmark::State& state, const char* model_name,
                  const char* layer, Precision precision = Precision::kFloat32) {
  const int64_t n = state.range(0);
  const bool transforms = state.range(1) != 0;
  const std::string name = model_name;
  const Model* model = name == "bundled" ? LoadedModel(false)
                                         : LoadedBenchModel(name);
  if (model == nullptr) {
    state.SkipWithError(("cannot load the model " + name).c_str());
    return;
  }
  absl::StatusOr<LayerInfo> info = model->FindLayer(layer);
  if (!info.ok()) {
    state.SkipWithError(info.status().ToString().c_str());
    return;
  }
  const int64_t channels = std::max<int64_t>(info->channels, 1);
  FeatvizSide stop, whole;
  stop.objective = whole.objective = [&](int64_t j) {
    return Channel(layer, j % channels);
  };
  whole.step_options.stop_at_deepest_tap = false;
  stop.step_options.precision = whole.step_options.precision = precision;
  absl::Status s = stop.Create(*model, n, false, transforms);
  if (s.ok()) s = whole.Create(*model, n, false, transforms);
  if (!s.ok()) {
    state.SkipWithError(s.ToString().c_str());
    return;
  }
  Interleave(
      state, n, "stop_at_tap",
      [&] { return stop.Step(*model, n, false, transforms); }, "whole_network",
      [&] { return whole.Step(*model, n, false, transforms); });
}

void TapSizes(benchmark::internal::Benchmark* b) {
  SizesWithAndWithoutTransforms(b, {1, 16, 64});
}

void ResNetSizes(benchmark::internal::Benchmark* b) {
  SizesWithAndWithoutTransforms(b, {1, 4});
}

BENCHMARK_CAPTURE(BM_StopAtTap, classic_conv1, "classic_cnn", "conv1")
    ->Apply(TapSizes);
BENCHMARK_CAPTURE(BM_StopAtTap, classic_conv2, "classic_cnn", "conv2")
    ->Apply(TapSizes);
BENCHMARK_CAPTURE(BM_StopAtTap, bundled_conv2, "bundled", "conv2")
    ->Apply(TapSizes);
// torchvision's ResNet-18 at 128 px (tests/models/make_bench_models.py).
BENCHMARK_CAPTURE(BM_StopAtTap, resnet18_layer1, "resnet18_128", "layer1")
    ->Apply(ResNetSizes);
BENCHMARK_CAPTURE(BM_StopAtTap, resnet18_layer2, "resnet18_128", "layer2")
    ->Apply(ResNetSizes);
BENCHMARK_CAPTURE(BM_StopAtTap, resnet18_layer3, "resnet18_128", "layer3")
    ->Apply(ResNetSizes);
// The same in bf16 (a request's precision "bf16"), both sides.
BENCHMARK_CAPTURE(BM_StopAtTap, resnet18_layer1_bf16, "resnet18_128", "layer1",
                  Precision::kBf16)
    ->Apply(ResNetSizes);
BENCHMARK_CAPTURE(BM_StopAtTap, resnet18_layer2_bf16, "resnet18_128", "layer2",
                  Precision::kBf16)
    ->Apply(ResNetSizes);

// Channels-last against contiguous convolutions (ConvLayout): featviz's step
// of n one-image jobs, `objective` ("logit" for logit(j % 10), otherwise
// channel(objective, j % channels)), default transforms, on the model loaded
// once in each layout; interleaved; ratio = time contiguous / time
// channels-last (> 1: channels-last is faster).
void BM_ConvLayout(benchmark::State& state, const char* model_name,
                   const char* objective, Precision precision) {
  const int64_t n = state.range(0);
  const std::string name = model_name;
  static auto* models =
      new std::map<std::pair<std::string, bool>, const Model*>;
  auto load = [&](bool channels_last) -> const Model* {
    auto [it, added] = models->emplace(std::make_pair(name, channels_last), nullptr);
    if (!added) return it->second;
    SetConvLayout(channels_last ? ConvLayout::kChannelsLast
                                : ConvLayout::kContiguous);
    absl::StatusOr<ModelPtr> m = Model::Load(
        name == "bundled"
            ? ::featviz::bench::MnistPath()
            : absl::StrCat(FEATVIZ_BENCH_MODELS_DIR, "/", name, ".pt"));
    SetConvLayout(ConvLayout::kChannelsLast);
    if (m.ok()) it->second = m->release();
    return it->second;
  };
  const Model* contiguous = load(false);
  const Model* channels_last = load(true);
  if (contiguous == nullptr || channels_last == nullptr) {
    state.SkipWithError(("cannot load the model " + name).c_str());
    return;
  }
  const std::string layer = objective;
  int64_t channels = 1;
  if (layer != "logit") {
    absl::StatusOr<LayerInfo> info = contiguous->FindLayer(layer);
    if (!info.ok()) {
      state.SkipWithError(info.status().ToString().c_str());
      return;
    }
    channels = std::max<int64_t>(info->channels, 1);
  }
  FeatvizSide nchw, nhwc;
  nchw.objective = nhwc.objective = [&](int64_t j) {
    return layer == "logit" ? Logit(j % 10) : Channel(layer, j % channels);
  };
  nchw.step_options.precision = nhwc.step_options.precision = precision;
  absl::Status s = nchw.Create(*contiguous, n, false, true);
  if (s.ok()) s = nhwc.Create(*channels_last, n, false, true);
  if (!s.ok()) {
    state.SkipWithError(s.ToString().c_str());
    return;
  }
  Interleave(
      state, n, "channels_last",
      [&] { return nhwc.Step(*channels_last, n, false, true); }, "contiguous",
      [&] { return nchw.Step(*contiguous, n, false, true); });
  if (layer == "logit") {  // The whole network's work.
    const double macs = ForwardMacs(
        name == "bundled"
            ? ::featviz::bench::MnistPath()
            : absl::StrCat(FEATVIZ_BENCH_MODELS_DIR, "/", name, ".pt"),
        *contiguous);
    AddShareOfPeak(state, "channels_last", macs, precision);
    AddShareOfPeak(state, "contiguous", macs, precision);
  }
}

void LayoutSizes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"n"});
  for (int64_t n : {1, 4, 16}) b->Args({n});
  b->Unit(benchmark::kMillisecond);
}

BENCHMARK_CAPTURE(BM_ConvLayout, bundled_logit_fp32, "bundled", "logit",
                  Precision::kFloat32)
    ->Apply(LayoutSizes);
BENCHMARK_CAPTURE(BM_ConvLayout, bundled_logit_bf16, "bundled", "logit",
                  Precision::kBf16)
    ->Apply(LayoutSizes);
BENCHMARK_CAPTURE(BM_ConvLayout, classic_logit_fp32, "classic_cnn", "logit",
                  Precision::kFloat32)
    ->Apply(LayoutSizes);
BENCHMARK_CAPTURE(BM_ConvLayout, classic_logit_bf16, "classic_cnn", "logit",
                  Precision::kBf16)
    ->Apply(LayoutSizes);
BENCHMARK_CAPTURE(BM_ConvLayout, resnet18_layer2_fp32, "resnet18_128", "layer2",
                  Precision::kFloat32)
    ->Apply(LayoutSizes);
BENCHMARK_CAPTURE(BM_ConvLayout, resnet18_layer2_bf16, "resnet18_128", "layer2",
                  Precision::kBf16)
    ->Apply(LayoutSizes);
BENCHMARK_CAPTURE(BM_ConvLayout, resnet18_logit_fp32, "resnet18_128", "logit",
                  Precision::kFloat32)
    ->Apply(LayoutSizes);
BENCHMARK_CAPTURE(BM_ConvLayout, resnet18_logit_bf16, "resnet18_128", "logit",
                  Precision::kBf16)
    ->Apply(LayoutSizes);

// The worker's intra-op threads: featviz's step (n one-image jobs, default
// transforms) on 1 thread and on 2 (at::set_num_threads around each step),
// interleaved; ratio = time on 2 / time on 1 (< 1: two threads are faster).
// Run it with the machine idle and with another busy process beside it.
void BM_Threads(benchmark::State& state, bool classic) {
  const int64_t n = state.range(0);
  const Model* model = LoadedModel(classic);
  if (model == nullptr) {
    state.SkipWithError(("cannot load " + ModelPath(classic)).c_str());
    return;
  }
  FeatvizSide one, two;
  absl::Status s = one.Create(*model, n, false, true);
  if (s.ok()) s = two.Create(*model, n, false, true);
  if (!s.ok()) {
    state.SkipWithError(s.ToString().c_str());
    return;
  }
  const int before = at::get_num_threads();
  Interleave(
      state, n, "threads1",
      [&] {
        at::set_num_threads(1);
        return one.Step(*model, n, false, true);
      },
      "threads2",
      [&] {
        at::set_num_threads(2);
        return two.Step(*model, n, false, true);
      });
  at::set_num_threads(before);
}

BENCHMARK_CAPTURE(BM_Threads, classic, true)->Apply(JobSizes);
BENCHMARK_CAPTURE(BM_Threads, bundled, false)->Apply(JobSizes);

// OpenBLAS's pool at one thread, as featviz-server sets it for its one
// worker thread (core::SetOpenBlasThreads), for both loops; an
// OPENBLAS_NUM_THREADS in the environment wins.
const bool kBlasThreads = [] {
  if (std::getenv("OPENBLAS_NUM_THREADS") == nullptr) SetOpenBlasThreads(1);
  benchmark::AddCustomContext(
      "openblas threads",
      std::getenv("OPENBLAS_NUM_THREADS") == nullptr
          ? "1 (core::SetOpenBlasThreads, as featviz-server)"
          : "OPENBLAS_NUM_THREADS");
  return true;
}();
const bool kContextAdded = ::featviz::bench::AddBlasContext();
// As featviz-server does, for featviz and the plain loop alike (they run in
// this process); FEATVIZ_BENCH_DEFAULT_MALLOC=1 measures glibc's defaults.
const bool kHostMemory = [] {
  const bool keep = std::getenv("FEATVIZ_BENCH_DEFAULT_MALLOC") == nullptr;
  if (keep) KeepFreedHostMemory();
  benchmark::AddCustomContext(
      "host memory", keep ? "freed blocks kept (core::KeepFreedHostMemory)"
                          : "glibc malloc defaults");
  return true;
}();


}  // namespace
}  // namespace featviz::core
