#include "server/engine/scheduler.h"

#include <map>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace featviz::server {
namespace {

const absl::Time kT0 = absl::FromUnixSeconds(1700000000);

QueuedJob Job(std::string id, std::string owner, int priority = 0,
              int64_t cost = 1) {
  QueuedJob job;
  job.id = std::move(id);
  job.owner = std::move(owner);
  job.priority = priority;
  job.enqueue_time = kT0;
  job.cost = cost;
  return job;
}

SchedulerOptions QueueLimits(int64_t max_queued,
                             int64_t max_queued_per_owner) {
  SchedulerOptions options;
  options.max_queued = max_queued;
  options.max_queued_per_owner = max_queued_per_owner;
  return options;
}

bool AcceptAll(const QueuedJob&) { return true; }

// Pops until empty or `n` jobs; returns their ids.
std::vector<std::string> PopIds(Scheduler& scheduler, int n = 1 << 30) {
  std::vector<std::string> ids;
  while (static_cast<int>(ids.size()) < n) {
    std::optional<QueuedJob> job = scheduler.PopNext(AcceptAll);
    if (!job) break;
    ids.push_back(job->id);
  }
  return ids;
}

std::string OwnerOf(const std::string& id) { return id.substr(0, 1); }

TEST(Scheduler, DoesNotLetOneOwnersSweepStarveAnother) {
  Scheduler scheduler(QueueLimits(20000, 20000));
  for (int i = 0; i < 10000; ++i) {
    ASSERT_TRUE(scheduler.Add(Job(absl::StrCat("a", i), "alice")).ok());
  }
  ASSERT_TRUE(scheduler.Add(Job("b0", "bob")).ok());
  const std::vector<std::string> next = PopIds(scheduler, 2);
  ASSERT_EQ(next.size(), 2u);
  EXPECT_TRUE(next[0] == "b0" || next[1] == "b0")
      << next[0] << ", " << next[1];
}

TEST(Scheduler, StillServesANewOwnerPromptlyInTheMiddleOfASweep) {
  Scheduler scheduler(QueueLimits(20000, 20000));
  for (int i = 0; i < 10000; ++i) {
    ASSERT_TRUE(scheduler.Add(Job(absl::StrCat("a", i), "alice")).ok());
  }
  ASSERT_EQ(PopIds(scheduler, 500).size(), 500u);
  ASSERT_TRUE(scheduler.Add(Job("b0", "bob")).ok());
  const std::vector<std::string> next = PopIds(scheduler, 2);
  ASSERT_EQ(next.size(), 2u);
  EXPECT_TRUE(next[0] == "b0" || next[1] == "b0")
      << next[0] << ", " << next[1];
}

TEST(Scheduler, TakesTurnsBetweenOwnersWithEqualCosts) {
  Scheduler scheduler(SchedulerOptions{});
  for (int i = 0; i < 4; ++i) {
    for (const char* owner : {"a", "b", "c"}) {
      ASSERT_TRUE(scheduler.Add(Job(absl::StrCat(owner, i), owner)).ok());
    }
  }
  EXPECT_EQ(PopIds(scheduler),
            (std::vector<std::string>{"a0", "b0", "c0", "a1", "b1", "c1", "a2",
                                      "b2", "c2", "a3", "b3", "c3"}));
}

TEST(Scheduler, TakesTurnsEvenWhenEachOwnerQueuedAllItsJobsAtOnce) {
  Scheduler scheduler(SchedulerOptions{});
  for (const char* owner : {"a", "b", "c"}) {
    for (int i = 0; i < 3; ++i) {
      ASSERT_TRUE(scheduler.Add(Job(absl::StrCat(owner, i), owner)).ok());
    }
  }
  std::vector<std::string> owners;
  for (const std::string& id : PopIds(scheduler)) owners.push_back(OwnerOf(id));
  EXPECT_EQ(owners, (std::vector<std::string>{"a", "b", "c", "a", "b", "c",
                                              "a", "b", "c"}));
}

TEST(Scheduler, SharesByCostNotByJobCount) {
  Scheduler scheduler(SchedulerOptions{});
  // Alice's jobs cost 3 each, Bob's 1: Bob gets about three jobs per one of
  // Alice's.
  for (int i = 0; i < 4; ++i) {
    ASSERT_TRUE(scheduler.Add(Job(absl::StrCat("a", i), "alice", 0, 3)).ok());
  }
  for (int i = 0; i < 12; ++i) {
    ASSERT_TRUE(scheduler.Add(Job(absl::StrCat("b", i), "bob", 0, 1)).ok());
  }
  std::vector<std::string> first8;
  for (const std::string& id : PopIds(scheduler, 8)) {
    first8.push_back(OwnerOf(id));
  }
  EXPECT_EQ(first8, (std::vector<std::string>{"a", "b", "b", "b", "a", "b",
                                              "b", "b"}));
}

TEST(Scheduler, DoesNotGiveAReturningOwnerABurst) {
  Scheduler scheduler(SchedulerOptions{});
  // Bob is served once, then leaves while Alice is served 100 times.
  ASSERT_TRUE(scheduler.Add(Job("b-early", "bob")).ok());
  ASSERT_EQ(PopIds(scheduler), std::vector<std::string>{"b-early"});
  for (int i = 0; i < 200; ++i) {
    ASSERT_TRUE(scheduler.Add(Job(absl::StrCat("a", i), "alice")).ok());
  }
  ASSERT_EQ(PopIds(scheduler, 100).size(), 100u);
  // Back with 10 jobs, Bob shares from now on; he is owed nothing for the
  // time he was away.
  for (int i = 0; i < 10; ++i) {
    ASSERT_TRUE(scheduler.Add(Job(absl::StrCat("b", i), "bob")).ok());
  }
  std::vector<std::string> owners;
  for (const std::string& id : PopIds(scheduler, 10)) {
    owners.push_back(OwnerOf(id));
  }
  EXPECT_EQ(owners, (std::vector<std::string>{"a", "b", "a", "b", "a", "b",
                                              "a", "b", "a", "b"}));
}

TEST(Scheduler, DoesNotHoldAnOwnersPastUseAgainstItWhenItReturns) {
  Scheduler scheduler(SchedulerOptions{});
  // Alice runs 100 jobs alone, leaves, and comes back while Bob waits.
  for (int i = 0; i < 100; ++i) {
    ASSERT_TRUE(scheduler.Add(Job(absl::StrCat("a-old", i), "alice")).ok());
  }
  ASSERT_EQ(PopIds(scheduler).size(), 100u);
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(scheduler.Add(Job(absl::StrCat("b", i), "bob")).ok());
  }
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(scheduler.Add(Job(absl::StrCat("a", i), "alice")).ok());
  }
  std::vector<std::string> owners;
  for (const std::string& id : PopIds(scheduler, 6)) {
    owners.push_back(OwnerOf(id));
  }
  EXPECT_EQ(owners,
            (std::vector<std::string>{"b", "a", "b", "a", "b", "a"}));
}

