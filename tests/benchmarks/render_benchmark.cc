// Throughput of one render step (transform, forward with taps, objective,
// backward, Adam) on the MNIST classifier, at batch 1, 8 and 64, next to the
// same optimisation written as a plain LibTorch loop, the floor that featviz's
// machinery adds to. Prints figures, asserts nothing; see docs/performance.md.
//
//   build/tests/benchmarks/render_benchmark --benchmark_min_time=0.5
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <ATen/Parallel.h>
#include <benchmark/benchmark.h>
#include <torch/script.h>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "core/adam.h"
#include "core/model.h"
#include "core/objective.h"
#include "core/param.h"
#include "core/render.h"
#include "core/transform.h"
#include "tests/benchmarks/bench_support.h"

namespace featviz::core {
namespace {

using ::featviz::bench::Mnist;
using ::featviz::bench::MnistPath;

// Steps run before timing starts, so that the TorchScript profiling executor
// has specialised its graphs and the allocator has warmed up.
constexpr int kWarmupSteps = 5;
// Large enough that a session does not finish inside one benchmark run; the
// loop recreates it (untimed) if it ever does. The trace is steps x terms.
constexpr int64_t kSessionSteps = 20000;

// Rates, printed per second of wall time: steps/s and images*steps/s.
void AddCounters(benchmark::State& state, int64_t batch) {
  const double steps = static_cast<double>(state.iterations());
  state.counters["steps"] =
      benchmark::Counter(steps, benchmark::Counter::kIsRate);
  state.counters["images*steps"] =
      benchmark::Counter(steps * batch, benchmark::Counter::kIsRate);
}

enum class Variant {
  kFftDefaultTransforms,
  kFftNoTransforms,
  kPixelLogit,
  // Diagnostic: logit(0) of every image as one term instead of one term per
  // image, to separate the per-term cost of the objective from the rest.
  kPixelLogitOneTerm,
};

absl::StatusOr<std::unique_ptr<RenderSession>> NewSession(const Model& model,
                                                          Variant variant,
                                                          int64_t batch) {
  const bool pixel = variant == Variant::kPixelLogit ||
                     variant == Variant::kPixelLogitOneTerm;
  Objective objective;
  if (variant == Variant::kPixelLogitOneTerm) {
    objective = Logit(0);
  } else {
    for (int64_t b = 0; b < batch; ++b) {
      objective = objective + (pixel ? ForBatch(Logit(b % 10), b)
                                     : ForBatch(Channel("conv2", b % 32), b));
    }
  }
  RenderOptions options;
  options.param.batch = batch;
  options.param.kind = pixel ? ParamKind::kPixel : ParamKind::kFft;
  if (variant != Variant::kFftDefaultTransforms) {
    options.transforms = TransformList{};
  }
  options.steps = kSessionSteps;
  return RenderSession::Create(model, std::move(objective), options);
}

// One step exactly as core::Render() runs it.
absl::Status Step(const Model& model, RenderSession& session,
                  const std::vector<std::string>& layers) {
  absl::StatusOr<Taps> taps = model.Forward(session.PrepareInput(), layers);
  if (!taps.ok()) return taps.status();
  absl::StatusOr<at::Tensor> loss = session.Loss(*taps);
  if (!loss.ok()) return loss.status();
  loss->backward();
  session.Update();
  return absl::OkStatus();
}

void BM_RenderStep(benchmark::State& state, Variant variant) {
  const int64_t batch = state.range(0);
  const Model* model = Mnist();
  if (model == nullptr) {
    state.SkipWithError(("cannot load " + MnistPath()).c_str());
    return;
  }
  absl::StatusOr<std::unique_ptr<RenderSession>> session =
      NewSession(*model, variant, batch);
  if (!session.ok()) {
    state.SkipWithError(session.status().ToString().c_str());
    return;
  }
  const std::vector<std::string> layers = (*session)->objective().Layers();
  for (int i = 0; i < kWarmupSteps; ++i) {
    absl::Status s = Step(*model, **session, layers);
    if (!s.ok()) {
      state.SkipWithError(s.ToString().c_str());
      return;
    }
  }
  for (auto _ : state) {
    if ((*session)->done()) {
      state.PauseTiming();
      session = NewSession(*model, variant, batch);
      state.ResumeTiming();
    }
    absl::Status s = Step(*model, **session, layers);
    if (!s.ok()) {
      state.SkipWithError(s.ToString().c_str());
      break;
    }
  }
  AddCounters(state, batch);
}

BENCHMARK_CAPTURE(BM_RenderStep, fft_default_transforms,
                  Variant::kFftDefaultTransforms)
    ->Arg(1)->Arg(8)->Arg(64)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_RenderStep, fft_no_transforms, Variant::kFftNoTransforms)
    ->Arg(1)->Arg(8)->Arg(64)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_RenderStep, pixel_logit_no_transforms,
                  Variant::kPixelLogit)
    ->Arg(1)->Arg(8)->Arg(64)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_RenderStep, pixel_logit_one_term_no_transforms,
                  Variant::kPixelLogitOneTerm)
    ->Arg(1)->Arg(8)->Arg(64)->Unit(benchmark::kMillisecond)->UseRealTime();

// The floor for pixel_logit_no_transforms: the same optimisation (pixel
// parameterisation, sigmoid, the card's normalisation, the sum of
// logits[b, b % 10], Adam) with no featviz machinery: the module's own
// forward, no taps, no objective evaluation, no trace.
enum class Weights {
  kFrozen,
  // Diagnostic: the weights left requiring grad, so every backward also
  // computes (and accumulates) their gradients, as a step through
  // core::Model does while its weights are non-leaf clones (see
  // docs/performance.md).
  kRequireGrad,
};

void PlainLoop(benchmark::State& state, Weights weights) {
  const int64_t batch = state.range(0);
  torch::jit::Module module;
  try {
    module = torch::jit::load(MnistPath());
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
    return;
  }
  module.eval();
  if (weights == Weights::kFrozen) {
    for (at::Tensor p : module.parameters()) p.requires_grad_(false);
  }

  at::Tensor pixels = (at::randn({batch, 1, 28, 28}) * 0.01).requires_grad_();
  Adam adam({pixels}, AdamOptions{});
  const at::Tensor classes =
      at::arange(batch, at::kLong).remainder(10).view({batch, 1});
  auto step = [&] {
    at::Tensor input = (at::sigmoid(pixels) - 0.1307) / 0.3081;
    at::Tensor logits = module.forward({input}).toTensor();
    at::Tensor loss = -logits.gather(1, classes).sum();
    loss.backward();
    adam.Step();
  };
  try {
    for (int i = 0; i < kWarmupSteps; ++i) step();
    for (auto _ : state) step();
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
    return;
  }
  AddCounters(state, batch);
}

void BM_PlainLibTorchLoop(benchmark::State& state) {
  PlainLoop(state, Weights::kFrozen);
}
BENCHMARK(BM_PlainLibTorchLoop)
    ->Arg(1)->Arg(8)->Arg(64)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(PlainLoop, weights_require_grad, Weights::kRequireGrad)
    ->Name("BM_PlainLibTorchLoop/weights_require_grad")
    ->Arg(1)->Arg(8)->Arg(64)->Unit(benchmark::kMillisecond)->UseRealTime();

// Printed in the report's header.
const bool kContextAdded = ::featviz::bench::AddBlasContext();

}  // namespace
}  // namespace featviz::core
