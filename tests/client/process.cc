#include "tests/client/process.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"

extern char** environ;

namespace featviz::testing {
namespace {

constexpr char kListening[] = "featviz-server listening on ";

absl::Status Errno(absl::string_view what) {
  return absl::InternalError(absl::StrCat(what, ": ", std::strerror(errno)));
}

int ExitCode(int wait_status) {
  if (WIFEXITED(wait_status)) return WEXITSTATUS(wait_status);
  if (WIFSIGNALED(wait_status)) return 128 + WTERMSIG(wait_status);
  return -1;
}

// Owns the char* arrays posix_spawn wants.
struct CStrings {
  explicit CStrings(std::vector<std::string> strings)
      : storage(std::move(strings)) {
    for (std::string& s : storage) pointers.push_back(s.data());
    pointers.push_back(nullptr);
  }
  std::vector<std::string> storage;
  std::vector<char*> pointers;
};

std::vector<std::string> Environment(const std::vector<std::string>& extra) {
  std::map<std::string, std::string> vars;
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string entry = *e;
    vars[entry.substr(0, entry.find('='))] = entry;
  }
  for (const std::string& entry : extra) {
    vars[entry.substr(0, entry.find('='))] = entry;
  }
  std::vector<std::string> out;
  for (auto& [name, entry] : vars) out.push_back(entry);
  return out;
}

// Spawns argv with stdin from /dev/null, stdout to `out_fd` and stderr to
// `err_fd`.
absl::StatusOr<pid_t> Spawn(const std::vector<std::string>& argv,
                            const std::vector<std::string>& extra_env,
                            int out_fd, int err_fd,
                            const std::vector<int>& close_fds) {
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null",
                                   O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&actions, out_fd, STDOUT_FILENO);
  posix_spawn_file_actions_adddup2(&actions, err_fd, STDERR_FILENO);
  for (int fd : close_fds) posix_spawn_file_actions_addclose(&actions, fd);
  CStrings args(argv);
  CStrings env(Environment(extra_env));
  pid_t pid = 0;
  const int rc = posix_spawn(&pid, argv[0].c_str(), &actions, nullptr,
                             args.pointers.data(), env.pointers.data());
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) {
    return absl::InternalError(
        absl::StrCat("cannot start ", argv[0], ": ", std::strerror(rc)));
  }
  return pid;
}

}  // namespace

absl::StatusOr<CommandResult> RunCommand(
    const std::vector<std::string>& argv,
    const std::vector<std::string>& extra_env, absl::Duration timeout) {
  int out_pipe[2], err_pipe[2];
  if (pipe2(out_pipe, O_CLOEXEC) != 0) return Errno("pipe");
  if (pipe2(err_pipe, O_CLOEXEC) != 0) return Errno("pipe");
  absl::StatusOr<pid_t> pid =
      Spawn(argv, extra_env, out_pipe[1], err_pipe[1],
            {out_pipe[0], err_pipe[0]});
  close(out_pipe[1]);
  close(err_pipe[1]);
  if (!pid.ok()) {
    close(out_pipe[0]);
    close(err_pipe[0]);
    return pid.status();
  }
  CommandResult result;
  const absl::Time deadline = absl::Now() + timeout;
  pollfd fds[2] = {{out_pipe[0], POLLIN, 0}, {err_pipe[0], POLLIN, 0}};
  std::string* sinks[2] = {&result.out, &result.err};
  int open_fds = 2;
  bool killed = false;
  while (open_fds > 0) {
    const int64_t ms = absl::ToInt64Milliseconds(deadline - absl::Now());
    if (ms <= 0 && !killed) {
      kill(*pid, SIGKILL);
      killed = true;
    }
    if (poll(fds, 2, ms > 0 ? static_cast<int>(ms) : 1000) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || fds[i].revents == 0) continue;
      char buffer[65536];
      const ssize_t n = read(fds[i].fd, buffer, sizeof(buffer));
      if (n > 0) {
        sinks[i]->append(buffer, n);
      } else if (n == 0 || errno != EINTR) {
        close(fds[i].fd);
        fds[i].fd = -1;
        --open_fds;
      }
    }
  }
  int status = 0;
  while (waitpid(*pid, &status, 0) < 0 && errno == EINTR) {
  }
  result.exit_code = ExitCode(status);
  if (killed) {
    return absl::DeadlineExceededError(absl::StrCat(
        argv[0], " ran longer than ", absl::FormatDuration(timeout),
        "; stderr: ", result.err));
  }
  return result;
}

