// `featviz dataset upload`, `featviz datasets`, `featviz top` and `featviz
// dataset rm` end to end: a folder of PNGs (one subfolder per class, real
// MNIST digits) and the MNIST IDX files are uploaded through the CLI to a
// real featviz-server with tokens and a dataset directory of its own.
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/image.h"
#include "core/mnist.h"
#include "tests/client/process.h"

namespace featviz::testing {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr char kUploader[] = "lab-dataset-cli-0123456789-token";
constexpr char kReader[] = "reader-dataset-cli-0123456789-token";

std::string Scratch() {
  static const std::string dir = [] {
    const std::string d = absl::StrCat(::testing::TempDir(),
                                       "featviz_dataset_cli_", getpid());
    fs::remove_all(d);
    fs::create_directories(d + "/repo");
    fs::create_directories(d + "/datasets");
    std::ofstream(d + "/tokens") << kUploader << " lab uploader\n"
                                 << kReader << " reader user\n";
    std::ofstream(d + "/uploader") << kUploader << "\n";
    std::ofstream(d + "/reader") << kReader << "\n";
    fs::copy_file(std::string(FEATVIZ_MODELS_DIR) + "/mnist_classifier.pt",
                  d + "/repo/mnist_classifier.pt");
    fs::copy_file(std::string(FEATVIZ_MODELS_DIR) + "/mnist_classifier.card.json",
                  d + "/repo/mnist_classifier.card.json");
    // A lab's folder of PNGs: the first 3s and 7s of the MNIST test set.
    absl::StatusOr<core::LabelledImages> mnist =
        core::LoadMnistTestSet(FEATVIZ_MNIST_DIR);
    int written[10] = {};
    for (int64_t i = 0; mnist.ok() && i < 200; ++i) {
      const int64_t label = mnist->labels[i].item<int64_t>();
      if (label != 3 && label != 7) continue;
      const std::string folder =
          absl::StrCat(d, "/pngs/", label == 3 ? "three" : "seven");
      fs::create_directories(folder);
      absl::StatusOr<std::string> png = core::EncodePng(mnist->images[i]);
      std::ofstream(absl::StrCat(folder, "/", 1000 + written[label]++, ".png"),
                    std::ios::binary)
          << *png;
    }
    return d;
  }();
  return dir;
}

// PNG files under the folder.
int64_t PngCount() {
  int64_t n = 0;
  for (const auto& entry : fs::recursive_directory_iterator(Scratch() + "/pngs")) {
    n += entry.path().extension() == ".png";
  }
  return n;
}

class DatasetCliTest : public SharedServerTest {
 protected:
  static void SetUpTestSuite() {
    StartSharedServer(FEATVIZ_SERVER_BINARY, Scratch() + "/repo", "dataset_cli",
                      {"--tokens_file=" + Scratch() + "/tokens",
                       "--dataset_dir=" + Scratch() + "/datasets"});
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

TEST_F(DatasetCliTest, APngFolderIsPackedUploadedListedSearchedAndDeleted) {
  CommandResult r = Run("uploader", {"dataset", "upload", "strokes",
                                     Scratch() + "/pngs", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json uploaded = json::parse(r.out);
  EXPECT_EQ(uploaded["name"], "strokes");
  // Protobuf's JSON writes int64 as strings.
  EXPECT_EQ(uploaded["size"], absl::StrCat(PngCount()));
  EXPECT_EQ(uploaded["image_shape"], json::array({"1", "28", "28"}));
  EXPECT_EQ(uploaded["class_names"], json::array({"seven", "three"}));
  EXPECT_EQ(uploaded["owner"], "lab");
  EXPECT_EQ(uploaded["uploaded"], true);
  EXPECT_EQ(uploaded["source"], "npz");
  EXPECT_TRUE(fs::exists(Scratch() + "/datasets/strokes/images.npy"));

  r = Run("reader", {"datasets"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(absl::StrContains(r.out, "UPLOADED BY")) << r.out;
  EXPECT_TRUE(absl::StrContains(r.out, "strokes")) << r.out;
  EXPECT_TRUE(absl::StrContains(r.out, "lab")) << r.out;
  EXPECT_TRUE(absl::StrContains(r.out, absl::StrCat(PngCount() * 28 * 28 * 4 +
                                                    PngCount() * 8)))
      << r.out;

  // The only dataset: `top` needs no --dataset and answers indices into it.
  r = Run("reader", {"top", "mnist_classifier", "--layer", "conv2", "--channels",
                     "3,9", "--top_n", "5", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  json top = json::parse(r.out);
  EXPECT_EQ(top["dataset"], "strokes");
  ASSERT_EQ(top["units"].size(), 2u);
  for (const json& unit : top["units"]) {
    ASSERT_EQ(unit["indices"].size(), 5u);
    for (const json& i : unit["indices"]) EXPECT_LT(i.get<int64_t>(), PngCount());
    for (const json& l : unit["labels"]) {
      EXPECT_TRUE(l.get<int64_t>() == 0 || l.get<int64_t>() == 1) << l;
    }
  }

  // The MNIST IDX files, their labels found beside them, with class names.
  r = Run("uploader",
          {"dataset", "upload", "digits",
           std::string(FEATVIZ_MNIST_DIR) + "/t10k-images-idx3-ubyte.gz",
           "--classes", "0,1,2,3,4,5,6,7,8,9", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json digits = json::parse(r.out);
  EXPECT_EQ(digits["size"], "10000");
  EXPECT_EQ(digits["class_names"].size(), 10u);
  EXPECT_EQ(digits["source"], "idx");

  // Two datasets fit now: the server will not guess.
  r = Run("reader", {"top", "mnist_classifier", "--layer", "conv2"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(absl::StrContains(r.err, "INVALID_ARGUMENT")) << r.err;
  EXPECT_TRUE(absl::StrContains(r.err, "digits, strokes; name the one to use"))
      << r.err;
  r = Run("reader", {"top", "mnist_classifier", "--layer", "conv2", "--dataset",
                     "strokes", "--top_n", "3", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(json::parse(r.out)["dataset"], "strokes");

  // Only the owner (or an admin) deletes.
  r = Run("reader", {"dataset", "rm", "strokes"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(absl::StrContains(r.err, "PERMISSION_DENIED")) << r.err;
  for (const char* name : {"strokes", "digits"}) {
    r = Run("uploader", {"dataset", "rm", name});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_TRUE(absl::StartsWith(r.out, absl::StrCat("deleted ", name, ": ")))
        << r.out;
  }
  EXPECT_FALSE(fs::exists(Scratch() + "/datasets/strokes"));
  r = Run("reader", {"datasets", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(json::parse(r.out).size(), 0u) << r.out;
  r = Run("reader", {"top", "mnist_classifier", "--layer", "conv2"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(absl::StrContains(r.err, "FAILED_PRECONDITION")) << r.err;
  EXPECT_TRUE(absl::StrContains(r.err, "no datasets are hosted")) << r.err;
}

TEST_F(DatasetCliTest, BadUploadsAreRefusedWithTheirReason) {
  CommandResult r = Run("reader", {"dataset", "upload", "mine", Scratch() + "/pngs"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(absl::StrContains(r.err, "PERMISSION_DENIED")) << r.err;

  r = Run("uploader", {"dataset", "upload", "nothing", Scratch() + "/missing.npy"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(absl::StrContains(r.err, "does not exist")) << r.err;

  std::ofstream(Scratch() + "/notes.txt") << "not images";
  r = Run("uploader", {"dataset", "upload", "notes", Scratch() + "/notes.txt"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(absl::StrContains(r.err, "cannot tell the format")) << r.err;

  // --classes names the folder's classes anew; too few for its labels.
  r = Run("uploader", {"dataset", "upload", "few", Scratch() + "/pngs", "--classes",
                       "only_one"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(absl::StrContains(r.err, "labels: label 1 of image")) << r.err;
  EXPECT_TRUE(absl::StrContains(r.err, "out of range for the 1 class_names")) << r.err;

  r = Run("uploader", {"dataset", "upload", "../up", Scratch() + "/pngs"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(absl::StrContains(r.err, "header.name '../up'")) << r.err;

  r = Run("uploader", {"dataset", "frobnicate", "x"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_TRUE(absl::StrContains(r.err, "featviz dataset upload NAME PATH")) << r.err;
  r = Run("uploader", {"dataset", "rm", "x", "--classes", "a"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_FALSE(fs::exists(Scratch() + "/datasets/few"));
}

}  // namespace
}  // namespace featviz::testing
