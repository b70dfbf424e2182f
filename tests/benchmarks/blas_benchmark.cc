// Single-precision matrix multiply through at::mm, which LibTorch hands to
// whatever libblas.so.3 the alternatives link resolves to (reference BLAS or
// OpenBLAS). Prints GFLOP/s, asserts nothing; see docs/performance.md.
//
//   build/tests/benchmarks/blas_benchmark --benchmark_min_time=0.5
#include <cstdint>
#include <string>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <benchmark/benchmark.h>

#include "absl/strings/str_cat.h"
#include "tests/benchmarks/bench_support.h"

namespace featviz {
namespace {


// n x n times n x n, float32: 2 n^3 floating-point operations. The counter
// is a rate, printed as GFLOP/s.
void BM_Sgemm(benchmark::State& state) {
  const int64_t n = state.range(0);
  at::manual_seed(0);
  const at::Tensor a = at::randn({n, n});
  const at::Tensor b = at::randn({n, n});
  at::Tensor c = at::empty({n, n});
  at::mm_out(c, a, b);  // Warm-up: BLAS thread start, first-touch of c.
  for (auto _ : state) {
    at::mm_out(c, a, b);
    benchmark::DoNotOptimize(c.data_ptr<float>());
  }
  const double gflop = 2.0 * n * n * n * 1e-9;
  state.counters["GFLOP"] = benchmark::Counter(
      gflop * static_cast<double>(state.iterations()),
      benchmark::Counter::kIsRate);
}
BENCHMARK(BM_Sgemm)
    ->Arg(128)->Arg(512)->Arg(1024)->Unit(benchmark::kMillisecond)
    ->UseRealTime();

const bool kContextAdded = ::featviz::bench::AddBlasContext();

}  // namespace
}  // namespace featviz
