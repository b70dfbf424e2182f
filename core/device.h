// Where and how a step runs: the job's random generator on its device, the
// numeric precision of the step, a worker's own CUDA stream, results copied
// back through pinned host memory, and releasing cached device memory.
//
// Everything here compiles against a CPU-only LibTorch (Debian's 1.13): the
// CUDA parts go through c10's device-generic interfaces, and the few calls
// that need the CUDA runtime are behind FEATVIZ_WITH_CUDA, which CMake
// defines when the LibTorch it found was built with CUDA.
#ifndef FEATVIZ_CORE_DEVICE_H_
#define FEATVIZ_CORE_DEVICE_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <c10/core/Stream.h>
#include <c10/core/StreamGuard.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace featviz::core {

// True when this build links a CUDA LibTorch (FEATVIZ_WITH_CUDA).
bool BuiltWithCuda();
// Visible CUDA devices; 0 on a CPU build or a machine without a GPU.
int64_t CudaDeviceCount();

// A random generator on `device` seeded with `seed`: the CPU's Mersenne
// twister, or a CUDA device's Philox generator. Same seed, same numbers on
// the same kind of device. InvalidArgument for a device this build cannot
// use.
absl::StatusOr<at::Generator> MakeGenerator(const c10::Device& device,
                                            uint64_t seed);

// The arithmetic of the step's forward and backward passes.
enum class Precision {
  kFloat32,  // IEEE float32 everywhere (the default; bitwise determinism).
  kTf32,     // CUDA: float32 storage, TF32 tensor-core matmuls and convs.
             // Process-wide (LibTorch's switch is global). No effect on CPU.
  kBf16,     // Autocast to bfloat16 (convolutions, matmuls) on CPU and CUDA;
             // parameters, optimiser and objective stay float32.
};

const char* PrecisionName(Precision precision);
// "fp32", "tf32" or "bf16"; InvalidArgument naming the value otherwise.
absl::StatusOr<Precision> ParsePrecision(absl::string_view text);

// What the default precision of a device depends on.
struct PrecisionFacts {
  // The CPU computes bfloat16 natively (AVX512-BF16 or AMX-BF16): oneDNN's
  // bf16 convolutions and matmuls are then faster than float32.
  bool cpu_native_bf16 = false;
  // Whether the CPU itself runs jobs (a "cpu" worker).
  bool cpu_device = true;
  // Each CUDA device's compute capability major (8 and above: Ampere's
  // bf16 tensor cores); empty on a CPU-only server.
  std::vector<int> cuda_majors;
};
// The facts of this machine for `devices` (the CPU's flags from
// /proc/cpuinfo; each CUDA device's properties in a CUDA build).
PrecisionFacts PrecisionFactsFor(const std::vector<c10::Device>& devices);
// Whether a /proc/cpuinfo text lists avx512_bf16 or amx_bf16 among the
// flags of its processors.
bool CpuInfoHasNativeBf16(absl::string_view cpuinfo);
// The default for a server's devices (featviz-server --precision auto),
// from the measurements in docs/performance.md and docs/quality.md: bf16
// where every device computes it natively (the CPU has AVX512-BF16 or AMX;
// every GPU is Ampere or newer), fp32 elsewhere (emulated bf16 is slower
// than fp32). `why` gets a sentence for the log.
Precision DefaultPrecision(const PrecisionFacts& facts, std::string* why);

// How a worker runs its batched steps.
struct StepOptions {
  Precision precision = Precision::kFloat32;
  // CUDA devices of a CUDA build: capture the batched step as a CUDA graph
  // and replay it while the batch keeps its composition. Ignored elsewhere.
  bool cuda_graphs = false;
  // Fault injection for tests: a step of more images than this fails as if
  // the device ran out of memory (a c10::OutOfMemoryError thrown where the
  // forward pass would allocate). 0: off.
  int64_t fail_above_images = 0;
  // Intra-op threads (at::set_num_threads) of the thread that runs the
  // steps, set by the server's worker when it starts; 0 leaves LibTorch's
  // default. See docs/performance.md for the measurement behind the
  // server's default.
  int intra_op_threads = 0;
  // Each step's forward pass ends at the deepest layer the objectives read
  // unless a term reads the model's outputs (Model::ForwardOutputs). Off:
  // every step runs the whole network, as a plain loop does (benchmarks
  // measure the difference; the images are the same bits either way).
  bool stop_at_deepest_tap = true;
};

