// featviz studio's HTTP(S) listener (featviz-server --http_listen): the web
// page's files and the JSON gateway (json_gateway.h) over the same
// grpc::Server, through its in-process channel, so that an HTTP caller meets
// exactly the gRPC API's tokens, roles, quotas, limits and statuses.
//
//   GET  /                         the studio's files (--studio_dir)
//   GET  /api                      the services and methods served
//   POST /api/SERVICE/METHOD       JSON in, JSON out (unary)
//                                  JSON in, text/event-stream out (Render,
//                                  WatchJob)
//                                  multipart "request" (JSON) + "file" in,
//                                  JSON out (UploadModel, UploadDataset)
//
// The bearer token travels only in the Authorization header, forwarded as
// the call's metadata. No CORS headers are sent: another origin's page
// cannot read the answers. Every reply carries a Content-Security-Policy
// that allows this origin's scripts only.
#ifndef FEATVIZ_SERVER_HTTP_STUDIO_SERVER_H_
#define FEATVIZ_SERVER_HTTP_STUDIO_SERVER_H_

#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/http/json_gateway.h"

namespace httplib {
class Server;
}

namespace featviz::server::http {

struct StudioOptions {
  // HOST:PORT to listen on ("[::1]:8443" for IPv6); port 0 picks a free one.
  std::string listen;
  // The studio's files (index.html, studio.js, ...). Empty: the API only.
  std::string studio_dir;
  // PEM files of the gRPC listener's --tls_cert and --tls_key: serve HTTPS
  // with them. Both empty: plain HTTP, allowed on a loopback address only
  // unless `insecure`.
  std::string tls_cert;
  std::string tls_key;
  // --tls_client_ca: also require a client certificate signed by it.
  std::string tls_client_ca;
  bool insecure = false;
  // Largest JSON request body, in bytes: the gRPC --max_message_bytes.
  int64_t max_body_bytes = int64_t{64} << 20;
  // Largest upload body (multipart, file included): the larger of
  // --max_upload_bytes and --max_dataset_bytes, plus room for the request.
  int64_t max_upload_body_bytes = int64_t{64} << 20;
  // The services the gateway serves (full names).
  std::set<std::string> services;
  // How often a quiet event stream gets a comment line, to notice a browser
  // that went away and cancel its call.
  absl::Duration heartbeat = absl::Seconds(1);
  // HTTP worker threads: each open event stream holds one.
  int threads = 64;
};

class StudioServer;
using StudioServerPtr = std::unique_ptr<StudioServer>;

class StudioServer {
 public:
  // Binds `options.listen` (nothing is served until Start) for calls to
  // `server` (which must outlive this). InvalidArgument for a bad address,
  // a missing studio_dir, plaintext on a non-loopback address without
  // `insecure`, or TLS files that do not load; Unavailable when the
  // address cannot be bound.
  static absl::StatusOr<StudioServerPtr> Create(StudioOptions options,
                                                grpc::Server* server);
  ~StudioServer();

  StudioServer(const StudioServer&) = delete;
  StudioServer& operator=(const StudioServer&) = delete;

  // The port bound.
  int port() const { return port_; }
  // "http" or "https".
  const char* scheme() const { return tls_ ? "https" : "http"; }

  // Serves on a thread of its own.
  void Start();
  // The drain's first step: stops accepting connections; requests in
  // flight go on (event streams end when their gRPC calls do).
  void StopAccepting();
  // Cancels the event streams still open, then waits for every request to
  // end. Call after the gRPC server has shut down.
  void Stop();

 private:
  StudioServer(StudioOptions options, grpc::Server* server, bool tls);
  void Route();
  void Track(JsonGateway::Stream* stream, bool open);

  const StudioOptions options_;
  const bool tls_;
  JsonGateway gateway_;
  std::unique_ptr<httplib::Server> http_;
  int port_ = 0;
  std::thread thread_;

  absl::Mutex mu_;
  std::set<JsonGateway::Stream*> streams_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace featviz::server::http

#endif  // FEATVIZ_SERVER_HTTP_STUDIO_SERVER_H_
