// featviz-server: serves featviz.v1.Visualizer for the TorchScript models of
// a directory.
//
//   featviz-server --listen 127.0.0.1:8980 --model_dir models
//
// Once it listens it prints one line to stdout, "featviz-server listening on
// HOST:PORT" with the port actually bound (--listen HOST:0 picks a free
// one); logs go to stderr. One worker per --devices entry runs the jobs,
// stepping up to --max_batch_images images of one model together. SIGTERM or
// SIGINT drains: health turns NOT_SERVING, new jobs are refused with
// UNAVAILABLE, queued jobs end with UNAVAILABLE, running ones get
// --shutdown_grace_seconds and are then cancelled; the process exits 0.
//
// Security (docs/operations.md): --tls_cert/--tls_key serve TLS,
// --tls_client_ca also requires client certificates (mTLS); plaintext is
// only for loopback addresses unless --insecure. --tokens_file turns on
// bearer tokens with roles and quotas (re-read on SIGHUP); without it
// access is open, which the server says loudly at start. --metrics_listen
// serves Prometheus metrics on their own port, announced on stdout as
// "featviz-server metrics on HOST:PORT" after the listening line.
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <cstdio>
#include <string>
#include <vector>

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <torch/cuda.h>
#include <torch/script.h>

#include "absl/cleanup/cleanup.h"
#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/strings/ascii.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "core/files.h"
#include "core/operator_policy.h"
#include "core/status_macros.h"
#include "server/auth.h"
#include "server/http/studio_server.h"
#include "server/limits.h"
#include "server/metrics.h"
#include "server/engine/model_registry.h"
#include "server/circuits_service.h"
#include "server/engine/dataset_registry.h"
#include "server/visualizer_service.h"
#include "spdlog/sinks/stdout_color_sinks.h"
#include "spdlog/spdlog.h"

ABSL_FLAG(std::string, listen, "127.0.0.1:8980",
          "Address to listen on, HOST:PORT; port 0 picks a free port");
ABSL_FLAG(std::string, model_dir, "models",
          "The model repository: <name>/<version>/model.pt (with "
          "model.card.json), or a flat directory of <stem>.pt (with "
          "<stem>.card.json)");
ABSL_FLAG(double, model_poll_seconds, 0,
          "Every this many seconds, load new model versions of --model_dir, "
          "reload changed ones and unload removed ones; 0 = off");
ABSL_FLAG(std::string, devices, "cpu",
          "Devices to run jobs on, one worker each, comma-separated: cpu, "
          "cuda:N, or cuda for every visible GPU (needs a CUDA LibTorch)");
ABSL_FLAG(int64_t, max_image_side, featviz::server::Limits{}.max_image_side,
          "Largest image side a render may ask for, in pixels");
ABSL_FLAG(int64_t, max_steps, featviz::server::Limits{}.max_steps,
          "Most optimisation steps a render may ask for");
ABSL_FLAG(int64_t, max_batch, featviz::server::Limits{}.max_batch,
          "Most images a render may optimise together");
ABSL_FLAG(int64_t, max_message_bytes, featviz::server::Limits{}.max_message_bytes,
          "Largest gRPC message received or sent, in bytes");
ABSL_FLAG(int64_t, max_upload_bytes, featviz::server::Limits{}.max_upload_bytes,
          "Largest model file UploadModel accepts, in bytes (a client's "
          "max_upload_bytes quota may allow less)");
ABSL_FLAG(std::string, dataset_dir, "",
          "Directory of datasets for the Circuits service, MaCo's magnitude "
          "spectra and inversion references: one per subdirectory (MNIST IDX "
          "files, PNG folders or images.npy arrays), or itself one dataset; "
          "empty hosts none. Uploaded datasets are kept in it (a directory "
          "of datasets), else in memory only");
ABSL_FLAG(int64_t, max_dataset_bytes,
          featviz::server::Limits{}.max_dataset_bytes,
          "Largest dataset UploadDataset accepts, in bytes (a client's "
          "max_upload_bytes quota may allow less); its images take up to "
          "four times this in memory");
ABSL_FLAG(int64_t, max_datasets, featviz::server::Limits{}.max_datasets,
          "Datasets hosted in all (the --dataset_dir ones and uploads); "
          "beyond this, UploadDataset is RESOURCE_EXHAUSTED");
ABSL_FLAG(int64_t, max_datasets_per_owner,
          featviz::server::Limits{}.max_datasets_per_owner,
          "Uploaded datasets one client may have; beyond this, "
          "UploadDataset is RESOURCE_EXHAUSTED");
ABSL_FLAG(int64_t, dataset_memory_bytes,
          featviz::server::Limits{}.dataset_memory_bytes,
          "Bytes the hosted datasets (--dataset_dir's and uploads) may take in "
          "memory, all together; an upload past it is RESOURCE_EXHAUSTED, "
          "a --dataset_dir dataset past it is left out (logged). 0: no "
          "budget");
