#include "core/device.h"

#include <dlfcn.h>

#ifdef __GLIBC__
#include <malloc.h>
#endif

#include <limits>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/autocast_mode.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <torch/csrc/jit/passes/autocast.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "core/files.h"
#include "core/torch_status.h"

#ifdef FEATVIZ_WITH_CUDA
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDACachingAllocator.h>
#endif

namespace featviz::core {

bool BuiltWithCuda() {
#ifdef FEATVIZ_WITH_CUDA
  return true;
#else
  return false;
#endif
}

int64_t CudaDeviceCount() {
  if (!at::hasCUDA()) return 0;
  return static_cast<int64_t>(at::detail::getCUDAHooks().getNumGPUs());
}

absl::StatusOr<at::Generator> MakeGenerator(const c10::Device& device,
                                            uint64_t seed) {
  if (device.is_cpu()) {
    return at::make_generator<at::CPUGeneratorImpl>(seed);
  }
#ifdef FEATVIZ_WITH_CUDA
  if (device.is_cuda()) {
    try {
      at::Generator generator = at::cuda::detail::createCUDAGenerator(
          device.has_index() ? device.index() : 0);
      generator.set_current_seed(seed);
      return generator;
    } catch (const std::exception& e) {
      return TorchError(e, absl::StrCat("making a generator on ", device.str()));
    }
  }
#endif
  return absl::InvalidArgumentError(absl::StrCat(
      "no random generator for device ", device.str(), " in this build"));
}

const char* PrecisionName(Precision precision) {
  switch (precision) {
    case Precision::kFloat32:
      return "fp32";
    case Precision::kTf32:
      return "tf32";
    case Precision::kBf16:
      return "bf16";
  }
  return "?";
}

absl::StatusOr<Precision> ParsePrecision(absl::string_view text) {
  for (Precision p : {Precision::kFloat32, Precision::kTf32, Precision::kBf16}) {
    if (text == PrecisionName(p)) return p;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "precision must be fp32, tf32 or bf16, got '", text, "'"));
}

bool CpuInfoHasNativeBf16(absl::string_view cpuinfo) {
  for (absl::string_view line : absl::StrSplit(cpuinfo, '\n')) {
    // "flags\t\t: fpu vme ... avx512_bf16 ... amx_bf16 ..."
    if (!absl::StartsWith(line, "flags")) continue;
    const size_t colon = line.find(':');
    if (colon == absl::string_view::npos) continue;
    for (absl::string_view flag :
         absl::StrSplit(line.substr(colon + 1), ' ', absl::SkipEmpty())) {
      if (flag == "avx512_bf16" || flag == "amx_bf16") return true;
    }
  }
  return false;
}

PrecisionFacts PrecisionFactsFor(const std::vector<c10::Device>& devices) {
  PrecisionFacts facts;
  facts.cpu_device = false;
  if (absl::StatusOr<std::string> text = ReadFile("/proc/cpuinfo"); text.ok()) {
    facts.cpu_native_bf16 = CpuInfoHasNativeBf16(*text);
  }
  for (const c10::Device& device : devices) {
    if (!device.is_cuda()) {
      facts.cpu_device = true;
      continue;
    }
#ifdef FEATVIZ_WITH_CUDA
    facts.cuda_majors.push_back(
        at::cuda::getDeviceProperties(device.index())->major);
#else
    facts.cuda_majors.push_back(0);  // Unreachable: no CUDA device here.
#endif
  }
  return facts;
}

Precision DefaultPrecision(const PrecisionFacts& facts, std::string* why) {
  if (facts.cpu_device && !facts.cpu_native_bf16) {
    *why = "the CPU has neither avx512_bf16 nor amx_bf16 (bf16 would be "
           "emulated, slower than fp32)";
    return Precision::kFloat32;
  }
  for (int major : facts.cuda_majors) {
    if (major < 8) {
      *why = absl::StrCat(
          "a GPU of compute capability ", major,
          ".x has no bf16 tensor cores (Ampere, 8.0, is the first)");
      return Precision::kFloat32;
    }
  }
  if (facts.cuda_majors.empty()) {
    *why = "the CPU computes bf16 natively (avx512_bf16 or amx_bf16)";
  } else if (facts.cpu_device) {
    *why = "the CPU computes bf16 natively and every GPU has bf16 tensor "
           "cores (compute capability 8.0 or more)";
  } else {
    *why = "every GPU has bf16 tensor cores (compute capability 8.0 or more)";
  }
  return Precision::kBf16;
}

void ConfigureProcessPrecision(Precision precision) {
  const bool tf32 = precision == Precision::kTf32;
  at::globalContext().setAllowTF32CuBLAS(tf32);
  at::globalContext().setAllowTF32CuDNN(tf32);
}

