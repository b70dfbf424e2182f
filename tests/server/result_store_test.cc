#include "server/engine/result_store.h"

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"

namespace featviz::server {
namespace {

const absl::Time kT0 = absl::FromUnixSeconds(1700000000);

JobResultPtr Result(uint64_t seed) {
  auto result = std::make_shared<JobResult>();
  result->seed = seed;
  return result;
}

// What a result of `bytes` stored under a short job id (no heap) costs in
// the store: the bytes and the store's bookkeeping.
int64_t Cost(int64_t bytes) { return bytes + ResultStore::EntryBytes("job", ""); }

ResultStoreOptions Options(absl::Duration ttl, int64_t max_bytes) {
  ResultStoreOptions options;
  options.ttl = ttl;
  options.max_bytes = max_bytes;
  options.max_owner_share = 1;  // One owner may fill it (see the owner tests).
  return options;
}

TEST(ResultStore, GetsAResultAfterPut) {
  ResultStore store(ResultStoreOptions{});
  store.Put("job-1", "", Result(7), 100, kT0);
  auto got = store.Get("job-1", kT0 + absl::Minutes(1));
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ((*got)->seed, 7u);
  EXPECT_EQ(store.size(), 1);
  EXPECT_EQ(store.bytes(), Cost(100));
}

TEST(ResultStore, SaysThereIsNoResultForAnUnknownJob) {
  ResultStore store(ResultStoreOptions{});
  auto got = store.Get("job-9", kT0);
  EXPECT_EQ(got.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(got.status().message(), "no result for job job-9");
}

TEST(ResultStore, PutReplacesAJobsResult) {
  ResultStore store(ResultStoreOptions{});
  store.Put("job-1", "", Result(1), 100, kT0);
  store.Put("job-1", "", Result(2), 30, kT0 + absl::Minutes(1));
  EXPECT_EQ(store.size(), 1);
  EXPECT_EQ(store.bytes(), Cost(30));
  EXPECT_EQ((*store.Get("job-1", kT0 + absl::Minutes(1)))->seed, 2u);
}

TEST(ResultStore, ExpiresAResultAfterTheTtlSayingHowLongResultsAreKept) {
  ResultStore store(Options(absl::Hours(1), 1 << 20));
  store.Put("job-1", "", Result(7), 100, kT0);
  EXPECT_TRUE(store.Get("job-1", kT0 + absl::Minutes(59)).ok());
  auto got = store.Get("job-1", kT0 + absl::Hours(1));
  EXPECT_EQ(got.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(got.status().message(),
            "the result of job job-1 expired (results are kept 1h)");
  // Still so after a Sweep has dropped it.
  EXPECT_EQ(store.Sweep(kT0 + absl::Hours(2)),
            std::vector<std::string>{"job-1"});
  got = store.Get("job-1", kT0 + absl::Hours(2));
  EXPECT_EQ(got.status().message(),
            "the result of job job-1 expired (results are kept 1h)");
}

TEST(ResultStore, EvictsTheOldestResultsFirstToStayUnderMaxBytes) {
  ResultStore store(Options(absl::Hours(1), 2 * Cost(100) + 50));
  store.Put("job-1", "", Result(1), 100, kT0);
  store.Put("job-2", "", Result(2), 100, kT0 + absl::Seconds(1));
  EXPECT_EQ(store.bytes(), 2 * Cost(100));
  store.Put("job-3", "", Result(3), 100, kT0 + absl::Seconds(2));
  EXPECT_EQ(store.size(), 2);
  EXPECT_EQ(store.bytes(), 2 * Cost(100));

  const absl::Time now = kT0 + absl::Seconds(3);
  auto evicted = store.Get("job-1", now);
  EXPECT_EQ(evicted.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(evicted.status().message(),
            absl::StrCat("the result of job job-1 was evicted to keep results "
                         "under ", 2 * Cost(100) + 50, " bytes"));
  EXPECT_TRUE(store.Get("job-2", now).ok());
  EXPECT_TRUE(store.Get("job-3", now).ok());

  // A big result pushes out as many old ones as it must.
  store.Put("job-4", "", Result(4), 2 * Cost(100) + 50 - Cost(0), now);
  EXPECT_EQ(store.size(), 1);
  EXPECT_EQ(store.bytes(), 2 * Cost(100) + 50);
  EXPECT_FALSE(store.Get("job-2", now).ok());
  EXPECT_FALSE(store.Get("job-3", now).ok());
  EXPECT_TRUE(store.Get("job-4", now).ok());
}

TEST(ResultStore, EvictsByTimeOfPutNotByJobId) {
  ResultStore store(Options(absl::Hours(1), 2 * Cost(100)));
  store.Put("b", "", Result(1), 100, kT0);
  store.Put("a", "", Result(2), 100, kT0);
  store.Put("b", "", Result(3), 100, kT0);  // Now the newest.
  store.Put("c", "", Result(4), 100, kT0);
  EXPECT_FALSE(store.Get("a", kT0).ok());
  EXPECT_TRUE(store.Get("b", kT0).ok());
  EXPECT_TRUE(store.Get("c", kT0).ok());
}

TEST(ResultStore, DoesNotKeepAResultLargerThanMaxBytes) {
  ResultStore store(Options(absl::Hours(1), Cost(100)));
  store.Put("small", "", Result(1), 50, kT0);
  store.Put("huge", "", Result(2), 101, kT0);
  EXPECT_EQ(store.size(), 0);
  EXPECT_EQ(store.bytes(), 0);
  EXPECT_EQ(store.Get("huge", kT0).status().message(),
            absl::StrCat("the result of job huge was evicted to keep results "
                         "under ", Cost(100), " bytes"));
}

TEST(ResultStore, LookupReturnsTheJobWhoseResultAnswersTheKey) {
  ResultStore store(ResultStoreOptions{});
  EXPECT_FALSE(store.Lookup("mnist|cls:3", kT0).has_value());
  store.Put("job-1", "", Result(1), 100, kT0);
  store.Remember("mnist|cls:3", "job-1");
  EXPECT_EQ(store.Lookup("mnist|cls:3", kT0), "job-1");
  EXPECT_FALSE(store.Lookup("mnist|cls:4", kT0).has_value());
  // A later job answering the same key takes it over.
  store.Put("job-2", "", Result(2), 100, kT0);
  store.Remember("mnist|cls:3", "job-2");
  EXPECT_EQ(store.Lookup("mnist|cls:3", kT0), "job-2");
}

TEST(ResultStore, LookupStopsOnceTheResultExpired) {
  ResultStore store(Options(absl::Hours(1), 1 << 20));
  store.Put("job-1", "", Result(1), 100, kT0);
  store.Remember("key", "job-1");
  EXPECT_EQ(store.Lookup("key", kT0 + absl::Minutes(59)), "job-1");
  EXPECT_FALSE(store.Lookup("key", kT0 + absl::Hours(1)).has_value());
  store.Sweep(kT0 + absl::Hours(1));
  EXPECT_FALSE(store.Lookup("key", kT0).has_value());
}

TEST(ResultStore, LookupStopsOnceTheResultWasEvicted) {
  ResultStore store(Options(absl::Hours(1), Cost(150)));
  store.Put("job-1", "", Result(1), 100, kT0);
  store.Remember("key", "job-1");
  store.Put("job-2", "", Result(2), 100, kT0);
  EXPECT_FALSE(store.Lookup("key", kT0).has_value());
  // Remembering a key for a result that is gone does not bring it back.
  store.Remember("key", "job-1");
  EXPECT_FALSE(store.Lookup("key", kT0).has_value());
}

TEST(ResultStore, RememberBeforePutTakesEffectOnceTheResultIsStored) {
  ResultStore store(ResultStoreOptions{});
  store.Remember("key", "job-1");
  EXPECT_FALSE(store.Lookup("key", kT0).has_value());
  store.Put("job-1", "", Result(1), 100, kT0);
  EXPECT_EQ(store.Lookup("key", kT0), "job-1");
}

TEST(ResultStore, ForgetsTheOldestPendingKeysPastTheirBound) {
  ResultStoreOptions options;
  options.max_pending_jobs = 2;
  ResultStore store(options);
  store.Remember("key-1", "job-1");
  store.Remember("key-2", "job-2");
  store.Remember("key-3", "job-3");
  store.Put("job-1", "", Result(1), 10, kT0);
  store.Put("job-2", "", Result(2), 10, kT0);
  store.Put("job-3", "", Result(3), 10, kT0);
  EXPECT_FALSE(store.Lookup("key-1", kT0).has_value());
  EXPECT_EQ(store.Lookup("key-2", kT0), "job-2");
  EXPECT_EQ(store.Lookup("key-3", kT0), "job-3");
}

TEST(ResultStore, SweepDropsExactlyTheExpiredResults) {
  ResultStore store(Options(absl::Minutes(10), 1 << 20));
  store.Put("old", "", Result(1), 100, kT0);
  store.Put("older", "", Result(2), 50, kT0 - absl::Minutes(5));
  store.Put("fresh", "", Result(3), 10, kT0 + absl::Minutes(5));
  EXPECT_TRUE(store.Sweep(kT0 + absl::Minutes(4)).empty());
  EXPECT_EQ(store.Sweep(kT0 + absl::Minutes(10)),
            (std::vector<std::string>{"old", "older"}));
  EXPECT_EQ(store.size(), 1);
  EXPECT_EQ(store.bytes(), Cost(10));
  EXPECT_TRUE(store.Get("fresh", kT0 + absl::Minutes(10)).ok());
  EXPECT_TRUE(store.Sweep(kT0 + absl::Minutes(10)).empty());
}

TEST(ResultStore, ForgetsWhyOldRemovalsHappenedPastItsBound) {
  ResultStoreOptions options = Options(absl::Hours(1), Cost(100));
  options.max_remembered_removals = 1;
  ResultStore store(options);
  store.Put("job-1", "", Result(1), 100, kT0);
  store.Put("job-2", "", Result(2), 100, kT0);  // Evicts job-1.
  store.Put("job-3", "", Result(3), 100, kT0);  // Evicts job-2.
  EXPECT_EQ(store.Get("job-1", kT0).status().message(),
            "no result for job job-1");
  EXPECT_EQ(store.Get("job-2", kT0).status().message(),
            absl::StrCat("the result of job job-2 was evicted to keep results "
                         "under ", Cost(100), " bytes"));
}

TEST(ResultStore, CountsCacheKeysInTheBytesOfTheResultTheyPointAt) {
  ResultStore store(ResultStoreOptions{});
  const std::string key(64, 'k');  // A cache key: SHA-256 in hex.
  store.Put("job-1", "", Result(1), 100, kT0);
  store.Remember(key, "job-1");
  EXPECT_EQ(store.bytes(), Cost(100) + ResultStore::KeyBytes(key, "job-1"));
  // The key moves to another job: its bytes move with it.
  store.Put("job-2", "", Result(2), 100, kT0);
  store.Remember(key, "job-2");
  EXPECT_EQ(store.bytes(), 2 * Cost(100) + ResultStore::KeyBytes(key, "job-2"));
  // A replacement keeps the key.
  store.Put("job-2", "", Result(3), 10, kT0);
  EXPECT_EQ(store.Lookup(key, kT0), "job-2");
  EXPECT_EQ(store.bytes(),
            Cost(100) + Cost(10) + ResultStore::KeyBytes(key, "job-2"));
  store.Forget("job-2");
  store.Forget("job-1");
  EXPECT_EQ(store.bytes(), 0);
  EXPECT_FALSE(store.Lookup(key, kT0).has_value());
}

TEST(ResultStore, KeepsAnOwnerWithinItsShareByEvictingItsOwnOldestResults) {
  ResultStoreOptions options = Options(absl::Hours(1), 12 * Cost(100));
  options.max_owner_share = 0.25;  // Three results of 100.
  ResultStore store(options);
  store.Put("other", "bob", Result(0), 100, kT0);
  for (int i = 1; i <= 5; ++i) {
    store.Put(absl::StrCat("job-", i), "alice", Result(i), 100, kT0);
  }
  EXPECT_EQ(store.size(), 4);
  EXPECT_TRUE(store.Get("other", kT0).ok());
  for (int i = 3; i <= 5; ++i) {
    EXPECT_TRUE(store.Get(absl::StrCat("job-", i), kT0).ok()) << i;
  }
  EXPECT_EQ(store.Get("job-1", kT0).status().message(),
            absl::StrCat("the result of job job-1 was evicted: owner 'alice''s "
                         "results reached its share of the result store (25% "
                         "of ", 12 * Cost(100), " bytes)"));
  const ResultStoreStats stats = store.Stats();
  EXPECT_EQ(stats.removed[static_cast<int>(ResultRemoval::kOwnerShare)], 2);
  EXPECT_EQ(stats.owner_max_bytes, 3 * Cost(100));
  ASSERT_EQ(stats.owners.size(), 2u);
  EXPECT_EQ(stats.owners[0].owner, "alice");
  EXPECT_EQ(stats.owners[0].results, 3);
  EXPECT_EQ(stats.owners[0].bytes, 3 * Cost(100));
  EXPECT_EQ(stats.owners[1].owner, "bob");
}

TEST(ResultStore, AFullStoreEvictsFromTheOwnerHoldingTheMostNotTheOldest) {
  ResultStoreOptions options = Options(absl::Hours(1), 4 * Cost(100));
  options.max_owner_share = 1;
  ResultStore store(options);
  // Bob's one result is the oldest; Alice then fills the store.
  store.Put("bob-1", "bob", Result(0), 100, kT0);
  for (int i = 1; i <= 6; ++i) {
    store.Put(absl::StrCat("alice-", i), "alice", Result(i), 100, kT0);
  }
  EXPECT_TRUE(store.Get("bob-1", kT0).ok());
  EXPECT_FALSE(store.Get("alice-3", kT0).ok());
  EXPECT_TRUE(store.Get("alice-4", kT0).ok());
  EXPECT_EQ(store.bytes(), 4 * Cost(100));
  // Once Bob holds the most, his oldest goes.
  store.Put("bob-2", "bob", Result(7), 100, kT0);
  store.Put("bob-3", "bob", Result(8), 100, kT0);
  store.Put("bob-4", "bob", Result(9), 100, kT0);
  EXPECT_EQ(store.Stats().owners[0].bytes, 2 * Cost(100));
  EXPECT_FALSE(store.Get("bob-1", kT0).ok());
  EXPECT_FALSE(store.Get("bob-2", kT0).ok());
  EXPECT_TRUE(store.Get("alice-5", kT0).ok());
  EXPECT_TRUE(store.Get("alice-6", kT0).ok());
  EXPECT_EQ(store.bytes(), 4 * Cost(100));
}

TEST(ResultStore, ForgetSaysTheResultLeftWithItsJobRecord) {
  ResultStore store(ResultStoreOptions{});
  store.Put("job-1", "", Result(1), 100, kT0);
  store.Forget("job-1");
  store.Forget("job-9");  // Nothing stored: nothing happens.
  EXPECT_EQ(store.size(), 0);
  EXPECT_EQ(store.Get("job-1", kT0).status().message(),
            "the result of job job-1 was dropped with its job record (the "
            "server keeps a bounded number of finished jobs)");
  EXPECT_EQ(store.Stats().removed[static_cast<int>(ResultRemoval::kForgotten)],
            1);
}

}  // namespace
}  // namespace featviz::server