TEST(Scheduler, RunsHigherPriorityFirstWithinAnOwner) {
  Scheduler scheduler(SchedulerOptions{});
  ASSERT_TRUE(scheduler.Add(Job("low", "alice", -5)).ok());
  ASSERT_TRUE(scheduler.Add(Job("mid", "alice", 0)).ok());
  ASSERT_TRUE(scheduler.Add(Job("high", "alice", 10)).ok());
  EXPECT_EQ(PopIds(scheduler),
            (std::vector<std::string>{"high", "mid", "low"}));
}

TEST(Scheduler, LetsPriorityBeatFairnessAcrossOwners) {
  Scheduler scheduler(SchedulerOptions{});
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(scheduler.Add(Job(absl::StrCat("a", i), "alice", 1)).ok());
  }
  ASSERT_TRUE(scheduler.Add(Job("b0", "bob", 0)).ok());
  // Alice has had all the service, but her jobs outrank Bob's.
  EXPECT_EQ(PopIds(scheduler),
            (std::vector<std::string>{"a0", "a1", "a2", "a3", "a4", "b0"}));
}

TEST(Scheduler, SharesFairlyWithinAPriorityUsingServiceFromAllPriorities) {
  Scheduler scheduler(SchedulerOptions{});
  ASSERT_TRUE(scheduler.Add(Job("a-urgent", "alice", 5)).ok());
  ASSERT_TRUE(scheduler.Add(Job("a0", "alice", 0)).ok());
  ASSERT_TRUE(scheduler.Add(Job("b0", "bob", 0)).ok());
  ASSERT_TRUE(scheduler.Add(Job("b1", "bob", 0)).ok());
  // Alice's urgent job counts against her at priority 0.
  EXPECT_EQ(PopIds(scheduler),
            (std::vector<std::string>{"a-urgent", "b0", "a0", "b1"}));
}

