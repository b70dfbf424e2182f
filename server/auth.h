// Who may call what: bearer tokens from a tokens file, each naming a client,
// its role and its quotas.
//
// The tokens file has one client per line; '#' starts a comment:
//
//   # token                              name   role   quotas (optional)
//   3f9c0a...e1                          alice  user   max_queued=8 max_running=2 max_image_steps=100000
//   77b1d2...0c                          ops    admin
//   c41e09...7a                          bob    uploader max_upload_bytes=200000000
//
// A token is 16 to 512 printable characters without spaces; names are
// [A-Za-z0-9._@-]+; roles are `user`, `uploader` (a user who may also send
// models with UploadModel and datasets with UploadDataset, up to
// max_upload_bytes in all while the server runs, and delete its own
// datasets) and `admin` (everything, uploads included). A quota left out is not
// limited. Clients send "authorization: Bearer <token>" metadata.
//
// Every RPC is authorised at the top of its handler (Authorizer::Authorize):
// a missing or unknown token is UNAUTHENTICATED, a user calling an admin RPC
// is PERMISSION_DENIED. The method table (RequiredRole) names every method
// the server serves; a method it does not name needs an admin. Tokens are
// never logged, only client names.
#ifndef FEATVIZ_SERVER_AUTH_H_
#define FEATVIZ_SERVER_AUTH_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"

namespace featviz::server {

enum class Role { kPublic, kUser, kUploader, kAdmin };

// "public", "user", "uploader", "admin".
absl::string_view RoleName(Role role);

// Per-client limits; nullopt is unlimited.
struct Quotas {
  std::optional<int64_t> max_queued;       // Jobs waiting for a worker.
  std::optional<int64_t> max_running;      // Jobs running at once.
  std::optional<int64_t> max_image_steps;  // images x steps of one job.
  // Bytes of model files and datasets this client may upload while the
  // server runs.
  std::optional<int64_t> max_upload_bytes;
};

// The authenticated caller.
struct Identity {
  std::string name;  // The owner of its jobs.
  Role role = Role::kUser;
  Quotas quotas;
  bool admin() const { return role == Role::kAdmin; }
};

// token -> identity, as read from a tokens file.
using TokenTable = absl::flat_hash_map<std::string, Identity>;

// Parses a tokens file's text. InvalidArgument naming `source` and the line
// ("tokens.txt:3: unknown role 'root' (admin or user)"); the message never
// contains a token.
absl::StatusOr<TokenTable> ParseTokens(absl::string_view text,
                                       absl::string_view source);
// Reads and parses the tokens file at `path`.
absl::StatusOr<TokenTable> ReadTokensFile(const std::string& path);

// The role a full method name ("/featviz.v1.Visualizer/Render") needs:
// health checks are public, the three model administration RPCs need an
// admin, UploadModel, UploadDataset and DeleteDataset an uploader (or
// admin; DeleteDataset then checks the owner), every other featviz.v1 and
// reflection method a user; a method the table does not know needs an admin.
Role RequiredRole(absl::string_view method);
// Every method the table names, with its role (for tests and docs).
std::vector<std::pair<std::string, Role>> MethodRoles();

// The token of "authorization: Bearer <token>"; nullopt when the header is
// missing or not a bearer token.
std::optional<std::string> BearerToken(absl::string_view authorization);

// Checks callers against the current tokens file; Reload() swaps in a new
// one (SIGHUP). Thread-safe.
class Authorizer {
 public:
  // Reads `tokens_file` once; its errors are Create's.
  static absl::StatusOr<std::unique_ptr<Authorizer>> Create(
      std::string tokens_file);

  Authorizer(const Authorizer&) = delete;
  Authorizer& operator=(const Authorizer&) = delete;

  // Re-reads the file. On error the tokens in use are kept and the error is
  // returned; on success the new ones apply to every call from now on.
  absl::Status Reload();

  // The caller of `method` holding the "authorization" header value
  // `authorization` (nullopt when none was sent). Unauthenticated for a
  // missing or unknown token; PermissionDenied when its role is too low.
  absl::StatusOr<Identity> Authorize(
      absl::string_view method,
      std::optional<absl::string_view> authorization) const;

  // Clients known now.
  size_t size() const;

 private:
  Authorizer(std::string tokens_file, TokenTable tokens);

  const std::string tokens_file_;
  mutable absl::Mutex mu_;
  std::shared_ptr<const TokenTable> tokens_ ABSL_GUARDED_BY(mu_);
};
using AuthorizerPtr = std::unique_ptr<Authorizer>;

}  // namespace featviz::server

#endif  // FEATVIZ_SERVER_AUTH_H_
