// End to end against the real featviz-server (issue 25): a model of the
// repository whose code reads a file is refused at start and the server
// serves the others; --allow_operators, for a repository the operator
// trusts, lets it load; a malformed --allow_operators stops the server
// naming the entry.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>
#include <memory>
#include <sstream>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "tests/server/model_repo.h"
#include "tests/server/server_process.h"
#include "tests/server/test_client.h"

namespace featviz::testing {
namespace {

using ::grpc::StatusCode;

// The model and card of tests/models/make_hostile_models.py that appends the
// bytes of hostile_secret.bin to its logits.
void AddLeakyModel(TempRepository& repo) {
  std::ofstream(TestModelFile("hostile_secret.bin"), std::ios::binary)
      << "root:x:0";
  repo.AddVersion("leaky", "1", TestModelFile("hostile_outputs.pt"),
                  TestModelFile("hostile_outputs.card.json"));
}

grpc::Status GetModel(v1::Visualizer::Stub& stub, const std::string& name,
                      v1::Model* model) {
  grpc::ClientContext context;
  context.set_deadline(After(60));
  v1::GetModelRequest request;
  request.set_name(name);
  return stub.GetModel(&context, request, model);
}

TEST(AllowOperatorsTest,
     ARepositoryModelThatReadsAFileIsSkippedAndTheRestServed) {
  TempRepository repo;
  repo.AddMnist("1");
  AddLeakyModel(repo);
  absl::StatusOr<std::unique_ptr<ServerProcess>> server =
      ServerProcess::Start({"--model_dir=" + repo.root()});
  ASSERT_TRUE(server.ok()) << server.status();
  auto stub = (*server)->NewStub();
  v1::Model model;
  EXPECT_EQ(GetModel(*stub, "leaky", &model).error_code(),
            StatusCode::NOT_FOUND);
  EXPECT_TRUE(GetModel(*stub, "mnist", &model).ok());
  const RenderOutcome render = RenderAll(*stub, [] {
    v1::RenderRequest request = TextRequest("logit(4)", 4);
    request.set_model("mnist");
    return request;
  }());
  EXPECT_TRUE(render.status.ok()) << render.status.error_message();
}

TEST(AllowOperatorsTest, TheFlagLetsTheNamedOperatorLoad) {
  TempRepository repo;
  AddLeakyModel(repo);
  absl::StatusOr<std::unique_ptr<ServerProcess>> server = ServerProcess::Start(
      {"--model_dir=" + repo.root(), "--allow_operators=aten::from_file"});
  ASSERT_TRUE(server.ok()) << server.status();
  auto stub = (*server)->NewStub();
  v1::Model model;
  const grpc::Status status = GetModel(*stub, "leaky", &model);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(model.class_names_size(), 10);
}

TEST(AllowOperatorsTest, AMalformedNameStopsTheServerNamingIt) {
  const std::string log = absl::StrCat(
      ::testing::TempDir(), "/featviz_allow_operators_", getpid(), ".log");
  absl::StatusOr<std::unique_ptr<ServerProcess>> server = ServerProcess::Start(
      {"--allow_operators=aten::save,from_file"}, absl::Seconds(120), log);
  EXPECT_FALSE(server.ok());
  std::ifstream in(log);
  std::stringstream text;
  text << in.rdbuf();
  EXPECT_TRUE(absl::StrContains(
      text.str(), "--allow_operators: operator 'from_file' must be written"))
      << text.str();
}

}  // namespace
}  // namespace featviz::testing
