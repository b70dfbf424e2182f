#include "core/batch.h"

#include <gtest/gtest.h>

#include "tests/core/test_paths.h"

namespace featviz::core {
namespace {

const Model& Mnist() {
  static const Model* model = [] {
    absl::StatusOr<ModelPtr> m = Model::Load(featviz::testing::MnistModel());
    EXPECT_TRUE(m.ok()) << m.status();
    return m.ok() ? m->release() : nullptr;
  }();
  return *model;
}

struct JobSpec {
  std::string objective;
  RenderOptions options;
  int64_t joins_at = 0;  // Batched step at which the job joins the batch.
};

std::vector<JobSpec> MixedJobs() {
  std::vector<JobSpec> jobs(5);
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
  return jobs;
}

TEST(StepTogether, GivesEachJobTheImagesItGetsAlone) {
  std::vector<JobSpec> jobs = MixedJobs();
  std::vector<RenderResult> alone;
  for (const JobSpec& job : jobs) {
    absl::StatusOr<RenderResult> r =
        Render(Mnist(), Objective::Parse(job.objective).value(), job.options);
    ASSERT_TRUE(r.ok()) << job.objective << ": " << r.status();
    alone.push_back(*std::move(r));
  }

  std::vector<std::unique_ptr<RenderSession>> sessions;
  for (const JobSpec& job : jobs) {
    auto s = RenderSession::Create(
        Mnist(), Objective::Parse(job.objective).value(), job.options);
    ASSERT_TRUE(s.ok()) << s.status();
    sessions.push_back(*std::move(s));
  }
  // Jobs join late and leave when their own step count is done, so the
  // batch changes shape while every job runs.
  int64_t max_batch_seen = 0;
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
    max_batch_seen = std::max(max_batch_seen, images);
    ASSERT_TRUE(StepTogether(Mnist(), active).ok());
  }
  EXPECT_GE(max_batch_seen, 7);

  for (size_t i = 0; i < jobs.size(); ++i) {
    absl::StatusOr<RenderResult> together = sessions[i]->Finish();
    ASSERT_TRUE(together.ok()) << together.status();
    EXPECT_TRUE(at::equal(together->images, alone[i].images)) << jobs[i].objective;
    EXPECT_TRUE(at::equal(together->trace, alone[i].trace)) << jobs[i].objective;
    EXPECT_EQ(together->final_values, alone[i].final_values) << jobs[i].objective;
  }
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

}  // namespace
}  // namespace featviz::core
