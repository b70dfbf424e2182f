#include "client/bench.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <thread>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/synchronization/mutex.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "client/commands.h"
#include "client/progress_bar.h"
#include "client/proto_convert.h"
#include "client/table.h"
#include "core/status_macros.h"
#include "featviz/v1/featviz.grpc.pb.h"

namespace featviz::client {

namespace v1 = featviz::v1;

namespace {

// What one job came to.
struct JobOutcome {
  absl::StatusCode code = absl::StatusCode::kUnknown;
  double latency_seconds = 0;  // Send to result (or to the error).
  double queue_seconds = 0;    // The server's RenderResult.timings.
  double compute_seconds = 0;
};

std::vector<std::string> Templates(const std::string& objectives) {
  std::vector<std::string> templates;
  for (absl::string_view t : absl::StrSplit(objectives, '|')) {
    templates.emplace_back(absl::StripAsciiWhitespace(t));
  }
  return templates;
}

absl::StatusOr<v1::RenderRequest> JobRequest(
    const BenchOptions& options, const std::vector<std::string>& templates,
    int64_t index, int64_t client) {
  RenderCommandOptions render;
  render.model = options.model;
  FEATVIZ_ASSIGN_OR_RETURN(
      render.objective,
      ExpandObjectiveTemplate(templates[index % templates.size()], index));
  render.steps = options.steps;
  render.batch = options.batch;
  render.param = options.param;
  render.transforms = options.transforms;
  render.seed = options.seed_base + index;
  // One progress event (after the last step): the bench measures renders,
  // not event streaming.
  render.progress_every = options.steps;
  FEATVIZ_ASSIGN_OR_RETURN(v1::RenderRequest request,
                           BuildRenderRequest(render));
  request.set_owner(absl::StrCat("bench-", client));
  return request;
}

JobOutcome RunJob(VisualizerClient& client, const v1::RenderRequest& request) {
  JobOutcome outcome;
  const absl::Time start = absl::Now();
  absl::StatusOr<v1::RenderResult> result = client.Render(request, nullptr);
  outcome.latency_seconds = absl::ToDoubleSeconds(absl::Now() - start);
  outcome.code = result.status().code();
  if (result.ok()) {
    outcome.queue_seconds = result->timings().queue_seconds();
    outcome.compute_seconds = result->timings().compute_seconds();
  }
  return outcome;
}

double Mean(const std::vector<double>& values) {
  if (values.empty()) return 0;
  double sum = 0;
  for (double v : values) sum += v;
  return sum / static_cast<double>(values.size());
}

// The server's figures; unset when it does not implement GetServerStats or
// cannot answer.
std::optional<v1::ServerStats> FetchServerStats(VisualizerClient& client,
                                                std::FILE* err) {
  absl::StatusOr<v1::ServerStats> stats = client.GetServerStats();
  if (stats.ok()) return *std::move(stats);
  if (stats.status().code() != absl::StatusCode::kUnimplemented) {
    std::fprintf(err, "featviz bench: GetServerStats failed: %s\n",
                 std::string(stats.status().message()).c_str());
  }
  return std::nullopt;
}

nlohmann::ordered_json StatsToJson(const v1::ServerStats& stats) {
  nlohmann::ordered_json devices = nlohmann::ordered_json::array();
  for (const v1::DeviceStats& d : stats.devices()) {
    devices.push_back({{"device", d.device()},
                       {"running_jobs", d.running_jobs()},
                       {"batch_occupancy", d.batch_occupancy()},
                       {"steps_per_second", d.steps_per_second()},
                       {"image_steps_per_second", d.image_steps_per_second()},
                       {"steps_total", d.steps_total()}});
  }
  return {{"queued_jobs", stats.queued_jobs()},
          {"running_jobs", stats.running_jobs()},
          {"jobs_submitted", stats.jobs_submitted()},
          {"jobs_succeeded", stats.jobs_succeeded()},
          {"jobs_failed", stats.jobs_failed()},
          {"devices", std::move(devices)}};
}

}  // namespace

absl::StatusOr<std::string> ExpandObjectiveTemplate(const std::string& text,
                                                    int64_t index) {
  std::string out;
  size_t pos = 0;
  while (pos < text.size()) {
    const size_t open = text.find_first_of("{}", pos);
    if (open == std::string::npos) {
      out.append(text, pos, std::string::npos);
      break;
    }
    if (text[open] == '}') {
      return absl::InvalidArgumentError(
          absl::StrCat("objective template '", text, "': '}' without '{'"));
    }
    const size_t close = text.find('}', open);
    if (close == std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("objective template '", text, "': '{' without '}'"));
    }
    out.append(text, pos, open - pos);
    const std::string placeholder = text.substr(open, close - open + 1);
    const std::string spaceless = absl::StrReplaceAll(
        text.substr(open + 1, close - open - 1), {{" ", ""}});
    absl::string_view body = spaceless;
    int64_t modulus = 0;
    if (body == "i") {
      absl::StrAppend(&out, index);
    } else if (absl::ConsumePrefix(&body, "i%") &&
               absl::SimpleAtoi(body, &modulus) && modulus >= 1) {
      absl::StrAppend(&out, index % modulus);
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("objective template '", text, "': unknown placeholder ",
                       placeholder, " (use {i} or {i%K} with K >= 1)"));
    }
    pos = close + 1;
  }
  return out;
}

