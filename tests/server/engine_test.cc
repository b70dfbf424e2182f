// The job engine in process, no gRPC, no protobuf and no child process: a
// JobManager and a Worker on the bundled MNIST classifier. Every wait is for an event the
// engine itself sends (a progress event or the final call), so the tests
// hold however fast or loaded the machine is.
#include <cstdint>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/match.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "core/model.h"
#include "core/objective.h"
#include "server/engine/engine_types.h"
#include "server/engine/job_manager.h"
#include "server/engine/model_registry.h"
#include "server/engine/worker.h"
#include "tests/core/test_paths.h"

namespace featviz::server {
namespace {

using ::featviz::testing::MnistModel;

// Hears one job: the latest step reported and the final call.
class Recorder : public JobWatcher {
 public:
  void OnProgress(const JobProgress& progress) override {
    absl::MutexLock lock(&mu_);
    step_ = progress.step;
  }
  void OnFinished(const absl::Status& status, JobResultPtr result) override {
    absl::MutexLock lock(&mu_);
    ++finished_;
    status_ = status;
    result_ = std::move(result);
  }

  // Blocks until the job has reported step `step` or has ended; the step
  // then reported.
  int64_t WaitForStep(int64_t step) {
    absl::MutexLock lock(&mu_);
    wanted_ = step;
    mu_.Await(absl::Condition(this, &Recorder::Reached));
    return step_;
  }
  // Blocks until the final call; its status.
  absl::Status WaitForEnd() {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(this, &Recorder::Finished));
    return status_;
  }
  int finished() {
    absl::MutexLock lock(&mu_);
    return finished_;
  }
  JobResultPtr result() {
    absl::MutexLock lock(&mu_);
    return result_;
  }

 private:
  bool Finished() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return finished_ > 0;
  }
  bool Reached() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return step_ >= wanted_ || finished_ > 0;
  }

  mutable absl::Mutex mu_;
  int64_t step_ ABSL_GUARDED_BY(mu_) = 0;
  int finished_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Status status_ ABSL_GUARDED_BY(mu_);
  JobResultPtr result_ ABSL_GUARDED_BY(mu_);
  int64_t wanted_ ABSL_GUARDED_BY(mu_) = 0;
};

class EngineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<core::ModelPtr> model = core::Model::Load(MnistModel());
    ASSERT_TRUE(model.ok()) << model.status();
    std::vector<core::ModelPtr> models;
    models.push_back(*std::move(model));
    absl::StatusOr<ModelRegistryPtr> registry =
        ModelRegistry::FromModels(std::move(models));
    ASSERT_TRUE(registry.ok()) << registry.status();
    registry_ = *std::move(registry);
    jobs_ = std::make_unique<JobManager>(JobManagerOptions{});
  }

  void TearDown() override {
    if (worker_ != nullptr) worker_->Stop();
  }

  void StartWorker(int64_t max_batch_images) {
    WorkerOptions options;
    options.max_batch_images = max_batch_images;
    absl::StatusOr<WorkerPtr> worker =
        Worker::Create(0, registry_.get(), jobs_.get(), options);
    ASSERT_TRUE(worker.ok()) << worker.status();
    worker_ = *std::move(worker);
  }

  // A job rendering `objective` on the MNIST classifier with `batch` images
  // and `steps` steps, a progress event every step: the plan the edge
  // (PlanRender) would make, built here without a request.
  RenderPlan Plan(const std::string& objective, int64_t batch, int64_t steps) {
    RenderPlan plan;
    absl::StatusOr<std::shared_ptr<const ModelSummary>> model =
        registry_->Summary("mnist_classifier");
    EXPECT_TRUE(model.ok()) << model.status();
    if (!model.ok()) return plan;
    plan.model_ref = *model;
    plan.model = model->get();
    plan.model_name = (*model)->card.name;
    plan.model_version = (*model)->card.version;
    plan.model_hash = (*model)->content_hash;
    absl::StatusOr<core::Objective> parsed = core::Objective::Parse(objective);
    EXPECT_TRUE(parsed.ok()) << parsed.status();
    if (parsed.ok()) plan.objective = *std::move(parsed);
    plan.options.steps = steps;
    plan.options.param.batch = batch;
    plan.options.progress_every = 1;
    return plan;
  }

  JobRecordPtr Submit(RenderPlan plan, std::shared_ptr<Recorder> recorder) {
    absl::StatusOr<JobRecordPtr> job =
        jobs_->Submit(std::move(plan), "", "tester", std::move(recorder));
    EXPECT_TRUE(job.ok()) << job.status();
    return job.ok() ? *job : nullptr;
  }

  JobState State(const JobRecord& job) { return jobs_->Snapshot(job).state; }

  ModelRegistryPtr registry_;
  JobManagerPtr jobs_;
  WorkerPtr worker_;
};