TEST(Scheduler, IsFirstInFirstOutWithinOneOwnerAndPriority) {
  Scheduler scheduler(SchedulerOptions{});
  std::vector<std::string> added;
  for (int i = 0; i < 50; ++i) {
    added.push_back(absl::StrCat("job", i));
    ASSERT_TRUE(scheduler.Add(Job(added.back(), "alice", 3, 1 + i % 7)).ok());
  }
  EXPECT_EQ(PopIds(scheduler), added);
}

TEST(Scheduler, RefusesAJobWhenTheQueueIsFullNamingTheLimit) {
  Scheduler scheduler(
      QueueLimits(3, 10));
  ASSERT_TRUE(scheduler.Add(Job("a0", "alice")).ok());
  ASSERT_TRUE(scheduler.Add(Job("b0", "bob")).ok());
  ASSERT_TRUE(scheduler.Add(Job("c0", "carol")).ok());
  const absl::Status full = scheduler.Add(Job("d0", "dave"));
  EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(full.message(), "the queue holds 3 jobs, the server's max_queued_jobs");
  EXPECT_EQ(scheduler.size(), 3);
  // A place frees up once a job leaves.
  ASSERT_TRUE(scheduler.PopNext(AcceptAll).has_value());
  EXPECT_TRUE(scheduler.Add(Job("d0", "dave")).ok());
}

TEST(Scheduler, RefusesAJobWhenItsOwnerHasTooManyQueuedNamingOwnerAndLimit) {
  Scheduler scheduler(
      QueueLimits(100, 2));
  ASSERT_TRUE(scheduler.Add(Job("a0", "alice")).ok());
  ASSERT_TRUE(scheduler.Add(Job("a1", "alice", 5)).ok());
  const absl::Status full = scheduler.Add(Job("a2", "alice"));
  EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(full.message(),
            "owner 'alice' already has 2 queued jobs, the server's "
            "max_queued_per_owner");
  // Other owners are not affected.
  EXPECT_TRUE(scheduler.Add(Job("b0", "bob")).ok());
  EXPECT_EQ(scheduler.QueuedFor("alice"), 2);
  EXPECT_EQ(scheduler.QueuedFor("bob"), 1);
  EXPECT_EQ(scheduler.QueuedFor("nobody"), 0);
}

TEST(Scheduler, RefusesADuplicateId) {
  Scheduler scheduler(SchedulerOptions{});
  ASSERT_TRUE(scheduler.Add(Job("same", "alice")).ok());
  const absl::Status duplicate = scheduler.Add(Job("same", "bob"));
  EXPECT_EQ(duplicate.code(), absl::StatusCode::kAlreadyExists);
  EXPECT_NE(duplicate.message().find("same"), absl::string_view::npos)
      << duplicate;
  EXPECT_EQ(scheduler.size(), 1);
  EXPECT_EQ(scheduler.QueuedFor("bob"), 0);
}

TEST(Scheduler, RemoveCancelsAQueuedJob) {
  Scheduler scheduler(SchedulerOptions{});
  ASSERT_TRUE(scheduler.Add(Job("a0", "alice")).ok());
  ASSERT_TRUE(scheduler.Add(Job("a1", "alice")).ok());
  ASSERT_TRUE(scheduler.Add(Job("a2", "alice")).ok());
  EXPECT_TRUE(scheduler.Remove("a1"));
  EXPECT_EQ(scheduler.size(), 2);
  EXPECT_EQ(scheduler.QueuedFor("alice"), 2);
  EXPECT_EQ(PopIds(scheduler), (std::vector<std::string>{"a0", "a2"}));
  // The id is free again once it left.
  EXPECT_TRUE(scheduler.Add(Job("a1", "alice")).ok());
}

TEST(Scheduler, RemoveOfAJobThatIsNotQueuedReturnsFalse) {
  Scheduler scheduler(SchedulerOptions{});
  EXPECT_FALSE(scheduler.Remove("unknown"));
  ASSERT_TRUE(scheduler.Add(Job("a0", "alice")).ok());
  ASSERT_TRUE(scheduler.PopNext(AcceptAll).has_value());
  EXPECT_FALSE(scheduler.Remove("a0"));
  EXPECT_EQ(scheduler.size(), 0);
}

