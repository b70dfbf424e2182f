// Where uploads are staged before they are published: a fresh directory
// `<root>/.uploads/<unique>` on the same file system as their destination,
// so that publishing is one rename and a failed upload leaves nothing where
// scans look (they skip names starting with '.').
#ifndef FEATVIZ_SERVER_ENGINE_STAGING_H_
#define FEATVIZ_SERVER_ENGINE_STAGING_H_

#include <filesystem>

#include "absl/status/statusor.h"

namespace featviz::server {

// A new, empty directory under `<root>/.uploads`, created with it. Internal
// when it cannot be made.
absl::StatusOr<std::filesystem::path> NewStagingDir(
    const std::filesystem::path& root);

// Removes `staged` and then `<root>/.uploads` when that is empty (it is
// shared by uploads in flight); idempotent, errors ignored.
void RemoveStagingDir(const std::filesystem::path& staged);

}  // namespace featviz::server

#endif  // FEATVIZ_SERVER_ENGINE_STAGING_H_
