// The `featviz` CLI over three replicas: a target naming all three is
// balanced round-robin, every job id names the replica that ran it, and
// `featviz job ID` / `featviz cancel ID` reach that replica whichever address
// the CLI was given.
#include <unistd.h>

#include <memory>
#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "tests/client/process.h"

namespace featviz::testing {
namespace {

using nlohmann::json;

const char kCli[] = FEATVIZ_CLI_BINARY;
const char kServer[] = FEATVIZ_SERVER_BINARY;
const char kModels[] = FEATVIZ_MODELS_DIR;
constexpr int kReplicas = 3;

CommandResult Cli(const std::vector<std::string>& args) {
  std::vector<std::string> argv = {kCli};
  argv.insert(argv.end(), args.begin(), args.end());
  absl::StatusOr<CommandResult> result = RunCommand(argv);
  EXPECT_TRUE(result.ok()) << result.status();
  return result.ok() ? *result : CommandResult{};
}

// Three featviz-servers on loopback, each advertising its own address.
class BalancingTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    for (int i = 0; i < kReplicas; ++i) {
      const std::string log = absl::StrCat(::testing::TempDir(),
                                           "featviz_balancing_", getpid(), "_",
                                           i, ".log");
      absl::StatusOr<std::unique_ptr<ServerProcess>> server =
          ServerProcess::Start(kServer, kModels, log, absl::Seconds(60),
                               {"--advertise_address", "127.0.0.1"});
      if (!server.ok()) {
        start_error_ = server.status().ToString();
        return;
      }
      logs_->push_back(log);
      servers_->push_back(std::move(*server));
    }
  }
  static void TearDownTestSuite() {
    for (size_t i = 0; i < servers_->size(); ++i) {
      EXPECT_EQ((*servers_)[i]->Stop(), 0)
          << "replica " << i << " did not exit cleanly; log:\n"
          << ReadFileOrEmpty((*logs_)[i]);
    }
    servers_->clear();
  }
  void SetUp() override {
    ASSERT_EQ(servers_->size(), static_cast<size_t>(kReplicas)) << start_error_;
  }

  // "ipv4:127.0.0.1:A,127.0.0.1:B,127.0.0.1:C": one target, three replicas.
  static std::string AllReplicas() {
    std::vector<std::string> addresses;
    for (const auto& server : *servers_) addresses.push_back(server->address());
    return absl::StrCat("ipv4:", absl::StrJoin(addresses, ","));
  }

  // Renders through the balanced target; the job id the CLI reports.
  static std::string RenderOnce(int seed) {
    const CommandResult r =
        Cli({"--server", AllReplicas(), "render", "mnist_classifier",
             "logit(4)", "--steps", "4", "--seed", absl::StrCat(seed), "--json"});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    if (r.exit_code != 0) return "";
    return json::parse(r.out).value("job", "");
  }

  static std::string ReplicaOf(const std::string& job_id) {
    const size_t at = job_id.find('@');
    return at == std::string::npos ? "" : job_id.substr(at + 1);
  }

  inline static auto* servers_ = new std::vector<std::unique_ptr<ServerProcess>>;
  inline static auto* logs_ = new std::vector<std::string>;
  inline static std::string start_error_;
};

// One test, so that the three servers start once (each ctest entry is a
// process of its own).
TEST_F(BalancingTest, JobsSpreadOverReplicasAndJobCommandsFindTheirReplica) {
  // One CLI process, one channel, twelve renders in turn: round-robin gives
  // every replica some (pick_first, gRPC's default, would give one all).
  // Each replica numbers its jobs from 1, so "1@<replica>" exists on every
  // replica that served one; asked through the balanced target, each is
  // answered by the replica it names.
  // round_robin picks among the replicas whose connection is ready, and on
  // a loaded machine one may connect only after twelve short jobs: run
  // rounds until every replica has served one (polled, not timed).
  auto every_replica_served = [&] {
    for (const auto& server : *servers_) {
      const std::string job = absl::StrCat("1@", server->address());
      if (Cli({"--server", AllReplicas(), "job", job, "--json"}).exit_code != 0) {
        return false;
      }
    }
    return true;
  };
  for (int round = 0; round < 10; ++round) {
    const CommandResult bench =
        Cli({"--server", AllReplicas(), "bench", "--clients", "1", "--jobs",
             "12", "--sequential", "--steps", "4", "--seed_base",
             absl::StrCat(500 + 100 * round)});
    ASSERT_EQ(bench.exit_code, 0) << bench.err;
    if (every_replica_served()) break;
  }
  for (const auto& server : *servers_) {
    const std::string job = absl::StrCat("1@", server->address());
    const CommandResult r = Cli({"--server", AllReplicas(), "job", job, "--json"});
    ASSERT_EQ(r.exit_code, 0) << "replica " << server->address()
                              << " ran no job of the 12: " << r.err;
    const json report = json::parse(r.out);
    EXPECT_EQ(report["id"], job);
    EXPECT_EQ(report["state"], "SUCCEEDED");
  }

  // A render reports its job id, naming the replica that ran it; `job` and
  // `cancel` reach that replica through any address the CLI is given.
  std::set<std::string> replicas;
  for (const auto& server : *servers_) replicas.insert(server->address());
  const std::string job = RenderOnce(7);
  ASSERT_EQ(replicas.count(ReplicaOf(job)), 1u) << "job id " << job;
  for (const std::string& server :
       {AllReplicas(), (*servers_)[0]->address(), (*servers_)[2]->address()}) {
    const CommandResult r = Cli({"--server", server, "job", job, "--json"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const json report = json::parse(r.out);
    EXPECT_EQ(report["id"], job);
    EXPECT_EQ(report["state"], "SUCCEEDED");
    EXPECT_EQ(report["objective"], "logit(4)");
  }
  const CommandResult cancel = Cli({"--server", AllReplicas(), "cancel", job});
  EXPECT_EQ(cancel.exit_code, 0) << cancel.err;
  EXPECT_TRUE(absl::StartsWith(cancel.out, absl::StrCat(job, " succeeded ")))
      << cancel.out;
}

}  // namespace
}  // namespace featviz::testing
