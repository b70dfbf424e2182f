// The model repository end to end: a real featviz-server on a repository in
// a temporary directory, driven through LoadModel, UnloadModel, ReloadModel
// and renders of real models.
#include <atomic>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "tests/server/model_repo.h"
#include "tests/server/server_process.h"
#include "tests/server/test_client.h"

namespace featviz::testing {
namespace {

using grpc::StatusCode;

std::unique_ptr<ServerProcess> MustStart(const TempRepository& repo,
                                         std::vector<std::string> flags = {}) {
  flags.push_back("--model_dir=" + repo.root());
  absl::StatusOr<std::unique_ptr<ServerProcess>> server =
      ServerProcess::Start(std::move(flags));
  EXPECT_TRUE(server.ok()) << server.status();
  return server.ok() ? *std::move(server) : nullptr;
}

v1::RenderRequest Quick(const std::string& model) {
  v1::RenderRequest request;
  request.set_model(model);
  request.set_objective_text("logit(2)");  // The wide test model has 3.
  request.mutable_optimizer()->set_steps(4);
  return request;
}

grpc::Status Submit(v1::Visualizer::Stub& stub, const v1::RenderRequest& request,
                    v1::Job* job) {
  grpc::ClientContext context;
  context.set_deadline(After(60));
  v1::SubmitJobRequest submit;
  *submit.mutable_request() = request;
  return stub.SubmitJob(&context, submit, job);
}

// The job once it has ended (bounded, so that a stuck job fails the test).
v1::Job WaitForEnd(v1::Visualizer::Stub& stub, const std::string& id) {
  const absl::Time give_up = absl::Now() + absl::Seconds(240);
  v1::Job job;
  while (absl::Now() < give_up) {
    grpc::ClientContext context;
    v1::GetJobRequest request;
    request.set_id(id);
    request.set_include_result(true);
    job.Clear();
    EXPECT_TRUE(stub.GetJob(&context, request, &job).ok());
    if (job.state() != v1::JOB_STATE_QUEUED &&
        job.state() != v1::JOB_STATE_RUNNING) {
      break;
    }
    absl::SleepFor(absl::Milliseconds(50));
  }
  return job;
}

TEST(ModelRepositoryTest, ResultsNameTheVersionAndContentHash) {
  TempRepository repo;
  repo.AddMnist("1");
  repo.AddMnist("2");
  std::unique_ptr<ServerProcess> server = MustStart(repo);
  ASSERT_NE(server, nullptr);
  auto stub = server->NewStub();
  const std::string hash = FileSha256(MnistFile());

  RenderOutcome newest = RenderAll(*stub, Quick("mnist"));
  ASSERT_TRUE(newest.status.ok()) << newest.status.error_message();
  ASSERT_TRUE(newest.result.has_value());
  EXPECT_EQ(newest.result->model(), "mnist");
  EXPECT_EQ(newest.result->model_version(), "2");
  EXPECT_EQ(newest.result->model_hash(), hash);

  RenderOutcome pinned = RenderAll(*stub, Quick("mnist@1"));
  ASSERT_TRUE(pinned.status.ok()) << pinned.status.error_message();
  EXPECT_EQ(pinned.result->model_version(), "1");
  EXPECT_EQ(pinned.result->model_hash(), hash);

  v1::Job job;
  ASSERT_TRUE(Submit(*stub, Quick("mnist@1"), &job).ok());
  EXPECT_EQ(job.model(), "mnist");
  EXPECT_EQ(job.model_version(), "1");
  EXPECT_EQ(job.model_hash(), hash);

  grpc::ClientContext context;
  v1::ListModelsResponse listed;
  ASSERT_TRUE(stub->ListModels(&context, {}, &listed).ok());
  ASSERT_EQ(listed.models_size(), 2);
  EXPECT_EQ(listed.models(0).version(), "1");
  EXPECT_EQ(listed.models(1).version(), "2");
  EXPECT_EQ(listed.models(1).path(), "mnist/2/model.pt");
  // One model per page, across versions of one name.
  grpc::ClientContext paged_context;
  v1::ListModelsRequest page;
  page.set_page_size(1);
  v1::ListModelsResponse first;
  ASSERT_TRUE(stub->ListModels(&paged_context, page, &first).ok());
  ASSERT_EQ(first.models_size(), 1);
  page.set_page_token(first.next_page_token());
  grpc::ClientContext second_context;
  v1::ListModelsResponse second;
  ASSERT_TRUE(stub->ListModels(&second_context, page, &second).ok());
  ASSERT_EQ(second.models_size(), 1);
  EXPECT_EQ(second.models(0).version(), "2");

  RenderOutcome missing = RenderAll(*stub, Quick("mnist@5"));
  EXPECT_EQ(missing.status.error_code(), StatusCode::NOT_FOUND);
  EXPECT_NE(missing.status.error_message().find("no version '5'"),
            std::string::npos)
      << missing.status.error_message();
}

TEST(ModelRepositoryTest, LoadModelRefusesPathsOutsideTheRepository) {
  TempRepository repo;
  repo.AddMnist("1");
  std::filesystem::create_directory_symlink(repo.Outside(), repo.Path("escape"));
  std::unique_ptr<ServerProcess> server = MustStart(repo);
  ASSERT_NE(server, nullptr);
  auto stub = server->NewStub();

  for (const std::string& path : std::vector<std::string>{
           "../../etc/passwd", "/etc/passwd", repo.Outside() + "/1/model.pt",
           "mnist/../../tmp", "escape/1", "escape/1/model.pt"}) {
    grpc::ClientContext context;
    v1::LoadModelRequest request;
    request.set_path(path);
    v1::LoadModelResponse response;
    const grpc::Status status = stub->LoadModel(&context, request, &response);
    EXPECT_EQ(status.error_code(), StatusCode::INVALID_ARGUMENT)
        << path << ": " << status.error_message();
    EXPECT_NE(status.error_message().find("path"), std::string::npos)
        << status.error_message();
  }
  // Still serving, and nothing was loaded.
  {
    grpc::ClientContext context;
    v1::ListModelsResponse listed;
    ASSERT_TRUE(stub->ListModels(&context, {}, &listed).ok());
    EXPECT_EQ(listed.models_size(), 1);
  }
  repo.AddMnist("3");
  grpc::ClientContext context;
  v1::LoadModelRequest request;
  request.set_path("mnist/3");
  v1::LoadModelResponse response;
  const grpc::Status status = stub->LoadModel(&context, request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.model().version(), "3");
  RenderOutcome rendered = RenderAll(*stub, Quick("mnist"));
  ASSERT_TRUE(rendered.status.ok()) << rendered.status.error_message();
  EXPECT_EQ(rendered.result->model_version(), "3");

  grpc::ClientContext again_context;
  EXPECT_EQ(stub->LoadModel(&again_context, request, &response).error_code(),
            StatusCode::ALREADY_EXISTS);
}

TEST(ModelRepositoryTest, UnloadLetsTheRunningJobFinishFailsQueuedRefusesNew) {
  TempRepository repo;
  repo.AddMnist("1");
  repo.AddMnist("2");
  // One image per step: a second job cannot join the running one's batch.
  std::unique_ptr<ServerProcess> server =
      MustStart(repo, {"--max_batch_images=1"});
  ASSERT_NE(server, nullptr);
  auto stub = server->NewStub();

  // A: running on version 2 while it is unloaded. It must outlast the
  // submissions below until one is refused (milliseconds); the most steps a
  // server allows take seconds on the fastest CPU (1500 took one).
  constexpr int64_t kSteps = 10000;
  v1::RenderRequest long_request = Quick("mnist@2");
  long_request.mutable_optimizer()->set_steps(kSteps);
  long_request.mutable_output()->set_progress_every(1);
  absl::Notification running;
  std::atomic<int64_t> last_step{0};
  RenderOutcome a;
  std::thread reader([&] {
    grpc::ClientContext context;
    context.set_deadline(After(300));
    auto stream = stub->Render(&context, long_request);
    v1::RenderEvent event;
    while (stream->Read(&event)) {
      if (event.has_progress()) {
        a.progress.push_back(event.progress());
        last_step = event.progress().step();
        if (!running.HasBeenNotified()) running.Notify();
      } else if (event.has_result()) {
        a.result = event.result();
      }
    }
    a.status = stream->Finish();
    if (!running.HasBeenNotified()) running.Notify();
  });
  running.WaitForNotification();

  // B: accepted for version 2, waiting behind A.
  v1::Job b;
  ASSERT_TRUE(Submit(*stub, Quick("mnist@2"), &b).ok());
  EXPECT_EQ(b.state(), v1::JOB_STATE_QUEUED);

  const bool a_still_running = last_step.load() < kSteps;
  std::atomic<bool> unload_returned{false};
  absl::Time unload_time;
  grpc::Status unload_status;
  v1::UnloadModelResponse unloaded;
  std::thread unloader([&] {
    grpc::ClientContext context;
    context.set_deadline(After(300));
    v1::UnloadModelRequest request;
    request.set_name("mnist");
    request.set_version("2");
    unload_status = stub->UnloadModel(&context, request, &unloaded);
    unload_time = absl::Now();
    unload_returned = true;
  });

  // New jobs for version 2 are refused as soon as the unload has begun.
  grpc::Status refused;
  const absl::Time give_up = absl::Now() + absl::Seconds(60);
  while (absl::Now() < give_up) {
    v1::Job job;
    refused = Submit(*stub, Quick("mnist@2"), &job);
    if (!refused.ok()) break;
    absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_EQ(refused.error_code(), StatusCode::FAILED_PRECONDITION)
      << refused.error_message();
  EXPECT_NE(refused.error_message().find("mnist@2 is being unloaded"),
            std::string::npos)
      << refused.error_message();
  // The name alone now means version 1.
  v1::Job c;
  ASSERT_TRUE(Submit(*stub, Quick("mnist"), &c).ok());
  EXPECT_EQ(c.model_version(), "1");

  reader.join();
  unloader.join();
  // A ran to its end on the version it started with.
  ASSERT_TRUE(a.status.ok()) << a.status.error_message();
  ASSERT_TRUE(a.result.has_value());
  EXPECT_EQ(a.result->steps(), kSteps);
  EXPECT_EQ(a.result->model_version(), "2");
  ASSERT_TRUE(unload_status.ok()) << unload_status.error_message();
  ASSERT_EQ(unloaded.models_size(), 1);
  EXPECT_EQ(unloaded.models(0).version(), "2");
  EXPECT_TRUE(a_still_running) << "A ended before the unload began: rerun";
  // The unload answered only after A had ended.
  grpc::ClientContext context;
  v1::ListJobsRequest list;
  list.set_state(v1::JOB_STATE_SUCCEEDED);
  v1::ListJobsResponse jobs;
  ASSERT_TRUE(stub->ListJobs(&context, list, &jobs).ok());
  bool found_a = false;
  for (const v1::Job& job : jobs.jobs()) {
    if (job.model_version() != "2" || job.total_steps() != kSteps) continue;
    found_a = true;
    EXPECT_LE(absl::FromUnixSeconds(job.end_time().seconds()), unload_time);
  }
  EXPECT_TRUE(found_a);

  // B: accepted before the unload, failed with a precise status when its
  // turn came; C ran on version 1.
  const v1::Job b_end = WaitForEnd(*stub, b.id());
  EXPECT_EQ(b_end.state(), v1::JOB_STATE_FAILED);
  EXPECT_EQ(b_end.error_code(), static_cast<int>(StatusCode::FAILED_PRECONDITION));
  EXPECT_NE(b_end.error_message().find("was unloaded or replaced"),
            std::string::npos)
      << b_end.error_message();
  const v1::Job c_end = WaitForEnd(*stub, c.id());
  EXPECT_EQ(c_end.state(), v1::JOB_STATE_SUCCEEDED) << c_end.error_message();
  EXPECT_EQ(c_end.result().model_version(), "1");
}

TEST(ModelRepositoryTest, UnloadFreesTheServersMemory) {
  TempRepository repo;
  repo.AddMnist("1");
  repo.AddVersion("wide", "1", TestModelFile("wide.pt"),
                  TestModelFile("wide.card.json"));
  std::unique_ptr<ServerProcess> server = MustStart(repo);
  ASSERT_NE(server, nullptr);
  auto stub = server->NewStub();
  const std::string pid = absl::StrCat(server->pid());

  // A render on the wide model first, so that its tapped graph and the
  // worker's buffers exist too.
  RenderOutcome rendered = RenderAll(*stub, Quick("wide"));
  ASSERT_TRUE(rendered.status.ok()) << rendered.status.error_message();
  const int64_t loaded = ResidentBytes(pid);
  grpc::ClientContext context;
  v1::UnloadModelRequest request;
  request.set_name("wide");
  v1::UnloadModelResponse response;
  const grpc::Status status = stub->UnloadModel(&context, request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  const int64_t unloaded = ResidentBytes(pid);
  ASSERT_EQ(response.models_size(), 1);
  const int64_t model_bytes = response.models(0).memory_bytes();
  std::printf(
      "featviz-server: wide model %.1f MiB of weights; resident %.1f MiB "
      "loaded, %.1f MiB after UnloadModel (freed %.1f MiB)\n",
      model_bytes / 1048576.0, loaded / 1048576.0, unloaded / 1048576.0,
      (loaded - unloaded) / 1048576.0);
  EXPECT_GE(loaded - unloaded, model_bytes * 9 / 10);
  RenderOutcome gone = RenderAll(*stub, Quick("wide"));
  EXPECT_EQ(gone.status.error_code(), StatusCode::NOT_FOUND);
}

TEST(ModelRepositoryTest, PollModePicksUpANewVersion) {
  TempRepository repo;
  repo.AddMnist("1");
  std::unique_ptr<ServerProcess> server =
      MustStart(repo, {"--model_poll_seconds=0.1"});
  ASSERT_NE(server, nullptr);
  auto stub = server->NewStub();

  repo.AddMnist("2");
  std::string version;
  const absl::Time give_up = absl::Now() + absl::Seconds(120);
  while (version != "2" && absl::Now() < give_up) {
    grpc::ClientContext context;
    v1::GetModelRequest request;
    request.set_name("mnist");
    v1::Model model;
    if (stub->GetModel(&context, request, &model).ok()) version = model.version();
    absl::SleepFor(absl::Milliseconds(20));
  }
  ASSERT_EQ(version, "2");
  RenderOutcome rendered = RenderAll(*stub, Quick("mnist"));
  ASSERT_TRUE(rendered.status.ok()) << rendered.status.error_message();
  EXPECT_EQ(rendered.result->model_version(), "2");

  // A removed version is unloaded by the next poll.
  std::filesystem::remove_all(repo.Path("mnist/1"));
  int versions = 2;
  while (versions != 1 && absl::Now() < give_up) {
    grpc::ClientContext context;
    v1::ListModelsResponse listed;
    if (stub->ListModels(&context, {}, &listed).ok()) versions = listed.models_size();
    absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_EQ(versions, 1);
}

TEST(ModelRepositoryTest, ReloadModelReportsWhatChanged) {
  TempRepository repo;
  repo.AddMnist("1");
  std::unique_ptr<ServerProcess> server = MustStart(repo);
  ASSERT_NE(server, nullptr);
  auto stub = server->NewStub();
  repo.AddMnist("2");
  std::filesystem::remove_all(repo.Path("mnist/1"));
  // A broken version is reported, not served, and does not stop the rest.
  std::filesystem::create_directories(repo.Path("mnist/3"));
  std::ofstream(repo.Path("mnist/3/model.pt")) << "not a model";

  grpc::ClientContext context;
  v1::ReloadModelRequest request;
  request.set_name("mnist");
  v1::ReloadModelResponse response;
  const grpc::Status status = stub->ReloadModel(&context, request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_EQ(response.loaded_size(), 1);
  EXPECT_EQ(response.loaded(0).version(), "2");
  ASSERT_EQ(response.unloaded_size(), 1);
  EXPECT_EQ(response.unloaded(0).version(), "1");
  ASSERT_EQ(response.failed_size(), 1);
  EXPECT_NE(response.failed(0).find("mnist/3/model.pt"), std::string::npos)
      << response.failed(0);
}

}  // namespace
}  // namespace featviz::testing