TEST(Scheduler, RemoveDoesNotChargeTheOwner) {
  Scheduler scheduler(SchedulerOptions{});
  ASSERT_TRUE(scheduler.Add(Job("a0", "alice", 0, 1000)).ok());
  ASSERT_TRUE(scheduler.Add(Job("a1", "alice")).ok());
  ASSERT_TRUE(scheduler.Add(Job("b0", "bob")).ok());
  ASSERT_TRUE(scheduler.Remove("a0"));
  // Alice was not charged 1000 for the cancelled job: she is still level
  // with Bob, and her job has waited longer.
  EXPECT_EQ(PopIds(scheduler), (std::vector<std::string>{"a1", "b0"}));
}

TEST(Scheduler, PopNextWithARejectingAcceptLeavesTheJobQueued) {
  Scheduler scheduler(SchedulerOptions{});
  QueuedJob first = Job("a0", "alice");
  first.batch_key = "mnist/cls";
  QueuedJob second = Job("b0", "bob");
  second.batch_key = "mnist/conv";
  QueuedJob third = Job("c0", "carol");
  third.batch_key = "mnist/cls";
  ASSERT_TRUE(scheduler.Add(first).ok());
  ASSERT_TRUE(scheduler.Add(second).ok());
  ASSERT_TRUE(scheduler.Add(third).ok());

  auto same_batch = [](const QueuedJob& job) {
    return job.batch_key == "mnist/cls";
  };
  std::optional<QueuedJob> job = scheduler.PopNext(same_batch);
  ASSERT_TRUE(job.has_value());
  EXPECT_EQ(job->id, "a0");
  // Bob's job is next and does not fit the batch: carol's, which would, does
  // not overtake it.
  std::vector<std::string> offered;
  EXPECT_FALSE(scheduler.PopNext([&](const QueuedJob& next) {
                 offered.push_back(next.id);
                 return same_batch(next);
               }).has_value());
  EXPECT_EQ(offered, std::vector<std::string>{"b0"});
  EXPECT_EQ(scheduler.size(), 2);
  EXPECT_EQ(PopIds(scheduler), (std::vector<std::string>{"b0", "c0"}));
}

TEST(Scheduler, PopNextOnAnEmptyQueueReturnsNothingWithoutAskingAccept) {
  Scheduler scheduler(SchedulerOptions{});
  bool asked = false;
  EXPECT_FALSE(scheduler.PopNext([&](const QueuedJob&) {
                 asked = true;
                 return true;
               }).has_value());
  EXPECT_FALSE(asked);
}

TEST(Scheduler, PopNextReturnsTheJobAsAdded) {
  Scheduler scheduler(SchedulerOptions{});
  QueuedJob job = Job("a0", "alice", 7, 640);
  job.enqueue_time = kT0 + absl::Seconds(3);
  job.deadline = kT0 + absl::Seconds(60);
  job.batch_key = "key";
  ASSERT_TRUE(scheduler.Add(job).ok());
  std::optional<QueuedJob> popped = scheduler.PopNext(AcceptAll);
  ASSERT_TRUE(popped.has_value());
  EXPECT_EQ(popped->id, "a0");
  EXPECT_EQ(popped->owner, "alice");
  EXPECT_EQ(popped->priority, 7);
  EXPECT_EQ(popped->enqueue_time, kT0 + absl::Seconds(3));
  EXPECT_EQ(popped->deadline, kT0 + absl::Seconds(60));
  EXPECT_EQ(popped->batch_key, "key");
  EXPECT_EQ(popped->cost, 640);
  // Its deadline left with it.
  EXPECT_TRUE(scheduler.TakeExpired(absl::InfiniteFuture()).empty());
}