TEST_F(EngineTest, QueuedJobsCarryTheirImageCountUnderReplicaNamedIds) {
  jobs_->SetReplica("10.0.0.2:8980");
  JobRecordPtr job = Submit(Plan("logit(3)", 3, 4), nullptr);
  ASSERT_NE(job, nullptr);
  EXPECT_EQ(job->id, "1@10.0.0.2:8980");
  std::optional<QueuedJob> queued =
      jobs_->scheduler().PopNext([](const QueuedJob&) { return true; });
  ASSERT_TRUE(queued.has_value());
  EXPECT_EQ(queued->id, job->id);
  EXPECT_EQ(queued->images, 3);
  EXPECT_EQ(queued->cost, 3 * 4);
}

// The batch cap held only for ids that were plain numbers: with a replica
// in the id a job's images read as 0, so any job joined a full batch.
TEST_F(EngineTest, WorkerKeepsTheBatchCapWithReplicaNamedIds) {
  jobs_->SetReplica("10.0.0.2:8980");
  StartWorker(/*max_batch_images=*/2);
  auto first = std::make_shared<Recorder>();
  JobRecordPtr running = Submit(Plan("logit(3)", 2, 10000), first);
  ASSERT_NE(first->WaitForStep(1), 0);
  ASSERT_EQ(State(*running), JobState::kRunning);

  auto second = std::make_shared<Recorder>();
  JobRecordPtr waiting = Submit(Plan("logit(4)", 1, 4), second);
  // The worker admits queued jobs before every step: two steps after the
  // second job was queued, it would be running if it were let in.
  const int64_t now = first->WaitForStep(1);
  ASSERT_GE(first->WaitForStep(now + 2), now + 2);
  EXPECT_EQ(State(*waiting), JobState::kQueued);

  jobs_->Cancel(running, StopReason::kClient);
  EXPECT_EQ(first->WaitForEnd().code(), absl::StatusCode::kCancelled);
  EXPECT_TRUE(second->WaitForEnd().ok());
  EXPECT_EQ(State(*waiting), JobState::kSucceeded);
}

TEST_F(EngineTest, WorkerLetsAJobThatFitsJoinARunningBatch) {
  jobs_->SetReplica("10.0.0.2:8980");
  StartWorker(/*max_batch_images=*/2);
  auto first = std::make_shared<Recorder>();
  JobRecordPtr running = Submit(Plan("logit(3)", 1, 10000), first);
  ASSERT_NE(first->WaitForStep(1), 0);

  auto second = std::make_shared<Recorder>();
  JobRecordPtr joining = Submit(Plan("logit(4)", 1, 3), second);
  // It joins between two steps and finishes while the first still runs.
  EXPECT_TRUE(second->WaitForEnd().ok());
  EXPECT_EQ(State(*running), JobState::kRunning);
  ASSERT_NE(second->result(), nullptr);
  EXPECT_EQ(second->result()->steps, 3);
  jobs_->Cancel(running, StopReason::kClient);
  EXPECT_EQ(first->WaitForEnd().code(), absl::StatusCode::kCancelled);
}

