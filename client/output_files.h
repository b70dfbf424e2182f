// The files the CLI writes: directories made on the way, bytes written
// whole, errors that name the path (PermissionDenied).
#ifndef FEATVIZ_CLIENT_OUTPUT_FILES_H_
#define FEATVIZ_CLIENT_OUTPUT_FILES_H_

#include <string>

#include "absl/status/status.h"

namespace featviz::client {

// Makes `dir` and its parents; nothing for an empty `dir`.
absl::Status MakeDirectories(const std::string& dir);
// Makes the directory a file is to be written into.
absl::Status MakeParent(const std::string& path);
// Writes `bytes` to `path`, replacing it.
absl::Status WriteBytes(const std::string& path, const std::string& bytes);
// "dir/name" ("out/" and "out" give the same path).
std::string JoinPath(const std::string& dir, const std::string& name);

}  // namespace featviz::client

#endif  // FEATVIZ_CLIENT_OUTPUT_FILES_H_
