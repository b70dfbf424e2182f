// End to end: what happens to renders that do not simply run to the end —
// cancelled by the client, past their deadline, refused by a full queue, or
// caught by a server shutdown — and that the worker is free afterwards.
#include <signal.h>

#include <memory>
#include <string>
#include <thread>

#include <gtest/gtest.h>

#include "absl/time/clock.h"
#include "tests/server/server_process.h"
#include "tests/server/test_client.h"

namespace featviz::testing {
namespace {

using ::grpc::StatusCode;
using Health = ::grpc::health::v1::HealthCheckResponse;

// A Render call left open for the test to drive.
class OpenRender {
 public:
  OpenRender(v1::Visualizer::Stub& stub, const v1::RenderRequest& request) {
    context_.set_deadline(After(300));
    reader_ = stub.Render(&context_, request);
  }
  // Reads `n` progress events; false when the stream ended first.
  bool ReadProgress(int n) {
    v1::RenderEvent event;
    for (int i = 0; i < n; ++i) {
      if (!reader_->Read(&event) || !event.has_progress()) return false;
    }
    return true;
  }
  // Waits until the server has accepted and queued the render.
  std::string WaitUntilAccepted() {
    reader_->WaitForInitialMetadata();
    const auto& metadata = context_.GetServerInitialMetadata();
    auto it = metadata.find("featviz-job-id");
    return it == metadata.end() ? "" : std::string(it->second.data(), it->second.size());
  }
  void Cancel() { context_.TryCancel(); }
  RenderOutcome Finish() { return ReadAll(*reader_); }