// bf16 autocast would change an fp32 job's bits: a job asking for another
// precision than the running batch's waits for it to end, as a job for
// another model does, then runs in its own arithmetic.
TEST_F(EngineTest, JobsOfDifferentPrecisionsNeverShareABatch) {
  StartWorker(/*max_batch_images=*/8);
  auto first = std::make_shared<Recorder>();
  JobRecordPtr running = Submit(Plan("logit(3)", 1, 10000), first);
  ASSERT_NE(first->WaitForStep(1), 0);
  ASSERT_EQ(State(*running), JobState::kRunning);

  auto second = std::make_shared<Recorder>();
  RenderPlan bf16 = Plan("logit(4)", 1, 3);
  bf16.precision = core::Precision::kBf16;
  JobRecordPtr waiting = Submit(std::move(bf16), second);
  // The worker admits queued jobs before every step: two steps later an
  // fp32 job would be running (WorkerLetsAJobThatFitsJoinARunningBatch).
  const int64_t now = first->WaitForStep(1);
  ASSERT_GE(first->WaitForStep(now + 2), now + 2);
  EXPECT_EQ(State(*waiting), JobState::kQueued);

  jobs_->Cancel(running, StopReason::kClient);
  EXPECT_EQ(first->WaitForEnd().code(), absl::StatusCode::kCancelled);
  ASSERT_TRUE(second->WaitForEnd().ok());
  ASSERT_NE(second->result(), nullptr);
  EXPECT_EQ(second->result()->precision, "bf16");
  EXPECT_EQ(second->result()->steps, 3);
}

// A model whose images' bits depend on their batch in a precision
// (ModelSummary::batch_variance) runs each job of that precision in a batch
// of its own: a job that would join a running batch waits for it to end.
TEST_F(EngineTest, JobsOfABatchVariantModelNeverShareABatch) {
  StartWorker(/*max_batch_images=*/8);
  absl::StatusOr<std::shared_ptr<const ModelSummary>> summary =
      registry_->Summary("mnist_classifier");
  ASSERT_TRUE(summary.ok()) << summary.status();
  auto variant = std::make_shared<ModelSummary>(**summary);
  variant->batch_variance[core::Precision::kFloat32] = "it reads the batch";
  auto plan = [&](const std::string& objective, int64_t steps) {
    RenderPlan p = Plan(objective, 1, steps);
    p.model_ref = variant;
    p.model = variant.get();
    return p;
  };
  auto first = std::make_shared<Recorder>();
  JobRecordPtr running = Submit(plan("logit(3)", 10000), first);
  ASSERT_NE(first->WaitForStep(1), 0);
  ASSERT_EQ(State(*running), JobState::kRunning);

  auto second = std::make_shared<Recorder>();
  JobRecordPtr waiting = Submit(plan("logit(4)", 3), second);
  // Two steps later a job of an invariant model would be running
  // (WorkerLetsAJobThatFitsJoinARunningBatch).
  const int64_t now = first->WaitForStep(1);
  ASSERT_GE(first->WaitForStep(now + 2), now + 2);
  EXPECT_EQ(State(*waiting), JobState::kQueued);

  jobs_->Cancel(running, StopReason::kClient);
  EXPECT_EQ(first->WaitForEnd().code(), absl::StatusCode::kCancelled);
  ASSERT_TRUE(second->WaitForEnd().ok());
  ASSERT_NE(second->result(), nullptr);
  EXPECT_EQ(second->result()->steps, 3);
}