// Turns on the process-wide TF32 switches when `precision` is kTf32 (and
// off otherwise). Call once, before workers start.
void ConfigureProcessPrecision(Precision precision);

// For the scope of one step on `device`: bf16 autocast when asked for. The
// autocast state is thread-local; the guard restores it and clears the
// autocast cast cache on exit.
class PrecisionGuard {
 public:
  PrecisionGuard(Precision precision, const c10::Device& device);
  ~PrecisionGuard();
  PrecisionGuard(const PrecisionGuard&) = delete;
  PrecisionGuard& operator=(const PrecisionGuard&) = delete;

 private:
  bool active_ = false;
  bool cuda_ = false;
  bool was_enabled_ = false;
  at::ScalarType old_dtype_ = at::kFloat;
};

// A worker thread's own stream on `device` for the guard's lifetime (a
// CUDA stream from LibTorch's pool, so that workers of different devices,
// and kernels of other threads, do not serialise on the default stream).
// On the CPU it does nothing. Waits for the device's default stream first,
// so models loaded there are ready.
class WorkerStream {
 public:
  explicit WorkerStream(const c10::Device& device);
  WorkerStream(const WorkerStream&) = delete;
  WorkerStream& operator=(const WorkerStream&) = delete;
  // Blocks until everything queued on the stream has run.
  void Synchronize() const;

 private:
  std::optional<c10::StreamGuard> guard_;
  std::optional<c10::Stream> stream_;
};

// Copies device tensors to the host for results and progress. On a CUDA
// device each copy goes into pinned memory without blocking, and Wait()
// synchronises the current stream once for all of them; on the CPU the
// tensors are only made contiguous. Read the host tensors after Wait().
class HostCopies {
 public:
  // A host tensor that will hold `tensor`'s values (as `dtype` when given).
  at::Tensor Add(const at::Tensor& tensor,
                 std::optional<at::ScalarType> dtype = std::nullopt);
  // Returns once every Add()ed copy has landed.
  void Wait();

 private:
  std::vector<c10::Device> pending_;
};

// Hands cached, unused memory back: on CUDA to the driver (the caching
// allocator keeps freed blocks otherwise), on the CPU to the kernel (what
// KeepFreedHostMemory keeps, malloc_trim): after a model is unloaded, when a
// worker goes idle, and before retrying a step that ran out of memory.
void ReleaseCachedMemory(const c10::Device& device);

// Makes glibc's malloc keep freed blocks of up to 32 MiB in the process
// instead of returning them to the kernel (mmap threshold at its maximum,
// no automatic trimming of the heap, one arena for all threads so that no
// thread's heap is unmapped when it empties). A CPU step allocates the same
// activations every step; by default each large one is a fresh mmap whose
// pages fault in again, which made a classic MNIST CNN's step 2.2x (16
// images) to 3.4x (64 images) slower on the machine it was measured on
// (docs/performance.md). Process-wide: call once at start, before threads.
// ReleaseCachedMemory(kCPU) returns what is kept. No-op without glibc.
void KeepFreedHostMemory();

// Sets the thread count of OpenBLAS's own pool, when the BLAS LibTorch
// loaded is OpenBLAS (found by its openblas_set_num_threads symbol), and
// returns the count it then reports; returns 0 and changes nothing with
// any other BLAS. Process-wide, and separate from LibTorch's intra-op
// threads (at::set_num_threads does not reach it): by default OpenBLAS
// starts one thread per core, which spin-wait beside a worker that runs on
// one thread and burn a core the server's other threads and neighbours
// could use (measured: 1.20 CPU seconds per wall second against 0.99 with
// one OpenBLAS thread; no throughput difference was resolved through the
// server, docs/performance.md).
int SetOpenBlasThreads(int threads);

// True for the status of a step that ran out of (device) memory.
inline bool IsOutOfMemory(const absl::Status& status) {
  return absl::IsResourceExhausted(status);
}

}  // namespace featviz::core

#endif  // FEATVIZ_CORE_DEVICE_H_
