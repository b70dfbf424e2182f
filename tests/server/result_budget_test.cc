// End to end against the real featviz-server: one owner cannot push
// everyone else's results out of the result store. With a small budget and
// a half share, Alice floods the server with renders; Bob's one result stays,
// Alice loses her own oldest results (GetJob says why), and GetServerStats
// shows each owner's bytes within the share and the removals by reason.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <grpcpp/grpcpp.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "featviz/v1/featviz.grpc.pb.h"
#include "tests/server/server_process.h"
#include "tests/server/test_client.h"

namespace featviz::testing {
namespace {

constexpr char kAliceToken[] = "alice-budget-0123456789-token";
constexpr char kBobToken[] = "bob-budget-0123456789-token";
constexpr char kOpsToken[] = "ops-budget-0123456789-token";
// About ten one-image results with their tensors and PNGs.
constexpr int64_t kBudget = 96 * 1024;

std::unique_ptr<grpc::ClientContext> Context(const std::string& token) {
  auto context = std::make_unique<grpc::ClientContext>();
  context->set_deadline(After(120));
  context->AddMetadata("authorization", absl::StrCat("Bearer ", token));
  return context;
}

// A job of `token`'s client, run to its end; its id.
std::string RunJob(v1::Visualizer::Stub& stub, const std::string& token,
                   int64_t seed) {
  v1::SubmitJobRequest submit;
  *submit.mutable_request() = TextRequest("conv2:3", 2);
  submit.mutable_request()->set_seed(static_cast<uint64_t>(seed));
  v1::Job job;
  const grpc::Status submitted = stub.SubmitJob(Context(token).get(), submit, &job);
  EXPECT_TRUE(submitted.ok()) << submitted.error_message();
  v1::WatchJobRequest watch;
  watch.set_id(job.id());
  auto context = Context(token);
  std::unique_ptr<grpc::ClientReader<v1::RenderEvent>> reader =
      stub.WatchJob(context.get(), watch);
  const RenderOutcome outcome = ReadAll(*reader);
  EXPECT_TRUE(outcome.status.ok()) << outcome.status.error_message();
  return job.id();
}

grpc::Status GetResult(v1::Visualizer::Stub& stub, const std::string& token,
                       const std::string& id) {
  v1::GetJobRequest request;
  request.set_id(id);
  request.set_include_result(true);
  v1::Job job;
  return stub.GetJob(Context(token).get(), request, &job);
}

TEST(ResultBudgetTest, OneOwnerFloodingTheStoreEvictsOnlyItsOwnResults) {
  const std::string tokens =
      absl::StrCat(::testing::TempDir(), "/featviz_budget_tokens_", getpid());
  {
    std::ofstream out(tokens);
    out << kAliceToken << " alice user\n"
        << kBobToken << " bob user\n"
        << kOpsToken << " ops admin\n";
  }
  absl::StatusOr<std::unique_ptr<ServerProcess>> server = ServerProcess::Start(
      {"--tokens_file=" + tokens, absl::StrCat("--result_store_bytes=", kBudget),
       "--result_owner_share=0.5"});
  ASSERT_TRUE(server.ok()) << server.status();
  auto stub = v1::Visualizer::NewStub(
      grpc::CreateChannel((*server)->address(), grpc::InsecureChannelCredentials()));

  const std::string bob = RunJob(*stub, kBobToken, 1);
  std::vector<std::string> alice;
  for (int i = 0; i < 16; ++i) alice.push_back(RunJob(*stub, kAliceToken, 100 + i));

  EXPECT_TRUE(GetResult(*stub, kBobToken, bob).ok());
  EXPECT_TRUE(GetResult(*stub, kAliceToken, alice.back()).ok());
  const grpc::Status first = GetResult(*stub, kAliceToken, alice.front());
  EXPECT_EQ(first.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_TRUE(absl::StrContains(first.error_message(),
                                "owner 'alice''s results reached its share"))
      << first.error_message();

  v1::ServerStats stats;
  const grpc::Status got = stub->GetServerStats(
      Context(kOpsToken).get(), v1::GetServerStatsRequest(), &stats);
  ASSERT_TRUE(got.ok()) << got.error_message();
  EXPECT_EQ(stats.result_max_bytes(), kBudget);
  EXPECT_EQ(stats.result_owner_max_bytes(), kBudget / 2);
  EXPECT_LE(stats.result_bytes(), kBudget);
  EXPECT_GT(stats.results_removed().at("owner_share"), 0);
  EXPECT_EQ(stats.results_removed().at("evicted"), 0);
  ASSERT_EQ(stats.result_owners_size(), 2);
  for (const v1::OwnerResultUsage& owner : stats.result_owners()) {
    EXPECT_LE(owner.bytes(), kBudget / 2) << owner.owner();
  }
  EXPECT_EQ(stats.result_owners(0).owner(), "alice");
  EXPECT_EQ(stats.result_owners(1).owner(), "bob");
  EXPECT_EQ(stats.result_owners(1).results(), 1);
  std::remove(tokens.c_str());
}

}  // namespace
}  // namespace featviz::testing