ABSL_FLAG(int64_t, model_memory_bytes,
          featviz::server::Limits{}.model_memory_bytes,
          "Bytes of models (parameters and buffers) each device may hold. "
          "0: no budget, every model loaded on every device at start and "
          "kept. Otherwise models are loaded on first use and the least "
          "recently used idle ones unloaded to make room; a model larger "
          "than this is refused (RESOURCE_EXHAUSTED). See "
          "docs/operations.md, sizing");
ABSL_FLAG(double, model_load_wait_seconds,
          featviz::server::Limits{}.model_load_wait_seconds,
          "With --model_memory_bytes: how long a load waits for models in "
          "use to be let go when they fill the budget, before it fails "
          "RESOURCE_EXHAUSTED");
ABSL_FLAG(int64_t, max_queued_jobs, featviz::server::Limits{}.max_queued_jobs,
          "Jobs waiting for a worker, all owners; beyond this, "
          "RESOURCE_EXHAUSTED");
ABSL_FLAG(int64_t, max_queued_per_owner,
          featviz::server::Limits{}.max_queued_per_owner,
          "Jobs one owner may have waiting; beyond this, RESOURCE_EXHAUSTED");
ABSL_FLAG(double, default_queue_timeout_seconds,
          featviz::server::Limits{}.default_queue_timeout_seconds,
          "Longest a job waits in the queue before it expires; a request may "
          "ask for less, not more");
ABSL_FLAG(int64_t, max_batch_images, featviz::server::Limits{}.max_batch_images,
          "Most images a worker steps together (continuous batching)");
ABSL_FLAG(int64_t, max_job_records, featviz::server::Limits{}.max_job_records,
          "Job records kept (about 1 KiB each); beyond this the oldest "
          "finished ones are forgotten, and their results with them");
ABSL_FLAG(double, result_ttl_seconds, featviz::server::Limits{}.result_ttl_seconds,
          "How long a finished job's result is kept");
ABSL_FLAG(int64_t, result_store_bytes,
          featviz::server::Limits{}.result_store_bytes,
          "Most bytes of results kept, counted as the memory they take "
          "(images, PNGs, traces, statistics, bookkeeping); when full, the "
          "oldest result of the owner holding the most goes first");
ABSL_FLAG(double, result_owner_share,
          featviz::server::Limits{}.result_owner_share,
          "The most of --result_store_bytes one owner's results may take, in "
          "(0, 1]; beyond it the owner's own oldest results go first");
ABSL_FLAG(int64_t, progress_every,
          featviz::server::Limits{}.default_progress_every,
          "Steps between progress events when a request does not say");
ABSL_FLAG(std::string, precision, "auto",
          "Default arithmetic of the optimisation steps (a request may ask "
          "for its own): auto (bf16 where every device computes it "
          "natively: a CPU with avx512_bf16 or amx_bf16, GPUs of compute "
          "capability 8.0 or more; fp32 elsewhere), fp32, tf32 (CUDA tensor "
          "cores, process-wide) or bf16 (autocast)");
ABSL_FLAG(bool, cuda_graphs, false,
          "On CUDA devices, capture each batched step as a CUDA graph and "
          "replay it while the batch keeps its jobs");
ABSL_FLAG(std::string, linear_mode, "invariant",
          "How linear layers are computed: invariant (default; featviz's own "
          "fixed-order product on the CPU in fp32, blocked elsewhere; a "
          "job's images are bitwise the same alone and batched), blocked "
          "(BLAS over 8-row blocks: also invariant, a job alone pays for 8 "
          "rows), rowwise (also invariant, slowest) or plain (the module's own addmm, fastest; batched "
          "results differ from alone within float rounding, see "
          "docs/performance.md). Results and cache keys record the mode");
ABSL_FLAG(std::string, conv_layout, "channels_last",
          "Memory layout of CPU models' convolution weights and input "
          "images: channels_last (default; oneDNN's own layout, faster on "
          "the models measured in docs/performance.md) or contiguous "
          "(LibTorch's NCHW). Chosen when a model is loaded");
ABSL_FLAG(int32_t, worker_threads, 1,
          "Intra-op threads of each device's worker (at::set_num_threads "
          "in the worker thread); 0: LibTorch's default. 1 by default: on "
          "the 2-core machine it was measured on, two threads were slower "
          "at every batch size with another process busy (0.06-0.57x) and "
          "faster only at 64 images of the classic CNN when idle (1.16x); "
          "docs/performance.md, Threads. OpenBLAS's own pool is set to the "
          "same count unless OPENBLAS_NUM_THREADS is set");
ABSL_FLAG(int64_t, fault_oom_above_images, 0,
          "Testing only: steps of more images than this fail as if the "
          "device ran out of memory (0: off)");
ABSL_FLAG(double, shutdown_grace_seconds, 10,
          "On SIGTERM/SIGINT, how long running renders may go on");
ABSL_FLAG(std::string, tls_cert, "",
          "PEM certificate chain of the server: serve TLS (with --tls_key)");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls_cert");
ABSL_FLAG(std::string, tls_client_ca, "",
          "PEM bundle of the CAs that sign client certificates: require and "
          "verify a client certificate on every connection (mTLS)");