 private:
  grpc::ClientContext context_;
  std::unique_ptr<grpc::ClientReader<v1::RenderEvent>> reader_;
};

std::unique_ptr<ServerProcess> StartServer(std::vector<std::string> flags) {
  absl::StatusOr<std::unique_ptr<ServerProcess>> server =
      ServerProcess::Start(std::move(flags));
  EXPECT_TRUE(server.ok()) << server.status();
  return server.ok() ? *std::move(server) : nullptr;
}

// A short render, with a deadline far beyond its run time but far below the
// long render's: it completes only if a worker is free. A client's cancel
// reaches the server after the client has moved on, so a full queue is
// retried for a while, as a client told "try again later" would.
void ExpectASmallRenderCompletes(v1::Visualizer::Stub& stub) {
  RenderOutcome outcome;
  const absl::Time give_up = absl::Now() + absl::Seconds(120);
  do {
    outcome = RenderAll(stub, TextRequest("logit(3)", 8), 120);
    if (outcome.status.error_code() != StatusCode::RESOURCE_EXHAUSTED) break;
    absl::SleepFor(absl::Milliseconds(50));
  } while (absl::Now() < give_up);
  EXPECT_TRUE(outcome.status.ok()) << outcome.status.error_code() << " "
                                   << outcome.status.error_message();
  EXPECT_TRUE(outcome.result.has_value());
}

TEST(RenderLifecycleTest, CancellingARenderFreesItsWorker) {
  auto server = StartServer({"--max_batch_images=1"});
  ASSERT_NE(server, nullptr);
  auto stub = server->NewStub();

  OpenRender render(*stub, LongRequest());
  ASSERT_TRUE(render.ReadProgress(2));
  render.Cancel();
  EXPECT_EQ(render.Finish().status.error_code(), StatusCode::CANCELLED);

  ExpectASmallRenderCompletes(*stub);
}

TEST(RenderLifecycleTest, RenderPastItsDeadlineEndsDeadlineExceededAndFreesItsWorker) {
  auto server = StartServer({"--max_batch_images=1"});
  ASSERT_NE(server, nullptr);
  auto stub = server->NewStub();

  const RenderOutcome outcome = RenderAll(*stub, LongRequest(), 1);
  EXPECT_EQ(outcome.status.error_code(), StatusCode::DEADLINE_EXCEEDED)
      << outcome.status.error_message();
  EXPECT_FALSE(outcome.result.has_value());

  ExpectASmallRenderCompletes(*stub);
}

TEST(RenderLifecycleTest, RenderBeyondAFullQueueIsRefusedNamingTheLimit) {
  auto server = StartServer(
      {"--max_batch_images=1", "--max_queued_jobs=1"});
  ASSERT_NE(server, nullptr);
  auto stub = server->NewStub();

  OpenRender running(*stub, LongRequest());
  ASSERT_TRUE(running.ReadProgress(1));
  OpenRender waiting(*stub, LongRequest());
  EXPECT_NE(waiting.WaitUntilAccepted(), "");

  const RenderOutcome refused = RenderAll(*stub, TextRequest("logit(3)", 8), 30);
  EXPECT_EQ(refused.status.error_code(), StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(refused.status.error_message().find(
                "the queue holds 1 jobs, the server's max_queued_jobs"),
            std::string::npos)
      << refused.status.error_message();

  waiting.Cancel();
  running.Cancel();
  EXPECT_EQ(waiting.Finish().status.error_code(), StatusCode::CANCELLED);
  EXPECT_EQ(running.Finish().status.error_code(), StatusCode::CANCELLED);
  ExpectASmallRenderCompletes(*stub);
}

TEST(RenderLifecycleTest, SigtermDrainsThenCancelsRunningRendersAndExitsZero) {
  auto server = StartServer({"--max_batch_images=1",
                             "--shutdown_grace_seconds=20", kEndlessMaxSteps});
  ASSERT_NE(server, nullptr);
  auto stub = server->NewStub();

  // Endless: 10000 steps finished within the 20 s grace on a fast CPU.
  OpenRender running(*stub, LongRequest(kEndlessSteps));
  ASSERT_TRUE(running.ReadProgress(1));
  OpenRender waiting(*stub, LongRequest());
  EXPECT_NE(waiting.WaitUntilAccepted(), "");
  RenderOutcome running_outcome;
  RenderOutcome waiting_outcome;
  std::thread running_reader([&] { running_outcome = running.Finish(); });
  std::thread waiting_reader([&] { waiting_outcome = waiting.Finish(); });

  server->Signal(SIGTERM);
  // The drain starts as soon as the signal is handled: wait for it.
  HealthOutcome health;
  const absl::Time give_up = absl::Now() + absl::Seconds(30);
  do {
    health = CheckHealth(server->channel(), kServiceName);
  } while (health.status.ok() && health.serving == Health::SERVING &&
           absl::Now() < give_up);
  EXPECT_TRUE(health.status.ok()) << health.status.error_message();
  EXPECT_EQ(health.serving, Health::NOT_SERVING);
  EXPECT_EQ(CheckHealth(server->channel(), "").serving, Health::NOT_SERVING);

  // The running render is still in its grace period (20 s, so that a loaded
  // machine gets here within it; it cannot finish its steps in it): new ones
  // are refused.
  const RenderOutcome refused = RenderAll(*stub, TextRequest("logit(3)", 8), 30);
  EXPECT_EQ(refused.status.error_code(), StatusCode::UNAVAILABLE);
  EXPECT_EQ(refused.status.error_message(), "server is shutting down");

  running_reader.join();
  waiting_reader.join();
  EXPECT_EQ(running_outcome.status.error_code(), StatusCode::CANCELLED);
  EXPECT_NE(running_outcome.status.error_message().find(
                "server shut down before the render finished"),
            std::string::npos)
      << running_outcome.status.error_message();
  EXPECT_FALSE(running_outcome.result.has_value());
  EXPECT_EQ(waiting_outcome.status.error_code(), StatusCode::UNAVAILABLE);
  EXPECT_NE(waiting_outcome.status.error_message().find("had not started"),
            std::string::npos)
      << waiting_outcome.status.error_message();

  absl::StatusOr<int> exit_code = server->WaitForExit(absl::Seconds(60));
  ASSERT_TRUE(exit_code.ok()) << exit_code.status();
  EXPECT_EQ(*exit_code, 0);
}

}  // namespace
}  // namespace featviz::testing
