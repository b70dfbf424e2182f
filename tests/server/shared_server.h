// What the end-to-end suites that share one real server have in common: the
// server started once per suite, and the check that a call failed with a
// code whose message names the field.
#ifndef FEATVIZ_TESTS_SERVER_SHARED_SERVER_H_
#define FEATVIZ_TESTS_SERVER_SHARED_SERVER_H_

#include <memory>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "featviz/v1/circuits.grpc.pb.h"
#include "featviz/v1/featviz.grpc.pb.h"
#include "tests/server/server_process.h"

namespace featviz::testing {

// A suite whose tests share one featviz-server, started with
// `Suite::ServerFlags()` before the first test and stopped after the last:
//   class MyTest : public SharedServerTest<MyTest> {
//    public:
//     static std::vector<std::string> ServerFlags() { return {...}; }
//   };
// Each test's SetUp checks server_ (null when it failed to start) and
// connects stub_ (Visualizer) and circuits_ (Circuits) to it.
template <typename Suite>
class SharedServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_NE(server_, nullptr);
    stub_ = server_->NewStub();
    circuits_ = v1::Circuits::NewStub(server_->channel());
  }

  static void SetUpTestSuite() {
    absl::StatusOr<std::unique_ptr<ServerProcess>> server =
        ServerProcess::Start(Suite::ServerFlags());
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = server->release();
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }

  static inline ServerProcess* server_ = nullptr;
  std::unique_ptr<v1::Visualizer::Stub> stub_;
  std::unique_ptr<v1::Circuits::Stub> circuits_;
};

// The flags of a server hosting the bundled models and the MNIST test set.
inline std::vector<std::string> MnistServerFlags() {
  return {"--dataset_dir=" FEATVIZ_MNIST_DIR};
}

// `status` has `code` and a message containing `text` (the field it names);
// `what` says which call, when a test makes several.
inline void ExpectError(const grpc::Status& status, grpc::StatusCode code,
                        const std::string& text, const std::string& what = "") {
  EXPECT_EQ(status.error_code(), code) << what << ": " << status.error_message();
  EXPECT_TRUE(absl::StrContains(status.error_message(), text))
      << what << ": '" << status.error_message() << "' should say '" << text
      << "'";
}

}  // namespace featviz::testing

#endif  // FEATVIZ_TESTS_SERVER_SHARED_SERVER_H_
