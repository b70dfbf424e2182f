// The names clients give what they upload (a model, a dataset): 1 to 64 of
// [A-Za-z0-9_-], so a name is always one safe path component (no
// separators, no leading dot, nothing the shell or a URL must quote).
#ifndef FEATVIZ_SERVER_ENGINE_NAMES_H_
#define FEATVIZ_SERVER_ENGINE_NAMES_H_

#include <string>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace featviz::server {

inline constexpr size_t kMaxNameLength = 64;

inline bool IsValidName(absl::string_view name) {
  if (name.empty() || name.size() > kMaxNameLength) return false;
  for (char c : name) {
    if (!absl::ascii_isalnum(c) && c != '_' && c != '-') return false;
  }
  return true;
}

// InvalidArgument "<what> '<name>' must be 1 to 64 of [A-Za-z0-9_-]" for a
// name IsValidName refuses (shown cut to 80 characters).
inline absl::Status CheckName(absl::string_view what, absl::string_view name) {
  if (IsValidName(name)) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      what, " '", name.substr(0, 80), "' must be 1 to ", kMaxNameLength,
      " of [A-Za-z0-9_-]"));
}

}  // namespace featviz::server

#endif  // FEATVIZ_SERVER_ENGINE_NAMES_H_
