#include "core/batch.h"

#include <algorithm>
#include <cmath>
#include <iostream>

#include <gtest/gtest.h>

#include "core/render.h"
#include "tests/core/mnist_model.h"

namespace featviz::core {
namespace {

using ::featviz::testing::Mnist;

struct JobSpec {
  std::string objective;
  RenderOptions options;
  int64_t joins_at = 0;  // Batched step at which the job joins the batch.
};

std::vector<JobSpec> MixedJobs() {
  std::vector<JobSpec> jobs(8);
  jobs[0].objective = "channel(conv2, 5)";
  jobs[0].options.seed = 1;
  jobs[0].options.steps = 40;
  jobs[1].objective = "logit(3) - 0.01 * tv()";
  jobs[1].options.seed = 2;
  jobs[1].options.lr = 0.02;
  jobs[1].options.steps = 25;
  jobs[1].options.param.kind = ParamKind::kPixel;
  jobs[1].options.transforms = TransformList{};
  jobs[2].objective = "neuron(fc1, 7) + 0.5 * diversity(conv1)";
  jobs[2].options.seed = 3;
  jobs[2].options.lr = 0.08;
  jobs[2].options.steps = 60;
  jobs[2].options.param.batch = 3;
  jobs[3].objective = "prob(9)";
  jobs[3].options.seed = 4;
  jobs[3].options.steps = 30;
  jobs[3].joins_at = 10;
  jobs[4].objective = "layer(conv1) + channel(conv2, 1, batch=1)";
  jobs[4].options.seed = 5;
  jobs[4].options.steps = 15;
  jobs[4].options.param.batch = 2;
  jobs[4].options.param.height = 40;
  jobs[4].options.param.width = 40;
  jobs[4].joins_at = 33;
  // Only common terms (evaluated for all sessions at once), several images.
  jobs[5].objective =
      "neuron(conv2, 3, x=1, y=2) + 2 * logit(7, batch=1) - 0.5 * prob(2) + neuron(fc1, 9)";
  jobs[5].options.seed = 6;
  jobs[5].options.steps = 20;
  jobs[5].options.param.batch = 2;
  jobs[5].joins_at = 5;
  // Two MaCo jobs holding the same magnitude tensor: they share a pack (and
  // one parameterisation call), yet each keeps its own transparency map.
  static const at::Tensor magnitude = DefaultMacoMagnitude(1, 28, 28);
  jobs[6].objective = "logit(2)";
  jobs[6].options.seed = 7;
  jobs[6].options.steps = 35;
  jobs[6].options.param.kind = ParamKind::kMaco;
  jobs[6].options.param.magnitude = magnitude;
  jobs[6].options.param.batch = 2;
  jobs[7].objective = "channel(conv2, 4) - 0.01 * tv()";
  jobs[7].options.seed = 8;
  jobs[7].options.steps = 20;
  jobs[7].options.param.kind = ParamKind::kMaco;
  jobs[7].options.param.magnitude = magnitude;
  jobs[7].joins_at = 12;
  return jobs;
}

// Each of `jobs` rendered alone, then all of them stepped together: a job
// joins at its joins_at step and leaves when its own step count is done, so
// the batch changes shape while every job runs. Stepped through `cache` (as
// a worker's BatchStepper steps) when given.
struct AloneAndTogether {
  std::vector<RenderResult> alone, together;
  int64_t max_batch_seen = 0;  // The most images one step held.
  int64_t compositions = 0;    // How often the batch's jobs changed.
};

void RenderAloneAndTogether(const std::vector<JobSpec>& jobs,
                            AloneAndTogether& out,
                            StepCache* cache = nullptr,
                            const StepOptions& step_options = {}) {
  for (const JobSpec& job : jobs) {
    absl::StatusOr<RenderResult> r =
        Render(Mnist(), Objective::Parse(job.objective).value(), job.options,
               nullptr, nullptr, step_options);
    ASSERT_TRUE(r.ok()) << job.objective << ": " << r.status();
    out.alone.push_back(*std::move(r));
  }
  std::vector<std::unique_ptr<RenderSession>> sessions;
  for (const JobSpec& job : jobs) {
    auto s = RenderSession::Create(
        Mnist(), Objective::Parse(job.objective).value(), job.options);
    ASSERT_TRUE(s.ok()) << s.status();
    sessions.push_back(*std::move(s));
  }
  std::vector<RenderSession*> previous;
  for (int64_t step = 0;; ++step) {
    std::vector<RenderSession*> active;
    int64_t images = 0;
    for (size_t i = 0; i < jobs.size(); ++i) {
      if (step >= jobs[i].joins_at && !sessions[i]->done()) {
        active.push_back(sessions[i].get());
        images += sessions[i]->batch();
      }
    }
    const bool any_left = std::any_of(sessions.begin(), sessions.end(),
                                      [](const auto& s) { return !s->done(); });
    if (!any_left) break;
    out.max_batch_seen = std::max(out.max_batch_seen, images);
    if (active != previous) ++out.compositions;
    previous = active;
    ASSERT_TRUE(StepTogether(Mnist(), active, step_options, cache).ok());
  }
  for (size_t i = 0; i < jobs.size(); ++i) {
    absl::StatusOr<RenderResult> together = sessions[i]->Finish();
    ASSERT_TRUE(together.ok()) << together.status();
    out.together.push_back(*std::move(together));
  }
}

void ExpectSameAsAlone(const std::vector<JobSpec>& jobs,
                       const AloneAndTogether& r) {
  for (size_t i = 0; i < jobs.size(); ++i) {
    EXPECT_TRUE(at::equal(r.together[i].images, r.alone[i].images)) << jobs[i].objective;
    EXPECT_TRUE(at::equal(r.together[i].trace, r.alone[i].trace)) << jobs[i].objective;
    EXPECT_EQ(r.together[i].final_values, r.alone[i].final_values) << jobs[i].objective;
    EXPECT_EQ(r.together[i].transparency.defined(),
              jobs[i].options.param.kind == ParamKind::kMaco);
    if (r.together[i].transparency.defined()) {
      EXPECT_TRUE(at::equal(r.together[i].transparency, r.alone[i].transparency))
          << jobs[i].objective;
    }
  }
}

TEST(StepTogether, GivesEachJobTheImagesItGetsAlone) {
  const std::vector<JobSpec> jobs = MixedJobs();
  AloneAndTogether r;
  ASSERT_NO_FATAL_FAILURE(RenderAloneAndTogether(jobs, r));
  EXPECT_GE(r.max_batch_seen, 7);
  ExpectSameAsAlone(jobs, r);
}

// As a worker steps them: the gathers' indices and the trace rows are kept
// from step to step and built again only when a job joins or leaves, and
// every job still gets exactly the images and trace of a render alone.
TEST(StepTogether, WithACacheBuildsOnePlanPerCompositionAndChangesNothing) {
  const std::vector<JobSpec> jobs = MixedJobs();
  AloneAndTogether r;
  StepCache cache;
  ASSERT_NO_FATAL_FAILURE(RenderAloneAndTogether(jobs, r, &cache));
  EXPECT_GE(r.compositions, 6);
  EXPECT_EQ(cache.plans_built(), r.compositions);
  ExpectSameAsAlone(jobs, r);
}

// A plan covers at most 256 steps: a longer job goes through several, and
// its images and trace are those of a job stepped without any cache.
TEST(StepTogether, AJobLongerThanAPlanIsUnchangedAcrossPlans) {
  RenderOptions options;
  options.steps = 600;
  options.seed = 21;
  options.param.batch = 2;
  auto cached = RenderSession::Create(Mnist(), Logit(4), options);
  auto uncached = RenderSession::Create(Mnist(), Logit(4), options);
  ASSERT_TRUE(cached.ok() && uncached.ok());
  StepCache cache;
  while (!(*cached)->done()) {
    ASSERT_TRUE(StepTogether(Mnist(), {cached->get()}, {}, &cache).ok());
    ASSERT_TRUE(StepTogether(Mnist(), {uncached->get()}).ok());
  }
  EXPECT_EQ(cache.plans_built(), 3);
  absl::StatusOr<RenderResult> a = (*cached)->Finish();
  absl::StatusOr<RenderResult> b = (*uncached)->Finish();
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_TRUE(at::equal(a->images, b->images));
  ASSERT_EQ(a->trace.size(0), 600);
  EXPECT_TRUE(at::equal(a->trace, b->trace));
}

TEST(StepTogether, RejectsFinishedSessions) {
  RenderOptions o;
  o.steps = 1;
  auto s = RenderSession::Create(Mnist(), Prob(1), o);
  ASSERT_TRUE(s.ok());
  ASSERT_TRUE(StepTogether(Mnist(), {s->get()}).ok());
  EXPECT_EQ(StepTogether(Mnist(), {s->get()}).code(),
            absl::StatusCode::kFailedPrecondition);
}

std::vector<std::unique_ptr<RenderSession>> Sessions(
    const std::vector<JobSpec>& jobs) {
  std::vector<std::unique_ptr<RenderSession>> sessions;
  for (const JobSpec& job : jobs) {
    auto s = RenderSession::Create(
        Mnist(), Objective::Parse(job.objective).value(), job.options);
    EXPECT_TRUE(s.ok()) << s.status();
    if (s.ok()) sessions.push_back(*std::move(s));
  }
  return sessions;
}

// The worker's recovery from running out of device memory: the failed step
// advanced nobody and left no gradient behind, so retrying it in halves
// gives every job exactly the images of an undisturbed run.
TEST(StepTogether, OutOfMemoryAdvancesNobodyAndARetryInHalvesChangesNothing) {
  std::vector<JobSpec> jobs(3);
  for (size_t i = 0; i < jobs.size(); ++i) {
    jobs[i].objective = i == 1 ? "channel(conv2, 4)" : "logit(2) - 0.01 * tv()";
    jobs[i].options.seed = 10 + i;
    jobs[i].options.steps = 12;
  }
  jobs[2].options.param.batch = 2;

  auto reference = Sessions(jobs);
  ASSERT_EQ(reference.size(), jobs.size());
  std::vector<RenderSession*> all_reference;
  for (auto& s : reference) all_reference.push_back(s.get());
  StepCache reference_cache;
  for (int step = 0; step < 12; ++step) {
    ASSERT_TRUE(
        StepTogether(Mnist(), all_reference, {}, &reference_cache).ok());
  }

  auto sessions = Sessions(jobs);
  ASSERT_EQ(sessions.size(), jobs.size());
  std::vector<RenderSession*> all;
  for (auto& s : sessions) all.push_back(s.get());
  StepOptions tight;
  tight.fail_above_images = 3;  // The three jobs hold 4 images.
  // As a worker steps: its cache sees the batch split and put back.
  StepCache cache;
  for (int step = 0; step < 12; ++step) {
    // Every other step first fails whole, after some steps have gradients.
    if (step % 2 == 0) {
      const absl::Status full = StepTogether(Mnist(), all, tight, &cache);
      ASSERT_EQ(full.code(), absl::StatusCode::kResourceExhausted) << full;
      EXPECT_TRUE(IsOutOfMemory(full));
      EXPECT_NE(full.message().find("out of memory"), std::string::npos);
      for (const auto& s : sessions) EXPECT_EQ(s->steps_done(), step);
    }
    ASSERT_TRUE(StepTogether(Mnist(), {all[0], all[1]}, tight, &cache).ok());
    ASSERT_TRUE(StepTogether(Mnist(), {all[2]}, tight, &cache).ok());
  }
  for (size_t i = 0; i < jobs.size(); ++i) {
    absl::StatusOr<RenderResult> split = sessions[i]->Finish();
    absl::StatusOr<RenderResult> whole = reference[i]->Finish();
    ASSERT_TRUE(split.ok() && whole.ok());
    EXPECT_TRUE(at::equal(split->images, whole->images)) << jobs[i].objective;
    EXPECT_TRUE(at::equal(split->trace, whole->trace)) << jobs[i].objective;
  }
}

// Each image's logits, tapped activations and input gradient have the same
// bits whether it passes through the model alone or at any position of a
// batch, in the batch-invariant linear modes.
TEST(LinearModes, InvariantBlockedAndRowwiseGiveEveryImageTheSameBitsInAnyBatch) {
  const LinearMode before = GetLinearMode();
  at::manual_seed(7);
  const at::Tensor x = at::rand({19, 1, 28, 28});
  const at::Tensor g = at::randn({19, 10});
  // Logits, fc1 and the input gradient of sum(logits * g) for images
  // [first, first + n) as one batch.
  auto run = [&](int64_t first, int64_t n) {
    at::Tensor in = x.narrow(0, first, n).clone().requires_grad_();
    absl::StatusOr<Taps> taps = Mnist().Forward(in, {"fc1"});
    EXPECT_TRUE(taps.ok()) << taps.status();
    (taps->logits * g.narrow(0, first, n)).sum().backward();
    return std::vector<at::Tensor>{taps->logits.detach(),
                                   taps->activations.at("fc1").detach(),
                                   in.grad()};
  };
  for (LinearMode mode : {LinearMode::kInvariant, LinearMode::kBlocked,
                          LinearMode::kRowwise}) {
    SetLinearMode(mode);
    std::vector<std::vector<at::Tensor>> alone;
    for (int64_t i = 0; i < 19; ++i) alone.push_back(run(i, 1));
    for (auto [first, n] : std::vector<std::pair<int64_t, int64_t>>{
             {0, 19}, {3, 16}, {5, 9}, {10, 8}, {2, 3}}) {
      std::vector<at::Tensor> batch = run(first, n);
      for (int64_t r = 0; r < n; ++r) {
        for (size_t k = 0; k < batch.size(); ++k) {
          EXPECT_TRUE(at::equal(batch[k][r], alone[first + r][k][0]))
              << LinearModeName(mode) << ": image " << first + r
              << " at position " << r << " of " << n << ", output " << k;
        }
      }
    }
  }
  SetLinearMode(before);
}

// Without the batch-invariant linear layers (featviz-server --linear_mode=
// plain), a job's images batched differ from its images alone only by float
// rounding carried through the optimisation: the documented tolerance
// (docs/performance.md) is 1e-3 on pixels in [0, 1] and 1e-3 relative on the
// objective's final values, for the mixed jobs of the bitwise test (up to 60
// steps, joining and leaving a batch of up to 9 images).
TEST(LinearModes, PlainKeepsBatchedResultsWithinTheDocumentedTolerance) {
  const LinearMode before = GetLinearMode();
  SetLinearMode(LinearMode::kPlain);
  const std::vector<JobSpec> jobs = MixedJobs();
  AloneAndTogether r;
  RenderAloneAndTogether(jobs, r);
  SetLinearMode(before);
  ASSERT_FALSE(HasFatalFailure());
  double worst_pixel = 0;
  double worst_value = 0;
  bool any_differs = false;
  for (size_t i = 0; i < jobs.size(); ++i) {
    const RenderResult& alone = r.alone[i];
    const RenderResult& together = r.together[i];
    const double pixel =
        (together.images - alone.images).abs().max().item<double>();
    worst_pixel = std::max(worst_pixel, pixel);
    any_differs = any_differs || pixel > 0;
    EXPECT_LE(pixel, 1e-3) << jobs[i].objective;
    for (size_t t = 0; t < alone.final_values.size(); ++t) {
      const double a = alone.final_values[t];
      const double b = together.final_values[t];
      const double relative = std::abs(a - b) / std::max(1.0, std::abs(a));
      worst_value = std::max(worst_value, relative);
      EXPECT_LE(relative, 1e-3) << jobs[i].objective << " term " << t;
    }
  }
  std::cout << "plain linear mode, batched vs alone: max pixel difference "
            << worst_pixel << ", max relative final-value difference "
            << worst_value << (any_differs ? "" : " (bitwise equal)") << "\n";
}

// bf16 autocast changes the arithmetic of the step, and the class pictures
// still reach their objective (measured in float32 at the end).
// A request may ask for bf16 (RenderRequest.precision): its jobs batch with
// other bf16 jobs, and still get the bits they get alone.
TEST(StepTogether, Bf16JobsGetTheImagesTheyGetAlone) {
  const std::vector<JobSpec> jobs = MixedJobs();
  StepOptions bf16;
  bf16.precision = Precision::kBf16;
  AloneAndTogether r;
  ASSERT_NO_FATAL_FAILURE(RenderAloneAndTogether(jobs, r, nullptr, bf16));
  EXPECT_GE(r.max_batch_seen, 7);
  ExpectSameAsAlone(jobs, r);
}

TEST(StepTogether, Bf16AutocastStillReachesEveryClassObjective) {
  Objective all;
  for (int c = 0; c < 10; ++c) all = all + ForBatch(Prob(c), c);
  RenderOptions o;
  o.steps = 256;
  o.param.batch = 10;
  StepOptions bf16;
  bf16.precision = Precision::kBf16;
  absl::StatusOr<RenderResult> r = Render(Mnist(), all, o, nullptr, nullptr, bf16);
  ASSERT_TRUE(r.ok()) << r.status();
  absl::StatusOr<RenderResult> fp32 = Render(Mnist(), all, o);
  ASSERT_TRUE(fp32.ok()) << fp32.status();
  EXPECT_FALSE(at::equal(r->images, fp32->images))
      << "autocast left the step in float32";
  std::cout << "bf16 autocast, softmax of each class visualisation:";
  for (int c = 0; c < 10; ++c) {
    EXPECT_GE(r->probs[c][c].item<double>(), 0.99) << "class " << c;
    std::cout << " " << r->probs[c][c].item<double>();
  }
  std::cout << "\n";
}

}  // namespace
}  // namespace featviz::core