TEST(Scheduler, TakeExpiredReturnsExactlyTheJobsPastTheirDeadline) {
  Scheduler scheduler(SchedulerOptions{});
  QueuedJob early = Job("early", "alice");
  early.deadline = kT0 + absl::Seconds(10);
  QueuedJob exact = Job("exact", "bob");
  exact.deadline = kT0 + absl::Seconds(20);
  QueuedJob late = Job("late", "alice");
  late.deadline = kT0 + absl::Seconds(30);
  QueuedJob never = Job("never", "carol");
  ASSERT_TRUE(scheduler.Add(late).ok());
  ASSERT_TRUE(scheduler.Add(never).ok());
  ASSERT_TRUE(scheduler.Add(exact).ok());
  ASSERT_TRUE(scheduler.Add(early).ok());

  EXPECT_TRUE(scheduler.TakeExpired(kT0).empty());
  std::vector<std::string> expired;
  for (const QueuedJob& job : scheduler.TakeExpired(kT0 + absl::Seconds(20))) {
    expired.push_back(job.id);
  }
  EXPECT_EQ(expired, (std::vector<std::string>{"early", "exact"}));
  EXPECT_EQ(scheduler.size(), 2);
  EXPECT_EQ(scheduler.QueuedFor("bob"), 0);
  EXPECT_FALSE(scheduler.Remove("early"));
  EXPECT_EQ(PopIds(scheduler), (std::vector<std::string>{"late", "never"}));
}