ABSL_FLAG(bool, insecure, false,
          "Allow plaintext on an address that is not loopback");
ABSL_FLAG(std::string, tokens_file, "",
          "Bearer tokens, one client per line (TOKEN NAME ROLE [QUOTA=N...]); "
          "re-read on SIGHUP. Empty: open access");
ABSL_FLAG(std::string, metrics_listen, "",
          "HOST:PORT of the Prometheus /metrics endpoint; empty: none");
ABSL_FLAG(std::string, http_listen, "",
          "HOST:PORT of featviz studio, the web page and its JSON API over "
          "these services (docs/studio.md): HTTPS with --tls_cert/--tls_key, "
          "plain HTTP on loopback only unless --insecure; port 0 picks one. "
          "Empty: none");
ABSL_FLAG(std::string, studio_dir, "",
          "The studio's files; empty: <prefix>/share/featviz/studio beside "
          "the binary, else this source tree's studio/");
ABSL_FLAG(std::string, advertise_address, "",
          "Address clients reach this replica at, HOST or HOST:PORT (no port: "
          "the port bound). When set, job ids end in @ADDRESS so that clients "
          "balancing over replicas send GetJob/WatchJob/CancelJob to the one "
          "holding the job; in Kubernetes, the pod's IP. Empty: plain ids");
ABSL_FLAG(double, max_connection_age_seconds, 0,
          "Ask clients to reconnect after a connection has been open this "
          "long (gRPC GOAWAY, +-10% jitter; calls in flight finish), so that "
          "DNS round-robin clients re-resolve and reach replicas added since; "
          "0: never");
ABSL_FLAG(std::string, allow_operators, "",
          "Comma-separated operators (NAMESPACE::NAME, e.g. aten::save) and "
          "TorchBind classes (torch.classes.NAMESPACE.CLASS) that models may "
          "use besides the built-in allow-list of tensor computation, even "
          "ones it refuses by name; for a repository whose models and "
          "uploaders you trust with them (docs/models.md, What a model may "
          "call)");

namespace featviz::server {
namespace {

constexpr char kServiceName[] = "featviz.v1.Visualizer";
// After the renders are done, how long the last events may take to send.
constexpr absl::Duration kSendGrace = absl::Seconds(5);

absl::StatusOr<c10::Device> ParseDevice(const std::string& text) {
  if (text == "cpu") return c10::Device(c10::kCPU);
  if (!absl::StartsWith(text, "cuda")) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--devices: each device must be cpu or cuda:N, got '", text, "'"));
  }
  if (!torch::cuda::is_available()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--devices ", text, ": this LibTorch has no CUDA or sees no GPU"));
  }
  try {
    c10::Device device(text);
    const int64_t count = static_cast<int64_t>(torch::cuda::device_count());
    if (!device.has_index()) device.set_index(0);
    if (device.index() >= count) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--devices ", text, ": there are only ", count, " CUDA devices"));
    }
    return device;
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--devices: each device must be cpu or cuda:N, got '", text, "'"));
  }
}

// The --devices list: "cuda" alone stands for every visible GPU.
absl::StatusOr<std::vector<c10::Device>> ParseDevices(const std::string& text) {
  std::vector<c10::Device> devices;
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipEmpty())) {
    const std::string name(absl::StripAsciiWhitespace(part));
    if (name == "cuda") {
      const int64_t count = torch::cuda::is_available()
                                ? static_cast<int64_t>(torch::cuda::device_count())
                                : 0;
      if (count == 0) {
        return absl::InvalidArgumentError(
            "--devices cuda: this LibTorch has no CUDA or sees no GPU");
      }
      for (int64_t i = 0; i < count; ++i) {
        devices.emplace_back(c10::kCUDA, static_cast<c10::DeviceIndex>(i));
      }
      continue;
    }
    FEATVIZ_ASSIGN_OR_RETURN(c10::Device device, ParseDevice(name));
    devices.push_back(device);
  }
  if (devices.empty()) {
    return absl::InvalidArgumentError("--devices must name at least one device");
  }
  for (size_t i = 0; i < devices.size(); ++i) {
    for (size_t j = 0; j < i; ++j) {
      if (devices[i] == devices[j]) {
        return absl::InvalidArgumentError(absl::StrCat(
            "--devices names ", devices[i].str(), " twice"));
      }
    }
  }
  return devices;
}

