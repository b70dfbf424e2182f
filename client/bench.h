// `featviz bench`: a load generator for a featviz server. N client threads
// each send M Render calls one after another (a closed loop per client), or
// with `sequential` the same N x M jobs run strictly one after another from
// one thread, the baseline that batching is measured against. It reports
// throughput, latency percentiles (send to result), the server's own queue
// and compute seconds, failures by status code, and, when the server
// implements GetServerStats, its batch occupancy and step rate.
//
// Objectives come from `|`-separated templates: job g (its global index,
// 0..N*M-1) uses template g % T, where `{i}` becomes g and `{i%K}` becomes
// g mod K (K a positive integer); no other braces are allowed. The default
// 'channel(conv2, {i%32})|logit({i%10})' alternates a conv2 channel and a
// class. Job g's seed is seed_base + g and its owner "bench-<client>".
//
// A server with a result cache answers a request it has seen (same model,
// objective, options and seed) from the cache without running it; the
// report counts such answers (GetServerStats' cache_hits before and after),
// and a different seed_base makes every job new.
#ifndef FEATVIZ_CLIENT_BENCH_H_
#define FEATVIZ_CLIENT_BENCH_H_

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "client/visualizer_client.h"

namespace featviz::client {

struct BenchOptions {
  std::string model = "mnist_classifier";
  // `|`-separated objective templates (see above).
  std::string objectives = "channel(conv2, {i%32})|logit({i%10})";
  int64_t clients = 8;          // Client threads.
  int64_t jobs_per_client = 4;  // Render calls each client sends in turn.
  int64_t steps = 256;          // Optimisation steps per job.
  int64_t batch = 1;            // Images per job.
  std::string param = "fft";    // "fft" or "pixel".
  // "default", "none" or a list, as featviz render --transforms.
  std::string transforms = "default";
  int64_t seed_base = 0;        // Job g's seed is seed_base + g (>= 0).
  // The same clients x jobs_per_client jobs one after another, one thread.
  bool sequential = false;
  bool json = false;  // One JSON object instead of the text report.
};

// Template `text` filled in for job `index`. InvalidArgument naming the
// placeholder for anything but `{i}` and `{i%K}` with K >= 1, or an
// unmatched brace.
absl::StatusOr<std::string> ExpandObjectiveTemplate(const std::string& text,
                                                    int64_t index);

// The p-th percentile (0 <= p <= 100) of `values` by the nearest-rank
// method; 0 for no values.
double Percentile(std::vector<double> values, double p);

// InvalidArgument naming the option for counts below 1, an unknown
// --param, an empty model or template, or a template that does not expand.
absl::Status ValidateBenchOptions(const BenchOptions& options);

// Runs the benchmark against `client`'s server and writes the report to
// `out`. Errors: ValidateBenchOptions' (checked before anything is sent);
// the server's status when the model cannot be looked up. Failed renders do not
// fail the command; they are counted by status code in the report.
absl::Status RunBench(VisualizerClient& client, const BenchOptions& options,
                      std::FILE* out, std::FILE* err);

}  // namespace featviz::client

#endif  // FEATVIZ_CLIENT_BENCH_H_
