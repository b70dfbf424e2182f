// Paths of the files the CLI writes. The writing itself is core/files.h's
// (core::WriteFile, core::MakeDirectories): errors that name the path.
#ifndef FEATVIZ_CLIENT_OUTPUT_FILES_H_
#define FEATVIZ_CLIENT_OUTPUT_FILES_H_

#include <string>

#include "absl/status/status.h"

namespace featviz::client {

// Makes the directory a file is to be written into (core::MakeDirectories
// of its parent; nothing for a bare file name).
absl::Status MakeParent(const std::string& path);
// "dir/name" ("out/" and "out" give the same path).
std::string JoinPath(const std::string& dir, const std::string& name);

}  // namespace featviz::client

#endif  // FEATVIZ_CLIENT_OUTPUT_FILES_H_
