// Tests that need a CUDA device (ctest -L gpu). Each skips, saying why, in a
// CPU-only build or on a machine without a GPU, so they can stay in every
// test run and run for real wherever a GPU is present.
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <gtest/gtest.h>

#include <iostream>

#include "core/batch.h"
#include "core/device.h"
#include "core/render.h"
#include "core/step_graph.h"
#include "core/torch_status.h"
#include "tests/core/test_paths.h"

namespace featviz::core {
namespace {

#define FEATVIZ_NEED_GPU()                                                  \
  do {                                                                      \
    if (!BuiltWithCuda()) GTEST_SKIP() << "CPU-only LibTorch: no CUDA";     \
    if (CudaDeviceCount() == 0) GTEST_SKIP() << "no CUDA device visible";   \
  } while (0)

const Model& MnistOnGpu() {
  static const Model* model = [] {
    absl::StatusOr<ModelPtr> m =
        Model::Load(featviz::testing::MnistModel(), c10::Device("cuda:0"));
    EXPECT_TRUE(m.ok()) << m.status();
    return m.ok() ? m->release() : nullptr;
  }();
  return *model;
}

Objective EveryClass() {
  Objective all;
  for (int c = 0; c < 10; ++c) all = all + ForBatch(Prob(c), c);
  return all;
}

RenderOptions Classes(int64_t steps) {
  RenderOptions o;
  o.steps = steps;
  o.param.batch = 10;
  return o;
}

TEST(Gpu, ClassVisualisationsReachProbabilityPoint99) {
  FEATVIZ_NEED_GPU();
  WorkerStream stream(c10::Device("cuda:0"));
  absl::StatusOr<RenderResult> r = Render(MnistOnGpu(), EveryClass(), Classes(256));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->images.device().is_cpu());
  for (int c = 0; c < 10; ++c) {
    EXPECT_GE(r->probs[c][c].item<double>(), 0.99) << "class " << c;
  }
}

TEST(Gpu, Bf16AndTf32StillReachTheObjective) {
  FEATVIZ_NEED_GPU();
  for (Precision p : {Precision::kBf16, Precision::kTf32}) {
    ConfigureProcessPrecision(p);
    StepOptions options;
    options.precision = p;
    absl::StatusOr<RenderResult> r = Render(MnistOnGpu(), EveryClass(),
                                            Classes(256), nullptr, nullptr, options);
    ConfigureProcessPrecision(Precision::kFloat32);
    ASSERT_TRUE(r.ok()) << r.status();
    for (int c = 0; c < 10; ++c) {
      EXPECT_GE(r->probs[c][c].item<double>(), 0.99)
          << PrecisionName(p) << " class " << c;
    }
  }
}

TEST(Gpu, TransformScheduleIsDrawnOnTheDevice) {
  FEATVIZ_NEED_GPU();
  absl::StatusOr<at::Generator> a = MakeGenerator(c10::Device("cuda:0"), 7);
  absl::StatusOr<at::Generator> b = MakeGenerator(c10::Device("cuda:0"), 7);
  ASSERT_TRUE(a.ok() && b.ok()) << a.status();
  at::Tensor x = TransformMatrices(DefaultTransforms(28, 28), 64, 28, 28, *a);
  at::Tensor y = TransformMatrices(DefaultTransforms(28, 28), 64, 28, 28, *b);
  EXPECT_TRUE(x.is_cuda());
  EXPECT_TRUE(at::equal(x, y));
}

TEST(Gpu, WorkerStreamIsNotTheDefaultStream) {
  FEATVIZ_NEED_GPU();
  const c10::Device device("cuda:0");
  auto* impl = c10::impl::getDeviceGuardImpl(device.type());
  const c10::Stream before = impl->getStream(device);
  {
    WorkerStream stream(device);
    EXPECT_NE(impl->getStream(device), impl->getDefaultStream(device));
  }
  EXPECT_EQ(impl->getStream(device), before);
}

TEST(Gpu, ResultsComeBackThroughPinnedMemory) {
  FEATVIZ_NEED_GPU();
  at::Tensor t = at::rand({4, 3}, at::TensorOptions().device("cuda:0"));
  HostCopies copies;
  at::Tensor host = copies.Add(t, at::kDouble);
  copies.Wait();
  EXPECT_TRUE(host.is_pinned());
  EXPECT_TRUE(at::equal(host, t.to(at::kCPU, at::kDouble)));
}

TEST(Gpu, RealOutOfMemoryIsResourceExhausted) {
  FEATVIZ_NEED_GPU();
  absl::Status status;
  try {
    // 2^50 floats: more than any device holds.
    at::Tensor huge = at::empty({int64_t{1} << 50},
                                at::TensorOptions().device("cuda:0"));
    status = absl::OkStatus();
  } catch (const std::exception& e) {
    status = TorchError(e, "allocating");
  }
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted) << status;
  ReleaseCachedMemory(c10::Device("cuda:0"));
}

TEST(Gpu, CudaGraphStepsReachTheObjectiveAndRecaptureWhenTheBatchChanges) {
  FEATVIZ_NEED_GPU();
  WorkerStream stream(c10::Device("cuda:0"));
  StepOptions options;
  options.cuda_graphs = true;
  BatchStepper stepper(MnistOnGpu(), options);
  RenderOptions o = Classes(128);
  auto a = RenderSession::Create(MnistOnGpu(), EveryClass(), o);
  o.seed = 1;
  auto b = RenderSession::Create(MnistOnGpu(), EveryClass(), o);
  ASSERT_TRUE(a.ok() && b.ok());
  for (int step = 0; step < 64; ++step) {
    ASSERT_TRUE(stepper.Step({a->get()}).ok());
  }
  EXPECT_EQ(stepper.captures(), 1);
  while (!(*a)->done()) ASSERT_TRUE(stepper.Step({a->get(), b->get()}).ok());
  EXPECT_EQ(stepper.captures(), 2);
  while (!(*b)->done()) ASSERT_TRUE(stepper.Step({b->get()}).ok());
  EXPECT_EQ(stepper.captures(), 3);
  for (auto* s : {a->get(), b->get()}) {
    absl::StatusOr<RenderResult> r = s->Finish();
    ASSERT_TRUE(r.ok()) << r.status();
    for (int c = 0; c < 10; ++c) {
      EXPECT_GE(r->probs[c][c].item<double>(), 0.99) << "class " << c;
    }
  }
}

}  // namespace
}  // namespace featviz::core
