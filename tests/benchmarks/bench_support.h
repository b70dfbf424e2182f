// What the benchmarks share: the bundled MNIST classifier, loaded once, and
// which BLAS the process really uses, so every report says what it measured.
#ifndef FEATVIZ_TESTS_BENCHMARKS_BENCH_SUPPORT_H_
#define FEATVIZ_TESTS_BENCHMARKS_BENCH_SUPPORT_H_

#include <dlfcn.h>

#include <fstream>
#include <string>

#include <ATen/Parallel.h>
#include <benchmark/benchmark.h>

#include "absl/strings/str_cat.h"
#include "core/model.h"

namespace featviz::bench {

inline std::string MnistPath() {
  return std::string(FEATVIZ_MODELS_DIR) + "/mnist_classifier.pt";
}

// The bundled classifier, loaded on first use; null when it cannot be read.
inline const core::Model* Mnist() {
  static const core::Model* model = [] {
    absl::StatusOr<core::ModelPtr> m = core::Model::Load(MnistPath());
    return m.ok() ? m->release() : nullptr;
  }();
  return model;
}

// The file the dynamic loader resolved libblas.so.3 to (the alternatives
// link picks the reference BLAS or OpenBLAS).
inline std::string LoadedBlas() {
  std::ifstream maps("/proc/self/maps");
  std::string line;
  while (std::getline(maps, line)) {
    const size_t pos = line.find('/');
    if (pos != std::string::npos &&
        line.find("libblas.so", pos) != std::string::npos) {
      return line.substr(pos);
    }
  }
  return "not loaded";
}

// OpenBLAS's own thread count (OPENBLAS_NUM_THREADS, else OMP_NUM_THREADS,
// else the CPU count); "n/a" under the reference BLAS.
inline std::string OpenBlasThreads() {
  using GetThreads = int (*)();
  auto get = reinterpret_cast<GetThreads>(
      dlsym(RTLD_DEFAULT, "openblas_get_num_threads"));
  return get == nullptr ? "n/a" : absl::StrCat(get());
}

// Puts the intra-op thread count, the loaded BLAS and OpenBLAS's thread
// count into the report's header. Returns true, for a namespace-scope
// initialiser.
inline bool AddBlasContext() {
  benchmark::AddCustomContext("at::get_num_threads",
                              absl::StrCat(at::get_num_threads()));
  benchmark::AddCustomContext("libblas.so.3", LoadedBlas());
  benchmark::AddCustomContext("openblas_get_num_threads", OpenBlasThreads());
  return true;
}

}  // namespace featviz::bench

#endif  // FEATVIZ_TESTS_BENCHMARKS_BENCH_SUPPORT_H_