double Percentile(std::vector<double> values, double p) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  const double n = static_cast<double>(values.size());
  const int64_t rank = static_cast<int64_t>(std::ceil(p / 100.0 * n));
  const int64_t i =
      std::clamp<int64_t>(rank - 1, 0, static_cast<int64_t>(values.size()) - 1);
  return values[i];
}

absl::Status ValidateBenchOptions(const BenchOptions& options) {
  if (options.model.empty()) {
    return absl::InvalidArgumentError("--model is empty");
  }
  for (const auto& [flag, value] :
       {std::pair<const char*, int64_t>{"clients", options.clients},
        {"jobs", options.jobs_per_client},
        {"steps", options.steps},
        {"batch", options.batch}}) {
    if (value < 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("--", flag, " must be at least 1, got ", value));
    }
  }
  if (options.seed_base < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--seed_base must not be negative, got ", options.seed_base));
  }
  for (const std::string& t : Templates(options.objectives)) {
    if (t.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--objectives '", options.objectives, "' has an empty template"));
    }
  }
  // Every job's request, so that a bad template or --param is a usage error
  // before anything is sent.
  const std::vector<std::string> templates = Templates(options.objectives);
  const int64_t total = options.clients * options.jobs_per_client;
  for (int64_t g = 0; g < std::min<int64_t>(total, templates.size()); ++g) {
    absl::StatusOr<v1::RenderRequest> request =
        JobRequest(options, templates, g, 0);
    if (!request.ok()) return request.status();
  }
  return absl::OkStatus();
}

