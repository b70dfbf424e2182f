#include "server/metrics.h"

#include <microhttpd.h>
#include <netdb.h>
#include <sys/socket.h>

#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <map>
#include <sstream>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "spdlog/spdlog.h"
#include "absl/time/time.h"
#include "prometheus/collectable.h"
#include "prometheus/family.h"
#include "prometheus/histogram.h"
#include "prometheus/metric_family.h"
#include "prometheus/registry.h"
#include "prometheus/text_serializer.h"
#include "server/convert.h"
#include "server/visualizer_service.h"

namespace featviz::server {
namespace {

using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;

// Seconds, from a quick cached answer to an hour-long render.
const prometheus::Histogram::BucketBoundaries& DurationBuckets() {
  static const auto* buckets = new prometheus::Histogram::BucketBoundaries{
      0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800,
      3600};
  return *buckets;
}


void LogHttpError(void*, const char* format, va_list args) {
  char message[512];
  std::vsnprintf(message, sizeof(message), format, args);
  spdlog::error("metrics endpoint: {}",
                std::string(absl::StripTrailingAsciiWhitespace(message)));
}

MetricFamily Family(std::string name, std::string help, MetricType type) {
  MetricFamily family;
  family.name = std::move(name);
  family.help = std::move(help);
  family.type = type;
  return family;
}

void AddValue(MetricFamily& family, double value,
              std::vector<ClientMetric::Label> labels = {}) {
  ClientMetric metric;
  metric.label = std::move(labels);
  if (family.type == MetricType::Counter) {
    metric.counter.value = value;
  } else {
    metric.gauge.value = value;
  }
  family.metric.push_back(std::move(metric));
}

// A family of one unlabelled value, appended to `out`.
void AddFamily(std::vector<MetricFamily>& out, std::string name,
               std::string help, MetricType type, double value) {
  MetricFamily family = Family(std::move(name), std::move(help), type);
  AddValue(family, value);
  out.push_back(std::move(family));
}

}  // namespace

// Reads the service's figures at scrape time.
class MetricsCollector final : public prometheus::Collectable {
 public:
  MetricsCollector(const VisualizerService* service,
                   std::vector<std::string> devices,
                   std::vector<const ModelRegistry*> registries)
      : service_(*service),
        devices_(std::move(devices)),
        registries_(std::move(registries)) {}

