// Model and dataset memory budgets end to end: a real featviz-server whose
// --model_memory_bytes is smaller than its repository serves every model in
// turn, never holding more than the budget (ListModels, GetServerStats and
// the metrics say so after each request), and refuses an upload that cannot
// fit with RESOURCE_EXHAUSTED naming the budget; --dataset_memory_bytes
// likewise for datasets.
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "core/image.h"
#include "core/model.h"
#include "core/sha256.h"
#include "featviz/v1/circuits.grpc.pb.h"
#include "gtest/gtest.h"
#include "tests/server/model_repo.h"
#include "tests/server/scrape.h"
#include "tests/server/server_process.h"
#include "tests/server/test_client.h"

namespace featviz::testing {
namespace {

namespace fs = std::filesystem;
using ::grpc::StatusCode;

// What one copy of `file` is charged at most: its file's size before its
// first load, its parameters and buffers after.
int64_t Unit(const std::string& file) {
  absl::StatusOr<core::ModelPtr> model = core::Model::Load(file);
  EXPECT_TRUE(model.ok()) << model.status();
  const int64_t size = static_cast<int64_t>(fs::file_size(file));
  return model.ok() ? std::max(size, (*model)->memory_bytes()) : size;
}

v1::RenderRequest Quick(const std::string& model) {
  v1::RenderRequest request;
  request.set_model(model);
  request.set_objective_text("logit(2)");
  request.mutable_optimizer()->set_steps(3);
  return request;
}

std::vector<v1::Model> ListModels(v1::Visualizer::Stub& stub) {
  grpc::ClientContext context;
  context.set_deadline(After(60));
  v1::ListModelsResponse response;
  EXPECT_TRUE(stub.ListModels(&context, {}, &response).ok());
  return {response.models().begin(), response.models().end()};
}

// The bytes the listed copies hold: those loaded or being loaded.
int64_t HeldBytes(const std::vector<v1::Model>& models) {
  int64_t held = 0;
  for (const v1::Model& m : models) {
    for (const v1::ModelCopy& copy : m.copies()) {
      if (copy.state() == v1::MODEL_STATE_LOADED ||
          copy.state() == v1::MODEL_STATE_LOADING) {
        held += copy.bytes();
      }
    }
  }
  return held;
}

// The metrics port from the server's second line.
int MetricsPort(ServerProcess& server) {
  absl::StatusOr<std::string> line = server.NextLine();
  EXPECT_TRUE(line.ok()) << line.status();
  if (!line.ok()) return 0;
  absl::string_view address = *line;
  EXPECT_TRUE(
      absl::ConsumePrefix(&address, "featviz-server metrics on 127.0.0.1:"))
      << *line;
  int port = 0;
  EXPECT_TRUE(absl::SimpleAtoi(address, &port)) << *line;
  return port;
}

TEST(ModelBudgetServerTest, ServesEveryModelInTurnWithinTheBudget) {
  TempRepository repo;
  for (const char* name : {"m1", "m2", "m3", "m4"}) {
    repo.AddVersion(name, "1", MnistFile(), MnistCard());
  }
  repo.AddVersion("scripted", "1", TestModelFile("scripted.pt"),
                  TestModelFile("scripted.card.json"));
  const int64_t unit = Unit(MnistFile());
  const int64_t budget = 2 * unit + unit / 2;  // Two MNIST copies, not three.
  absl::StatusOr<std::unique_ptr<ServerProcess>> started =
      ServerProcess::Start({"--model_dir=" + repo.root(),
                            absl::StrCat("--model_memory_bytes=", budget),
                            "--metrics_listen=127.0.0.1:0"});
  ASSERT_TRUE(started.ok()) << started.status();
  ServerProcess& server = **started;
  const int port = MetricsPort(server);
  auto stub = server.NewStub();

  std::vector<v1::Model> models = ListModels(*stub);
  ASSERT_EQ(models.size(), 5u);
  int64_t repository = 0;
  for (const v1::Model& m : models) repository += m.memory_bytes();
  ASSERT_GT(repository, budget) << "the repository must not fit";
  EXPECT_LE(HeldBytes(models), budget);

  for (int round = 0; round < 2; ++round) {
    for (const std::string name : {"m1", "m2", "scripted", "m3", "m4"}) {
      const RenderOutcome rendered = RenderAll(*stub, Quick(name));
      ASSERT_TRUE(rendered.status.ok())
          << name << ": " << rendered.status.error_message();
      ASSERT_TRUE(rendered.result.has_value()) << name;
      EXPECT_EQ(rendered.result->model(), name);

      models = ListModels(*stub);
      EXPECT_LE(HeldBytes(models), budget) << "after " << name;
      for (const v1::Model& m : models) {
        ASSERT_EQ(m.copies_size(), 1) << m.name();
        EXPECT_EQ(m.state(), m.copies(0).state()) << m.name();
        // The model just used is in memory, and says when it was used (the
        // worker may still hold it, until it looks for its next job).
        if (m.name() == name) {
          EXPECT_EQ(m.state(), v1::MODEL_STATE_LOADED) << name;
          EXPECT_TRUE(m.has_last_used_time()) << name;
          EXPECT_LE(m.copies(0).users(), 1) << name;
        }
      }
      const v1::ServerStats stats = Stats(*stub);
      ASSERT_EQ(stats.devices_size(), 1);
      EXPECT_EQ(stats.devices(0).model_memory_bytes(), budget);
      EXPECT_LE(stats.devices(0).model_bytes(), budget) << "after " << name;
      EXPECT_GE(stats.devices(0).models_loaded(), 1);
    }
  }

  // Every model was loaded again after being unloaded for another.
  const std::vector<Sample> samples = Parse(Get(port, "/metrics").body);
  EXPECT_GT(Value(samples, "featviz_model_evictions_total",
                  {{"device", "cpu"}, {"reason", "budget"}})
                .value_or(0),
            0);
  EXPECT_LE(Value(samples, "featviz_model_loaded_bytes", {{"device", "cpu"}})
                .value_or(budget + 1),
            budget);
  EXPECT_EQ(
      Value(samples, "featviz_model_memory_budget_bytes", {{"device", "cpu"}}),
      budget);
  EXPECT_GE(Value(samples, "featviz_model_loads_total",
                  {{"device", "cpu"}, {"outcome", "ok"}})
                .value_or(0),
            5);
  EXPECT_EQ(Value(samples, "featviz_model_loads_total",
                  {{"device", "cpu"}, {"outcome", "failed"}}),
            0);
  EXPECT_GT(
      Value(samples, "featviz_model_load_seconds_total", {{"device", "cpu"}})
          .value_or(0),
      0);
  double listed = 0;
  for (const char* state : {"loaded", "loading", "unloaded", "failed"}) {
    listed +=
        Value(samples, "featviz_models", {{"device", "cpu"}, {"state", state}})
            .value_or(-100);
  }
  EXPECT_EQ(listed, 5);

  // Described while unloaded: the catalogue is kept.
  for (const v1::Model& m : ListModels(*stub)) {
    if (m.state() != v1::MODEL_STATE_UNLOADED) continue;
    grpc::ClientContext context;
    v1::GetModelRequest request;
    request.set_name(m.name());
    v1::Model described;
    ASSERT_TRUE(stub->GetModel(&context, request, &described).ok());
    EXPECT_FALSE(described.layers().empty()) << m.name();
    EXPECT_EQ(described.state(), v1::MODEL_STATE_UNLOADED) << m.name();
  }
}

TEST(ModelBudgetServerTest, AnUploadThatCannotFitIsRefusedNamingTheBudget) {
  TempRepository repo;
  repo.AddVersion("mnist", "1", MnistFile(), MnistCard());
  const int64_t budget = 2 * Unit(MnistFile());
  absl::StatusOr<std::unique_ptr<ServerProcess>> started =
      ServerProcess::Start({"--model_dir=" + repo.root(),
                            absl::StrCat("--model_memory_bytes=", budget)});
  ASSERT_TRUE(started.ok()) << started.status();
  auto stub = (*started)->NewStub();

  // wide.pt holds 64 MiB of weights.
  const std::string file = TestModelFile("wide.pt");
  std::string bytes;
  {
    std::ifstream in(file, std::ios::binary);
    std::stringstream read;
    read << in.rdbuf();
    bytes = read.str();
  }
  grpc::ClientContext context;
  context.set_deadline(After(300));
  v1::UploadModelResponse response;
  auto writer = stub->UploadModel(&context, &response);
  v1::UploadModelRequest request;
  request.mutable_header()->set_name("wide");
  request.mutable_header()->set_size_bytes(static_cast<int64_t>(bytes.size()));
  request.mutable_header()->set_sha256(FileSha256(file));
  for (size_t offset = 0; offset < bytes.size(); offset += 1 << 20) {
    request.set_chunk(bytes.substr(offset, 1 << 20));
    if (!writer->Write(request)) break;
    request.clear_header();
  }
  writer->WritesDone();
  const grpc::Status status = writer->Finish();
  EXPECT_EQ(status.error_code(), StatusCode::RESOURCE_EXHAUSTED)
      << status.error_message();
  EXPECT_TRUE(
      absl::StrContains(status.error_message(),
                        absl::StrCat("but --model_memory_bytes is ", budget)))
      << status.error_message();
  EXPECT_TRUE(absl::StrContains(status.error_message(), "model wide@1 needs"))
      << status.error_message();
  // Nothing of it stays, and the model that was there still serves.
  EXPECT_FALSE(fs::exists(repo.Path("wide")));
  const std::vector<v1::Model> models = ListModels(*stub);
  ASSERT_EQ(models.size(), 1u);
  EXPECT_EQ(models[0].name(), "mnist");
  EXPECT_TRUE(RenderAll(*stub, Quick("mnist")).status.ok());
}

TEST(ModelBudgetServerTest, ADatasetUploadPastTheBudgetIsRefusedNamingIt) {
  // Room for a few small datasets, not for MNIST's 10000 test images.
  constexpr int64_t kBudget = 200000;
  absl::StatusOr<std::unique_ptr<ServerProcess>> started =
      ServerProcess::Start({absl::StrCat("--dataset_memory_bytes=", kBudget)});
  ASSERT_TRUE(started.ok()) << started.status();
  auto circuits = v1::Circuits::NewStub((*started)->channel());

  // 100 gray 28x28 float32 images as .npy: 313600 bytes in memory.
  absl::StatusOr<std::string> npy = core::EncodeNpy(at::zeros({100, 28, 28}));
  ASSERT_TRUE(npy.ok()) << npy.status();

  grpc::ClientContext context;
  context.set_deadline(After(120));
  v1::Dataset response;
  auto writer = circuits->UploadDataset(&context, &response);
  v1::UploadDatasetRequest request;
  request.mutable_header()->set_name("zeros");
  request.mutable_header()->set_format(v1::DATASET_FORMAT_NPY);
  request.mutable_header()->set_size_bytes(static_cast<int64_t>(npy->size()));
  request.mutable_header()->set_sha256(core::Sha256Hex(*npy));
  request.set_chunk(*npy);
  writer->Write(request);
  writer->WritesDone();
  const grpc::Status status = writer->Finish();
  EXPECT_EQ(status.error_code(), StatusCode::RESOURCE_EXHAUSTED)
      << status.error_message();
  EXPECT_TRUE(absl::StrContains(
      status.error_message(),
      absl::StrCat("but --dataset_memory_bytes is ", kBudget)))
      << status.error_message();

  const v1::ServerStats stats = Stats(*(*started)->NewStub());
  EXPECT_EQ(stats.dataset_memory_bytes(), kBudget);
  EXPECT_EQ(stats.datasets(), 0);
  EXPECT_EQ(stats.dataset_bytes(), 0);
}

}  // namespace
}  // namespace featviz::testing
