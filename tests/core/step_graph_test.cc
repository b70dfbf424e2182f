#include "core/step_graph.h"

#include <gtest/gtest.h>

#include "core/render.h"
#include "tests/core/mnist_model.h"

namespace featviz::core {
namespace {

using ::featviz::testing::Mnist;

std::unique_ptr<RenderSession> Session(const std::string& objective,
                                       uint64_t seed, int64_t steps,
                                       int64_t batch = 1) {
  RenderOptions o;
  o.seed = seed;
  o.steps = steps;
  o.param.batch = batch;
  auto s = RenderSession::Create(Mnist(), Objective::Parse(objective).value(), o);
  EXPECT_TRUE(s.ok()) << s.status();
  return s.ok() ? *std::move(s) : nullptr;
}

// Runs one session to its end alone through `stepper`.
RenderResult Alone(BatchStepper& stepper, const std::string& objective,
                   uint64_t seed, int64_t steps, int64_t batch = 1) {
  auto s = Session(objective, seed, steps, batch);
  while (!s->done()) EXPECT_TRUE(stepper.Step({s.get()}).ok());
  absl::StatusOr<RenderResult> r = s->Finish();
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? *std::move(r) : RenderResult{};
}

// Where a graph needs a CUDA device, the stepper is StepTogether: the same
// images as a plain Render.
TEST(BatchStepper, WithoutACudaDeviceIsStepTogether) {
  StepOptions graphs;
  graphs.cuda_graphs = true;
  BatchStepper stepper(Mnist(), graphs);
  EXPECT_FALSE(stepper.graph_mode());
  RenderResult stepped = Alone(stepper, "channel(conv2, 3)", 4, 20);
  RenderOptions o;
  o.seed = 4;
  o.steps = 20;
  absl::StatusOr<RenderResult> plain =
      Render(Mnist(), Objective::Parse("channel(conv2, 3)").value(), o);
  ASSERT_TRUE(plain.ok());
  EXPECT_TRUE(at::equal(stepped.images, plain->images));
  EXPECT_EQ(stepper.captures(), 0);
}

// The graph path's static buffers, run eagerly: a job's images do not
// depend on who shares its batch, the trace is booked step by step, a new
// graph is due exactly when the batch's composition changes, and the
// pictures reach their objective.
TEST(BatchStepper, StaticBuffersKeepJobsBatchInvariantAndRecaptureOnChange) {
  BatchStepper alone_stepper(Mnist(), {}, /*static_buffers_without_graph=*/true);
  ASSERT_TRUE(alone_stepper.graph_mode());
  const RenderResult a_alone = Alone(alone_stepper, "prob(3)", 1, 30);
  const RenderResult b_alone = Alone(alone_stepper, "channel(conv2, 7)", 2, 20, 2);

  BatchStepper stepper(Mnist(), {}, /*static_buffers_without_graph=*/true);
  auto a = Session("prob(3)", 1, 30);
  auto b = Session("channel(conv2, 7)", 2, 20, 2);
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(stepper.Step({a.get()}).ok());
  // Warm-up step, then the capture, then replays.
  EXPECT_EQ(stepper.captures(), 1);
  while (!b->done()) ASSERT_TRUE(stepper.Step({a.get(), b.get()}).ok());
  EXPECT_EQ(stepper.captures(), 2);
  while (!a->done()) ASSERT_TRUE(stepper.Step({a.get()}).ok());
  EXPECT_EQ(stepper.captures(), 3);

  absl::StatusOr<RenderResult> a_batched = a->Finish();
  absl::StatusOr<RenderResult> b_batched = b->Finish();
  ASSERT_TRUE(a_batched.ok() && b_batched.ok());
  EXPECT_TRUE(at::equal(a_batched->images, a_alone.images));
  EXPECT_TRUE(at::equal(a_batched->trace, a_alone.trace));
  EXPECT_TRUE(at::equal(b_batched->images, b_alone.images));
  EXPECT_EQ(a_batched->trace.size(0), 30);
  // prob(3) climbs from chance.
  EXPECT_GT(a_batched->probs[0][3].item<double>(), 0.9);
  EXPECT_GT(a_batched->trace[29][0].item<double>(),
            a_batched->trace[0][0].item<double>());
}

// A job can move between the graph path and the plain step (as the worker
// does when a batch is split after running out of memory) and goes on
// optimising from where it was.
TEST(BatchStepper, JobsMoveBetweenGraphAndPlainSteps) {
  BatchStepper stepper(Mnist(), {}, /*static_buffers_without_graph=*/true);
  auto s = Session("logit(5)", 3, 40);
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(stepper.Step({s.get()}).ok());
  for (int i = 0; i < 10; ++i) {
    ASSERT_TRUE(stepper.StepWithoutGraph({s.get()}).ok());
  }
  while (!s->done()) ASSERT_TRUE(stepper.Step({s.get()}).ok());
  EXPECT_EQ(s->steps_done(), 40);
  absl::StatusOr<RenderResult> r = s->Finish();
  ASSERT_TRUE(r.ok());
  EXPECT_GT(r->trace[39][0].item<double>(), r->trace[0][0].item<double>() + 1);
  EXPECT_GT(r->probs[0][5].item<double>(), 0.9);
}

}  // namespace
}  // namespace featviz::core