  std::vector<MetricFamily> Collect() const override {
    const EngineStats stats = service_.Stats();
    std::vector<MetricFamily> out;

    MetricFamily depth = Family(
        "featviz_queue_depth",
        "Jobs queued and not yet running, per request priority",
        MetricType::Gauge);
    // Every priority a request may ask for (convert.h) is always exposed,
    // so that an autoscaler's query never finds a series missing.
    for (int p = kMaxPriority; p >= kMinPriority; --p) {
      auto it = stats.queue_depth.find(p);
      AddValue(depth, it == stats.queue_depth.end() ? 0 : it->second,
               {{"priority", absl::StrCat(p)}});
    }
    out.push_back(std::move(depth));

    MetricFamily queued = Family("featviz_jobs_queued",
                                 "Jobs queued per owner (client)",
                                 MetricType::Gauge);
    MetricFamily running = Family("featviz_jobs_running",
                                  "Jobs running per owner (client)",
                                  MetricType::Gauge);
    for (const auto& [owner, load] : service_.LoadByOwner()) {
      AddValue(queued, load.queued, {{"owner", owner}});
      AddValue(running, load.running, {{"owner", owner}});
    }
    out.push_back(std::move(queued));
    out.push_back(std::move(running));

    AddFamily(out, "featviz_jobs_submitted_total",
              "Jobs accepted (cached answers included)", MetricType::Counter,
              stats.jobs_submitted);
    MetricFamily ended = Family("featviz_jobs_ended_total",
                                "Jobs ended, per outcome", MetricType::Counter);
    AddValue(ended, stats.jobs_succeeded, {{"outcome", "succeeded"}});
    AddValue(ended, stats.jobs_failed, {{"outcome", "failed"}});
    AddValue(ended, stats.jobs_cancelled, {{"outcome", "cancelled"}});
    AddValue(ended, stats.jobs_expired, {{"outcome", "expired"}});
    out.push_back(std::move(ended));

    AddFamily(out, "featviz_result_cache_hits_total",
              "Seeded requests answered from the result cache",
              MetricType::Counter, stats.cache_hits);
    AddFamily(out, "featviz_result_cache_misses_total",
              "Seeded requests not in the result cache", MetricType::Counter,
              stats.cache_misses);
    AddFamily(out, "featviz_results_stored", "Finished results kept",
              MetricType::Gauge, stats.results_stored);
    AddFamily(out, "featviz_results_stored_bytes",
              "Bytes of finished results kept", MetricType::Gauge,
              stats.result_bytes);
    AddFamily(out, "featviz_results_budget_bytes",
              "The result store's budget (--result_store_bytes)",
              MetricType::Gauge, stats.result_max_bytes);
    MetricFamily removed = Family(
        "featviz_results_removed_total",
        "Finished results removed, by reason (expired, evicted, owner_share, "
        "forgotten)",
        MetricType::Counter);
    for (const auto& [why, count] : stats.results_removed) {
      AddValue(removed, count, {{"reason", why}});
    }
    out.push_back(std::move(removed));
    AddFamily(out, "featviz_job_records", "Job records kept", MetricType::Gauge,
              stats.job_records);
    AddFamily(out, "featviz_job_records_bytes",
              "Approximate heap of the job records kept", MetricType::Gauge,
              stats.job_record_bytes);
    MetricFamily heap = Family(
        "featviz_heap_bytes",
        "The process's heap (mallinfo2): in use by allocations, and held from "
        "the system",
        MetricType::Gauge);
    AddValue(heap, stats.heap_in_use_bytes, {{"state", "in_use"}});
    AddValue(heap, stats.heap_held_bytes, {{"state", "held"}});
    out.push_back(std::move(heap));

    MetricFamily steps_rate = Family(
        "featviz_steps_per_second",
        "Batched optimisation steps per second over the last minute, per "
        "device",
        MetricType::Gauge);
    MetricFamily image_steps_rate = Family(
        "featviz_image_steps_per_second",
        "Images x steps per second over the last minute, per device",
        MetricType::Gauge);
    MetricFamily steps_total =
        Family("featviz_steps_total", "Batched steps since start, per device",
               MetricType::Counter);
    MetricFamily occupancy = Family(
        "featviz_batch_occupancy_ratio",
        "Mean images per step over the last minute / max_batch_images, per "
        "device",
        MetricType::Gauge);
    MetricFamily device_jobs =
        Family("featviz_device_running_jobs",
               "Jobs in the device's current batch", MetricType::Gauge);
    for (const DeviceStats& d : stats.devices) {
      const std::vector<ClientMetric::Label> labels = {{"device", d.device}};
      AddValue(steps_rate, d.steps_per_second, labels);
      AddValue(image_steps_rate, d.image_steps_per_second, labels);
      AddValue(steps_total, d.steps_total, labels);
      AddValue(occupancy, d.batch_occupancy, labels);
      AddValue(device_jobs, d.running_jobs, labels);
    }
    out.push_back(std::move(steps_rate));
    out.push_back(std::move(image_steps_rate));
    out.push_back(std::move(steps_total));
    out.push_back(std::move(occupancy));
    out.push_back(std::move(device_jobs));

    MetricFamily loaded_bytes = Family(
        "featviz_model_loaded_bytes",
        "Bytes of the models in a device's memory (loaded, being loaded, or "
        "unloaded but still held by a running job), per device",
        MetricType::Gauge);
    MetricFamily budget_bytes =
        Family("featviz_model_memory_budget_bytes",
               "A device's --model_memory_bytes (0: no budget), per device",
               MetricType::Gauge);
    MetricFamily by_state = Family(
        "featviz_models",
        "Served model versions per device, by the state of their copy there "
        "(loaded, loading, unloaded, failed)",
        MetricType::Gauge);
    MetricFamily loads = Family("featviz_model_loads_total",
                                "Model loads since start, per device and "
                                "outcome (ok, failed)",
                                MetricType::Counter);
    MetricFamily load_seconds =
        Family("featviz_model_load_seconds_total",
               "Seconds spent loading and warming up models, per device",
               MetricType::Counter);
    MetricFamily evictions =
        Family("featviz_model_evictions_total",
               "Idle models unloaded, per device and reason (budget: the least "
               "recently used, to make room for a load)",
               MetricType::Counter);
    MetricFamily waiting =
        Family("featviz_model_loads_waiting",
               "Model loads waiting for models in use to be let go, per device",
               MetricType::Gauge);
    for (const ModelMemoryStats& memory : stats.model_memory) {
      const std::vector<ClientMetric::Label> labels = {
          {"device", memory.device}};
      AddValue(loaded_bytes, static_cast<double>(memory.used_bytes), labels);
      AddValue(budget_bytes, static_cast<double>(memory.budget_bytes), labels);
      for (ModelState state : {ModelState::kLoaded, ModelState::kLoading,
                               ModelState::kUnloaded, ModelState::kFailed}) {
        auto it = memory.copies.find(state);
        AddValue(
            by_state,
            static_cast<double>(it == memory.copies.end() ? 0 : it->second),
            {{"device", memory.device},
             {"state", std::string(ModelStateName(state))}});
      }
      AddValue(loads, static_cast<double>(memory.loads - memory.load_failures),
               {{"device", memory.device}, {"outcome", "ok"}});
      AddValue(loads, static_cast<double>(memory.load_failures),
               {{"device", memory.device}, {"outcome", "failed"}});
      AddValue(load_seconds, memory.load_seconds, labels);
      AddValue(evictions, static_cast<double>(memory.evictions),
               {{"device", memory.device}, {"reason", "budget"}});
      AddValue(waiting, static_cast<double>(memory.waiting_loads), labels);
    }
    out.push_back(std::move(loaded_bytes));
    out.push_back(std::move(budget_bytes));
    out.push_back(std::move(by_state));
    out.push_back(std::move(loads));
    out.push_back(std::move(load_seconds));
    out.push_back(std::move(evictions));
    out.push_back(std::move(waiting));

    AddFamily(out, "featviz_datasets",
              "Hosted datasets (the operator's and uploads)", MetricType::Gauge,
              static_cast<double>(stats.datasets));
    AddFamily(out, "featviz_dataset_bytes",
              "Bytes of the hosted datasets' images and labels in memory",
              MetricType::Gauge, static_cast<double>(stats.dataset_bytes));
    AddFamily(out, "featviz_dataset_memory_budget_bytes",
              "--dataset_memory_bytes (0: no budget)", MetricType::Gauge,
              static_cast<double>(stats.dataset_budget_bytes));

    MetricFamily model_memory = Family(
        "featviz_model_memory_bytes",
        "Bytes of a served model's parameters and buffers per device copy "
        "(what a loaded copy is counted for; loaded or not)",
        MetricType::Gauge);
    for (const ModelRegistry* registry : registries_) {
      for (const ModelSummary& model : registry->List()) {
        for (const c10::Device& device : registry->devices()) {
          AddValue(model_memory, static_cast<double>(model.memory_bytes),
                   {{"device", device.str()},
                    {"model", model.card.name},
                    {"version", model.card.version}});
        }
      }
    }
    out.push_back(std::move(model_memory));

    MetricFamily refused = Family(
        "featviz_models_refused_total",
        "Model loads refused because the model's code uses an operator or "
        "class outside tensor computation (docs/models.md), by operator",
        MetricType::Counter);
    std::map<std::string, int64_t> refused_by_operator;
    for (const ModelRegistry* registry : registries_) {
      for (const auto& [name, count] : registry->RefusedOperators()) {
        refused_by_operator[name] += count;
      }
    }
    for (const auto& [name, count] : refused_by_operator) {
      AddValue(refused, static_cast<double>(count), {{"operator", name}});
    }
    out.push_back(std::move(refused));
    return out;
  }