absl::StatusOr<Limits> LimitsFromFlags() {
  Limits limits;
  limits.max_image_side = absl::GetFlag(FLAGS_max_image_side);
  limits.max_steps = absl::GetFlag(FLAGS_max_steps);
  limits.max_batch = absl::GetFlag(FLAGS_max_batch);
  limits.max_message_bytes = absl::GetFlag(FLAGS_max_message_bytes);
  limits.max_upload_bytes = absl::GetFlag(FLAGS_max_upload_bytes);
  limits.max_dataset_bytes = absl::GetFlag(FLAGS_max_dataset_bytes);
  limits.max_datasets = absl::GetFlag(FLAGS_max_datasets);
  limits.max_datasets_per_owner = absl::GetFlag(FLAGS_max_datasets_per_owner);
  limits.dataset_memory_bytes = absl::GetFlag(FLAGS_dataset_memory_bytes);
  limits.model_memory_bytes = absl::GetFlag(FLAGS_model_memory_bytes);
  limits.model_load_wait_seconds = absl::GetFlag(FLAGS_model_load_wait_seconds);
  limits.max_queued_jobs = absl::GetFlag(FLAGS_max_queued_jobs);
  limits.max_queued_per_owner = absl::GetFlag(FLAGS_max_queued_per_owner);
  limits.default_queue_timeout_seconds =
      absl::GetFlag(FLAGS_default_queue_timeout_seconds);
  limits.max_batch_images = absl::GetFlag(FLAGS_max_batch_images);
  limits.max_job_records = absl::GetFlag(FLAGS_max_job_records);
  limits.result_ttl_seconds = absl::GetFlag(FLAGS_result_ttl_seconds);
  limits.result_store_bytes = absl::GetFlag(FLAGS_result_store_bytes);
  limits.result_owner_share = absl::GetFlag(FLAGS_result_owner_share);
  limits.default_progress_every = absl::GetFlag(FLAGS_progress_every);
  // "auto" is resolved once the devices are known (ResolvePrecision).
  if (absl::GetFlag(FLAGS_precision) != "auto") {
    absl::StatusOr<core::Precision> precision =
        core::ParsePrecision(absl::GetFlag(FLAGS_precision));
    if (!precision.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--", precision.status().message(), " (or auto)"));
    }
    limits.step.precision = *precision;
  }
  limits.step.cuda_graphs = absl::GetFlag(FLAGS_cuda_graphs);
  limits.step.fail_above_images = absl::GetFlag(FLAGS_fault_oom_above_images);
  if (limits.max_upload_bytes < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--max_upload_bytes must be at least 1, got ", limits.max_upload_bytes));
  }
  if (limits.max_dataset_bytes < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--max_dataset_bytes must be at least 1, got ",
        limits.max_dataset_bytes));
  }
  if (limits.max_datasets < 0 || limits.max_datasets_per_owner < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--max_datasets and --max_datasets_per_owner must be >= 0, got ",
        limits.max_datasets, " and ", limits.max_datasets_per_owner));
  }
  if (limits.model_memory_bytes < 0 || limits.dataset_memory_bytes < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--model_memory_bytes and --dataset_memory_bytes must be >= 0 (0: no "
        "budget), got ",
        limits.model_memory_bytes, " and ", limits.dataset_memory_bytes));
  }
  if (!(limits.model_load_wait_seconds >= 0) ||
      limits.model_load_wait_seconds > 86400) {
    return absl::InvalidArgumentError(
        absl::StrCat("--model_load_wait_seconds must be in [0, 86400], got ",
                     limits.model_load_wait_seconds));
  }
  limits.step.intra_op_threads = absl::GetFlag(FLAGS_worker_threads);
  if (limits.step.intra_op_threads < 0 || limits.step.intra_op_threads > 256) {
    return absl::InvalidArgumentError(
        absl::StrCat("--worker_threads must be in [0, 256], got ",
                     limits.step.intra_op_threads));
  }
  if (limits.max_message_bytes < 1 || limits.max_message_bytes > INT_MAX) {
    return absl::InvalidArgumentError(
        absl::StrCat("--max_message_bytes must be in [1, ", INT_MAX, "], got ",
                     limits.max_message_bytes));
  }
  return limits;
}

// "HOST:PORT" with the port replaced by the one actually bound.
std::string ListeningAddress(const std::string& listen, int port) {
  const size_t colon = listen.rfind(':');
  const std::string host =
      colon == std::string::npos ? listen : listen.substr(0, colon);
  return absl::StrCat(host, ":", port);
}

absl::StatusOr<std::string> ReadFile(const std::string& flag,
                                    const std::string& path) {
  absl::StatusOr<std::string> text = core::ReadFile(path);
  if (!text.ok()) return core::Prefixed(absl::StrCat("--", flag), text.status());
  return text;
}

// True for addresses only this machine can reach: 127.0.0.0/8, ::1,
// localhost, and unix sockets.
bool IsLoopback(const std::string& listen) {
  if (absl::StartsWith(listen, "unix:")) return true;
  std::string host = listen;
  if (absl::StartsWith(host, "[")) {
    const size_t close = host.find(']');
    host = close == std::string::npos ? host : host.substr(1, close - 1);
  } else {
    const size_t colon = host.rfind(':');
    if (colon != std::string::npos) host = host.substr(0, colon);
  }
  return absl::StartsWith(host, "127.") || host == "localhost" ||
         host == "::1";
}

