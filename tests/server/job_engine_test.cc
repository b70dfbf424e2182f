// End to end: the job engine as a client sees it — SubmitJob, GetJob,
// WatchJob, CancelJob, ListJobs and GetServerStats on the real
// featviz-server; cancellation in each state, queue limits and deadlines,
// result expiry, the result cache, and many concurrent clients whose jobs
// the worker batches together.
#include <gtest/gtest.h>
#include <signal.h>

#include <atomic>
#include <cstdio>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "tests/server/server_process.h"
#include "tests/server/test_client.h"

namespace featviz::testing {
namespace {

using ::grpc::StatusCode;

std::unique_ptr<ServerProcess> StartServer(
    std::vector<std::string> flags = {}) {
  absl::StatusOr<std::unique_ptr<ServerProcess>> server =
      ServerProcess::Start(std::move(flags));
  EXPECT_TRUE(server.ok()) << server.status();
  return server.ok() ? *std::move(server) : nullptr;
}

// A long job, running alone on a server started with --max_batch_images=1,
// so that every later job stays queued behind it.
std::string StartBlocker(v1::Visualizer::Stub& stub) {
  v1::RenderRequest request = LongRequest();
  request.set_owner("blocker");
  const JobReply submitted = Submit(stub, request);
  EXPECT_TRUE(submitted.status.ok()) << submitted.status.error_message();
  const JobReply running =
      WaitForState(stub, submitted.job.id(), v1::JOB_STATE_RUNNING);
  EXPECT_EQ(running.job.state(), v1::JOB_STATE_RUNNING);
  return submitted.job.id();
}

v1::RenderRequest Owned(v1::RenderRequest request, const std::string& owner) {
  request.set_owner(owner);
  return request;
}

TEST(JobEngineTest, SubmitGetWatchAndListRoundTrip) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  auto stub = server->NewStub();

  v1::RenderRequest request = Owned(TextRequest("logit(3)", 32), "alice");
  request.set_priority(2);
  const JobReply submitted = Submit(*stub, request);
  ASSERT_TRUE(submitted.status.ok()) << submitted.status.error_message();
  const v1::Job& job = submitted.job;
  EXPECT_NE(job.id(), "");
  EXPECT_TRUE(job.state() == v1::JOB_STATE_QUEUED ||
              job.state() == v1::JOB_STATE_RUNNING)
      << v1::JobState_Name(job.state());
  EXPECT_EQ(job.owner(), "alice");
  EXPECT_EQ(job.priority(), 2);
  EXPECT_EQ(job.model(), kModel);
  EXPECT_EQ(job.objective(), "logit(3)");
  EXPECT_EQ(job.total_steps(), 32);
  EXPECT_FALSE(job.cached());
  EXPECT_GT(job.create_time().seconds(), 0);

  const RenderOutcome watched = Watch(*stub, job.id());
  ASSERT_TRUE(watched.status.ok()) << watched.status.error_message();
  ASSERT_TRUE(watched.result.has_value());
  EXPECT_EQ(watched.results, 1);
  EXPECT_FALSE(watched.progress_after_result);
  EXPECT_EQ(watched.result->steps(), 32);
  EXPECT_EQ(watched.result->objective(), "logit(3)");