TEST(Scheduler, CloseReturnsEverythingQueuedAndRefusesNewJobs) {
  Scheduler scheduler(SchedulerOptions{});
  ASSERT_TRUE(scheduler.Add(Job("a0", "alice")).ok());
  ASSERT_TRUE(scheduler.Add(Job("b0", "bob", 2)).ok());
  ASSERT_TRUE(scheduler.Add(Job("a1", "alice")).ok());
  QueuedJob with_deadline = Job("c0", "carol", -1);
  with_deadline.deadline = kT0;
  ASSERT_TRUE(scheduler.Add(with_deadline).ok());

  std::vector<std::string> closed;
  for (const QueuedJob& job : scheduler.Close()) closed.push_back(job.id);
  EXPECT_EQ(closed, (std::vector<std::string>{"b0", "a0", "a1", "c0"}));
  EXPECT_EQ(scheduler.size(), 0);
  EXPECT_TRUE(scheduler.DepthByPriority().empty());
  EXPECT_TRUE(scheduler.TakeExpired(absl::InfiniteFuture()).empty());
  EXPECT_FALSE(scheduler.PopNext(AcceptAll).has_value());

  const absl::Status refused = scheduler.Add(Job("d0", "dave"));
  EXPECT_EQ(refused.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(refused.message(), "server is shutting down");
  EXPECT_TRUE(scheduler.Close().empty());
}

TEST(Scheduler, WaitForWorkReturnsAtOnceWhenThereIsWork) {
  Scheduler scheduler(SchedulerOptions{});
  ASSERT_TRUE(scheduler.Add(Job("a0", "alice")).ok());
  EXPECT_TRUE(scheduler.WaitForWork(absl::InfiniteDuration()));
}

TEST(Scheduler, WaitForWorkTimesOutOnAnEmptyQueue) {
  Scheduler scheduler(SchedulerOptions{});
  EXPECT_FALSE(scheduler.WaitForWork(absl::Milliseconds(10)));
}

TEST(Scheduler, WaitForWorkWakesOnAdd) {
  Scheduler scheduler(SchedulerOptions{});
  absl::Notification waiting;
  bool woke_with_work = false;
  std::thread waiter([&] {
    waiting.Notify();
    woke_with_work = scheduler.WaitForWork(absl::Minutes(5));
  });
  waiting.WaitForNotification();
  ASSERT_TRUE(scheduler.Add(Job("a0", "alice")).ok());
  waiter.join();
  EXPECT_TRUE(woke_with_work);
}

TEST(Scheduler, WaitForWorkWakesOnClose) {
  Scheduler scheduler(SchedulerOptions{});
  std::vector<int> woke_with_work(3, -1);
  std::vector<std::thread> waiters;
  for (int i = 0; i < 3; ++i) {
    waiters.emplace_back([&, i] {
      woke_with_work[i] = scheduler.WaitForWork(absl::Minutes(5)) ? 1 : 0;
    });
  }
  // However far the waiters got, Close() must release them long before
  // their five-minute timeout.
  const absl::Time start = absl::Now();
  scheduler.Close();
  for (std::thread& waiter : waiters) waiter.join();
  EXPECT_LT(absl::Now() - start, absl::Minutes(1));
  EXPECT_EQ(woke_with_work, (std::vector<int>{0, 0, 0}));
}

TEST(Scheduler, DepthByPriorityCountsQueuedJobsHighestFirst) {
  Scheduler scheduler(SchedulerOptions{});
  ASSERT_TRUE(scheduler.Add(Job("a0", "alice", 0)).ok());
  ASSERT_TRUE(scheduler.Add(Job("a1", "alice", 5)).ok());
  ASSERT_TRUE(scheduler.Add(Job("b0", "bob", 5)).ok());
  ASSERT_TRUE(scheduler.Add(Job("b1", "bob", -10)).ok());
  ASSERT_TRUE(scheduler.Add(Job("c0", "carol", 0)).ok());
  ASSERT_TRUE(scheduler.Add(Job("c1", "carol", 0)).ok());
  const std::map<int, int64_t, std::greater<int>> depth =
      scheduler.DepthByPriority();
  const std::vector<std::pair<int, int64_t>> listed(depth.begin(),
                                                    depth.end());
  EXPECT_EQ(listed, (std::vector<std::pair<int, int64_t>>{
                        {5, 2}, {0, 3}, {-10, 1}}));
  EXPECT_EQ(scheduler.size(), 6);
  ASSERT_TRUE(scheduler.Remove("b1"));
  EXPECT_EQ(scheduler.DepthByPriority().count(-10), 0u);
}

TEST(SchedulerQuota, MaxQueuedRefusesTheOwnersNextJobNamingTheQuota) {
  Scheduler scheduler(QueueLimits(100, 100));
  QueuedJob job = Job("a0", "alice");
  job.quota.max_queued = 2;
  ASSERT_TRUE(scheduler.Add(job).ok());
  job.id = "a1";
  ASSERT_TRUE(scheduler.Add(job).ok());
  job.id = "a2";
  const absl::Status refused = scheduler.Add(job);
  EXPECT_EQ(refused.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(refused.message(),
            "client 'alice' already has 2 queued jobs, its quota max_queued");
  // Other owners are not affected.
  EXPECT_TRUE(scheduler.Add(Job("b0", "bob")).ok());
}

TEST(SchedulerQuota, MaxRunningPassesOverTheOwnerUntilItsJobIsDone) {
  Scheduler scheduler(QueueLimits(100, 100));
  for (const char* id : {"a0", "a1", "a2"}) {
    QueuedJob job = Job(id, "alice", /*priority=*/5);
    job.quota.max_running = 1;
    ASSERT_TRUE(scheduler.Add(job).ok());
  }
  ASSERT_TRUE(scheduler.Add(Job("b0", "bob", /*priority=*/0)).ok());
  ASSERT_TRUE(scheduler.Add(Job("b1", "bob", /*priority=*/0)).ok());

  // Alice's first runs; her others wait although they have the higher
  // priority, and Bob's jobs go past them.
  EXPECT_EQ(PopIds(scheduler), (std::vector<std::string>{"a0", "b0", "b1"}));
  EXPECT_EQ(scheduler.size(), 2);
  EXPECT_FALSE(scheduler.WaitForWork(absl::ZeroDuration()));
  // A job never taken, or taken by someone else, frees nothing.
  scheduler.Done("b0");
  scheduler.Done("nonexistent");
  EXPECT_FALSE(scheduler.WaitForWork(absl::ZeroDuration()));
  scheduler.Done("a0");
  EXPECT_TRUE(scheduler.WaitForWork(absl::ZeroDuration()));
  EXPECT_EQ(PopIds(scheduler), (std::vector<std::string>{"a1"}));
  scheduler.Done("a1");
  EXPECT_EQ(PopIds(scheduler), (std::vector<std::string>{"a2"}));
}

TEST(SchedulerQuota, AWorkerWaitingForWorkWakesWhenAQuotaFrees) {
  Scheduler scheduler(QueueLimits(100, 100));
  for (const char* id : {"a0", "a1"}) {
    QueuedJob job = Job(id, "alice");
    job.quota.max_running = 1;
    ASSERT_TRUE(scheduler.Add(job).ok());
  }
  ASSERT_EQ(PopIds(scheduler), (std::vector<std::string>{"a0"}));
  absl::Notification woke;
  std::thread worker([&] {
    if (scheduler.WaitForWork(absl::Seconds(60))) woke.Notify();
  });
  scheduler.Done("a0");
  worker.join();
  EXPECT_TRUE(woke.HasBeenNotified());
  EXPECT_EQ(PopIds(scheduler), (std::vector<std::string>{"a1"}));
}

}  // namespace
}  // namespace featviz::server
