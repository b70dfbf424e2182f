// Whole files in and out, the one copy: every reader and writer of a whole
// file in core/, server/ and client/ goes through these, so each error names
// the path the same way and a failed read part way is never taken for a
// short file.
#ifndef FEATVIZ_CORE_FILES_H_
#define FEATVIZ_CORE_FILES_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace featviz::core {

// The bytes of the file at `path`. NotFound "cannot read '<path>'" when it
// cannot be opened (missing, a directory, no permission); DataLoss when a
// read fails part way.
absl::StatusOr<std::string> ReadFile(const std::string& path);

// Writes `bytes` to `path`, replacing it. PermissionDenied "cannot write
// '<path>'" when the file cannot be opened or written whole.
absl::Status WriteFile(const std::string& path, absl::string_view bytes);

// Makes `dir` and its parents; nothing for an empty `dir` or one that is
// there. PermissionDenied "cannot create directory '<dir>': <why>".
absl::Status MakeDirectories(const std::string& dir);

// The file beside the picture at `path` that holds its `kind` ("bands",
// "exemplars"): "x.png" -> "x.<kind>.png" ("x" -> "x.<kind>.png").
std::string SiblingPngPath(const std::string& path, absl::string_view kind);

}  // namespace featviz::core

#endif  // FEATVIZ_CORE_FILES_H_