// Fault injection: a plan that validation would refuse (a learning rate a
// float cannot hold) reaches the worker. That job fails with a message; the
// job batched with it and the next one are unharmed, and the worker serves.
TEST_F(EngineTest, AJobWhoseStepThrowsFailsAloneAndTheWorkerServesOn) {
  StartWorker(/*max_batch_images=*/8);
  RenderPlan bad_plan = Plan("logit(3)", 1, 8);
  bad_plan.options.lr = 1e300;
  auto bad = std::make_shared<Recorder>();
  JobRecordPtr bad_job = Submit(std::move(bad_plan), bad);

  const absl::Status failed = bad->WaitForEnd();
  EXPECT_FALSE(failed.ok());
  EXPECT_NE(failed.code(), absl::StatusCode::kCancelled);
  EXPECT_FALSE(failed.message().empty());
  EXPECT_EQ(State(*bad_job), JobState::kFailed);
  EXPECT_EQ(bad->finished(), 1);

  auto good = std::make_shared<Recorder>();
  Submit(Plan("logit(5)", 2, 6), good);
  EXPECT_TRUE(good->WaitForEnd().ok());
  ASSERT_NE(good->result(), nullptr);
  EXPECT_EQ(good->result()->steps, 6);
}

// The result cache: a second job with the cache key of a succeeded one is
// answered at once with the stored result, without a worker.
TEST_F(EngineTest, AJobWithAStoredCacheKeyIsAnsweredFromTheCache) {
  StartWorker(/*max_batch_images=*/8);
  auto first = std::make_shared<Recorder>();
  absl::StatusOr<JobRecordPtr> ran =
      jobs_->Submit(Plan("logit(3)", 1, 4), "key-3", "tester", first);
  ASSERT_TRUE(ran.ok()) << ran.status();
  ASSERT_TRUE(first->WaitForEnd().ok());
  worker_->Stop();

  auto second = std::make_shared<Recorder>();
  absl::StatusOr<JobRecordPtr> cached =
      jobs_->Submit(Plan("logit(3)", 1, 4), "key-3", "someone", second);
  ASSERT_TRUE(cached.ok()) << cached.status();
  const JobSnapshot snapshot = jobs_->Snapshot(**cached);
  EXPECT_EQ(snapshot.state, JobState::kSucceeded);
  EXPECT_TRUE(snapshot.cached);
  EXPECT_EQ(snapshot.owner, "someone");
  EXPECT_EQ(second->finished(), 1);
  EXPECT_EQ(second->result(), first->result());
  absl::StatusOr<JobResultPtr> stored = jobs_->Result(**cached);
  ASSERT_TRUE(stored.ok()) << stored.status();
  EXPECT_EQ(*stored, first->result());

  EngineStats stats;
  jobs_->FillStats(stats);
  EXPECT_EQ(stats.cache_hits, 1);
  EXPECT_EQ(stats.cache_misses, 1);
  EXPECT_EQ(stats.jobs_succeeded, 2);
  absl::StatusOr<JobPage> page = jobs_->List(JobQuery{});
  ASSERT_TRUE(page.ok()) << page.status();
  ASSERT_EQ(page->jobs.size(), 2u);
  EXPECT_EQ(page->jobs[0].id, (*cached)->id);  // Newest first.
}