 private:
  const VisualizerService& service_;
  const std::vector<std::string> devices_;
  const std::vector<const ModelRegistry*> registries_;
};

Metrics::Metrics() : registry_(std::make_shared<prometheus::Registry>()) {
  latency_ = &prometheus::BuildHistogram()
                  .Name("featviz_job_duration_seconds")
                  .Help("Seconds from a job's submission to its end, per "
                        "outcome (queue time included)")
                  .Register(*registry_);
  queue_time_ = &prometheus::BuildHistogram()
                     .Name("featviz_job_queue_seconds")
                     .Help("Seconds a job waited in the queue before a worker "
                           "took it (or before it ended, if none did)")
                     .Register(*registry_);
  // Every outcome from the start, so rates over them are defined at once.
  for (JobState state : {JobState::kSucceeded, JobState::kFailed,
                         JobState::kCancelled, JobState::kExpired}) {
    const std::string outcome(JobStateName(state));
    latency_->Add({{"outcome", outcome}}, DurationBuckets());
    queue_time_->Add({{"outcome", outcome}}, DurationBuckets());
  }
}

Metrics::~Metrics() { Stop(); }

void Metrics::OnJobEnd(const JobEnd& end) {
  // Family::Add returns the existing series for known labels; it locks.
  const prometheus::Labels labels = {
      {"outcome", std::string(JobStateName(end.state))}};
  latency_->Add(labels, DurationBuckets())
      .Observe(absl::ToDoubleSeconds(end.total));
  queue_time_->Add(labels, DurationBuckets())
      .Observe(absl::ToDoubleSeconds(end.queued));
}

namespace {

// libmicrohttpd's answer to one request: /metrics, else 404.
MHD_Result Answer(void* self, MHD_Connection* connection, const char* url,
                  const char* method, const char*, const char*, size_t*,
                  void**) {
  const Metrics& metrics = *static_cast<Metrics*>(self);
  unsigned int code = MHD_HTTP_OK;
  std::string body;
  if (std::strcmp(method, "GET") != 0 && std::strcmp(method, "HEAD") != 0) {
    code = MHD_HTTP_METHOD_NOT_ALLOWED;
    body = "only GET\n";
  } else if (std::strcmp(url, "/metrics") != 0) {
    code = MHD_HTTP_NOT_FOUND;
    body = "the metrics are at /metrics\n";
  } else {
    body = metrics.Render();
  }
  MHD_Response* response = MHD_create_response_from_buffer(
      body.size(), body.data(), MHD_RESPMEM_MUST_COPY);
  if (response == nullptr) return MHD_NO;
  MHD_add_response_header(response, "Content-Type",
                          code == MHD_HTTP_OK
                              ? "text/plain; version=0.0.4; charset=utf-8"
                              : "text/plain; charset=utf-8");
  const MHD_Result queued = MHD_queue_response(connection, code, response);
  MHD_destroy_response(response);
  return queued;
}

}  // namespace

absl::StatusOr<int> Metrics::Serve(
    const std::string& listen, const VisualizerService* service,
    std::vector<std::string> devices,
    std::vector<const ModelRegistry*> registries) {
  const size_t colon = listen.rfind(':');
  int port = -1;
  if (colon == std::string::npos ||
      !absl::SimpleAtoi(listen.substr(colon + 1), &port) || port < 0 ||
      port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--metrics_listen must be HOST:PORT, got '", listen, "'"));
  }
  std::string host = listen.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  addrinfo hints = {};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* found = nullptr;
  const std::string port_text = absl::StrCat(port);
  if (const int error = getaddrinfo(host.empty() ? nullptr : host.c_str(),
                                    port_text.c_str(), &hints, &found);
      error != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--metrics_listen: cannot resolve '", host, "': ", gai_strerror(error)));
  }
  sockaddr_storage address = {};
  std::memcpy(&address, found->ai_addr, found->ai_addrlen);
  const bool ipv6 = found->ai_family == AF_INET6;
  freeaddrinfo(found);

  collector_ = std::make_shared<MetricsCollector>(service, std::move(devices),
                                                  std::move(registries));
  // libmicrohttpd, one internal thread: scrapes are rare. (prometheus-cpp's
  // own exposer runs civetweb, whose fixed worker stack is too small for
  // this process's static TLS: its threads cannot start.)
  daemon_ = MHD_start_daemon(
      MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG |
          (ipv6 ? MHD_USE_IPv6 : 0),
      static_cast<uint16_t>(port), nullptr, nullptr, &Answer, this,
      MHD_OPTION_EXTERNAL_LOGGER, &LogHttpError, nullptr,
      MHD_OPTION_SOCK_ADDR, reinterpret_cast<sockaddr*>(&address),
      MHD_OPTION_CONNECTION_TIMEOUT, 30u, MHD_OPTION_END);
  if (daemon_ == nullptr) {
    return absl::UnavailableError(
        absl::StrCat("--metrics_listen: cannot listen on '", listen, "'"));
  }
  const MHD_DaemonInfo* info =
      MHD_get_daemon_info(daemon_, MHD_DAEMON_INFO_BIND_PORT);
  return info != nullptr && info->port != 0 ? info->port : port;
}


void Metrics::Stop() {
  if (daemon_ != nullptr) {
    MHD_stop_daemon(daemon_);  // Waits for answers in progress.
    daemon_ = nullptr;
  }
}

std::string Metrics::Render() const {
  std::vector<MetricFamily> families = registry_->Collect();
  if (collector_ != nullptr) {
    std::vector<MetricFamily> more = collector_->Collect();
    families.insert(families.end(), more.begin(), more.end());
  }
  std::ostringstream out;
  prometheus::TextSerializer().Serialize(out, families);
  return out.str();
}

}  // namespace featviz::server
