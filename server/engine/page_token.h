// Page tokens, one format for every listing (ListJobs, ListModels): the
// listing's name and the position after which the next page starts,
// "<list>:<position>", in URL-safe base64 so that clients treat it as
// opaque and it travels in a URL unescaped.
#ifndef FEATVIZ_SERVER_ENGINE_PAGE_TOKEN_H_
#define FEATVIZ_SERVER_ENGINE_PAGE_TOKEN_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace featviz::server {

// The token of `list` ("jobs", "models") that resumes after `position`.
std::string PageToken(absl::string_view list, absl::string_view position);

// The position `token` holds, when it is a token of `list`; InvalidArgument
// "page_token '<token>' is not a token this server issued for <list>"
// otherwise (the token shown cut at 80 characters).
absl::StatusOr<std::string> PagePosition(absl::string_view list,
                                         absl::string_view token);

}  // namespace featviz::server

#endif  // FEATVIZ_SERVER_ENGINE_PAGE_TOKEN_H_
