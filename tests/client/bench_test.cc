// `featviz bench`: its template expansion and percentiles, and end-to-end
// runs against the real featviz-server on a free loopback port. Behaviour
// only: no timing thresholds.
#include "client/bench.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "tests/client/process.h"

namespace featviz::testing {
namespace {

using nlohmann::json;

const char kCli[] = FEATVIZ_CLI_BINARY;
const char kServer[] = FEATVIZ_SERVER_BINARY;
const char kModels[] = FEATVIZ_MODELS_DIR;

TEST(ExpandObjectiveTemplate, FillsTheIndexAndItsRemainder) {
  EXPECT_EQ(*client::ExpandObjectiveTemplate("channel(conv2, {i%32})", 37),
            "channel(conv2, 5)");
  EXPECT_EQ(
      *client::ExpandObjectiveTemplate("logit({ i % 10 }) + prob({i})", 13),
      "logit(3) + prob(13)");
  EXPECT_EQ(*client::ExpandObjectiveTemplate("tv()", 4), "tv()");
}

TEST(ExpandObjectiveTemplate, RejectsUnknownPlaceholdersAndLoneBraces) {
  for (const char* bad : {"channel(conv2, {j})", "logit({i%0})", "logit({i%x})",
                          "logit({i)", "logit(i})"}) {
    absl::StatusOr<std::string> r = client::ExpandObjectiveTemplate(bad, 1);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
}

TEST(Percentile, UsesTheNearestRank) {
  const std::vector<double> v = {5, 1, 4, 2, 3};
  EXPECT_EQ(client::Percentile(v, 50), 3);
  EXPECT_EQ(client::Percentile(v, 99), 5);
  EXPECT_EQ(client::Percentile(v, 0), 1);
  EXPECT_EQ(client::Percentile({}, 50), 0);
}

class BenchTest : public SharedServerTest {
 protected:
  static void SetUpTestSuite() { StartSharedServer(kServer, kModels, "bench_test"); }
  static void TearDownTestSuite() { StopSharedServer(); }

  static CommandResult Bench(const std::vector<std::string>& args) {
    std::vector<std::string> argv = {kCli, "--server", server_->address(),
                                     "bench"};
    argv.insert(argv.end(), args.begin(), args.end());
    absl::StatusOr<CommandResult> result = RunCommand(argv);
    EXPECT_TRUE(result.ok()) << result.status();
    return result.ok() ? *result : CommandResult{};
  }

  // The report's figures for 8 successful jobs of 8 steps.
  static void ExpectEightGoodJobs(const json& report) {
    EXPECT_EQ(report["jobs"], 8);
    EXPECT_EQ(report["succeeded"], 8);
    EXPECT_EQ(report["failures"], 0);
    EXPECT_TRUE(report["failures_by_code"].empty()) << report;
    EXPECT_EQ(report["steps"], 8);
    for (const char* field :
         {"wall_seconds", "jobs_per_second", "image_steps_per_second"}) {
      ASSERT_TRUE(report.contains(field)) << field;
      EXPECT_GT(report[field].get<double>(), 0) << field;
    }
    const json& latency = report["latency_seconds"];
    for (const char* p : {"p50", "p95", "p99", "mean"}) {
      ASSERT_TRUE(latency.contains(p)) << p;
      EXPECT_GT(latency[p].get<double>(), 0) << p;
    }
    EXPECT_LE(latency["p50"].get<double>(), latency["p95"].get<double>());
    EXPECT_LE(latency["p95"].get<double>(), latency["p99"].get<double>());
    ASSERT_TRUE(report["server_seconds"].contains("queue_mean"));
    ASSERT_TRUE(report["server_seconds"].contains("compute_mean"));
    EXPECT_GT(report["server_seconds"]["compute_mean"].get<double>(), 0);
  }

};


TEST_F(BenchTest, ConcurrentClientsReportEveryJob) {
  const CommandResult r = Bench({"--clients", "4", "--jobs", "2", "--steps",
                                 "8", "--json", "--seed_base", "1000"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json report = json::parse(r.out);
  EXPECT_EQ(report["mode"], "concurrent");
  EXPECT_EQ(report["clients"], 4);
  EXPECT_EQ(report["jobs_per_client"], 2);
  ExpectEightGoodJobs(report);
}

TEST_F(BenchTest, SequentialRunsTheSameJobsOneAfterAnother) {
  // Other seeds than the concurrent test's, so that a server with a result
  // cache runs these jobs too.
  const CommandResult r =
      Bench({"--clients", "4", "--jobs", "2", "--steps", "8", "--sequential",
             "--json", "--seed_base", "2000"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json report = json::parse(r.out);
  EXPECT_EQ(report["mode"], "sequential");
  ExpectEightGoodJobs(report);
  // Present only when the server implements GetServerStats.
  if (report.contains("server_stats")) {
    EXPECT_TRUE(report["server_stats"].is_object());
    EXPECT_EQ(report["server_stats"]["cache_hits"], 0);
  }
}

TEST_F(BenchTest, TransformsAreTheRenderCommandsAndTheReportSaysWhich) {
  const CommandResult r =
      Bench({"--clients", "2", "--jobs", "1", "--steps", "4", "--transforms",
             "none", "--json", "--seed_base", "5000"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json report = json::parse(r.out);
  EXPECT_EQ(report["transforms"], "none");
  EXPECT_EQ(report["succeeded"], 2);
  // Parsed as featviz render parses it: a bad list is a usage error that
  // names the flag, before anything is sent.
  const CommandResult bad = Bench({"--transforms", "wobble(3)"});
  EXPECT_EQ(bad.exit_code, 2) << bad.out << bad.err;
  EXPECT_TRUE(absl::StrContains(bad.err, "--transforms")) << bad.err;
}

TEST_F(BenchTest, TextReportNamesTheFigures) {
  const CommandResult r =
      Bench({"--clients", "2", "--jobs", "1", "--steps", "4", "--objectives",
             "logit({i%10})", "--seed_base", "3000"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  for (const char* label : {"jobs:", "2 ok, 0 failed", "wall:", "jobs/s:",
                            "images*steps/s:", "p50", "p99", "compute mean"}) {
    EXPECT_TRUE(absl::StrContains(r.out, label)) << label << " in\n" << r.out;
  }
}

TEST_F(BenchTest, ServerErrorsAreCountedByCode) {
  // Channel 99 does not exist in conv2 (32 channels): every job fails.
  const CommandResult r =
      Bench({"--clients", "2", "--jobs", "1", "--steps", "4", "--objectives",
             "channel(conv2, 99)", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json report = json::parse(r.out);
  EXPECT_EQ(report["succeeded"], 0);
  EXPECT_EQ(report["failures"], 2);
  EXPECT_EQ(report["failures_by_code"]["OUT_OF_RANGE"], 2) << report;
}

TEST_F(BenchTest, RepeatedSeedsAreReportedAsCacheHitsWhenTheServerHasStats) {
  const std::vector<std::string> args = {"--clients", "1",           "--jobs",
                                         "2",         "--steps",     "4",
                                         "--json",    "--seed_base", "4000"};
  const CommandResult first = Bench(args);
  ASSERT_EQ(first.exit_code, 0) << first.err;
  const CommandResult second = Bench(args);
  ASSERT_EQ(second.exit_code, 0) << second.err;
  const json report = json::parse(second.out);
  EXPECT_EQ(report["succeeded"], 2);
  if (!report.contains("server_stats")) {
    GTEST_SKIP() << "the server does not implement GetServerStats";
  }
  // A server whose stats count cache hits answers the rerun from its cache.
  EXPECT_GE(report["server_stats"]["cache_hits"].get<int64_t>(), 0);
  EXPECT_LE(report["server_stats"]["cache_hits"].get<int64_t>(), 2);
}

TEST_F(BenchTest, BadTemplateIsAUsageError) {
  const CommandResult r = Bench({"--objectives", "channel(conv2, {j})"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_TRUE(absl::StrContains(r.err, "{j}")) << r.err;
  EXPECT_EQ(r.out, "");
}

}  // namespace
}  // namespace featviz::testing