  const JobReply done = Get(*stub, job.id(), /*include_result=*/true);
  ASSERT_TRUE(done.status.ok()) << done.status.error_message();
  EXPECT_EQ(done.job.state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(done.job.steps_done(), 32);
  EXPECT_EQ(done.job.device(), "cpu");
  EXPECT_EQ(done.job.error_code(), 0);
  EXPECT_TRUE(done.job.has_start_time());
  EXPECT_TRUE(done.job.has_end_time());
  EXPECT_GE(done.job.end_time().seconds(), done.job.start_time().seconds());
  ASSERT_TRUE(done.job.has_result());
  EXPECT_EQ(done.job.result().SerializeAsString(),
            watched.result->SerializeAsString());
  // Without include_result, no result.
  EXPECT_FALSE(Get(*stub, job.id()).job.has_result());
  // Watching a finished job sends its result at once.
  const RenderOutcome again = Watch(*stub, job.id());
  ASSERT_TRUE(again.status.ok()) << again.status.error_message();
  EXPECT_TRUE(again.progress.empty());
  ASSERT_TRUE(again.result.has_value());
  EXPECT_EQ(again.result->images().data(), watched.result->images().data());

  // A second job of bob's, then lists: newest first, filtered, paged.
  const JobReply bobs = Submit(*stub, Owned(TextRequest("logit(5)", 8), "bob"));
  ASSERT_TRUE(bobs.status.ok());
  ASSERT_TRUE(Watch(*stub, bobs.job.id()).status.ok());
  {
    grpc::ClientContext context;
    v1::ListJobsResponse all;
    ASSERT_TRUE(stub->ListJobs(&context, {}, &all).ok());
    ASSERT_EQ(all.jobs_size(), 2);
    EXPECT_EQ(all.jobs(0).id(), bobs.job.id());
    EXPECT_EQ(all.jobs(1).id(), job.id());
    EXPECT_FALSE(all.jobs(0).has_result());
    EXPECT_EQ(all.next_page_token(), "");
  }
  {
    v1::ListJobsRequest list;
    list.set_owner("alice");
    list.set_state(v1::JOB_STATE_SUCCEEDED);
    grpc::ClientContext context;
    v1::ListJobsResponse alices;
    ASSERT_TRUE(stub->ListJobs(&context, list, &alices).ok());
    ASSERT_EQ(alices.jobs_size(), 1);
    EXPECT_EQ(alices.jobs(0).id(), job.id());
  }
  {
    v1::ListJobsRequest list;
    list.set_state(v1::JOB_STATE_RUNNING);
    grpc::ClientContext context;
    v1::ListJobsResponse running;
    ASSERT_TRUE(stub->ListJobs(&context, list, &running).ok());
    EXPECT_EQ(running.jobs_size(), 0);
  }
  {
    v1::ListJobsRequest list;
    list.set_page_size(1);
    grpc::ClientContext first_context;
    v1::ListJobsResponse first;
    ASSERT_TRUE(stub->ListJobs(&first_context, list, &first).ok());
    ASSERT_EQ(first.jobs_size(), 1);
    EXPECT_EQ(first.jobs(0).id(), bobs.job.id());
    ASSERT_NE(first.next_page_token(), "");
    list.set_page_token(first.next_page_token());
    grpc::ClientContext second_context;
    v1::ListJobsResponse second;
    ASSERT_TRUE(stub->ListJobs(&second_context, list, &second).ok());
    ASSERT_EQ(second.jobs_size(), 1);
    EXPECT_EQ(second.jobs(0).id(), job.id());
    EXPECT_EQ(second.next_page_token(), "");
    list.set_page_token("forged");
    grpc::ClientContext bad_context;
    v1::ListJobsResponse bad;
    EXPECT_EQ(stub->ListJobs(&bad_context, list, &bad).error_code(),
              StatusCode::INVALID_ARGUMENT);
  }

  // Unknown ids and bad scheduling fields.
  EXPECT_EQ(Get(*stub, "999999").status.error_code(), StatusCode::NOT_FOUND);
  EXPECT_EQ(Watch(*stub, "nope").status.error_code(), StatusCode::NOT_FOUND);
  EXPECT_EQ(Cancel(*stub, "nope").status.error_code(), StatusCode::NOT_FOUND);
  v1::RenderRequest bad = TextRequest("logit(3)", 8);
  bad.set_priority(11);
  JobReply refused = Submit(*stub, bad);
  EXPECT_EQ(refused.status.error_code(), StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(refused.status.error_message(),
            "priority must be in [-10, 10], got 11");
  bad.set_priority(0);
  bad.set_queue_timeout_seconds(-1);
  refused = Submit(*stub, bad);
  EXPECT_EQ(refused.status.error_code(), StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(refused.status.error_message().find("queue_timeout_seconds"),
            std::string::npos)
      << refused.status.error_message();
  // Render refuses the same way.
  EXPECT_EQ(RenderAll(*stub, bad, 30).status.error_code(),
            StatusCode::INVALID_ARGUMENT);
}

TEST(JobEngineTest, CancelEndsAJobInEachStateAndLeavesFinishedOnesAlone) {
  auto server = StartServer({"--max_batch_images=1"});
  ASSERT_NE(server, nullptr);
  auto stub = server->NewStub();
  const std::string blocker = StartBlocker(*stub);

  // Queued: it waits behind the blocker, and leaves the queue at once.
  const JobReply queued = Submit(*stub, TextRequest("logit(1)", 8));
  ASSERT_TRUE(queued.status.ok());
  EXPECT_EQ(queued.job.state(), v1::JOB_STATE_QUEUED);
  JobReply cancelled = Cancel(*stub, queued.job.id());
  ASSERT_TRUE(cancelled.status.ok()) << cancelled.status.error_message();
  EXPECT_EQ(cancelled.job.state(), v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(cancelled.job.error_code(),
            static_cast<int>(StatusCode::CANCELLED));
  EXPECT_EQ(cancelled.job.steps_done(), 0);
  EXPECT_FALSE(cancelled.job.has_start_time());
  EXPECT_EQ(Watch(*stub, queued.job.id()).status.error_code(),
            StatusCode::CANCELLED);

  // Running: a watcher sees it end CANCELLED; CancelJob answers once it has.
  RenderOutcome watched;
  std::thread watcher([&] { watched = Watch(*stub, blocker); });
  absl::SleepFor(absl::Milliseconds(300));
  cancelled = Cancel(*stub, blocker);
  ASSERT_TRUE(cancelled.status.ok()) << cancelled.status.error_message();
  EXPECT_EQ(cancelled.job.state(), v1::JOB_STATE_CANCELLED);
  EXPECT_LT(cancelled.job.steps_done(), 10000);
  EXPECT_NE(cancelled.job.error_message().find("cancelled by the client"),
            std::string::npos)
      << cancelled.job.error_message();
  watcher.join();
  EXPECT_EQ(watched.status.error_code(), StatusCode::CANCELLED);
  EXPECT_FALSE(watched.result.has_value());

  // Succeeded: the worker is free again, and cancelling changes nothing.
  const JobReply small = Submit(*stub, TextRequest("logit(2)", 8));
  ASSERT_TRUE(small.status.ok());
  ASSERT_TRUE(Watch(*stub, small.job.id()).status.ok());
  cancelled = Cancel(*stub, small.job.id());
  ASSERT_TRUE(cancelled.status.ok());
  EXPECT_EQ(cancelled.job.state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(cancelled.job.error_code(), 0);
  EXPECT_TRUE(Get(*stub, small.job.id(), true).job.has_result());

  const v1::ServerStats stats = Stats(*stub);
  EXPECT_EQ(stats.jobs_cancelled(), 2);
  EXPECT_EQ(stats.jobs_succeeded(), 1);
  EXPECT_EQ(stats.queued_jobs(), 0);
  EXPECT_EQ(stats.running_jobs(), 0);
}

TEST(JobEngineTest, FullQueueIsRefusedAtOnceInAllAndPerOwner) {
  auto server = StartServer({"--max_batch_images=1", "--max_queued_jobs=2",
                             "--max_queued_per_owner=1"});
  ASSERT_NE(server, nullptr);
  auto stub = server->NewStub();
  const std::string blocker = StartBlocker(*stub);

  const JobReply first =
      Submit(*stub, Owned(TextRequest("logit(1)", 8), "bob"));
  ASSERT_TRUE(first.status.ok()) << first.status.error_message();
  JobReply refused = Submit(*stub, Owned(TextRequest("logit(2)", 8), "bob"));
  EXPECT_EQ(refused.status.error_code(), StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(refused.status.error_message(),
            "owner 'bob' already has 1 queued jobs, the server's "
            "max_queued_per_owner");
  const JobReply second =
      Submit(*stub, Owned(TextRequest("logit(2)", 8), "carol"));
  ASSERT_TRUE(second.status.ok()) << second.status.error_message();
  refused = Submit(*stub, Owned(TextRequest("logit(3)", 8), "dave"));
  EXPECT_EQ(refused.status.error_code(), StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(refused.status.error_message(),
            "the queue holds 2 jobs, the server's max_queued_jobs");
  // Render is refused the same way.
  EXPECT_EQ(RenderAll(*stub, Owned(TextRequest("logit(3)", 8), "dave"), 30)
                .status.error_code(),
            StatusCode::RESOURCE_EXHAUSTED);

  const v1::ServerStats stats = Stats(*stub);
  EXPECT_EQ(stats.queued_jobs(), 2);
  EXPECT_EQ(stats.running_jobs(), 1);
  ASSERT_EQ(stats.queue_depth_size(), 1);
  EXPECT_EQ(stats.queue_depth(0).priority(), 0);
  EXPECT_EQ(stats.queue_depth(0).jobs(), 2);

  // A place freed by a cancel is taken again.
  ASSERT_TRUE(Cancel(*stub, first.job.id()).status.ok());
  EXPECT_TRUE(
      Submit(*stub, Owned(TextRequest("logit(2)", 8), "bob")).status.ok());
  ASSERT_TRUE(Cancel(*stub, blocker).status.ok());
}

TEST(JobEngineTest, JobPastItsQueueDeadlineExpiresAndARequestCannotExtendIt) {
  auto server = StartServer(
      {"--max_batch_images=1", "--default_queue_timeout_seconds=1"});
  ASSERT_NE(server, nullptr);
  auto stub = server->NewStub();
  const std::string blocker = StartBlocker(*stub);

  v1::RenderRequest shorter = TextRequest("logit(1)", 8);
  shorter.set_queue_timeout_seconds(0.3);
  v1::RenderRequest longer = TextRequest("logit(2)", 8);
  longer.set_queue_timeout_seconds(100);
  const JobReply short_job = Submit(*stub, shorter);
  const JobReply long_job = Submit(*stub, longer);
  ASSERT_TRUE(short_job.status.ok());
  ASSERT_TRUE(long_job.status.ok());

  const RenderOutcome short_outcome = Watch(*stub, short_job.job.id());
  EXPECT_EQ(short_outcome.status.error_code(), StatusCode::DEADLINE_EXCEEDED);
  EXPECT_NE(short_outcome.status.error_message().find(
                absl::StrCat("job ", short_job.job.id(), " waited ")),
            std::string::npos)
      << short_outcome.status.error_message();
  EXPECT_NE(short_outcome.status.error_message().find(
                "s in the queue, past its queue deadline"),
            std::string::npos)
      << short_outcome.status.error_message();

  // 100 s asked, the server's 1 s applies: it expires while the blocker
  // still runs. (Which deadline applies is checked against a clock the test
  // sets in engine_test.cc; here, only that both end.)
  const RenderOutcome long_outcome = Watch(*stub, long_job.job.id());
  EXPECT_EQ(long_outcome.status.error_code(), StatusCode::DEADLINE_EXCEEDED)
      << long_outcome.status.error_message();

  for (const std::string& id : {short_job.job.id(), long_job.job.id()}) {
    const JobReply expired = Get(*stub, id);
    EXPECT_EQ(expired.job.state(), v1::JOB_STATE_EXPIRED);
    EXPECT_EQ(expired.job.error_code(),
              static_cast<int>(StatusCode::DEADLINE_EXCEEDED));
  }
  EXPECT_EQ(Stats(*stub).jobs_expired(), 2);
  EXPECT_EQ(Get(*stub, blocker).job.state(), v1::JOB_STATE_RUNNING);
  ASSERT_TRUE(Cancel(*stub, blocker).status.ok());
}

TEST(JobEngineTest, ResultIsGoneAfterItsTimeToLive) {
  auto server = StartServer({"--result_ttl_seconds=1"});
  ASSERT_NE(server, nullptr);
  auto stub = server->NewStub();
  const JobReply job = Submit(*stub, TextRequest("logit(4)", 8));
  ASSERT_TRUE(job.status.ok());
  ASSERT_TRUE(Watch(*stub, job.job.id()).status.ok());
  // Read back until the time to live has passed (however long the machine
  // takes to get here); ResultStoreTest checks the boundary with a set clock.
  JobReply gone;
  const absl::Time give_up = absl::Now() + absl::Seconds(60);
  do {
    gone = Get(*stub, job.job.id(), true);
    if (gone.status.ok()) absl::SleepFor(absl::Milliseconds(100));
  } while (gone.status.ok() && absl::Now() < give_up);
  EXPECT_EQ(gone.status.error_code(), StatusCode::NOT_FOUND);
  EXPECT_NE(gone.status.error_message().find("expired"), std::string::npos)
      << gone.status.error_message();
  EXPECT_EQ(Watch(*stub, job.job.id()).status.error_code(),
            StatusCode::NOT_FOUND);
  // The record itself stays.
  const JobReply record = Get(*stub, job.job.id());
  ASSERT_TRUE(record.status.ok());
  EXPECT_EQ(record.job.state(), v1::JOB_STATE_SUCCEEDED);
}

TEST(JobEngineTest, IdenticalSeededRequestIsAnsweredFromTheCache) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  auto stub = server->NewStub();

  v1::RenderRequest request =
      Owned(TextRequest("logit(3) - 0.01 * tv()", 16), "alice");
  request.set_seed(42);
  const JobReply first = Submit(*stub, request);
  ASSERT_TRUE(first.status.ok());
  ASSERT_TRUE(Watch(*stub, first.job.id()).status.ok());

  // The same render asked differently: another owner and priority, the
  // objective as a tree, the defaults spelled out.
  v1::RenderRequest same = request;
  same.set_owner("bob");
  same.set_priority(5);
  same.mutable_image()->set_batch(1);
  same.mutable_optimizer()->set_lr(0.05);
  v1::Objective* tree = same.mutable_objective_tree();
  v1::WeightedTerm* logit = tree->add_terms();
  logit->set_weight(1);
  logit->mutable_term()->set_kind(v1::TERM_KIND_LOGIT);
  logit->mutable_term()->set_index(3);
  v1::WeightedTerm* tv = tree->add_terms();
  tv->set_weight(-0.01);
  tv->mutable_term()->set_kind(v1::TERM_KIND_TV);
  const JobReply second = Submit(*stub, same);
  ASSERT_TRUE(second.status.ok());
  EXPECT_NE(second.job.id(), first.job.id());
  EXPECT_EQ(second.job.state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_TRUE(second.job.cached());
  EXPECT_EQ(second.job.owner(), "bob");
  const JobReply first_result = Get(*stub, first.job.id(), true);
  const JobReply second_result = Get(*stub, second.job.id(), true);
  ASSERT_TRUE(first_result.job.has_result());
  ASSERT_TRUE(second_result.job.has_result());
  EXPECT_EQ(second_result.job.result().SerializeAsString(),
            first_result.job.result().SerializeAsString());
  EXPECT_FALSE(first_result.job.cached());

  // Render goes through the same cache.
  const RenderOutcome rendered = RenderAll(*stub, request);
  ASSERT_TRUE(rendered.status.ok());
  ASSERT_TRUE(rendered.result.has_value());
  EXPECT_EQ(rendered.result->SerializeAsString(),
            first_result.job.result().SerializeAsString());

  // Another seed, or no seed, is another render.
  v1::RenderRequest other = request;
  other.set_seed(43);
  const JobReply third = Submit(*stub, other);
  ASSERT_TRUE(third.status.ok());
  EXPECT_FALSE(third.job.cached());
  const RenderOutcome third_outcome = Watch(*stub, third.job.id());
  ASSERT_TRUE(third_outcome.status.ok());
  EXPECT_NE(third_outcome.result->images().data(),
            first_result.job.result().images().data());
  v1::RenderRequest unseeded = request;
  unseeded.clear_seed();
  const JobReply fourth = Submit(*stub, unseeded);
  ASSERT_TRUE(fourth.status.ok());
  EXPECT_FALSE(fourth.job.cached());
  ASSERT_TRUE(Watch(*stub, fourth.job.id()).status.ok());

  const v1::ServerStats stats = Stats(*stub);
  EXPECT_EQ(stats.cache_hits(), 2);
  EXPECT_EQ(stats.cache_misses(), 2);  // Seeds 42 and 43; unseeded is neither.
  EXPECT_EQ(stats.jobs_submitted(), 5);
  EXPECT_EQ(stats.jobs_succeeded(), 5);
  EXPECT_EQ(stats.results_stored(), 5);
  EXPECT_GT(stats.result_bytes(), 0);
}

TEST(JobEngineTest, SigtermEndsEveryJobForItsWatchersAndExitsZero) {
  auto server =
      StartServer({"--max_batch_images=1", "--shutdown_grace_seconds=0.5"});
  ASSERT_NE(server, nullptr);
  auto stub = server->NewStub();
  const std::string blocker = StartBlocker(*stub);
  const JobReply queued = Submit(*stub, TextRequest("logit(1)", 8));
  ASSERT_TRUE(queued.status.ok());
  ASSERT_EQ(queued.job.state(), v1::JOB_STATE_QUEUED);

  // Both watches in place (their initial metadata says so) before the signal.
  grpc::ClientContext running_context;
  grpc::ClientContext queued_context;
  running_context.set_deadline(After(120));
  queued_context.set_deadline(After(120));
  v1::WatchJobRequest watch_running;
  watch_running.set_id(blocker);
  v1::WatchJobRequest watch_queued;
  watch_queued.set_id(queued.job.id());
  auto running_reader = stub->WatchJob(&running_context, watch_running);
  auto queued_reader = stub->WatchJob(&queued_context, watch_queued);
  running_reader->WaitForInitialMetadata();
  queued_reader->WaitForInitialMetadata();
  RenderOutcome running_outcome;
  RenderOutcome queued_outcome;
  std::thread running_watcher(
      [&] { running_outcome = ReadAll(*running_reader); });
  std::thread queued_watcher([&] { queued_outcome = ReadAll(*queued_reader); });
  server->Signal(SIGTERM);
  running_watcher.join();
  queued_watcher.join();

  EXPECT_EQ(queued_outcome.status.error_code(), StatusCode::UNAVAILABLE);
  EXPECT_EQ(queued_outcome.status.error_message(),
            "server is shutting down; the render had not started");
  EXPECT_EQ(running_outcome.status.error_code(), StatusCode::CANCELLED);
  EXPECT_NE(running_outcome.status.error_message().find(
                "server shut down before the render finished"),
            std::string::npos)
      << running_outcome.status.error_message();
  absl::StatusOr<int> exit_code = server->WaitForExit(absl::Seconds(60));
  ASSERT_TRUE(exit_code.ok()) << exit_code.status();
  EXPECT_EQ(*exit_code, 0);
}

// 64 clients x 4 jobs each, at once: every job succeeds with its own
// result, none lost or duplicated, and the worker batched them.
TEST(JobEngineTest, ManyConcurrentClientsAllGetTheirOwnResultsBatched) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  constexpr int kClients = 64;
  constexpr int kJobsEach = 4;

  auto request_for = [](int client, int j) {
    const int n = client * kJobsEach + j;
    const std::string objective =
        n % 2 == 0 ? absl::StrCat("channel(conv2, ", n % 16, ")")
                   : absl::StrCat("logit(", n % 10, ")");
    v1::RenderRequest request = TextRequest(objective, 32 + (n * 7) % 33);
    request.set_owner(absl::StrCat("client", client % 8));
    request.set_seed(1000 + n);
    request.mutable_output()->set_png(false);
    return request;
  };

  struct Done {
    std::string id;
    grpc::Status status;
    std::optional<v1::RenderResult> result;
    int results = 0;
  };
  std::vector<std::vector<Done>> done(kClients, std::vector<Done>(kJobsEach));
  const absl::Time start = absl::Now();
  std::vector<std::thread> clients;
  for (int c = 0; c < kClients; ++c) {
    clients.emplace_back([&, c] {
      auto stub = server->NewStub();
      for (int j = 0; j < kJobsEach; ++j) {
        const v1::RenderRequest request = request_for(c, j);
        Done& d = done[c][j];
        if ((c + j) % 2 == 0) {
          // Render: submit and watch in one call.
          grpc::ClientContext context;
          context.set_deadline(After(170));
          auto reader = stub->Render(&context, request);
          const RenderOutcome outcome = ReadAll(*reader);
          const auto& metadata = context.GetServerInitialMetadata();
          auto it = metadata.find("featviz-job-id");
          if (it != metadata.end())
            d.id.assign(it->second.data(), it->second.size());
          d.status = outcome.status;
          d.result = outcome.result;
          d.results = outcome.results;
        } else {
          const JobReply submitted = Submit(*stub, request);
          d.id = submitted.job.id();
          if (!submitted.status.ok()) {
            d.status = submitted.status;
            continue;
          }
          const RenderOutcome outcome = Watch(*stub, d.id, 170);
          d.status = outcome.status;
          d.result = outcome.result;
          d.results = outcome.results;
        }
      }
    });
  }
  for (std::thread& client : clients) client.join();
  const double seconds = absl::ToDoubleSeconds(absl::Now() - start);

  auto stub = server->NewStub();
  std::set<std::string> ids;
  int64_t job_steps = 0;
  for (int c = 0; c < kClients; ++c) {
    for (int j = 0; j < kJobsEach; ++j) {
      SCOPED_TRACE(absl::StrCat("client ", c, " job ", j));
      const v1::RenderRequest request = request_for(c, j);
      const Done& d = done[c][j];
      ASSERT_TRUE(d.status.ok())
          << d.status.error_code() << " " << d.status.error_message();
      ASSERT_TRUE(d.result.has_value());
      EXPECT_EQ(d.results, 1);
      EXPECT_FALSE(d.id.empty());
      ids.insert(d.id);
      EXPECT_EQ(d.result->objective(), request.objective_text());
      EXPECT_EQ(d.result->seed(), request.seed());
      EXPECT_EQ(d.result->steps(), request.optimizer().steps());
      ASSERT_EQ(d.result->terms_size(), 1);
      EXPECT_EQ(d.result->terms(0).trace_size(), request.optimizer().steps());
      job_steps += request.optimizer().steps();
      const JobReply record = Get(*stub, d.id);
      EXPECT_EQ(record.job.state(), v1::JOB_STATE_SUCCEEDED);
      EXPECT_FALSE(record.job.cached());
    }
  }
  EXPECT_EQ(ids.size(), static_cast<size_t>(kClients * kJobsEach));

  const v1::ServerStats stats = Stats(*stub);
  EXPECT_EQ(stats.jobs_submitted(), kClients * kJobsEach);
  EXPECT_EQ(stats.jobs_succeeded(), kClients * kJobsEach);
  EXPECT_EQ(stats.jobs_failed() + stats.jobs_cancelled() + stats.jobs_expired(),
            0);
  EXPECT_EQ(stats.queued_jobs(), 0);
  EXPECT_EQ(stats.running_jobs(), 0);
  EXPECT_EQ(stats.cache_hits(), 0);
  EXPECT_EQ(stats.cache_misses(), kClients * kJobsEach);
  EXPECT_EQ(stats.results_stored(), kClients * kJobsEach);
  ASSERT_EQ(stats.devices_size(), 1);
  const v1::DeviceStats& device = stats.devices(0);
  EXPECT_EQ(device.device(), "cpu");
  EXPECT_EQ(device.running_jobs(), 0);
  // Batched: fewer steps than the jobs' steps, several images per step.
  EXPECT_LT(device.steps_total(), job_steps);
  EXPECT_GT(device.batch_occupancy() * 256, 1.0);
  EXPECT_LE(device.batch_occupancy(), 1.0);
  EXPECT_GT(device.steps_per_second(), 0);
  EXPECT_GT(device.image_steps_per_second(), device.steps_per_second());
  std::printf(
      "load: %d jobs, %lld job steps in %lld batched steps, %.1f s, "
      "occupancy %.3f (%.1f images/step)\n",
      kClients * kJobsEach, static_cast<long long>(job_steps),
      static_cast<long long>(device.steps_total()), seconds,
      device.batch_occupancy(), device.batch_occupancy() * 256);

  // A few jobs again, each alone: bitwise the same as in the crowd. A
  // different progress_every keeps the cache out of it and changes nothing
  // of the render.
  for (int c : {0, 1, 21, 63}) {
    for (int j : {0, 3}) {
      SCOPED_TRACE(absl::StrCat("alone: client ", c, " job ", j));
      v1::RenderRequest request = request_for(c, j);
      request.mutable_output()->set_progress_every(1000);
      const RenderOutcome alone = RenderAll(*stub, request);
      ASSERT_TRUE(alone.status.ok()) << alone.status.error_message();
      const v1::RenderResult& crowd = *done[c][j].result;
      EXPECT_EQ(alone.result->images().data(), crowd.images().data());
      EXPECT_EQ(alone.result->final_total(), crowd.final_total());
      EXPECT_EQ(alone.result->terms(0).final_value(),
                crowd.terms(0).final_value());
      EXPECT_EQ(alone.result->logits().data(), crowd.logits().data());
    }
  }
}

}  // namespace
}  // namespace featviz::testing
