#include "server/job_queue.h"

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"

namespace featviz::server {
namespace {

// A job that runs until released or stopped, and says what happened to it.
class FakeJob : public Job {
 public:
  void Run() override {
    started.Notify();
    while (!release.HasBeenNotified() && !stopped.load()) {
      absl::SleepFor(absl::Milliseconds(1));
    }
    ran = true;
  }
  void Drop(const absl::Status& why) override { dropped = why; }
  void Stop() override { stopped = true; }

  absl::Notification started;
  absl::Notification release;
  std::atomic<bool> stopped{false};
  std::atomic<bool> ran{false};
  absl::Status dropped;
};

TEST(JobQueue, RefusesWorkersBelowOneAndNegativeCapacity) {
  EXPECT_EQ(JobQueue::Create(0, 1).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(JobQueue::Create(1, -1).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(JobQueue, RunsASubmittedJobOnAWorker) {
  auto queue = *JobQueue::Create(1, 1);
  auto job = std::make_shared<FakeJob>();
  ASSERT_TRUE(queue->Submit(job).ok());
  job->started.WaitForNotification();
  job->release.Notify();
  queue->Drain(absl::InfiniteFuture(), absl::UnavailableError("bye"));
  EXPECT_TRUE(job->ran);
  EXPECT_TRUE(job->dropped.ok());
}

TEST(JobQueue, RefusesAJobWhenFullNamingTheLimit) {
  auto queue = *JobQueue::Create(1, 1);
  auto running = std::make_shared<FakeJob>();
  auto waiting = std::make_shared<FakeJob>();
  ASSERT_TRUE(queue->Submit(running).ok());
  running->started.WaitForNotification();
  ASSERT_TRUE(queue->Submit(waiting).ok());
  const absl::Status full = queue->Submit(std::make_shared<FakeJob>());
  EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(full.message().find("max_queued_renders is 1"), std::string::npos)
      << full;
  running->release.Notify();
  waiting->release.Notify();
}

TEST(JobQueue, RemoveTakesBackAWaitingJobButNotARunningOne) {
  auto queue = *JobQueue::Create(1, 2);
  auto running = std::make_shared<FakeJob>();
  auto waiting = std::make_shared<FakeJob>();
  ASSERT_TRUE(queue->Submit(running).ok());
  running->started.WaitForNotification();
  ASSERT_TRUE(queue->Submit(waiting).ok());
  EXPECT_EQ(queue->waiting(), 1);
  EXPECT_TRUE(queue->Remove(waiting.get()));
  EXPECT_FALSE(queue->Remove(running.get()));
  EXPECT_EQ(queue->waiting(), 0);
  running->release.Notify();
  queue->Drain(absl::InfiniteFuture(), absl::UnavailableError("bye"));
  EXPECT_FALSE(waiting->ran);
  EXPECT_TRUE(waiting->dropped.ok());
}

TEST(JobQueue, DrainDropsWaitingJobsThenStopsRunningOnesAfterTheGrace) {
  auto queue = *JobQueue::Create(1, 2);
  auto running = std::make_shared<FakeJob>();
  auto waiting = std::make_shared<FakeJob>();
  ASSERT_TRUE(queue->Submit(running).ok());
  running->started.WaitForNotification();
  ASSERT_TRUE(queue->Submit(waiting).ok());

  queue->Drain(absl::Now() + absl::Milliseconds(50),
               absl::UnavailableError("shutting down"));
  EXPECT_TRUE(running->stopped);
  EXPECT_TRUE(running->ran);
  EXPECT_FALSE(waiting->ran);
  EXPECT_EQ(waiting->dropped.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(queue->Submit(std::make_shared<FakeJob>()).code(),
            absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace featviz::server
