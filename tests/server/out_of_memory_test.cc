// End to end: a worker whose device runs out of memory. featviz-server's
// test-only --fault_oom_above_images makes every step of more images than
// that fail exactly as a full device does (core::StepOptions), so the
// recovery path runs on the CPU: batches split and retried, a job too large
// to run alone failing with RESOURCE_EXHAUSTED, the worker serving on.
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "tests/server/server_process.h"
#include "tests/server/test_client.h"

namespace featviz::testing {
namespace {

std::unique_ptr<ServerProcess> StartServer(std::vector<std::string> flags) {
  absl::StatusOr<std::unique_ptr<ServerProcess>> server =
      ServerProcess::Start(std::move(flags));
  EXPECT_TRUE(server.ok()) << server.status();
  return server.ok() ? *std::move(server) : nullptr;
}

v1::RenderRequest Job(int n, int64_t batch) {
  v1::RenderRequest request =
      TextRequest(absl::StrCat("logit(", n % 10, ") - 0.01 * tv()"), 48);
  request.set_seed(500 + n);
  request.mutable_image()->set_batch(batch);
  request.mutable_output()->set_png(false);
  return request;
}

// Submits every request at once (so the worker batches them) and watches
// each to its end.
std::vector<RenderOutcome> RenderAllAtOnce(
    ServerProcess& server, const std::vector<v1::RenderRequest>& requests) {
  std::vector<RenderOutcome> outcomes(requests.size());
  std::vector<std::thread> clients;
  for (size_t i = 0; i < requests.size(); ++i) {
    clients.emplace_back([&, i] {
      auto stub = server.NewStub();
      outcomes[i] = RenderAll(*stub, requests[i]);
    });
  }
  for (std::thread& t : clients) t.join();
  return outcomes;
}

TEST(OutOfMemoryTest, BatchesSplitTooLargeJobsFailAndTheWorkerServesOn) {
  auto full = StartServer({"--fault_oom_above_images=3"});
  auto roomy = StartServer({});
  ASSERT_NE(full, nullptr);
  ASSERT_NE(roomy, nullptr);

  // Eight one-image jobs: batched, they exceed what the device holds, so
  // the worker splits their steps; each job still gets the images it gets
  // on a server with room to spare.
  std::vector<v1::RenderRequest> small;
  for (int n = 0; n < 8; ++n) small.push_back(Job(n, 1));
  const std::vector<RenderOutcome> split = RenderAllAtOnce(*full, small);
  const std::vector<RenderOutcome> whole = RenderAllAtOnce(*roomy, small);
  for (size_t i = 0; i < small.size(); ++i) {
    ASSERT_TRUE(split[i].status.ok()) << i << ": " << split[i].status.error_message();
    ASSERT_TRUE(whole[i].status.ok()) << i << ": " << whole[i].status.error_message();
    ASSERT_TRUE(split[i].result.has_value() && whole[i].result.has_value());
    EXPECT_EQ(split[i].result->images().data(), whole[i].result->images().data())
        << "job " << i;
  }

  // A job of four images cannot fit even alone: RESOURCE_EXHAUSTED, saying
  // so; jobs submitted with it are not harmed.
  std::vector<v1::RenderRequest> mixed = {Job(20, 4), Job(21, 1), Job(22, 2)};
  const std::vector<RenderOutcome> outcomes = RenderAllAtOnce(*full, mixed);
  EXPECT_EQ(outcomes[0].status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(outcomes[0].status.error_message().find("does not fit"),
            std::string::npos)
      << outcomes[0].status.error_message();
  EXPECT_NE(outcomes[0].status.error_message().find("out of memory"),
            std::string::npos)
      << outcomes[0].status.error_message();
  EXPECT_TRUE(outcomes[1].status.ok()) << outcomes[1].status.error_message();
  EXPECT_TRUE(outcomes[2].status.ok()) << outcomes[2].status.error_message();

  // The worker keeps serving: a later job renders, the server is healthy.
  auto stub = full->NewStub();
  const RenderOutcome later = RenderAll(*stub, Job(30, 3));
  EXPECT_TRUE(later.status.ok()) << later.status.error_message();
  EXPECT_TRUE(later.result.has_value());
}

}  // namespace
}  // namespace featviz::testing
