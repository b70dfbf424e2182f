// End to end: the Prometheus endpoint of a real featviz-server, scraped over
// HTTP (civetweb's client) and parsed as the text exposition format.
#include <civetweb.h>
#include <gtest/gtest.h>

#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <regex>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "tests/server/scrape.h"
#include "tests/server/model_repo.h"
#include "tests/server/server_process.h"
#include "tests/server/test_client.h"

namespace featviz::testing {
namespace {

TEST(MetricsTest, EndpointServesTheServersFiguresInPrometheusFormat) {
  absl::StatusOr<std::unique_ptr<ServerProcess>> started = ServerProcess::Start(
      {"--metrics_listen=127.0.0.1:0", "--max_batch_images=2"});
  ASSERT_TRUE(started.ok()) << started.status();
  ServerProcess& server = **started;
  absl::StatusOr<std::string> line = server.NextLine();
  ASSERT_TRUE(line.ok()) << line.status();
  absl::string_view address = *line;
  ASSERT_TRUE(absl::ConsumePrefix(&address, "featviz-server metrics on 127.0.0.1:"))
      << *line;
  int port = 0;
  ASSERT_TRUE(absl::SimpleAtoi(address, &port)) << *line;

  auto stub = server.NewStub();
  // One render to its end, one running, one waiting behind it at priority 3.
  const RenderOutcome done = RenderAll(*stub, TextRequest("logit(4)", 8));
  ASSERT_TRUE(done.status.ok()) << done.status.error_message();
  v1::Job running;
  v1::Job waiting;
  {
    v1::SubmitJobRequest request;
    *request.mutable_request() = LongRequest();
    request.mutable_request()->set_owner("alice");
    grpc::ClientContext context;
    ASSERT_TRUE(stub->SubmitJob(&context, request, &running).ok());
  }
  // Bob's job outranks Alice's: submitted while hers still queued, it would
  // run first. Wait until the worker runs hers (its batch is then full).
  ASSERT_EQ(WaitForState(*stub, running.id(), v1::JOB_STATE_RUNNING).job.state(),
            v1::JOB_STATE_RUNNING);
  {
    v1::SubmitJobRequest request;
    *request.mutable_request() = LongRequest();
    request.mutable_request()->set_owner("bob");
    request.mutable_request()->set_priority(3);
    grpc::ClientContext context;
    ASSERT_TRUE(stub->SubmitJob(&context, request, &waiting).ok());
  }

  // Scrape until the scrape itself shows the state: her job running, his
  // queued, the first one's end recorded.
  std::vector<Sample> samples;
  const absl::Time give_up = absl::Now() + absl::Seconds(60);
  do {
    const Scrape scrape = Get(port, "/metrics");
    ASSERT_EQ(scrape.status, 200) << scrape.error;
    samples = Parse(scrape.body);
  } while ((Value(samples, "featviz_jobs_running", {{"owner", "alice"}}) !=
                std::optional<double>(1) ||
            Value(samples, "featviz_jobs_queued", {{"owner", "bob"}}) !=
                std::optional<double>(1) ||
            Value(samples, "featviz_job_duration_seconds_count",
                  {{"outcome", "succeeded"}}) != std::optional<double>(1)) &&
           absl::Now() < give_up);

  EXPECT_EQ(Value(samples, "featviz_jobs_running", {{"owner", "alice"}}), 1);
  EXPECT_EQ(Value(samples, "featviz_jobs_queued", {{"owner", "bob"}}), 1);
  EXPECT_EQ(Value(samples, "featviz_queue_depth", {{"priority", "3"}}), 1);
  // Every priority is there, empty ones as 0.
  for (int p = -10; p <= 10; ++p) {
    if (p == 3) continue;
    EXPECT_EQ(Value(samples, "featviz_queue_depth",
                    {{"priority", absl::StrCat(p)}}),
              0)
        << p;
  }
  EXPECT_EQ(Value(samples, "featviz_jobs_submitted_total", {}), 3);
  EXPECT_EQ(
      Value(samples, "featviz_jobs_ended_total", {{"outcome", "succeeded"}}), 1);
  EXPECT_EQ(Value(samples, "featviz_job_duration_seconds_count",
                  {{"outcome", "succeeded"}}),
            1);
  EXPECT_EQ(Value(samples, "featviz_job_duration_seconds_bucket",
                  {{"outcome", "succeeded"}, {"le", "+Inf"}}),
            1);
  EXPECT_EQ(Value(samples, "featviz_job_queue_seconds_count",
                  {{"outcome", "succeeded"}}),
            1);
  EXPECT_GE(Value(samples, "featviz_steps_total", {{"device", "cpu"}})
                .value_or(-1),
            8);
  EXPECT_TRUE(
      Value(samples, "featviz_steps_per_second", {{"device", "cpu"}}).has_value());
  EXPECT_TRUE(Value(samples, "featviz_batch_occupancy_ratio", {{"device", "cpu"}})
                  .has_value());
  EXPECT_EQ(Value(samples, "featviz_result_cache_hits_total", {}), 0);
  // The MNIST classifier's float parameters: well over 10 kB.
  EXPECT_GT(Value(samples, "featviz_model_memory_bytes",
                  {{"device", "cpu"}, {"model", kModel}, {"version", "1"}})
                .value_or(0),
            10000);

  for (const v1::Job& job : {running, waiting}) {
    v1::CancelJobRequest cancel;
    cancel.set_id(job.id());
    v1::Job ended;
    grpc::ClientContext context;
    ASSERT_TRUE(stub->CancelJob(&context, cancel, &ended).ok());
  }
  // A seeded request twice: the second is a cache hit.
  v1::RenderRequest seeded = TextRequest("logit(5)", 4);
  seeded.set_seed(7);
  ASSERT_TRUE(RenderAll(*stub, seeded).status.ok());
  ASSERT_TRUE(RenderAll(*stub, seeded).status.ok());
  samples = Parse(Get(port, "/metrics").body);
  EXPECT_EQ(Value(samples, "featviz_result_cache_hits_total", {}), 1);

  EXPECT_EQ(Get(port, "/elsewhere").status, 404);
}

TEST(MetricsTest, CountsModelsRefusedForWhatTheirCodeCallsByOperator) {
  // Two models of the repository that leave tensor math
  // (tests/models/make_hostile_models.py), refused at the start's scan.
  TempRepository repo;
  repo.AddMnist("1");
  for (const char* stem : {"hostile_outputs", "hostile_namespace"}) {
    repo.AddVersion(stem, "1", TestModelFile(absl::StrCat(stem, ".pt")),
                    TestModelFile(absl::StrCat(stem, ".card.json")));
  }
  absl::StatusOr<std::unique_ptr<ServerProcess>> started = ServerProcess::Start(
      {"--model_dir=" + repo.root(), "--metrics_listen=127.0.0.1:0"});
  ASSERT_TRUE(started.ok()) << started.status();
  ServerProcess& server = **started;
  absl::StatusOr<std::string> line = server.NextLine();
  ASSERT_TRUE(line.ok()) << line.status();
  absl::string_view address = *line;
  ASSERT_TRUE(
      absl::ConsumePrefix(&address, "featviz-server metrics on 127.0.0.1:"))
      << *line;
  int port = 0;
  ASSERT_TRUE(absl::SimpleAtoi(address, &port)) << *line;
  const Scrape scrape = Get(port, "/metrics");
  ASSERT_EQ(scrape.status, 200) << scrape.error;
  const std::vector<Sample> samples = Parse(scrape.body);
  EXPECT_EQ(Value(samples, "featviz_models_refused_total",
                  {{"operator", "aten::from_file"}}),
            1);
  EXPECT_EQ(Value(samples, "featviz_models_refused_total",
                  {{"operator", "_test::leaky_relu"}}),
            1);
  EXPECT_TRUE(absl::StrContains(scrape.body,
                                "# TYPE featviz_models_refused_total counter"));
}

TEST(MetricsTest, NoEndpointUnlessAsked) {
  absl::StatusOr<std::unique_ptr<ServerProcess>> server = ServerProcess::Start();
  ASSERT_TRUE(server.ok()) << server.status();
  // The listening line is the only one.
  EXPECT_FALSE((*server)->NextLine(absl::Milliseconds(500)).ok());
}

}  // namespace
}  // namespace featviz::testing