// TLS or mTLS from the flags; plaintext only on loopback or with
// --insecure.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> ListenCredentials(
    const std::string& listen) {
  const std::string cert_path = absl::GetFlag(FLAGS_tls_cert);
  const std::string key_path = absl::GetFlag(FLAGS_tls_key);
  const std::string ca_path = absl::GetFlag(FLAGS_tls_client_ca);
  if (cert_path.empty() != key_path.empty()) {
    return absl::InvalidArgumentError(
        "--tls_cert and --tls_key go together: give both or neither");
  }
  if (cert_path.empty()) {
    if (!ca_path.empty()) {
      return absl::InvalidArgumentError(
          "--tls_client_ca needs --tls_cert and --tls_key (mTLS is TLS)");
    }
    if (!IsLoopback(listen)) {
      if (!absl::GetFlag(FLAGS_insecure)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "--listen ", listen,
            " is reachable from other machines: serve TLS (--tls_cert, "
            "--tls_key) or pass --insecure to allow plaintext"));
      }
      spdlog::warn(
          "--insecure: serving PLAINTEXT on {}: anyone on the network can "
          "read the traffic, tokens included",
          listen);
    }
    return grpc::InsecureServerCredentials();
  }
  FEATVIZ_ASSIGN_OR_RETURN(const std::string cert,
                           ReadFile("tls_cert", cert_path));
  FEATVIZ_ASSIGN_OR_RETURN(const std::string key,
                           ReadFile("tls_key", key_path));
  grpc::SslServerCredentialsOptions options(
      GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  options.pem_key_cert_pairs.push_back({key, cert});
  if (!ca_path.empty()) {
    FEATVIZ_ASSIGN_OR_RETURN(options.pem_root_certs,
                             ReadFile("tls_client_ca", ca_path));
    options.client_certificate_request =
        GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  return grpc::SslServerCredentials(options);
}

// --advertise_address with the bound port when it names none: "10.0.0.7"
// -> "10.0.0.7:8980", "fd00::7" -> "[fd00::7]:8980".
std::string AdvertisedAddress(const std::string& flag, int port) {
  if (flag.empty()) return "";
  const auto colons = std::count(flag.begin(), flag.end(), ':');
  const bool has_port = absl::StartsWith(flag, "[")
                            ? absl::StrContains(flag, "]:")
                            : colons == 1;
  if (has_port) return flag;
  if (colons > 1) return absl::StrCat("[", flag, "]:", port);
  return absl::StrCat(flag, ":", port);
}

// The self-pipe: the handler only writes the signal's number, which is
// async-signal-safe, and a thread reads it. (Blocking the signals and using
// sigwait would not do: a library starts a thread before main() runs, with
// the signals unblocked.)
int g_signal_pipe[2] = {-1, -1};

extern "C" void OnSignal(int signal_number) {
  const unsigned char byte = static_cast<unsigned char>(signal_number);
  const int saved_errno = errno;
  [[maybe_unused]] ssize_t n = write(g_signal_pipe[1], &byte, 1);
  errno = saved_errno;
}

absl::Status InstallSignalHandlers() {
  if (pipe2(g_signal_pipe, O_CLOEXEC) != 0) {
    return absl::InternalError(absl::StrCat("pipe2: ", std::strerror(errno)));
  }
  struct sigaction action = {};
  action.sa_handler = OnSignal;
  action.sa_flags = SA_RESTART;
  sigemptyset(&action.sa_mask);
  for (int signal_number : {SIGTERM, SIGINT, SIGHUP}) {
    if (sigaction(signal_number, &action, nullptr) != 0) {
      return absl::InternalError(
          absl::StrCat("sigaction: ", std::strerror(errno)));
    }
  }
  return absl::OkStatus();
}

// Blocks until SIGTERM, SIGINT or SIGHUP; returns its number.
int WaitForSignal() {
  unsigned char byte = 0;
  while (read(g_signal_pipe[0], &byte, 1) != 1) {
    if (errno != EINTR) return 0;
  }
  return byte;
}

// Where the studio's files are when --studio_dir is not given: installed
// beside the binary (<prefix>/share/featviz/studio, as the container image
// has them), else this source tree's studio/.
std::string DefaultStudioDir() {
  std::error_code error;
  const std::filesystem::path exe =
      std::filesystem::read_symlink("/proc/self/exe", error);
  if (!error) {
    const std::filesystem::path installed =
        exe.parent_path().parent_path() / "share" / "featviz" / "studio";
    if (std::filesystem::exists(installed / "index.html", error)) {
      return installed.string();
    }
  }
  return FEATVIZ_STUDIO_SOURCE_DIR;
}

// The studio's HTTP(S) listener on `listen`, over `server`'s services, with
// the gRPC listener's TLS files and limits.
absl::StatusOr<http::StudioServerPtr> StartStudio(const std::string& listen,
                                                  const Limits& limits,
                                                  grpc::Server* server) {
  http::StudioOptions options;
  options.listen = listen;
  options.studio_dir = absl::GetFlag(FLAGS_studio_dir);
  if (options.studio_dir.empty()) options.studio_dir = DefaultStudioDir();
  options.tls_cert = absl::GetFlag(FLAGS_tls_cert);
  options.tls_key = absl::GetFlag(FLAGS_tls_key);
  options.tls_client_ca = absl::GetFlag(FLAGS_tls_client_ca);
  options.insecure = absl::GetFlag(FLAGS_insecure);
  options.max_body_bytes = limits.max_message_bytes;
  options.max_upload_body_bytes =
      std::max(limits.max_upload_bytes, limits.max_dataset_bytes) +
      limits.max_message_bytes;
  options.services = {v1::Visualizer::service_full_name(),
                      v1::Circuits::service_full_name()};
  FEATVIZ_ASSIGN_OR_RETURN(http::StudioServerPtr studio,
                           http::StudioServer::Create(std::move(options),
                                                      server));
  studio->Start();
  return studio;
}

// Process-wide settings from the flags, before any model is loaded: the
// default precision (`limits.step.precision` for --precision auto), host
// memory, OpenBLAS's threads, how linear layers and convolutions are
// computed, and which operators a model may use.
absl::Status ConfigureProcess(Limits& limits,
                              const std::vector<c10::Device>& devices) {
  if (absl::GetFlag(FLAGS_precision) == "auto") {
    std::string why;
    limits.step.precision =
        core::DefaultPrecision(core::PrecisionFactsFor(devices), &why);
    spdlog::info("precision: {} by default (--precision auto: {})",
                 core::PrecisionName(limits.step.precision), why);
  } else {
    spdlog::info("precision: {} by default (--precision)",
                 core::PrecisionName(limits.step.precision));
  }
  core::ConfigureProcessPrecision(limits.step.precision);
  core::KeepFreedHostMemory();
  // OpenBLAS's pool follows the worker's threads unless the operator set
  // it (core::SetOpenBlasThreads).
  const int worker_threads = limits.step.intra_op_threads;
  if (worker_threads > 0 && std::getenv("OPENBLAS_NUM_THREADS") == nullptr) {
    const int blas = core::SetOpenBlasThreads(worker_threads);
    if (blas > 0) {
      spdlog::info("OpenBLAS: {} thread(s), as --worker_threads", blas);
    }
  }
  absl::StatusOr<core::LinearMode> linear_mode =
      core::ParseLinearMode(absl::GetFlag(FLAGS_linear_mode));
  if (!linear_mode.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--linear_mode: ", linear_mode.status().message()));
  }
  // Before any model is loaded: tapped graphs are built in the mode of the
  // time.
  core::SetLinearMode(*linear_mode);
  absl::StatusOr<core::ConvLayout> conv_layout =
      core::ParseConvLayout(absl::GetFlag(FLAGS_conv_layout));
  if (!conv_layout.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--conv_layout: ", conv_layout.status().message()));
  }
  core::SetConvLayout(*conv_layout);
  spdlog::info("convolutions of CPU models: {} layout (--conv_layout)",
               core::ConvLayoutName(*conv_layout));
  absl::StatusOr<core::OperatorPolicy> operators =
      core::ParseOperatorPolicy(absl::GetFlag(FLAGS_allow_operators));
  if (!operators.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--allow_operators: ", operators.status().message()));
  }
  if (!operators->also_allowed.empty()) {
    spdlog::warn(
        "--allow_operators: models may also use {} (beyond tensor "
        "computation; uploads included)",
        absl::StrJoin(operators->also_allowed, ", "));
  }
  // Before the registry loads the repository: every load is checked.
  core::SetOperatorPolicy(*std::move(operators));
  return absl::OkStatus();
}

// The flags of serving itself (drain, connections, replica name, polling).
struct ServeFlags {
  double grace_seconds = 0;
  double max_age_seconds = 0;
  std::string advertise;
  double poll_seconds = 0;
};

absl::StatusOr<ServeFlags> ReadServeFlags() {
  ServeFlags flags;
  flags.grace_seconds = absl::GetFlag(FLAGS_shutdown_grace_seconds);
  const double grace_seconds = flags.grace_seconds;
  if (!(grace_seconds >= 0)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--shutdown_grace_seconds must be >= 0, got ", grace_seconds));
  }
  flags.max_age_seconds = absl::GetFlag(FLAGS_max_connection_age_seconds);
  const double max_age_seconds = flags.max_age_seconds;
  if (!(max_age_seconds >= 0) || max_age_seconds > INT_MAX / 1000) {
    return absl::InvalidArgumentError(
        absl::StrCat("--max_connection_age_seconds must be in [0, ",
                     INT_MAX / 1000, "], got ", max_age_seconds));
  }
  flags.advertise = absl::GetFlag(FLAGS_advertise_address);
  const std::string& advertise_flag = flags.advertise;
  if (absl::StrContains(advertise_flag, "@") ||
      absl::StrContains(advertise_flag, "/")) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--advertise_address must be HOST or HOST:PORT, got '", advertise_flag,
        "'"));
  }
  flags.poll_seconds = absl::GetFlag(FLAGS_model_poll_seconds);
  const double poll_seconds = flags.poll_seconds;
  if (!(poll_seconds >= 0) || !std::isfinite(poll_seconds)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--model_poll_seconds must be >= 0 (0 = off), got ", poll_seconds));
  }
  return flags;
}

