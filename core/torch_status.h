// The boundary where LibTorch's exceptions become absl::Status.
#ifndef FEATVIZ_CORE_TORCH_STATUS_H_
#define FEATVIZ_CORE_TORCH_STATUS_H_

#include <exception>
#include <string>
#include <utility>

#include <c10/util/Exception.h>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace featviz::core {

// The line of an exception text a user needs. LibTorch appends a C++
// backtrace, and TorchScript errors start with "The following operation
// failed in the TorchScript interpreter." and bury the cause in the last
// "RuntimeError: ..." line after source excerpts.
inline std::string FirstLine(absl::string_view text) {
  const size_t error = text.rfind("Error: ");
  if (absl::StartsWith(text, "The following operation failed") &&
      error != absl::string_view::npos) {
    size_t start = text.rfind('\n', error);
    start = start == absl::string_view::npos ? 0 : start + 1;
    text = text.substr(start);
  }
  const size_t end = text.find('\n');
  return std::string(text.substr(0, end));
}

// Converts an exception caught at a LibTorch call into a status. Out of
// memory becomes ResourceExhausted; anything else is Internal, prefixed with
// `context` (say which model and what was being done).
inline absl::Status TorchError(const std::exception& e,
                               absl::string_view context) {
  const std::string what = FirstLine(e.what());
  if (dynamic_cast<const c10::OutOfMemoryError*>(&e) != nullptr ||
      absl::StrContains(what, "out of memory") ||
      absl::StrContains(what, "can't allocate memory") ||
      absl::StrContains(what, "DefaultCPUAllocator: not enough memory")) {
    return absl::ResourceExhaustedError(absl::StrCat(context, ": ", what));
  }
  return absl::InternalError(absl::StrCat(context, ": ", what));
}

// Runs `work` (returning absl::Status) at the boundary of a thread that
// runs LibTorch: an exception that escapes it becomes the status
// (TorchError, prefixed with `context`) instead of ending the process.
template <typename Work>
absl::Status CatchAtBoundary(absl::string_view context, Work&& work) {
  try {
    return std::forward<Work>(work)();
  } catch (const std::exception& e) {
    return TorchError(e, context);
  } catch (...) {
    return absl::InternalError(
        absl::StrCat(context, ": an exception that is not a std::exception"));
  }
}

}  // namespace featviz::core

#endif  // FEATVIZ_CORE_TORCH_STATUS_H_