TEST_F(EngineTest, ForgettingAJobRecordDropsItsResultSoTheRecordBoundBoundsResults) {
  JobManagerOptions options;
  options.max_job_records = 3;
  jobs_ = std::make_unique<JobManager>(options);
  StartWorker(/*max_batch_images=*/8);
  std::vector<JobRecordPtr> jobs;
  for (int i = 0; i < 5; ++i) {
    auto recorder = std::make_shared<Recorder>();
    jobs.push_back(Submit(Plan(absl::StrCat("logit(", i, ")"), 1, 2), recorder));
    ASSERT_TRUE(recorder->WaitForEnd().ok());
  }
  EngineStats stats;
  jobs_->FillStats(stats);
  EXPECT_EQ(stats.job_records, 3);
  EXPECT_EQ(stats.results_stored, 3);
  EXPECT_EQ(stats.job_records_forgotten, 2);
  EXPECT_EQ(stats.results_removed["forgotten"], 2);
  EXPECT_GT(stats.job_record_bytes, 3 * static_cast<int64_t>(sizeof(JobRecord)));
  EXPECT_EQ(jobs_->Find(jobs[0]->id).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_TRUE(jobs_->Result(*jobs[4]).ok());
}

TEST_F(EngineTest, AnEndedJobsRecordLetsGoOfItsReferenceImages) {
  StartWorker(/*max_batch_images=*/8);
  RenderPlan plan = Plan("logit(1)", 1, 2);
  plan.options.references["ref"] = at::zeros({1, 1, 28, 28});
  plan.options.param.init_image = at::zeros({1, 1, 28, 28});
  auto recorder = std::make_shared<Recorder>();
  JobRecordPtr job = Submit(std::move(plan), recorder);
  ASSERT_TRUE(recorder->WaitForEnd().ok());
  EXPECT_TRUE(job->plan.options.references.empty());
  EXPECT_FALSE(job->plan.options.param.init_image.defined());
}

TEST_F(EngineTest, CancelledQueuedJobHearsExactlyOneFinalCall) {
  auto recorder = std::make_shared<Recorder>();
  JobRecordPtr job = Submit(Plan("logit(3)", 1, 8), recorder);
  jobs_->Cancel(job, StopReason::kClient);
  EXPECT_EQ(recorder->WaitForEnd().code(), absl::StatusCode::kCancelled);
  jobs_->Cancel(job, StopReason::kClient);
  EXPECT_EQ(recorder->finished(), 1);
  EXPECT_EQ(State(*job), JobState::kCancelled);
}

TEST_F(EngineTest, ARequestMayShortenItsQueueDeadlineButNotExtendIt) {
  JobManagerOptions options;
  options.default_queue_timeout = absl::Seconds(10);
  jobs_ = std::make_unique<JobManager>(options);
  RenderPlan shorter = Plan("logit(1)", 1, 8);
  shorter.queue_timeout = absl::Seconds(2);
  RenderPlan longer = Plan("logit(2)", 1, 8);
  longer.queue_timeout = absl::Seconds(100);
  auto short_recorder = std::make_shared<Recorder>();
  auto long_recorder = std::make_shared<Recorder>();
  JobRecordPtr short_job = Submit(std::move(shorter), short_recorder);
  JobRecordPtr long_job = Submit(std::move(longer), long_recorder);
  EXPECT_EQ(short_job->queue_deadline, short_job->create_time + absl::Seconds(2));
  // The server's 10 s, not the 100 s asked for.
  EXPECT_EQ(long_job->queue_deadline, long_job->create_time + absl::Seconds(10));

  jobs_->ExpireQueued(short_job->queue_deadline);
  EXPECT_EQ(State(*short_job), JobState::kExpired);
  EXPECT_EQ(short_recorder->WaitForEnd().code(),
            absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(State(*long_job), JobState::kQueued);
  jobs_->ExpireQueued(long_job->queue_deadline);
  EXPECT_EQ(State(*long_job), JobState::kExpired);
  EXPECT_EQ(long_recorder->WaitForEnd().code(),
            absl::StatusCode::kDeadlineExceeded);
}

TEST_F(EngineTest, StoppingTheWorkerEndsRunningJobsInsteadOfDroppingThem) {
  StartWorker(/*max_batch_images=*/8);
  auto recorder = std::make_shared<Recorder>();
  JobRecordPtr job = Submit(Plan("logit(3)", 1, 10000), recorder);
  ASSERT_NE(recorder->WaitForStep(1), 0);
  worker_->Stop();
  const absl::Status status = recorder->WaitForEnd();
  EXPECT_EQ(status.code(), absl::StatusCode::kCancelled) << status;
  EXPECT_TRUE(absl::StrContains(status.message(), "shut down")) << status;
}

}  // namespace
}  // namespace featviz::server
