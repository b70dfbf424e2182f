#include "client/output_files.h"

#include <filesystem>

#include "core/files.h"

namespace featviz::client {

absl::Status MakeParent(const std::string& path) {
  return core::MakeDirectories(
      std::filesystem::path(path).parent_path().string());
}

std::string JoinPath(const std::string& dir, const std::string& name) {
  return (std::filesystem::path(dir) / name).string();
}

}  // namespace featviz::client
