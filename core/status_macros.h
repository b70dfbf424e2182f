// Status plumbing shared by every layer. Debian's abseil (20220623) has no
// ASSIGN_OR_RETURN, so the two macros live here, once.
#ifndef FEATVIZ_CORE_STATUS_MACROS_H_
#define FEATVIZ_CORE_STATUS_MACROS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace featviz::core {

// `status` with `prefix` and ": " in front of its message, code and payloads
// kept (a payload can say more than the text: core::RefusedOperator's
// operator, which the registry counts); OK stays OK.
inline absl::Status Prefixed(absl::string_view prefix,
                             const absl::Status& status) {
  if (status.ok()) return status;
  absl::Status prefixed(status.code(),
                        absl::StrCat(prefix, ": ", status.message()));
  status.ForEachPayload(
      [&prefixed](absl::string_view type_url, const absl::Cord& payload) {
        prefixed.SetPayload(type_url, payload);
      });
  return prefixed;
}

}  // namespace featviz::core

// Evaluates `expr` (an absl::Status) and returns it from the enclosing
// function when it is not OK.
#define FEATVIZ_RETURN_IF_ERROR(expr)                 \
  do {                                                \
    ::absl::Status featviz_status_ = (expr);          \
    if (!featviz_status_.ok()) return featviz_status_; \
  } while (0)

#define FEATVIZ_STATUS_CONCAT_INNER_(a, b) a##b
#define FEATVIZ_STATUS_CONCAT_(a, b) FEATVIZ_STATUS_CONCAT_INNER_(a, b)

// Evaluates `rexpr` (an absl::StatusOr<T>); on error returns its status, else
// moves the value into `lhs` (which may be a declaration: `auto x`).
#define FEATVIZ_ASSIGN_OR_RETURN(lhs, rexpr) \
  FEATVIZ_ASSIGN_OR_RETURN_IMPL_(            \
      FEATVIZ_STATUS_CONCAT_(featviz_statusor_, __LINE__), lhs, rexpr)

#define FEATVIZ_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, rexpr) \
  auto statusor = (rexpr);                                   \
  if (!statusor.ok()) return std::move(statusor).status();   \
  lhs = std::move(statusor).value()

#endif  // FEATVIZ_CORE_STATUS_MACROS_H_
