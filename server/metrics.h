// The Prometheus endpoint: the server's figures in the text exposition
// format (prometheus-cpp's registry and serializer) on their own HTTP port
// (libmicrohttpd), so
// a monitoring system can scrape them and an autoscaler can read
// featviz_queue_depth. The metric list is in docs/operations.md.
//
// Gauges and counters that the service already keeps (GetServerStats) are
// read at scrape time; the job latency and queue-time histograms are fed by
// the job manager as jobs end (OnJobEnd).
#ifndef FEATVIZ_SERVER_METRICS_H_
#define FEATVIZ_SERVER_METRICS_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "server/engine/job_manager.h"
#include "server/engine/model_registry.h"

struct MHD_Daemon;

namespace prometheus {
class Registry;
class Histogram;
template <typename T>
class Family;
}  // namespace prometheus

namespace featviz::server {

class VisualizerService;
class MetricsCollector;

class Metrics {
 public:
  Metrics();
  ~Metrics();

  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  // Records a job's end in the latency and queue-time histograms; for
  // ServiceOptions::on_job_end. Thread-safe.
  void OnJobEnd(const JobEnd& end);

  // Serves /metrics on `listen` ("HOST:PORT"; port 0 picks a free one) with
  // the figures of `service` (its workers' devices named by `devices`) and
  // the models of `registries` (each with a copy per device). Both must
  // outlive Stop(). Returns the port bound;
  // Unavailable when it cannot listen.
  absl::StatusOr<int> Serve(const std::string& listen,
                            const VisualizerService* service,
                            std::vector<std::string> devices,
                            std::vector<const ModelRegistry*> registries);

  // Stops serving (idempotent); scrapes in progress finish first. Must be
  // called before the service given to Serve() goes away.
  void Stop();

  // The whole exposition text, as a scrape would see it (tests).
  std::string Render() const;

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Histogram>* latency_;
  prometheus::Family<prometheus::Histogram>* queue_time_;
  std::shared_ptr<MetricsCollector> collector_;
  MHD_Daemon* daemon_ = nullptr;
};

}  // namespace featviz::server

#endif  // FEATVIZ_SERVER_METRICS_H_
