// Child processes for end-to-end tests: run a command and capture its stdout,
// stderr and exit code; start the real featviz-server on a free loopback
// port and stop it with SIGTERM.
#ifndef FEATVIZ_TESTS_CLIENT_PROCESS_H_
#define FEATVIZ_TESTS_CLIENT_PROCESS_H_

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <sys/types.h>

#include <gtest/gtest.h>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace featviz::testing {

struct CommandResult {
  // The exit status; 128 + the signal's number when a signal ended it.
  int exit_code = -1;
  std::string out;
  std::string err;
};

// Runs argv[0] (a path) with `argv`, its environment this process's plus
// `extra_env` ("NAME=value"), stdin empty, stdout and stderr captured through
// pipes (so neither is a terminal). Kills it after `timeout`.
absl::StatusOr<CommandResult> RunCommand(
    const std::vector<std::string>& argv,
    const std::vector<std::string>& extra_env = {},
    absl::Duration timeout = absl::Minutes(5));

// A featviz-server child on 127.0.0.1 with a port the kernel picked.
class ServerProcess {
 public:
  // Starts `binary --listen 127.0.0.1:0 --model_dir model_dir` plus
  // `extra_flags`, its stderr appended to `log_path`, and waits (up to
  // `timeout`) for its line "featviz-server listening on 127.0.0.1:PORT".
  static absl::StatusOr<std::unique_ptr<ServerProcess>> Start(
      const std::string& binary, const std::string& model_dir,
      const std::string& log_path, absl::Duration timeout = absl::Seconds(60),
      const std::vector<std::string>& extra_flags = {});

  ServerProcess(const ServerProcess&) = delete;
  ServerProcess& operator=(const ServerProcess&) = delete;
  // Stops the server if Stop() was not called.
  ~ServerProcess();

  // "127.0.0.1:PORT".
  const std::string& address() const { return address_; }

  // SIGTERM, then waits up to `timeout` (SIGKILL after it); the exit code
  // as in CommandResult.
  int Stop(absl::Duration timeout = absl::Seconds(30));

 private:
  ServerProcess(pid_t pid, int stdout_fd, std::string address);

  pid_t pid_;
  int stdout_fd_;
  std::string address_;
  int exit_code_ = -1;
  // Reads the server's stdout to its end so that it can never block on a
  // full pipe.
  std::thread drain_;
};

// A loopback port that nothing listens on (bound, then closed).
absl::StatusOr<int> UnusedPort();

// The text of a file; empty when it cannot be read.
std::string ReadFileOrEmpty(const std::string& path);

// A fixture whose tests share one featviz-server: a suite calls
// StartSharedServer() from SetUpTestSuite() and StopSharedServer() from
// TearDownTestSuite(), which also checks that the server exits 0 on SIGTERM.
// Each test fails at once when the server could not be started.
class SharedServerTest : public ::testing::Test {
 protected:
  // `tag` names the server's log file under the test temp directory.
  static void StartSharedServer(const std::string& binary,
                                const std::string& model_dir,
                                const std::string& tag,
                                const std::vector<std::string>& extra_flags = {});
  static void StopSharedServer();
  void SetUp() override {
    ASSERT_NE(server_, nullptr) << (start_error_.empty() ? "no server"
                                                          : start_error_);
  }

  inline static ServerProcess* server_ = nullptr;
  inline static std::string log_path_;
  inline static std::string start_error_;
};

}  // namespace featviz::testing

#endif  // FEATVIZ_TESTS_CLIENT_PROCESS_H_