PrecisionGuard::PrecisionGuard(Precision precision, const c10::Device& device) {
  if (precision != Precision::kBf16) return;
  // TorchScript's own autocast pass would rewrite a tapped graph whose
  // first run happens under autocast, and then bypass eager autocast: in
  // LibTorch 1.13 that leaves convolutions with bf16 inputs and float
  // biases. The graphs run unoptimised anyway; eager autocast (the
  // dispatcher's) casts each op the same way on every run.
  static const bool jit_autocast_off = [] {
    torch::jit::setAutocastMode(false);
    return true;
  }();
  (void)jit_autocast_off;
  active_ = true;
  cuda_ = device.is_cuda();
  if (cuda_) {
    was_enabled_ = at::autocast::is_enabled();
    old_dtype_ = at::autocast::get_autocast_gpu_dtype();
    at::autocast::set_autocast_gpu_dtype(at::kBFloat16);
    at::autocast::set_enabled(true);
  } else {
    was_enabled_ = at::autocast::is_cpu_enabled();
    old_dtype_ = at::autocast::get_autocast_cpu_dtype();
    at::autocast::set_autocast_cpu_dtype(at::kBFloat16);
    at::autocast::set_cpu_enabled(true);
  }
  at::autocast::increment_nesting();
}

PrecisionGuard::~PrecisionGuard() {
  if (!active_) return;
  // As torch.autocast's __exit__: the cast cache lives until the outermost
  // autocast region ends.
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
  if (cuda_) {
    at::autocast::set_enabled(was_enabled_);
    at::autocast::set_autocast_gpu_dtype(old_dtype_);
  } else {
    at::autocast::set_cpu_enabled(was_enabled_);
    at::autocast::set_autocast_cpu_dtype(old_dtype_);
  }
}

WorkerStream::WorkerStream(const c10::Device& device) {
  if (!device.is_cuda()) return;
  const c10::impl::DeviceGuardImplInterface* impl =
      c10::impl::getDeviceGuardImpl(device.type());
  c10::Device indexed = device;
  if (!indexed.has_index()) indexed.set_index(0);
  impl->getDefaultStream(indexed).synchronize();
  stream_ = impl->getStreamFromGlobalPool(indexed, /*isHighPriority=*/false);
  guard_.emplace(*stream_);
}

void WorkerStream::Synchronize() const {
  if (stream_.has_value()) stream_->synchronize();
}

at::Tensor HostCopies::Add(const at::Tensor& tensor,
                           std::optional<at::ScalarType> dtype) {
  const at::ScalarType type = dtype.value_or(tensor.scalar_type());
  if (!tensor.is_cuda()) {
    return tensor.to(at::kCPU, type).contiguous();
  }
  // Cast on the device, then one asynchronous copy into page-locked memory:
  // the copy engine moves it without staging through a pageable buffer.
  at::Tensor source = tensor.to(type).contiguous();
  at::Tensor host = at::empty(
      source.sizes(),
      at::TensorOptions().dtype(type).device(at::kCPU).pinned_memory(true));
  host.copy_(source, /*non_blocking=*/true);
  pending_.push_back(tensor.device());
  return host;
}

void HostCopies::Wait() {
  for (const c10::Device& device : pending_) {
    c10::impl::getDeviceGuardImpl(device.type())->getStream(device).synchronize();
  }
  pending_.clear();
}

void ReleaseCachedMemory(const c10::Device& device) {
#ifdef FEATVIZ_WITH_CUDA
  if (device.is_cuda()) c10::cuda::CUDACachingAllocator::emptyCache();
#endif
#ifdef __GLIBC__
  if (device.is_cpu()) malloc_trim(0);
#endif
  (void)device;
}

void KeepFreedHostMemory() {
#ifdef __GLIBC__
  // 32 MiB is glibc's largest mmap threshold on 64-bit systems; above it
  // blocks are mapped and unmapped as before.
  mallopt(M_MMAP_THRESHOLD, 32 * 1024 * 1024);
  mallopt(M_TRIM_THRESHOLD, std::numeric_limits<int>::max());
  // One arena for every thread. A thread's own arena lives in mmap'd heaps,
  // and glibc unmaps such a heap whenever it becomes entirely free, whatever
  // the trim threshold: a worker whose step frees everything it allocated
  // then faults all of its pages in again next step. Whether that happens
  // depended on where the longer-lived blocks had landed, so featviz-server
  // ran 64 one-image clients of the classic MNIST CNN either at ~1,400
  // images*steps/s or, with ~45,000 page faults per second in the worker,
  // at ~600. The main arena is never unmapped, only trimmed.
  mallopt(M_ARENA_MAX, 1);
#endif
}

int SetOpenBlasThreads(int threads) {
  using SetThreads = void (*)(int);
  using GetThreads = int (*)();
  auto set = reinterpret_cast<SetThreads>(
      dlsym(RTLD_DEFAULT, "openblas_set_num_threads"));
  auto get = reinterpret_cast<GetThreads>(
      dlsym(RTLD_DEFAULT, "openblas_get_num_threads"));
  if (set == nullptr || get == nullptr || threads < 1) return 0;
  set(threads);
  return get();
}

}  // namespace featviz::core
