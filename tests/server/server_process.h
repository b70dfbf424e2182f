// A real featviz-server for end-to-end tests: fork/execs the binary (path
// from FEATVIZ_SERVER_BINARY) on 127.0.0.1:0 with the committed models,
// learns the port from its "featviz-server listening on HOST:PORT" line, and
// kills it when the test is done with it. Its log goes to the test's stderr.
#ifndef FEATVIZ_TESTS_SERVER_SERVER_PROCESS_H_
#define FEATVIZ_TESTS_SERVER_SERVER_PROCESS_H_

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "featviz/v1/featviz.grpc.pb.h"

namespace featviz::testing {

class ServerProcess {
 public:
  // Starts the server with `flags` after the defaults (a later flag wins)
  // and waits, up to `timeout`, for it to listen. Its log goes to
  // `stderr_path` when given.
  static absl::StatusOr<std::unique_ptr<ServerProcess>> Start(
      std::vector<std::string> flags = {},
      absl::Duration timeout = absl::Seconds(120),
      const std::string& stderr_path = "") {
    std::vector<std::string> args = {FEATVIZ_SERVER_BINARY,
                                     "--listen=127.0.0.1:0",
                                     "--model_dir=" FEATVIZ_MODELS_DIR};
    args.insert(args.end(), flags.begin(), flags.end());
    std::vector<char*> argv;
    for (std::string& arg : args) argv.push_back(arg.data());
    argv.push_back(nullptr);

    int out[2];
    if (pipe2(out, O_CLOEXEC) != 0) {
      return absl::InternalError(absl::StrCat("pipe2: ", std::strerror(errno)));
    }
    const pid_t pid = fork();
    if (pid < 0) {
      return absl::InternalError(absl::StrCat("fork: ", std::strerror(errno)));
    }
    if (pid == 0) {
      // Only async-signal-safe calls between fork and exec.
      dup2(out[1], STDOUT_FILENO);
      if (!stderr_path.empty()) {
        const int err = open(stderr_path.c_str(),
                             O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (err >= 0) dup2(err, STDERR_FILENO);
      }
      execv(argv[0], argv.data());
      _exit(127);
    }
    close(out[1]);
    std::unique_ptr<ServerProcess> server(new ServerProcess(pid, out[0]));
    absl::StatusOr<std::string> line = server->ReadLine(timeout);
    if (!line.ok()) return line.status();
    constexpr absl::string_view kPrefix = "featviz-server listening on ";
    absl::string_view address = *line;
    if (!absl::ConsumePrefix(&address, kPrefix)) {
      return absl::InternalError(absl::StrCat("unexpected first line '", *line, "'"));
    }
    const size_t colon = address.rfind(':');
    if (colon == absl::string_view::npos ||
        !absl::SimpleAtoi(address.substr(colon + 1), &server->port_) ||
        server->port_ <= 0) {
      return absl::InternalError(absl::StrCat("no port in '", *line, "'"));
    }
    server->address_ = std::string(address);
    server->channel_ =
        grpc::CreateChannel(server->address_, grpc::InsecureChannelCredentials());
    return server;
  }

  ~ServerProcess() {
    if (!exit_status_.has_value()) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    close(stdout_fd_);
  }

  ServerProcess(const ServerProcess&) = delete;
  ServerProcess& operator=(const ServerProcess&) = delete;

  // "127.0.0.1:PORT".
  const std::string& address() const { return address_; }
  int port() const { return port_; }
  pid_t pid() const { return pid_; }
  const std::shared_ptr<grpc::Channel>& channel() const { return channel_; }
  std::unique_ptr<v1::Visualizer::Stub> NewStub() const {
    return v1::Visualizer::NewStub(channel_);
  }

  void Signal(int signal_number) { kill(pid_, signal_number); }

  // The next line the server prints on stdout (after the listening line:
  // "featviz-server metrics on HOST:PORT").
  absl::StatusOr<std::string> NextLine(
      absl::Duration timeout = absl::Seconds(30)) {
    return ReadLine(timeout);
  }

  // The exit code once the process has exited normally; an error when it is
  // still running after `timeout` or died of a signal.
  absl::StatusOr<int> WaitForExit(absl::Duration timeout) {
    const absl::Time deadline = absl::Now() + timeout;
    while (!exit_status_.has_value()) {
      int status = 0;
      const pid_t done = waitpid(pid_, &status, WNOHANG);
      if (done == pid_) {
        exit_status_ = status;
        break;
      }
      if (absl::Now() > deadline) {
        return absl::DeadlineExceededError("the server is still running");
      }
      absl::SleepFor(absl::Milliseconds(20));
    }
    if (WIFSIGNALED(*exit_status_)) {
      return absl::InternalError(
          absl::StrCat("the server died of signal ", WTERMSIG(*exit_status_)));
    }
    return WEXITSTATUS(*exit_status_);
  }

 private:
  ServerProcess(pid_t pid, int stdout_fd) : pid_(pid), stdout_fd_(stdout_fd) {}

  absl::StatusOr<std::string> ReadLine(absl::Duration timeout) {
    const absl::Time deadline = absl::Now() + timeout;
    std::string line;
    while (true) {
      const int64_t left = absl::ToInt64Milliseconds(deadline - absl::Now());
      if (left <= 0) {
        return absl::DeadlineExceededError(absl::StrCat(
            "featviz-server did not say where it listens within ",
            absl::FormatDuration(timeout)));
      }
      pollfd fd = {stdout_fd_, POLLIN, 0};
      if (poll(&fd, 1, static_cast<int>(left)) <= 0) continue;
      char c;
      const ssize_t n = read(stdout_fd_, &c, 1);
      if (n == 0) {
        return absl::InternalError(
            absl::StrCat("featviz-server exited before listening; it said '",
                         line, "'"));
      }
      if (n < 0) {
        if (errno == EINTR) continue;
        return absl::InternalError(absl::StrCat("read: ", std::strerror(errno)));
      }
      if (c == '\n') return line;
      line.push_back(c);
    }
  }

  const pid_t pid_;
  const int stdout_fd_;
  int port_ = 0;
  std::string address_;
  std::shared_ptr<grpc::Channel> channel_;
  std::optional<int> exit_status_;
};

}  // namespace featviz::testing

#endif  // FEATVIZ_TESTS_SERVER_SERVER_PROCESS_H_
