#include "server/authenticator.h"

#include <algorithm>
#include <memory>
#include <optional>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace featviz::server {
namespace {

// The caller's address without its port ("ipv4:10.0.0.7").
std::string PeerOwner(const std::string& peer) {
  if (absl::StartsWith(peer, "ipv4:") || absl::StartsWith(peer, "ipv6:")) {
    const size_t colon = peer.rfind(':');
    if (colon != std::string::npos && colon > 5) {
      const absl::string_view port = absl::string_view(peer).substr(colon + 1);
      if (!port.empty() &&
          std::all_of(port.begin(), port.end(), absl::ascii_isdigit)) {
        return peer.substr(0, colon);
      }
    }
  }
  return peer;
}

// The common name of the client's certificate (mTLS); empty without one.
std::string CertificateName(const grpc::CallbackServerContext& context) {
  std::shared_ptr<const grpc::AuthContext> auth = context.auth_context();
  if (auth == nullptr) return "";
  std::vector<grpc::string_ref> names =
      auth->FindPropertyValues(GRPC_X509_CN_PROPERTY_NAME);
  if (names.empty()) return "";
  return std::string(names.front().data(), names.front().size());
}

}  // namespace

absl::StatusOr<Identity> Authenticator::Authenticate(
    grpc::CallbackServerContext* context, absl::string_view full_method) const {
  if (tokens_ == nullptr) {
    Identity open;
    open.role = Role::kAdmin;
    open.name = CertificateName(*context);
    if (open.name.empty()) open.name = PeerOwner(context->peer());
    return open;
  }
  std::optional<absl::string_view> authorization;
  const auto& metadata = context->client_metadata();
  auto it = metadata.find("authorization");
  if (it != metadata.end()) {
    authorization = absl::string_view(it->second.data(), it->second.size());
  }
  return tokens_->Authorize(full_method, authorization);
}

absl::Status Authenticator::CheckOwns(const Identity& caller,
                                      absl::string_view owner,
                                      absl::string_view job_id) const {
  if (tokens_ == nullptr || caller.admin() || owner == caller.name) {
    return absl::OkStatus();
  }
  return absl::PermissionDeniedError(
      absl::StrCat("job ", job_id, " belongs to another client; client '",
                   caller.name, "' may only see and cancel its own jobs"));
}

absl::StatusOr<std::string> Authenticator::OwnerOf(
    const Identity& caller, absl::string_view requested) const {
  if (requested.empty() || requested == caller.name) return caller.name;
  if (tokens_ != nullptr && !caller.admin()) {
    return absl::PermissionDeniedError(absl::StrCat(
        "owner '", requested, "' is not client '", caller.name,
        "': leave owner empty, jobs are owned by the authenticated client"));
  }
  return std::string(requested);
}

absl::StatusOr<std::string> Authenticator::ListScope(
    const Identity& caller, absl::string_view requested) const {
  if (tokens_ == nullptr || caller.admin()) return std::string(requested);
  if (!requested.empty() && requested != caller.name) {
    return absl::PermissionDeniedError(
        absl::StrCat("owner '", requested, "': client '", caller.name,
                     "' may only list its own jobs"));
  }
  return caller.name;
}

}  // namespace featviz::server
