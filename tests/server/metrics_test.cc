// End to end: the Prometheus endpoint of a real featviz-server, scraped over
// HTTP (civetweb's client) and parsed as the text exposition format.
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <regex>
#include <set>
#include <string>
#include <vector>

#include <civetweb.h>
#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "tests/server/model_repo.h"
#include "tests/server/server_process.h"
#include "tests/server/test_client.h"

namespace featviz::testing {
namespace {

// One scrape: HTTP status and body.
struct Scrape {
  int status = 0;
  std::string body;
  std::string error;
};

Scrape Get(int port, const std::string& path) {
  Scrape scrape;
  char error[256] = "";
  mg_connection* connection =
      mg_download("127.0.0.1", port, 0, error, sizeof(error),
                  "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n", path.c_str());
  if (connection == nullptr) {
    scrape.error = error;
    return scrape;
  }
  const mg_response_info* info = mg_get_response_info(connection);
  if (info != nullptr) scrape.status = info->status_code;
  char buffer[4096];
  int n = 0;
  while ((n = mg_read(connection, buffer, sizeof(buffer))) > 0) {
    scrape.body.append(buffer, n);
  }
  mg_close_connection(connection);
  return scrape;
}

// A sample: metric name, labels, value.
struct Sample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value = 0;
};

// The samples of a text exposition; fails the test on a malformed line or a
// sample whose family has no # TYPE line.
std::vector<Sample> Parse(const std::string& text) {
  static const std::regex kSample(
      R"(^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? ([-+0-9.eEinfNa]+)$)");
  static const std::regex kLabel(R"re(([a-zA-Z_][a-zA-Z0-9_]*)="([^"]*)")re");
  std::vector<Sample> samples;
  std::set<std::string> typed;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    if (absl::StartsWith(line, "# TYPE ")) {
      std::vector<std::string> parts = absl::StrSplit(line, ' ');
      EXPECT_EQ(parts.size(), 4u) << line;
      if (parts.size() == 4) typed.insert(parts[2]);
      continue;
    }
    if (absl::StartsWith(line, "#")) continue;
    const std::string owned(line);
    std::smatch m;
    if (!std::regex_match(owned, m, kSample)) {
      ADD_FAILURE() << "not a sample line: " << line;
      continue;
    }
    Sample sample;
    sample.name = m[1];
    const std::string labels = m[3];
    for (auto it = std::sregex_iterator(labels.begin(), labels.end(), kLabel);
         it != std::sregex_iterator(); ++it) {
      sample.labels[(*it)[1]] = (*it)[2];
    }
    EXPECT_TRUE(absl::SimpleAtod(std::string(m[4]), &sample.value)) << line;
    std::string family = sample.name;
    for (const char* suffix : {"_bucket", "_sum", "_count"}) {
      if (!typed.count(family) && absl::EndsWith(family, suffix)) {
        family = family.substr(0, family.size() - std::strlen(suffix));
      }
    }
    EXPECT_TRUE(typed.count(family) > 0) << "no # TYPE for " << sample.name;
    samples.push_back(std::move(sample));
  }
  return samples;
}

// The value of the sample `name` with exactly `labels`; nullopt when absent.
std::optional<double> Value(const std::vector<Sample>& samples,
                            const std::string& name,
                            const std::map<std::string, std::string>& labels) {
  for (const Sample& sample : samples) {
    if (sample.name == name && sample.labels == labels) return sample.value;
  }
  return std::nullopt;
}

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