// The bearer tokens of --tokens_file; null (and a warning) without one.
absl::StatusOr<AuthorizerPtr> LoadTokens(const std::string& listen) {
  AuthorizerPtr auth;
  const std::string tokens_file = absl::GetFlag(FLAGS_tokens_file);
  if (tokens_file.empty()) {
    spdlog::warn(
        "no --tokens_file: OPEN ACCESS. Anyone who reaches {} may render, "
        "see and cancel any job and call the admin RPCs; jobs are owned by "
        "the request's owner, the client certificate's name or the caller's "
        "address. Give --tokens_file on a shared machine.",
        listen);
  } else {
    FEATVIZ_ASSIGN_OR_RETURN(auth, Authorizer::Create(tokens_file));
    spdlog::info("tokens: {} clients from {}", auth->size(), tokens_file);
  }
  return auth;
}

// The gRPC server with both services, health and reflection, listening;
// `port` is the port bound.
absl::StatusOr<std::unique_ptr<grpc::Server>> StartGrpc(
    const std::string& listen,
    const std::shared_ptr<grpc::ServerCredentials>& credentials,
    double max_age_seconds, const Limits& limits, grpc::Service* service,
    grpc::Service* circuits, int& port) {
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(listen, credentials, &port);
  if (max_age_seconds > 0) {
    builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_MS,
                               static_cast<int>(max_age_seconds * 1000));
  }
  builder.RegisterService(service);
  builder.RegisterService(circuits);
  builder.SetMaxReceiveMessageSize(static_cast<int>(limits.max_message_bytes));
  builder.SetMaxSendMessageSize(static_cast<int>(limits.max_message_bytes));
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on '", listen, "'"));
  }
  return server;
}