absl::StatusOr<std::unique_ptr<ServerProcess>> ServerProcess::Start(
    const std::string& binary, const std::string& model_dir,
    const std::string& log_path, absl::Duration timeout,
    const std::vector<std::string>& extra_flags) {
  if (access(binary.c_str(), X_OK) != 0) {
    return absl::NotFoundError(
        absl::StrCat("no server binary at ", binary, " (build featviz-server)"));
  }
  int out_pipe[2];
  if (pipe2(out_pipe, O_CLOEXEC) != 0) return Errno("pipe");
  const int log_fd =
      open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (log_fd < 0) return Errno(absl::StrCat("open ", log_path));
  std::vector<std::string> argv = {binary, "--listen", "127.0.0.1:0",
                                   "--model_dir", model_dir};
  argv.insert(argv.end(), extra_flags.begin(), extra_flags.end());
  absl::StatusOr<pid_t> pid =
      Spawn(argv, {}, out_pipe[1], log_fd, {out_pipe[0]});
  close(out_pipe[1]);
  close(log_fd);
  if (!pid.ok()) {
    close(out_pipe[0]);
    return pid.status();
  }
  // Read line by line until the listening line, the deadline or EOF.
  std::string text;
  const absl::Time deadline = absl::Now() + timeout;
  std::string error;
  while (true) {
    const size_t newline = text.find('\n');
    if (newline != std::string::npos) {
      const std::string line = text.substr(0, newline);
      text.erase(0, newline + 1);
      absl::string_view address = line;
      if (absl::ConsumePrefix(&address, kListening)) {
        int port = 0;
        const size_t colon = address.rfind(':');
        if (colon == absl::string_view::npos ||
            !absl::SimpleAtoi(address.substr(colon + 1), &port) || port <= 0) {
          error = absl::StrCat("cannot read a port from '", line, "'");
          break;
        }
        return std::unique_ptr<ServerProcess>(
            new ServerProcess(*pid, out_pipe[0], std::string(address)));
      }
      continue;
    }
    const int64_t ms = absl::ToInt64Milliseconds(deadline - absl::Now());
    if (ms <= 0) {
      error = absl::StrCat("no '", kListening, "' line within ",
                           absl::FormatDuration(timeout));
      break;
    }
    pollfd fd = {out_pipe[0], POLLIN, 0};
    if (poll(&fd, 1, static_cast<int>(ms)) < 0 && errno != EINTR) {
      error = absl::StrCat("poll: ", std::strerror(errno));
      break;
    }
    if (fd.revents == 0) continue;
    char buffer[4096];
    const ssize_t n = read(out_pipe[0], buffer, sizeof(buffer));
    if (n == 0) {
      error = "the server exited before it listened";
      break;
    }
    if (n > 0) text.append(buffer, n);
  }
  kill(*pid, SIGKILL);
  int status = 0;
  waitpid(*pid, &status, 0);
  close(out_pipe[0]);
  return absl::UnavailableError(absl::StrCat(
      binary, ": ", error, " (exit ", ExitCode(status), "); its stderr:\n",
      ReadFileOrEmpty(log_path)));
}

ServerProcess::ServerProcess(pid_t pid, int stdout_fd, std::string address)
    : pid_(pid), stdout_fd_(stdout_fd), address_(std::move(address)) {
  drain_ = std::thread([fd = stdout_fd_] {
    char buffer[4096];
    while (true) {
      const ssize_t n = read(fd, buffer, sizeof(buffer));
      if (n == 0 || (n < 0 && errno != EINTR)) return;
    }
  });
}

ServerProcess::~ServerProcess() {
  if (pid_ > 0) Stop();
}

int ServerProcess::Stop(absl::Duration timeout) {
  if (pid_ <= 0) return exit_code_;
  kill(pid_, SIGTERM);
  const absl::Time deadline = absl::Now() + timeout;
  int status = 0;
  while (true) {
    const pid_t done = waitpid(pid_, &status, WNOHANG);
    if (done == pid_) break;
    if (done < 0 && errno != EINTR) break;
    if (absl::Now() > deadline) {
      kill(pid_, SIGKILL);
      waitpid(pid_, &status, 0);
      break;
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  exit_code_ = ExitCode(status);
  pid_ = -1;
  // The server's exit closed the pipe's write end; the drain sees EOF.
  if (drain_.joinable()) drain_.join();
  close(stdout_fd_);
  return exit_code_;
}

absl::StatusOr<int> UnusedPort() {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Errno("socket");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    close(fd);
    return Errno("bind");
  }
  close(fd);
  return ntohs(addr.sin_port);
}

std::string ReadFileOrEmpty(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  std::stringstream text;
  text << file.rdbuf();
  return text.str();
}

void SharedServerTest::StartSharedServer(const std::string& binary,
                                         const std::string& model_dir,
                                         const std::string& tag,
                                         const std::vector<std::string>& extra_flags) {
  log_path_ = absl::StrCat(::testing::TempDir(), "featviz_", tag,
                           "_server_", getpid(), ".log");
  absl::StatusOr<std::unique_ptr<ServerProcess>> server =
      ServerProcess::Start(binary, model_dir, log_path_, absl::Seconds(60),
                           extra_flags);
  if (!server.ok()) {
    start_error_ = server.status().ToString();
    return;
  }
  server_ = server->release();
}

void SharedServerTest::StopSharedServer() {
  if (server_ == nullptr) return;
  const int code = server_->Stop();
  EXPECT_EQ(code, 0) << "featviz-server did not exit cleanly on SIGTERM; log:\n"
                     << ReadFileOrEmpty(log_path_);
  delete server_;
  server_ = nullptr;
}

}  // namespace featviz::testing
