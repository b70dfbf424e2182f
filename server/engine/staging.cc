#include "server/engine/staging.h"

#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace featviz::server {
namespace fs = std::filesystem;

absl::StatusOr<fs::path> NewStagingDir(const fs::path& root) {
  static std::atomic<uint64_t> counter{0};
  std::error_code error;
  const fs::path base = root / ".uploads";
  for (int attempt = 0; attempt < 100; ++attempt) {
    // Inside the loop: a finished upload removes `base` when it is empty.
    fs::create_directories(base, error);
    const fs::path dir =
        base / absl::StrCat(getpid(), "-", counter.fetch_add(1), "-",
                            absl::ToUnixNanos(absl::Now()));
    if (fs::create_directory(dir, error)) return dir;
  }
  return absl::InternalError(absl::StrCat("cannot make a staging directory in ",
                                          base.string(), ": ",
                                          error.message()));
}

void RemoveStagingDir(const fs::path& staged) {
  if (staged.empty()) return;
  std::error_code ignored;
  fs::remove_all(staged, ignored);
  // Fails unless empty, which is what is wanted.
  fs::remove(staged.parent_path(), ignored);
}

}  // namespace featviz::server
