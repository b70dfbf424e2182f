#include "server/http/studio_server.h"

// CPPHTTPLIB_OPENSSL_SUPPORT comes from cpp-httplib's pkg-config flags.
#include <httplib.h>

#include <algorithm>
#include <exception>
#include <filesystem>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "spdlog/spdlog.h"

namespace featviz::server::http {
namespace {

// Scripts, styles and pictures of this origin only (pictures also as data:
// and blob: URLs, which the page makes from the API's PNG bytes): a name
// that slipped into the page as markup could still not run.
constexpr char kContentSecurityPolicy[] =
    "default-src 'self'; img-src 'self' data: blob:; script-src 'self'; "
    "style-src 'self'; connect-src 'self'; object-src 'none'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

void ReplyError(httplib::Response& res, const grpc::Status& status,
                int http_status = 0) {
  res.status =
      http_status != 0 ? http_status : HttpStatusFor(status.error_code());
  res.set_header("Cache-Control", "no-store");
  res.set_content(ErrorJson(status), "application/json");
}

void ReplyError(httplib::Response& res, const absl::Status& status) {
  ReplyError(res, grpc::Status(static_cast<grpc::StatusCode>(status.code()),
                               std::string(status.message())));
}

grpc::Status BodyTooLarge(int64_t bytes, int64_t max_bytes) {
  return grpc::Status(
      grpc::StatusCode::RESOURCE_EXHAUSTED,
      absl::StrCat("request body of ", bytes,
                   " bytes is over the server's largest message "
                   "(--max_message_bytes ",
                   max_bytes, ")"));
}

bool IsLoopbackHost(absl::string_view host) {
  return host == "localhost" || host == "::1" || absl::StartsWith(host, "127.");
}

// "HOST:PORT" or "[V6]:PORT" as host and port.
absl::StatusOr<std::pair<std::string, int>> SplitAddress(
    absl::string_view address) {
  const size_t colon = address.rfind(':');
  int port = -1;
  if (colon == absl::string_view::npos ||
      !absl::SimpleAtoi(address.substr(colon + 1), &port) || port < 0 ||
      port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--http_listen must be HOST:PORT (PORT 0 picks one), got '", address,
        "'"));
  }
  absl::string_view host = address.substr(0, colon);
  if (absl::ConsumePrefix(&host, "[") && !absl::ConsumeSuffix(&host, "]")) {
    return absl::InvalidArgumentError(
        absl::StrCat("--http_listen: unbalanced '[' in '", address, "'"));
  }
  if (host.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--http_listen: no host in '", address, "'"));
  }
  return std::make_pair(std::string(host), port);
}

}  // namespace

absl::StatusOr<StudioServerPtr> StudioServer::Create(StudioOptions options,
                                                     grpc::Server* server) {
  auto address = SplitAddress(options.listen);
  if (!address.ok()) return address.status();
  const auto& [host, port] = *address;
  if (options.tls_cert.empty() != options.tls_key.empty()) {
    return absl::InvalidArgumentError(
        "--tls_cert and --tls_key go together: give both or neither");
  }
  const bool tls = !options.tls_cert.empty();
  if (!tls && !IsLoopbackHost(host) && !options.insecure) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--http_listen ", options.listen,
        " is reachable from other machines: serve TLS (--tls_cert, "
        "--tls_key) or pass --insecure to allow plain HTTP"));
  }
  if (!options.studio_dir.empty() &&
      !std::filesystem::is_regular_file(
          std::filesystem::path(options.studio_dir) / "index.html")) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--studio_dir ", options.studio_dir, " holds no index.html"));
  }
  StudioServerPtr studio(new StudioServer(std::move(options), server, tls));
  const StudioOptions& o = studio->options_;
  if (tls) {
    auto https = std::make_unique<httplib::SSLServer>(
        o.tls_cert.c_str(), o.tls_key.c_str(),
        o.tls_client_ca.empty() ? nullptr : o.tls_client_ca.c_str());
    if (!https->is_valid()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--http_listen: the TLS files (--tls_cert ", o.tls_cert,
                       ", --tls_key ", o.tls_key,
                       o.tls_client_ca.empty() ? "" : ", --tls_client_ca ",
                       o.tls_client_ca, ") do not load"));
    }
    studio->http_ = std::move(https);
  } else {
    studio->http_ = std::make_unique<httplib::Server>();
  }
  studio->Route();
  studio->port_ = port == 0
                      ? studio->http_->bind_to_any_port(host)
                      : (studio->http_->bind_to_port(host, port) ? port : -1);
  if (studio->port_ <= 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on --http_listen '", o.listen, "'"));
  }
  return studio;
}

StudioServer::StudioServer(StudioOptions options, grpc::Server* server,
                           bool tls)
    : options_(std::move(options)),
      tls_(tls),
      gateway_(server->InProcessChannel(grpc::ChannelArguments()),
               options_.services) {}

StudioServer::~StudioServer() {
  if (thread_.joinable()) Stop();
}

void StudioServer::Start() {
  thread_ = std::thread([this] {
    try {
      http_->listen_after_bind();
    } catch (const std::exception& e) {
      spdlog::error("studio: the HTTP listener stopped: {}", e.what());
    }
  });
}

void StudioServer::StopAccepting() { http_->stop(); }

