// `featviz upload` end to end: the CLI sends the committed MNIST classifier
// to a real featviz-server with an empty model repository and tokens, then
// lists and renders it; a client without the uploader role is refused.
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "tests/client/process.h"

namespace featviz::testing {
namespace {

namespace fs = std::filesystem;

constexpr char kUploader[] = "uploader-cli-0123456789-token";
constexpr char kReader[] = "reader-cli-0123456789-token";

std::string Scratch() {
  static const std::string dir = [] {
    const std::string d = absl::StrCat(::testing::TempDir(),
                                       "featviz_upload_cli_", getpid());
    fs::remove_all(d);
    fs::create_directories(d + "/repo");
    std::ofstream(d + "/tokens") << kUploader << " lab uploader\n"
                                 << kReader << " reader user\n";
    std::ofstream(d + "/uploader") << kUploader << "\n";
    std::ofstream(d + "/reader") << kReader << "\n";
    // The model and its card beside it, as a researcher has them.
    fs::copy_file(std::string(FEATVIZ_MODELS_DIR) + "/mnist_classifier.pt",
                  d + "/digits.pt");
    fs::copy_file(std::string(FEATVIZ_MODELS_DIR) + "/mnist_classifier.card.json",
                  d + "/digits.card.json");
    return d;
  }();
  return dir;
}

class UploadCliTest : public SharedServerTest {
 protected:
  static void SetUpTestSuite() {
    StartSharedServer(FEATVIZ_SERVER_BINARY, Scratch() + "/repo", "upload_cli",
                      {"--tokens_file=" + Scratch() + "/tokens"});
  }
  static void TearDownTestSuite() { StopSharedServer(); }

  static CommandResult Run(const std::string& token, std::vector<std::string> args) {
    args.insert(args.begin(), {"--server", server_->address(), "--token_file",
                               Scratch() + "/" + token});
    args.insert(args.begin(), FEATVIZ_CLI_BINARY);
    absl::StatusOr<CommandResult> result = RunCommand(args);
    EXPECT_TRUE(result.ok()) << result.status();
    return result.ok() ? *result : CommandResult{};
  }
};

TEST_F(UploadCliTest, UploadsWithTheCardBesideItThenListsAndRenders) {
  CommandResult r = Run("uploader", {"upload", Scratch() + "/digits.pt",
                                     "--name", "digits", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const nlohmann::json model = nlohmann::json::parse(r.out);
  EXPECT_EQ(model["name"], "digits");
  EXPECT_EQ(model["version"], "1");
  EXPECT_TRUE(fs::exists(Scratch() + "/repo/digits/1/model.card.json"));

  EXPECT_FALSE(model["already_present"].get<bool>());

  // The same file and card again: the version that has them, not a copy.
  r = Run("uploader", {"upload", Scratch() + "/digits.pt", "--name", "digits"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(absl::StrContains(
      r.out, "already served, same file and card: digits@1 (digits/1/model.pt"))
      << r.out;
  EXPECT_FALSE(fs::exists(Scratch() + "/repo/digits/2"));

  // Another card makes the same file the next version.
  nlohmann::json card =
      nlohmann::json::parse(std::ifstream(Scratch() + "/digits.card.json"));
  card["description"] = "the same weights, described again";
  std::ofstream(Scratch() + "/other.card.json") << card.dump();
  r = Run("uploader", {"upload", Scratch() + "/digits.pt", "--name", "digits",
                       "--card", Scratch() + "/other.card.json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(absl::StrContains(r.out, "uploaded digits@2 (digits/2/model.pt"))
      << r.out;

  r = Run("reader", {"layers", "digits"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(absl::StrContains(r.out, "conv2")) << r.out;
  EXPECT_TRUE(absl::StrContains(r.out, "class logits")) << r.out;

  r = Run("reader", {"render", "digits", "prob(3)", "--steps", "48", "--height",
                     "20", "--width", "36", "--npy", Scratch() + "/wide.npy",
                     "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const nlohmann::json report = nlohmann::json::parse(r.out);
  EXPECT_GE(report["probs"][0][3].get<double>(), 0.9) << r.out;
}

TEST_F(UploadCliTest, AReaderMayNotUploadAndABadFileIsRefused) {
  CommandResult r = Run("reader", {"upload", Scratch() + "/digits.pt"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(absl::StrContains(r.err, "PERMISSION_DENIED")) << r.err;
  EXPECT_TRUE(absl::StrContains(r.err, "uploader")) << r.err;

  std::ofstream(Scratch() + "/junk.pt") << "not a model at all";
  r = Run("uploader", {"upload", Scratch() + "/junk.pt"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(absl::StrContains(r.err, "not a TorchScript model")) << r.err;
  EXPECT_FALSE(fs::exists(Scratch() + "/repo/junk")) << "left behind";

  r = Run("uploader", {"upload", Scratch() + "/missing.pt"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(absl::StrContains(r.err, "model: cannot read '")) << r.err;
}

}  // namespace
}  // namespace featviz::testing
