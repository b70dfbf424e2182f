// What cross-job batching buys: N single-image render jobs of
// channel(conv2, j % 32) (FFT, default transforms, seed j) on the MNIST
// classifier, advanced one step each
//   BM_StepTogether/N     as ONE core::StepTogether over all N sessions,
//   BM_SequentialSteps/N  one after another, StepTogether with one session
//                         each (what a worker does without batching),
// so both do equal work per iteration. Counters: images*steps per second,
// and ms_per_step, the wall time to advance every job by one step.
//   BM_StepPhases/N       StepTogether's pieces timed apart (ms per step):
//                         the N PrepareInput calls and the stack, the model's
//                         forward, the N Loss calls, the one backward, the N
//                         Update calls; and model_fwd_bwd, the model's own
//                         forward/backward on a leaf input of the same size,
//                         the part of the step that batching amortises.
// Prints figures, asserts nothing; see docs/performance.md.
//
//   build/tests/benchmarks/batch_benchmark --benchmark_min_time=1
#include <ATen/Parallel.h>
#include <benchmark/benchmark.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "core/batch.h"
#include "tests/benchmarks/bench_support.h"
#include "core/model.h"
#include "core/objective.h"
#include "core/render.h"

namespace featviz::core {
namespace {

using ::featviz::bench::Mnist;

// Steps before timing starts (allocator warm-up, first-call costs).
constexpr int kWarmupSteps = 3;
// Large enough that sessions do not finish inside one benchmark run; the
// loop recreates them (untimed) if they ever do.
constexpr int64_t kSessionSteps = 100000;

// Session j: one image, channel(conv2, j % 32), FFT, default transforms,
// seed j.
absl::StatusOr<std::vector<std::unique_ptr<RenderSession>>> NewSessions(
    const Model& model, int64_t jobs) {
  std::vector<std::unique_ptr<RenderSession>> sessions;
  for (int64_t j = 0; j < jobs; ++j) {
    RenderOptions options;
    options.param.kind = ParamKind::kFft;
    options.param.batch = 1;
    options.steps = kSessionSteps;
    options.seed = static_cast<uint64_t>(j);
    absl::StatusOr<std::unique_ptr<RenderSession>> s =
        RenderSession::Create(model, Channel("conv2", j % 32), options);
    if (!s.ok()) return s.status();
    sessions.push_back(*std::move(s));
  }
  return sessions;
}

std::vector<RenderSession*> Pointers(
    const std::vector<std::unique_ptr<RenderSession>>& sessions) {
  std::vector<RenderSession*> out;
  for (const auto& s : sessions) out.push_back(s.get());
  return out;
}

double MillisecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double, std::milli>(
             std::chrono::steady_clock::now() - start)
      .count();
}

// One step of every session: together, or each alone.
absl::Status StepAll(const Model& model,
                     const std::vector<RenderSession*>& sessions,
                     bool together) {
  if (together) return StepTogether(model, sessions);
  for (RenderSession* s : sessions) {
    absl::Status status = StepTogether(model, {s});
    if (!status.ok()) return status;
  }
  return absl::OkStatus();
}

void RunSteps(benchmark::State& state, bool together) {
  const int64_t jobs = state.range(0);
  const Model* model = Mnist();
  if (model == nullptr) {
    state.SkipWithError(("cannot load " + ::featviz::bench::MnistPath()).c_str());
    return;
  }
  auto sessions = NewSessions(*model, jobs);
  if (!sessions.ok()) {
    state.SkipWithError(sessions.status().ToString().c_str());
    return;
  }
  std::vector<RenderSession*> pointers = Pointers(*sessions);
  for (int i = 0; i < kWarmupSteps; ++i) {
    absl::Status s = StepAll(*model, pointers, together);
    if (!s.ok()) {
      state.SkipWithError(s.ToString().c_str());
      return;
    }
  }
  double step_ms = 0;
  for (auto _ : state) {
    if (pointers.front()->done()) {
      state.PauseTiming();
      sessions = NewSessions(*model, jobs);
      if (!sessions.ok()) {
        state.SkipWithError(sessions.status().ToString().c_str());
        break;
      }
      pointers = Pointers(*sessions);
      state.ResumeTiming();
    }
    const auto start = std::chrono::steady_clock::now();
    absl::Status s = StepAll(*model, pointers, together);
    step_ms += MillisecondsSince(start);
    if (!s.ok()) {
      state.SkipWithError(s.ToString().c_str());
      break;
    }
  }
  const double iterations = static_cast<double>(state.iterations());
  state.counters["images*steps"] =
      benchmark::Counter(iterations * jobs, benchmark::Counter::kIsRate);
  state.counters["ms_per_step"] =
      benchmark::Counter(step_ms, benchmark::Counter::kAvgIterations);
}

void BM_StepTogether(benchmark::State& state) { RunSteps(state, true); }
void BM_SequentialSteps(benchmark::State& state) { RunSteps(state, false); }

BENCHMARK(BM_StepTogether)
    ->RangeMultiplier(2)
    ->Range(1, 256)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(BM_SequentialSteps)
    ->RangeMultiplier(2)
    ->Range(1, 256)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// StepTogether (core/batch.cc) in its pieces, through RenderSession's public
// step API, each piece timed; plus the model alone on a leaf input.
void BM_StepPhases(benchmark::State& state) {
  const int64_t jobs = state.range(0);
  const Model* model = Mnist();
  if (model == nullptr) {
    state.SkipWithError(("cannot load " + ::featviz::bench::MnistPath()).c_str());
    return;
  }
  auto sessions = NewSessions(*model, jobs);
  if (!sessions.ok()) {
    state.SkipWithError(sessions.status().ToString().c_str());
    return;
  }
  const std::vector<std::string> layers = {"conv2"};
  enum Phase { kPrepare, kForward, kLoss, kBackward, kUpdate, kModel, kPhases };
  const char* const kNames[kPhases] = {"prepare_ms", "forward_ms",
                                       "loss_ms",    "backward_ms",
                                       "update_ms",  "model_fwd_bwd_ms"};
  double ms[kPhases] = {};
  at::Tensor leaf;
  for (auto _ : state) {
    if ((*sessions)[0]->done()) {
      state.PauseTiming();
      sessions = NewSessions(*model, jobs);
      state.ResumeTiming();
    }
    auto t = std::chrono::steady_clock::now();
    std::vector<at::Tensor> inputs;
    for (auto& s : *sessions) inputs.push_back(s->PrepareInput());
    at::Tensor stacked = at::cat(inputs);
    ms[kPrepare] += MillisecondsSince(t);

    t = std::chrono::steady_clock::now();
    absl::StatusOr<Taps> taps = model->Forward(stacked, layers);
    ms[kForward] += MillisecondsSince(t);
    if (!taps.ok()) {
      state.SkipWithError(taps.status().ToString().c_str());
      break;
    }

    t = std::chrono::steady_clock::now();
    at::Tensor total;
    for (int64_t j = 0; j < jobs; ++j) {
      absl::StatusOr<at::Tensor> loss = (*sessions)[j]->Loss(taps->Slice(j, 1));
      if (!loss.ok()) {
        state.SkipWithError(loss.status().ToString().c_str());
        return;
      }
      total = total.defined() ? total + *loss : *loss;
    }
    ms[kLoss] += MillisecondsSince(t);

    t = std::chrono::steady_clock::now();
    total.backward();
    ms[kBackward] += MillisecondsSince(t);

    t = std::chrono::steady_clock::now();
    for (auto& s : *sessions) s->Update();
    ms[kUpdate] += MillisecondsSince(t);

    // The model's share: the same forward and a loss of the same shape
    // (each image's channel mean) with backward to a leaf input.
    t = std::chrono::steady_clock::now();
    leaf = stacked.detach().requires_grad_();
    absl::StatusOr<Taps> alone = model->Forward(leaf, layers);
    if (!alone.ok()) break;
    alone->activations.at("conv2").mean({2, 3}).select(1, 0).sum().backward();
    ms[kModel] += MillisecondsSince(t);
  }
  for (int p = 0; p < kPhases; ++p) {
    state.counters[kNames[p]] =
        benchmark::Counter(ms[p], benchmark::Counter::kAvgIterations);
  }
}
BENCHMARK(BM_StepPhases)
    ->Arg(1)
    ->Arg(8)
    ->Arg(64)
    ->Arg(256)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

const bool kContextAdded = [] {
  benchmark::AddCustomContext("at::get_num_threads",
                              absl::StrCat(at::get_num_threads()));
  return true;
}();

}  // namespace
}  // namespace featviz::core
