// End to end under load: SIGTERM while renders run, wait and are watched
// (every accepted job must end with its result or an explicit status). The
// soak under mixed load, with the server's memory, is scripts/soak.
#include <signal.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "tests/server/server_process.h"
#include "tests/server/test_client.h"

namespace featviz::testing {
namespace {

using ::grpc::StatusCode;

// A stream (Render, or WatchJob of a submitted job) read to its end on its
// own thread.
class Stream {
 public:
  // Render `request`; Accepted() once the server has queued it.
  static std::unique_ptr<Stream> Render(v1::Visualizer::Stub& stub,
                                        const v1::RenderRequest& request) {
    auto stream = std::unique_ptr<Stream>(new Stream);
    stream->context_.set_deadline(After(300));
    stream->reader_ = stub.Render(&stream->context_, request);
    stream->reader_->WaitForInitialMetadata();
    const auto& metadata = stream->context_.GetServerInitialMetadata();
    stream->accepted_ = metadata.find("featviz-job-id") != metadata.end();
    stream->Run();
    return stream;
  }
  // Submit `request`, then watch the job.
  static std::unique_ptr<Stream> SubmitAndWatch(
      v1::Visualizer::Stub& stub, const v1::RenderRequest& request) {
    auto stream = std::unique_ptr<Stream>(new Stream);
    v1::SubmitJobRequest submit;
    *submit.mutable_request() = request;
    v1::Job job;
    grpc::ClientContext submit_context;
    stream->accepted_ = stub.SubmitJob(&submit_context, submit, &job).ok();
    if (!stream->accepted_) return stream;
    v1::WatchJobRequest watch;
    watch.set_id(job.id());
    stream->context_.set_deadline(After(300));
    stream->reader_ = stub.WatchJob(&stream->context_, watch);
    stream->Run();
    return stream;
  }
  ~Stream() {
    if (thread_.joinable()) thread_.join();
  }
  bool accepted() const { return accepted_; }
  RenderOutcome Wait() {
    if (thread_.joinable()) thread_.join();
    return outcome_;
  }

 private:
  Stream() = default;
  void Run() {
    thread_ = std::thread([this] { outcome_ = ReadAll(*reader_); });
  }

  grpc::ClientContext context_;
  std::unique_ptr<grpc::ClientReader<v1::RenderEvent>> reader_;
  bool accepted_ = false;
  RenderOutcome outcome_;
  std::thread thread_;
};

TEST(DrainTest, SigtermUnderLoadEndsEveryAcceptedJobWithAResultOrAStatus) {
  absl::StatusOr<std::unique_ptr<ServerProcess>> started =
      ServerProcess::Start({"--max_batch_images=4", "--shutdown_grace_seconds=3"});
  ASSERT_TRUE(started.ok()) << started.status();
  ServerProcess& server = **started;
  auto stub = server.NewStub();

  // Short renders that finish within the grace period, long ones that do
  // not, and more than a batch holds, so that some are still queued; half
  // through Render, half through SubmitJob + WatchJob, from three owners.
  std::vector<std::unique_ptr<Stream>> streams;
  for (int i = 0; i < 18; ++i) {
    v1::RenderRequest request =
        i % 3 == 0 ? TextRequest(absl::StrCat("logit(", i % 10, ")"), 64)
                   : LongRequest();
    request.set_owner(absl::StrCat("owner", i % 3));
    request.mutable_image()->set_batch(1);
    streams.push_back(i % 2 == 0 ? Stream::Render(*stub, request)
                                 : Stream::SubmitAndWatch(*stub, request));
    ASSERT_TRUE(streams.back()->accepted()) << "job " << i;
  }
  // Let the worker get going, then stop the server.
  {
    v1::ServerStats stats;
    const absl::Time give_up = absl::Now() + absl::Seconds(60);
    do {
      grpc::ClientContext context;
      ASSERT_TRUE(stub->GetServerStats(&context, {}, &stats).ok());
    } while (stats.running_jobs() < 2 && absl::Now() < give_up);
  }
  server.Signal(SIGTERM);

  std::map<std::string, int> counts;
  for (std::unique_ptr<Stream>& stream : streams) {
    const RenderOutcome outcome = stream->Wait();
    const StatusCode code = outcome.status.error_code();
    if (code == StatusCode::OK) {
      EXPECT_TRUE(outcome.result.has_value());
      ++counts["succeeded"];
    } else if (code == StatusCode::CANCELLED &&
               outcome.status.error_message().find(
                   "server shut down before the render finished") !=
                   std::string::npos) {
      ++counts["cancelled_running"];
    } else if (code == StatusCode::UNAVAILABLE &&
               outcome.status.error_message().find("had not started") !=
                   std::string::npos) {
      ++counts["cancelled_queued"];
    } else {
      ADD_FAILURE() << "unexpected end: " << code << " "
                    << outcome.status.error_message();
      ++counts["other"];
    }
  }
  std::vector<std::string> parts;
  int total = 0;
  for (const auto& [what, n] : counts) {
    parts.push_back(absl::StrCat(what, "=", n));
    total += n;
  }
  std::printf("drain outcomes of %d accepted jobs: %s\n", total,
              absl::StrJoin(parts, " ").c_str());
  EXPECT_EQ(total, 18);
  EXPECT_EQ(counts["other"], 0);
  // The long renders (12, in batches of 4) cannot all have finished.
  EXPECT_GT(counts["cancelled_running"] + counts["cancelled_queued"], 0);

  absl::StatusOr<int> exit_code = server.WaitForExit(absl::Seconds(60));
  ASSERT_TRUE(exit_code.ok()) << exit_code.status();
  EXPECT_EQ(*exit_code, 0);
}

}  // namespace
}  // namespace featviz::testing
