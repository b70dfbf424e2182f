// The JSON face of the featviz.v1 services: a generic gateway that turns
// `POST /api/featviz.v1.<Service>/<Method>` with a JSON body into a call of
// that method over a gRPC channel (the server's own in-process channel), so
// that every rule of the gRPC API (tokens, roles, quotas, limits, statuses)
// applies unchanged. Nothing here is written per method: the method, its
// request and response types come from the generated descriptor pool, and
// messages go through protobuf's own JSON mapping.
//
//   unary           JSON body -> one request -> JSON response
//   server stream   JSON body -> one request -> Server-Sent Events, one
//                   `data:` line per message, then `event: end` (or
//                   `event: error` with {code, message})
//   client stream   a header message (JSON) and a file's bytes -> the header
//                   message, then the bytes in `chunk` messages
//
// HTTP is not this class's business (http_listener.h carries the bytes): it
// speaks in strings and a sink, so that it can be tested alone.
#ifndef FEATVIZ_SERVER_HTTP_JSON_GATEWAY_H_
#define FEATVIZ_SERVER_HTTP_JSON_GATEWAY_H_

#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "google/protobuf/descriptor.h"

namespace featviz::server::http {

// The HTTP status for a gRPC status code: INVALID_ARGUMENT and OUT_OF_RANGE
// 400, UNAUTHENTICATED 401, PERMISSION_DENIED 403, NOT_FOUND 404,
// ALREADY_EXISTS and ABORTED 409, FAILED_PRECONDITION 412,
// RESOURCE_EXHAUSTED 429, CANCELLED 499, UNIMPLEMENTED 501, UNAVAILABLE 503,
// DEADLINE_EXCEEDED 504, OK 200, anything else 500.
int HttpStatusFor(grpc::StatusCode code);

// "INVALID_ARGUMENT" for grpc::INVALID_ARGUMENT, as the JSON error bodies
// and the Python client name the codes.
std::string CodeName(grpc::StatusCode code);

// {"code": "NOT_FOUND", "message": "..."}: the body of every error reply
// and of an `event: error`.
std::string ErrorJson(const grpc::Status& status);

// What a finished unary or client-streaming call answers.
struct JsonReply {
  grpc::Status status;
  std::string json;  // The response message as JSON when status is OK.
};

// Receives one piece of a Server-Sent Events stream; false when the client
// has gone (the call is then cancelled).
using EventSink = std::function<bool(absl::string_view)>;

class JsonGateway {
 public:
  // Calls go over `channel` (which must outlive the gateway) to the methods
  // of `services` (full names, "featviz.v1.Visualizer"); every other
  // service is NOT_FOUND, health and reflection included.
  JsonGateway(std::shared_ptr<grpc::Channel> channel,
              std::set<std::string> services);

  JsonGateway(const JsonGateway&) = delete;
  JsonGateway& operator=(const JsonGateway&) = delete;

  // The method named "featviz.v1.Visualizer/Render" (the path after /api/),
  // or NOT_FOUND naming it.
  absl::StatusOr<const google::protobuf::MethodDescriptor*> Find(
      absl::string_view path) const;

  // GET /api: every service and method the gateway serves, with their
  // paths, request and response types and streaming kinds, as JSON.
  std::string Describe() const;

  // Calls a unary `method` with the request `json`. INVALID_ARGUMENT when
  // the JSON does not parse into the request type (the parser's message
  // names the field). `authorization` (the HTTP header, may be empty) is
  // sent as the call's metadata.
  JsonReply CallUnary(const google::protobuf::MethodDescriptor& method,
                      absl::string_view json,
                      absl::string_view authorization) const;

  // Calls a client-streaming `method` whose request has a `chunk` bytes
  // field: first the request that `header_json` describes, then `bytes` in
  // `chunk_bytes` pieces, each in a request of its own (the first piece
  // rides in the header's message, as the Python client sends it).
  JsonReply CallUpload(const google::protobuf::MethodDescriptor& method,
                       absl::string_view header_json, absl::string_view bytes,
                       absl::string_view authorization,
                       int64_t chunk_bytes = int64_t{1} << 20) const;

  // A server-streaming call in progress (StartStream), read as events.
  class Stream;

  // Starts a server-streaming `method` and waits until the server has
  // answered: with its initial metadata, or with its end. Errors before
  // that (a JSON that does not parse, or a call that ended with an error
  // before any message: an unknown model, no token) come back as the
  // status, for a plain HTTP error reply.
  absl::StatusOr<std::unique_ptr<Stream>> StartStream(
      const google::protobuf::MethodDescriptor& method, absl::string_view json,
      absl::string_view authorization) const;

 private:
  std::shared_ptr<grpc::Channel> channel_;
  const std::set<std::string> services_;
};

class JsonGateway::Stream {
 public:
  struct Call;  // One call's context, queue and stub call (json_gateway.cc).
  ~Stream();
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;

  // Writes the call's events to `sink` until it ends: `event: metadata`
  // with the server's initial metadata ({"featviz-job-id": "..."}) when it
  // sent any, one `data:` per message, then `event: end` or `event: error`.
  // Every `heartbeat` without a message a comment line is written, so that
  // a client that went away is noticed (the sink fails) and the call
  // cancelled: a Render's job is then cancelled, as for a gRPC client.
  // Returns the call's status.
  grpc::Status Pump(const EventSink& sink, absl::Duration heartbeat);

  // Cancels the call (from another thread: shutdown).
  void Cancel();

 private:
  friend class JsonGateway;
  explicit Stream(std::unique_ptr<Call> call);
  std::unique_ptr<Call> call_;
  // The first message, when StartStream had to read it to tell a refused
  // call from one that sends no metadata.
  std::optional<grpc::ByteBuffer> first_;
};

}  // namespace featviz::server::http

#endif  // FEATVIZ_SERVER_HTTP_JSON_GATEWAY_H_