void StudioServer::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    for (JsonGateway::Stream* stream : streams_) stream->Cancel();
  }
  http_->stop();
  if (thread_.joinable()) thread_.join();
}

void StudioServer::Track(JsonGateway::Stream* stream, bool open) {
  absl::MutexLock lock(&mu_);
  if (!open) {
    streams_.erase(stream);
  } else if (stopping_) {
    stream->Cancel();
  } else {
    streams_.insert(stream);
  }
}

void StudioServer::Route() {
  httplib::Server& http = *http_;
  const int threads = options_.threads;
  http.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  http.set_payload_max_length(static_cast<size_t>(
      std::max(options_.max_body_bytes, options_.max_upload_body_bytes)));
  http.set_default_headers({
      {"Content-Security-Policy", kContentSecurityPolicy},
      {"X-Content-Type-Options", "nosniff"},
      {"Referrer-Policy", "no-referrer"},
      {"X-Frame-Options", "DENY"},
  });
  http.set_exception_handler([](const httplib::Request& req,
                                httplib::Response& res,
                                std::exception_ptr error) {
    std::string what = "unknown exception";
    try {
      std::rethrow_exception(error);
    } catch (const std::exception& e) {
      what = e.what();
    } catch (...) {
    }
    spdlog::error("studio: {} {}: {}", req.method, req.path, what);
    ReplyError(res, grpc::Status(grpc::StatusCode::INTERNAL, what));
  });
  if (!options_.studio_dir.empty()) {
    http.set_mount_point("/", options_.studio_dir);
  }
  // Before any byte of the body is read: a JSON request declaring more
  // than the largest message is refused here, not buffered (the payload
  // limit above is an upload's, which is larger).
  http.set_pre_routing_handler([this](const httplib::Request& req,
                                      httplib::Response& res) {
    constexpr absl::string_view kApi = "/api/";
    if (req.method != "POST" || !absl::StartsWith(req.path, kApi)) {
      return httplib::Server::HandlerResponse::Unhandled;
    }
    const absl::StatusOr<const google::protobuf::MethodDescriptor*> method =
        gateway_.Find(absl::string_view(req.path).substr(kApi.size()));
    int64_t declared = 0;
    if (!method.ok() || (*method)->client_streaming() ||
        !absl::SimpleAtoi(req.get_header_value("Content-Length"), &declared) ||
        declared <= options_.max_body_bytes) {
      return httplib::Server::HandlerResponse::Unhandled;
    }
    res.set_header("Connection", "close");
    ReplyError(res, BodyTooLarge(declared, options_.max_body_bytes), 413);
    return httplib::Server::HandlerResponse::Handled;
  });

  http.Get("/api", [this](const httplib::Request&, httplib::Response& res) {
    res.set_header("Cache-Control", "no-store");
    res.set_content(gateway_.Describe(), "application/json");
  });

  http.Post(R"(/api/(.+))", [this](const httplib::Request& req,
                                   httplib::Response& res) {
    res.set_header("Cache-Control", "no-store");
    const absl::StatusOr<const google::protobuf::MethodDescriptor*> found =
        gateway_.Find(req.matches[1].str());
    if (!found.ok()) return ReplyError(res, found.status());
    const google::protobuf::MethodDescriptor& method = **found;
    const std::string authorization = req.get_header_value("Authorization");

    if (method.client_streaming()) {
      if (!req.has_file("request") || !req.has_file("file")) {
        return ReplyError(
            res, grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                              absl::StrCat(method.name(),
                                           " takes a multipart/form-data "
                                           "body with parts 'request' (the "
                                           "first message as JSON) and "
                                           "'file' (the bytes)")));
      }
      const JsonReply reply = gateway_.CallUpload(
          method, req.get_file_value("request").content,
          req.get_file_value("file").content, authorization);
      if (!reply.status.ok()) return ReplyError(res, reply.status);
      res.set_content(reply.json, "application/json");
      return;
    }
    if (static_cast<int64_t>(req.body.size()) > options_.max_body_bytes) {
      // A chunked body declares no length: it is checked once read.
      return ReplyError(res,
                        BodyTooLarge(static_cast<int64_t>(req.body.size()),
                                     options_.max_body_bytes),
                        413);
    }
    if (!method.server_streaming()) {
      const JsonReply reply =
          gateway_.CallUnary(method, req.body, authorization);
      if (!reply.status.ok()) return ReplyError(res, reply.status);
      res.set_content(reply.json, "application/json");
      return;
    }
    absl::StatusOr<std::unique_ptr<JsonGateway::Stream>> started =
        gateway_.StartStream(method, req.body, authorization);
    if (!started.ok()) return ReplyError(res, started.status());
    std::shared_ptr<JsonGateway::Stream> stream = *std::move(started);
    Track(stream.get(), true);
    res.set_header("X-Accel-Buffering", "no");
    const absl::Duration heartbeat = options_.heartbeat;
    res.set_chunked_content_provider(
        "text/event-stream",
        [stream, heartbeat](size_t, httplib::DataSink& sink) {
          stream->Pump(
              [&sink](absl::string_view text) {
                return sink.write(text.data(), text.size());
              },
              heartbeat);
          sink.done();
          return true;
        },
        [this, stream](bool) { Track(stream.get(), false); });
  });
}

}  // namespace featviz::server::http
