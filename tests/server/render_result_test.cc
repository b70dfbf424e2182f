// End to end against the real featviz-server (issue 27): a result says how
// it was made and what went wrong with it. It names the parameterisation
// that ran (the request's, or the server's pick), and a prob(c) term whose
// softmax saturated comes with a warning that points to logit(c), fresh or
// from the result cache. A tuple-output model whose card names classes but
// no "logits" is served with its one output that wide as the class output,
// and the server's log says which output it took.
#include <gtest/gtest.h>

#include <filesystem>
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

namespace fs = std::filesystem;

class RenderResultTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    repo_ = new TempRepository();
    repo_->AddFlat("confident", TestModelFile("confident.pt"),
                   TestModelFile("confident.card.json"));
    repo_->AddFlat("tuple_output", TestModelFile("tuple_output.pt"),
                   TestModelFile("tuple_output.card.json"));
    log_ = new std::string(absl::StrCat(repo_->root(), "_server.log"));
    absl::StatusOr<std::unique_ptr<ServerProcess>> server =
        ServerProcess::Start({"--model_dir=" + repo_->root()},
                             absl::Seconds(120), *log_);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = server->release();
  }
  static void TearDownTestSuite() {
    delete server_;
    std::error_code ignored;
    fs::remove(*log_, ignored);
    delete log_;
    delete repo_;
  }
  void SetUp() override {
    ASSERT_NE(server_, nullptr);
    stub_ = server_->NewStub();
  }

  static v1::RenderRequest Request(const std::string& model,
                                   const std::string& objective) {
    v1::RenderRequest request;
    request.set_model(model);
    request.set_objective_text(objective);
    request.mutable_optimizer()->set_steps(4);
    request.mutable_image()->set_batch(2);
    request.set_seed(1);
    request.mutable_output()->set_tensor(true);
    return request;
  }

  static TempRepository* repo_;
  static std::string* log_;
  static ServerProcess* server_;
  std::unique_ptr<v1::Visualizer::Stub> stub_;
};
TempRepository* RenderResultTest::repo_ = nullptr;
std::string* RenderResultTest::log_ = nullptr;
ServerProcess* RenderResultTest::server_ = nullptr;

TEST_F(RenderResultTest, TheResultNamesTheParameterisationThatRan) {
  for (const auto& [asked, ran] :
       std::vector<std::pair<v1::Parameterization, v1::Parameterization>>{
           {v1::PARAMETERIZATION_PIXEL, v1::PARAMETERIZATION_PIXEL},
           {v1::PARAMETERIZATION_FFT, v1::PARAMETERIZATION_FFT},
           {v1::PARAMETERIZATION_MACO, v1::PARAMETERIZATION_MACO}}) {
    SCOPED_TRACE(v1::Parameterization_Name(asked));
    v1::RenderRequest request = Request("confident", "logit(1)");
    request.mutable_image()->set_parameterization(asked);
    const RenderOutcome r = RenderAll(*stub_, request);
    ASSERT_TRUE(r.status.ok()) << r.status.error_message();
    ASSERT_TRUE(r.result.has_value());
    EXPECT_EQ(r.result->parameterization(), ran);
    EXPECT_EQ(r.result->maco_magnitude().empty(),
              ran != v1::PARAMETERIZATION_MACO);
  }
  // Left to the server: its pick is named, never UNSPECIFIED, and MaCo
  // exactly when the magnitude's source is given.
  const RenderOutcome r = RenderAll(*stub_, Request("confident", "logit(1)"));
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  ASSERT_TRUE(r.result.has_value());
  EXPECT_NE(r.result->parameterization(), v1::PARAMETERIZATION_UNSPECIFIED);
  EXPECT_EQ(r.result->maco_magnitude().empty(),
            r.result->parameterization() != v1::PARAMETERIZATION_MACO);
}

TEST_F(RenderResultTest, ASaturatedProbTermIsReportedWithTheLogitToUse) {
  // The model is sure of class 0 on every image: prob(0) has nothing to
  // follow.
  const v1::RenderRequest request =
      Request("confident", "prob(0) - 0.01 * tv()");
  const RenderOutcome r = RenderAll(*stub_, request);
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  ASSERT_TRUE(r.result.has_value());
  ASSERT_EQ(r.result->warnings_size(), 1);
  const std::string& warning = r.result->warnings(0);
  EXPECT_TRUE(absl::StartsWith(
      warning, "prob(0) saturated: p = 1.00000 on 2 of 2 images"))
      << warning;
  EXPECT_TRUE(absl::StrContains(warning, "maximise logit(0) instead"))
      << warning;

  // The same request again is answered from the cache, warning included.
  const JobReply submitted = Submit(*stub_, request);
  ASSERT_TRUE(submitted.status.ok()) << submitted.status.error_message();
  const JobReply done =
      WaitForState(*stub_, submitted.job.id(), v1::JOB_STATE_SUCCEEDED);
  ASSERT_EQ(done.job.state(), v1::JOB_STATE_SUCCEEDED);
  const JobReply with_result = Get(*stub_, submitted.job.id(), true);
  ASSERT_TRUE(with_result.status.ok()) << with_result.status.error_message();
  EXPECT_TRUE(with_result.job.cached());
  ASSERT_EQ(with_result.job.result().warnings_size(), 1);
  EXPECT_EQ(with_result.job.result().warnings(0), warning);

  // Terms that are not saturated get none: the logit, and an unlikely class.
  for (const char* objective : {"logit(0)", "prob(1)"}) {
    const RenderOutcome quiet =
        RenderAll(*stub_, Request("confident", objective));
    ASSERT_TRUE(quiet.status.ok()) << quiet.status.error_message();
    ASSERT_TRUE(quiet.result.has_value());
    EXPECT_EQ(quiet.result->warnings_size(), 0) << objective;
  }
}

TEST_F(RenderResultTest, ATupleModelsClassOutputIsInferredAndLogged) {
  grpc::ClientContext context;
  context.set_deadline(After(30));
  v1::GetModelRequest get;
  get.set_name("tuple_output");
  v1::Model model;
  const grpc::Status status = stub_->GetModel(&context, get, &model);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(model.logits_output(), "0");
  EXPECT_EQ(model.class_names_size(), 3);

  const RenderOutcome r =
      RenderAll(*stub_, Request("tuple_output", "logit(2)"));
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();

  std::ifstream in(*log_);
  std::stringstream log;
  log << in.rdbuf();
  EXPECT_TRUE(absl::StrContains(
      log.str(),
      "model tuple_output: the card names 3 classes and no "
      "\"logits\"; class output '0' taken, the only [batch, 3] "
      "output"))
      << log.str();
}

}  // namespace
}  // namespace featviz::testing
