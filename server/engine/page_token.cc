#include "server/engine/page_token.h"

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace featviz::server {

std::string PageToken(absl::string_view list, absl::string_view position) {
  return absl::WebSafeBase64Escape(absl::StrCat(list, ":", position));
}

absl::StatusOr<std::string> PagePosition(absl::string_view list,
                                         absl::string_view token) {
  std::string decoded;
  const std::string prefix = absl::StrCat(list, ":");
  if (!absl::WebSafeBase64Unescape(token, &decoded) ||
      !absl::StartsWith(decoded, prefix)) {
    return absl::InvalidArgumentError(
        absl::StrCat("page_token '", token.substr(0, 80),
                     "' is not a token this server issued for ", list));
  }
  return decoded.substr(prefix.size());
}

}  // namespace featviz::server
