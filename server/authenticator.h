// Who is calling: the one place where a call's credentials become an
// Identity and where owner checks live, shared by every service.
//
// With a tokens file (an Authorizer), the caller is the client its bearer
// token names, checked against the method's role (auth.h): UNAUTHENTICATED
// or PERMISSION_DENIED otherwise. Without one (a single-user box) every
// caller is an admin named after its client certificate's common name
// (mTLS), else its address without the port, so that one machine is one
// owner however many connections it opens.
#ifndef FEATVIZ_SERVER_AUTHENTICATOR_H_
#define FEATVIZ_SERVER_AUTHENTICATOR_H_

#include <grpcpp/grpcpp.h>

#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "server/auth.h"
#include "server/convert.h"

namespace featviz::server {

class Authenticator {
 public:
  // `tokens` may be null (open access); it must outlive the authenticator.
  explicit Authenticator(const Authorizer* tokens) : tokens_(tokens) {}

  // True when callers are checked against a tokens file.
  bool checks_tokens() const { return tokens_ != nullptr; }

  // The caller of `full_method` ("/featviz.v1.Circuits/Attribute").
  absl::StatusOr<Identity> Authenticate(grpc::CallbackServerContext* context,
                                        absl::string_view full_method) const;

  // PermissionDenied unless `caller` may see and cancel job `job_id` of
  // `owner`: its own, or any as an admin, or any on an open server.
  absl::Status CheckOwns(const Identity& caller, absl::string_view owner,
                         absl::string_view job_id) const;

  // The owner of a job `caller` submits asking for `requested` ("" for
  // itself): with tokens a user cannot queue work under another name (and
  // so dodge its quotas or fair share); an admin may, and so may anyone on
  // an open server.
  absl::StatusOr<std::string> OwnerOf(const Identity& caller,
                                      absl::string_view requested) const;

  // The owner filter of a job listing `caller` asks for with `requested`
  // ("" for every owner): a user with tokens lists its own jobs only.
  absl::StatusOr<std::string> ListScope(const Identity& caller,
                                        absl::string_view requested) const;

 private:
  const Authorizer* const tokens_;
};

// A unary handler in one line: authenticates the caller of `full_method`,
// runs `work(identity)` (returning absl::Status) when it may call, and
// finishes the call with the status.
template <typename Work>
grpc::ServerUnaryReactor* AuthenticatedUnary(const Authenticator& auth,
                                             grpc::CallbackServerContext* context,
                                             absl::string_view full_method,
                                             Work&& work) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::StatusOr<Identity> caller = auth.Authenticate(context, full_method);
  reactor->Finish(
      ToGrpcStatus(caller.ok() ? std::forward<Work>(work)(*caller)
                               : caller.status()));
  return reactor;
}

}  // namespace featviz::server

#endif  // FEATVIZ_SERVER_AUTHENTICATOR_H_
