#include "core/device.h"

#include <dlfcn.h>

#include <ATen/autocast_mode.h>
#include <gtest/gtest.h>

namespace featviz::core {
namespace {

TEST(Precision, ParsesItsNamesAndRejectsOthersNamingThem) {
  for (Precision p : {Precision::kFloat32, Precision::kTf32, Precision::kBf16}) {
    absl::StatusOr<Precision> parsed = ParsePrecision(PrecisionName(p));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, p);
  }
  absl::StatusOr<Precision> bad = ParsePrecision("fp16");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("'fp16'"), std::string::npos);
}

TEST(DefaultPrecision, ReadsTheCpusBf16FlagsFromCpuinfo) {
  constexpr char kSapphireRapids[] =
      "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 "
      "amx_bf16 amx_tile\n\nprocessor\t: 1\nflags\t\t: fpu avx512f\n";
  constexpr char kAmxOnly[] = "flags\t: fpu amx_bf16\n";
  constexpr char kZen3[] =
      "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\nbugs\t\t: "
      "avx512_bf16\n";  // A flag's name elsewhere is not a flag.
  EXPECT_TRUE(CpuInfoHasNativeBf16(kSapphireRapids));
  EXPECT_TRUE(CpuInfoHasNativeBf16(kAmxOnly));
  EXPECT_FALSE(CpuInfoHasNativeBf16(kZen3));
  EXPECT_FALSE(CpuInfoHasNativeBf16("flags\t: avx512_bf16x\n"));
  EXPECT_FALSE(CpuInfoHasNativeBf16(""));
}

TEST(DefaultPrecision, IsBf16OnlyWhereEveryDeviceComputesItNatively) {
  std::string why;
  PrecisionFacts cpu;
  cpu.cpu_native_bf16 = true;
  EXPECT_EQ(DefaultPrecision(cpu, &why), Precision::kBf16);
  EXPECT_NE(why.find("avx512_bf16"), std::string::npos) << why;
  cpu.cpu_native_bf16 = false;
  EXPECT_EQ(DefaultPrecision(cpu, &why), Precision::kFloat32);
  EXPECT_NE(why.find("emulated"), std::string::npos) << why;

  PrecisionFacts gpus;
  gpus.cpu_device = false;
  gpus.cuda_majors = {8, 9};
  EXPECT_EQ(DefaultPrecision(gpus, &why), Precision::kBf16);
  gpus.cuda_majors = {8, 7};  // A Volta beside an Ampere: fp32 for all.
  EXPECT_EQ(DefaultPrecision(gpus, &why), Precision::kFloat32);
  EXPECT_NE(why.find("7.x"), std::string::npos) << why;
  // A CPU worker without bf16 beside Ampere GPUs: fp32.
  gpus.cuda_majors = {8};
  gpus.cpu_device = true;
  EXPECT_EQ(DefaultPrecision(gpus, &why), Precision::kFloat32);

  // This machine's CPU, as the server resolves --precision auto.
  PrecisionFacts here = PrecisionFactsFor({c10::Device(c10::kCPU)});
  EXPECT_TRUE(here.cpu_device);
  EXPECT_TRUE(here.cuda_majors.empty());
}

TEST(PrecisionGuard, TurnsCpuAutocastOnForItsScopeOnly) {
  ASSERT_FALSE(at::autocast::is_cpu_enabled());
  {
    PrecisionGuard guard(Precision::kBf16, c10::Device(c10::kCPU));
    EXPECT_TRUE(at::autocast::is_cpu_enabled());
    at::Tensor y = at::mm(at::rand({4, 4}), at::rand({4, 4}));
    EXPECT_EQ(y.scalar_type(), at::kBFloat16);
  }
  EXPECT_FALSE(at::autocast::is_cpu_enabled());
  {
    PrecisionGuard guard(Precision::kFloat32, c10::Device(c10::kCPU));
    EXPECT_FALSE(at::autocast::is_cpu_enabled());
  }
}

TEST(MakeGenerator, SameSeedSameNumbersOnTheCpu) {
  absl::StatusOr<at::Generator> a = MakeGenerator(c10::Device(c10::kCPU), 3);
  absl::StatusOr<at::Generator> b = MakeGenerator(c10::Device(c10::kCPU), 3);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_TRUE(at::equal(at::randint(100, {64}, *a), at::randint(100, {64}, *b)));
}

TEST(MakeGenerator, RefusesCudaInABuildWithoutIt) {
  if (BuiltWithCuda()) GTEST_SKIP() << "this build links a CUDA LibTorch";
  absl::StatusOr<at::Generator> g = MakeGenerator(c10::Device("cuda:0"), 1);
  EXPECT_EQ(g.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CudaDeviceCount(), 0);
}

TEST(HostCopies, CpuTensorsComeBackContiguousInTheAskedType) {
  HostCopies copies;
  at::Tensor t = at::arange(12, at::kFloat).view({3, 4}).t();
  at::Tensor host = copies.Add(t, at::kDouble);
  copies.Wait();
  EXPECT_TRUE(host.is_contiguous());
  EXPECT_EQ(host.scalar_type(), at::kDouble);
  EXPECT_TRUE(at::equal(host, t.to(at::kDouble)));
}

// The server sets OpenBLAS's pool to its worker's threads: the count must
// take (and products stay right), and anything but a positive count, or a
// BLAS other than OpenBLAS, changes nothing.
TEST(SetOpenBlasThreads, SetsOpenBlassOwnPoolWhenThatIsTheBlas) {
  auto get = reinterpret_cast<int (*)()>(
      dlsym(RTLD_DEFAULT, "openblas_get_num_threads"));
  if (get == nullptr) {
    EXPECT_EQ(SetOpenBlasThreads(1), 0);
    GTEST_SKIP() << "LibTorch's BLAS here is not OpenBLAS";
  }
  const int before = get();
  const at::Tensor a = at::rand({300, 200});
  const at::Tensor b = at::rand({200, 100});
  const at::Tensor product = at::mm(a, b);
  EXPECT_EQ(SetOpenBlasThreads(1), 1);
  EXPECT_EQ(get(), 1);
  EXPECT_TRUE(at::allclose(at::mm(a, b), product));
  EXPECT_EQ(SetOpenBlasThreads(0), 0);
  EXPECT_EQ(SetOpenBlasThreads(-3), 0);
  EXPECT_EQ(get(), 1);
  EXPECT_EQ(SetOpenBlasThreads(before), before);
}

TEST(WorkerStream, IsANoOpOnTheCpu) {
  WorkerStream stream(c10::Device(c10::kCPU));
  stream.Synchronize();
}

}  // namespace
}  // namespace featviz::core