absl::Status RunBench(VisualizerClient& client, const BenchOptions& options,
                      std::FILE* out, std::FILE* err) {
  FEATVIZ_RETURN_IF_ERROR(ValidateBenchOptions(options));
  const std::vector<std::string> templates = Templates(options.objectives);
  const int64_t clients = options.clients;
  const int64_t per_client = options.jobs_per_client;
  const int64_t total = clients * per_client;

  // Every request is built before the clock starts; job g = client c's k-th
  // job with g = c * per_client + k.
  std::vector<v1::RenderRequest> requests;
  requests.reserve(total);
  for (int64_t g = 0; g < total; ++g) {
    FEATVIZ_ASSIGN_OR_RETURN(v1::RenderRequest request,
                             JobRequest(options, templates, g, g / per_client));
    requests.push_back(std::move(request));
  }
  // Checks the model and opens the connection outside the measurement.
  FEATVIZ_RETURN_IF_ERROR(client.GetModel(options.model).status());

  const std::optional<v1::ServerStats> stats_before =
      FetchServerStats(client, err);

  std::vector<JobOutcome> outcomes(total);
  // Jobs finished so far, on stderr: a bar on a terminal, a line per 10 %
  // otherwise. Drawn under a lock, outside the jobs' own timing.
  absl::Mutex progress_mu;
  int64_t finished = 0;
  CountProgress progress(err, ProgressModeFor(err), "bench", "jobs done");
  auto job_done = [&] {
    absl::MutexLock lock(&progress_mu);
    progress.Update(++finished, total);
  };
  const absl::Time start = absl::Now();
  if (options.sequential) {
    for (int64_t g = 0; g < total; ++g) {
      outcomes[g] = RunJob(client, requests[g]);
      job_done();
    }
  } else {
    // The stub is thread-safe; each thread writes only its own outcomes.
    std::vector<std::thread> threads;
    threads.reserve(clients);
    for (int64_t c = 0; c < clients; ++c) {
      threads.emplace_back([&, c] {
        for (int64_t k = 0; k < per_client; ++k) {
          const int64_t g = c * per_client + k;
          outcomes[g] = RunJob(client, requests[g]);
          job_done();
        }
      });
    }
    for (std::thread& t : threads) t.join();
  }
  const double wall = absl::ToDoubleSeconds(absl::Now() - start);
  progress.Finish();

  std::vector<double> latencies, queue, compute;
  std::map<std::string, int64_t> failures;
  for (const JobOutcome& o : outcomes) {
    if (o.code == absl::StatusCode::kOk) {
      latencies.push_back(o.latency_seconds);
      queue.push_back(o.queue_seconds);
      compute.push_back(o.compute_seconds);
    } else {
      ++failures[absl::StatusCodeToString(o.code)];
    }
  }
  const int64_t succeeded = static_cast<int64_t>(latencies.size());
  const double jobs_per_second = wall > 0 ? succeeded / wall : 0;
  const double image_steps_per_second =
      wall > 0 ? succeeded * options.batch * options.steps / wall : 0;
  const double p50 = Percentile(latencies, 50);
  const double p95 = Percentile(latencies, 95);
  const double p99 = Percentile(latencies, 99);
  const std::optional<v1::ServerStats> stats =
      stats_before.has_value() ? FetchServerStats(client, err)
                               : std::nullopt;
  const int64_t cache_hits =
      stats.has_value() ? stats->cache_hits() - stats_before->cache_hits() : 0;

  if (options.json) {
    nlohmann::ordered_json report;
    report["model"] = options.model;
    report["objectives"] = templates;
    report["mode"] = options.sequential ? "sequential" : "concurrent";
    report["clients"] = clients;
    report["jobs_per_client"] = per_client;
    report["steps"] = options.steps;
    report["batch"] = options.batch;
    report["param"] = options.param;
    report["transforms"] = options.transforms;
    report["seed_base"] = options.seed_base;
    report["jobs"] = total;
    report["succeeded"] = succeeded;
    report["failures"] = total - succeeded;
    report["failures_by_code"] = failures;
    report["wall_seconds"] = wall;
    report["jobs_per_second"] = jobs_per_second;
    report["image_steps_per_second"] = image_steps_per_second;
    report["latency_seconds"] = {
        {"p50", p50}, {"p95", p95}, {"p99", p99}, {"mean", Mean(latencies)}};
    report["server_seconds"] = {{"queue_mean", Mean(queue)},
                                {"compute_mean", Mean(compute)}};
    if (stats.has_value()) {
      report["server_stats"] = StatsToJson(*stats);
      report["server_stats"]["cache_hits"] = cache_hits;
    }
    Print(out, report.dump() + "\n");
    return absl::OkStatus();
  }

  std::string text = absl::StrFormat(
      "featviz bench: %d jobs (%s), %s, %d steps, batch %d, %s, "
      "transforms %s\n"
      "objectives:      %s\n",
      total,
      options.sequential
          ? "sequential, one thread"
          : absl::StrFormat("%d clients x %d jobs", clients, per_client),
      options.model, options.steps, options.batch, options.param,
      options.transforms, absl::StrJoin(templates, " | "));
  std::vector<std::string> failure_parts;
  for (const auto& [code, count] : failures) {
    failure_parts.push_back(absl::StrCat(code, " ", count));
  }
  absl::StrAppendFormat(
      &text,
      "jobs:            %d ok, %d failed%s\n"
      "wall:            %.2f s\n"
      "jobs/s:          %.3f\n"
      "images*steps/s:  %.1f\n"
      "latency (s):     p50 %.3f  p95 %.3f  p99 %.3f  mean %.3f\n"
      "server (s):      queue mean %.3f  compute mean %.3f\n",
      succeeded, total - succeeded,
      failure_parts.empty()
          ? ""
          : absl::StrCat(" (", absl::StrJoin(failure_parts, ", "), ")"),
      wall, jobs_per_second, image_steps_per_second, p50, p95, p99,
      Mean(latencies), Mean(queue), Mean(compute));
  if (stats.has_value()) {
    if (cache_hits > 0) {
      absl::StrAppendFormat(
          &text,
          "server cache:    %d of the jobs were answered from the result "
          "cache (seen before; try another --seed_base)\n",
          cache_hits);
    }
    for (const v1::DeviceStats& d : stats->devices()) {
      absl::StrAppendFormat(&text,
                            "%-17sbatch occupancy %.3f  %.1f steps/s  %.1f "
                            "images*steps/s  %d steps in all\n",
                            absl::StrCat("server ", d.device(), ":"),
                            d.batch_occupancy(), d.steps_per_second(),
                            d.image_steps_per_second(), d.steps_total());
    }
  }
  Print(out, text);
  return absl::OkStatus();
}

}  // namespace featviz::client
