// One unary call on a featviz.v1 stub behind absl::Status: the one copy of
// "a fresh context, prepared; the call; its status mapped" that
// VisualizerClient and CircuitsClient share.
#ifndef FEATVIZ_CLIENT_RPC_CALL_H_
#define FEATVIZ_CLIENT_RPC_CALL_H_

#include <grpcpp/grpcpp.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace featviz::client {

// A stub's blocking unary method, as gRPC generates it:
// `grpc::Status Stub::Method(grpc::ClientContext*, const Request&, Response*)`.
template <typename Stub, typename Request, typename Response>
using UnaryMethod = grpc::Status (Stub::*)(grpc::ClientContext*,
                                           const Request&, Response*);

// Calls `method` of `stub` with `request` in a context that `prepare`
// (void(grpc::ClientContext&)) sets up: deadline and metadata. The response,
// or `from_grpc(status)` (absl::Status(const grpc::Status&)) when the call
// failed.
template <typename Stub, typename Request, typename Response,
          typename Prepare, typename FromGrpc>
absl::StatusOr<Response> CallUnary(Stub& stub,
                                   UnaryMethod<Stub, Request, Response> method,
                                   const Request& request,
                                   const Prepare& prepare,
                                   const FromGrpc& from_grpc) {
  grpc::ClientContext context;
  prepare(context);
  Response response;
  absl::Status status = from_grpc((stub.*method)(&context, request, &response));
  if (!status.ok()) return status;
  return response;
}

}  // namespace featviz::client

#endif  // FEATVIZ_CLIENT_RPC_CALL_H_