// Blocks until SIGTERM or SIGINT and returns its number; each SIGHUP in
// between re-reads the tokens (`auth`; null: none to re-read).
int WaitForStop(Authorizer* auth) {
  int signal_number = WaitForSignal();
  while (signal_number == SIGHUP) {
    if (auth == nullptr) {
      spdlog::info("SIGHUP: no --tokens_file to re-read");
    } else if (absl::Status reloaded = auth->Reload(); reloaded.ok()) {
      spdlog::info("SIGHUP: tokens re-read, {} clients", auth->size());
    } else {
      spdlog::error("SIGHUP: kept the tokens in use: {}",
                    reloaded.ToString());
    }
    signal_number = WaitForSignal();
  }
  return signal_number;
}

absl::Status Serve() {
  FEATVIZ_ASSIGN_OR_RETURN(Limits limits, LimitsFromFlags());
  FEATVIZ_ASSIGN_OR_RETURN(const std::vector<c10::Device> devices,
                           ParseDevices(absl::GetFlag(FLAGS_devices)));
  FEATVIZ_RETURN_IF_ERROR(ConfigureProcess(limits, devices));
  FEATVIZ_ASSIGN_OR_RETURN(const ServeFlags flags, ReadServeFlags());
  // The models once per device: each device's worker runs its own copies,
  // within the device's budget when there is one.
  ModelRegistryOptions registry_options;
  registry_options.memory_bytes = limits.model_memory_bytes;
  registry_options.load_wait = absl::Seconds(limits.model_load_wait_seconds);
  if (limits.model_memory_bytes > 0) {
    spdlog::info(
        "model memory: {} bytes per device; models load on first "
        "use, the least recently used idle ones unload to make room",
        limits.model_memory_bytes);
  }
  FEATVIZ_ASSIGN_OR_RETURN(
      ModelRegistryPtr registry,
      ModelRegistry::Create(absl::GetFlag(FLAGS_model_dir), devices,
                            std::move(registry_options)));
  const ModelRegistry& models = *registry;
  const std::string listen = absl::GetFlag(FLAGS_listen);
  FEATVIZ_ASSIGN_OR_RETURN(std::shared_ptr<grpc::ServerCredentials> credentials,
                           ListenCredentials(listen));
  FEATVIZ_ASSIGN_OR_RETURN(AuthorizerPtr auth, LoadTokens(listen));
  // Declared before the service: jobs still end (and are observed) while
  // the service shuts down.
  Metrics metrics;
  // One authenticator for both services.
  const Authenticator authenticator(auth.get());
  ServiceOptions service_options;
  service_options.authenticator = &authenticator;
  service_options.on_job_end = [&metrics](const JobEnd& end) {
    metrics.OnJobEnd(end);
  };
  DatasetRegistryOptions dataset_options;
  dataset_options.max_datasets = limits.max_datasets;
  dataset_options.max_per_owner = limits.max_datasets_per_owner;
  dataset_options.memory_bytes = limits.dataset_memory_bytes;
  FEATVIZ_ASSIGN_OR_RETURN(
      DatasetRegistryPtr datasets,
      DatasetRegistry::Create(absl::GetFlag(FLAGS_dataset_dir),
                              dataset_options));
  // Renders read the datasets too (MaCo magnitudes, reference images).
  service_options.datasets = datasets.get();
  FEATVIZ_ASSIGN_OR_RETURN(
      VisualizerServicePtr service,
      VisualizerService::Create(registry.get(), limits, service_options));
  CircuitLimits circuit_limits;
  circuit_limits.max_dataset_bytes = limits.max_dataset_bytes;
  FEATVIZ_ASSIGN_OR_RETURN(
      CircuitsServicePtr circuits,
      CircuitsService::Create(
          &models, datasets.get(),
          [&service](grpc::CallbackServerContext* context,
                     const v1::RenderRequest& request) {
            return service->SubmitRender(context, request);
          },
          limits, circuit_limits, &authenticator, service->upload_ledger(),
          service->unit_values()));
  if (flags.poll_seconds > 0) {
    registry->StartPolling(absl::Seconds(flags.poll_seconds));
  }
  // The endpoint reads the service: it stops before the service goes.
  absl::Cleanup stop_metrics = [&metrics] { metrics.Stop(); };
  std::string metrics_address;
  if (const std::string metrics_listen = absl::GetFlag(FLAGS_metrics_listen);
      !metrics_listen.empty()) {
    std::vector<std::string> device_names;
    for (const c10::Device& device : devices) device_names.push_back(device.str());
    std::vector<const ModelRegistry*> registry_views = {registry.get()};
    FEATVIZ_ASSIGN_OR_RETURN(
        const int metrics_port,
        metrics.Serve(metrics_listen, service.get(), std::move(device_names),
                      std::move(registry_views)));
    metrics_address = ListeningAddress(metrics_listen, metrics_port);
  }

  int port = 0;
  FEATVIZ_ASSIGN_OR_RETURN(
      std::unique_ptr<grpc::Server> server,
      StartGrpc(listen, credentials, flags.max_age_seconds, limits,
                service.get(), circuits.get(), port));
  // Job ids name the replica from here on, before health says SERVING (a
  // job accepted in the instant before gets a plain id, which works on its
  // replica but cannot be routed).
  const std::string advertised = AdvertisedAddress(flags.advertise, port);
  if (!advertised.empty()) service->SetReplica(advertised);
  grpc::HealthCheckServiceInterface* health = server->GetHealthCheckService();
  health->SetServingStatus("", true);
  health->SetServingStatus(kServiceName, true);
  http::StudioServerPtr studio;
  if (const std::string http_listen = absl::GetFlag(FLAGS_http_listen);
      !http_listen.empty()) {
    FEATVIZ_ASSIGN_OR_RETURN(studio, StartStudio(http_listen, limits,
                                                 server.get()));
  }

  const std::string address = ListeningAddress(listen, port);
  spdlog::info(
      "serving {} models on {}{} ({}), devices {}, max_batch_images {}, "
      "queue {} ({} per owner)",
      models.size(), address,
      advertised.empty() ? "" : absl::StrCat(" as ", advertised),
      absl::GetFlag(FLAGS_tls_cert).empty()
          ? "plaintext"
          : (absl::GetFlag(FLAGS_tls_client_ca).empty() ? "TLS" : "mTLS"),
      absl::GetFlag(FLAGS_devices), limits.max_batch_images,
      limits.max_queued_jobs, limits.max_queued_per_owner);
  // Tests and scripts parse this line: keep it exactly so, and first.
  std::printf("featviz-server listening on %s\n", address.c_str());
  if (!metrics_address.empty()) {
    spdlog::info("metrics on http://{}/metrics", metrics_address);
    std::printf("featviz-server metrics on %s\n", metrics_address.c_str());
  }
  if (studio != nullptr) {
    spdlog::info("studio on {}://{}/", studio->scheme(),
                 ListeningAddress(absl::GetFlag(FLAGS_http_listen),
                                  studio->port()));
    std::printf("featviz-server studio on %s://%s/\n", studio->scheme(),
                ListeningAddress(absl::GetFlag(FLAGS_http_listen),
                                 studio->port())
                    .c_str());
  }
  std::fflush(stdout);

  const int signal_number = WaitForStop(auth.get());

  spdlog::info("signal {}: draining, running renders may go on for {}s",
               signal_number, flags.grace_seconds);
  health->Shutdown();  // Everything NOT_SERVING, and it stays so.
  if (studio != nullptr) studio->StopAccepting();
  registry->StopPolling();
  circuits->Shutdown();
  service->Shutdown(absl::Now() + absl::Seconds(flags.grace_seconds));
  server->Shutdown(absl::ToChronoTime(absl::Now() + kSendGrace));
  server->Wait();
  if (studio != nullptr) studio->Stop();
  spdlog::info("stopped");
  return absl::OkStatus();
}

}  // namespace
}  // namespace featviz::server

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Serves featviz.v1.Visualizer.\n"
      "  featviz-server --listen 127.0.0.1:8980 --model_dir models");
  absl::ParseCommandLine(argc, argv);
  // stdout carries only the "listening on" line.
  spdlog::set_default_logger(spdlog::stderr_color_mt("featviz-server"));

  absl::Status status = featviz::server::InstallSignalHandlers();
  if (status.ok()) status = featviz::server::Serve();
  if (!status.ok()) {
    spdlog::critical("{}", status.ToString());
    return 1;
  }
  return 0;
}
