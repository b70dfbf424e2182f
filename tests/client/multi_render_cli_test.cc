// End-to-end tests of `featviz render ... '*' --units` (a layer at once) and
// `featviz compare` against the real featviz-server, with the bundled MNIST
// classifier flat and as two versions of a model repository.
#include <unistd.h>

#include <cstdint>
#include <filesystem>
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
using nlohmann::json;

const char kCli[] = FEATVIZ_CLI_BINARY;
const char kServer[] = FEATVIZ_SERVER_BINARY;
const char kModels[] = FEATVIZ_MODELS_DIR;

std::string ScratchDir(const std::string& name) {
  const std::string dir = absl::StrCat(
      ::testing::TempDir(), "featviz_multi_render_test_", getpid(), "_", name);
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

// Width and height from a PNG's IHDR chunk (0, 0 when it is none).
std::pair<int64_t, int64_t> PngSize(const std::string& path) {
  const std::string bytes = ReadFileOrEmpty(path);
  if (bytes.size() < 24 || bytes.substr(1, 3) != "PNG") return {0, 0};
  auto be32 = [&](size_t at) {
    int64_t v = 0;
    for (size_t i = 0; i < 4; ++i) v = (v << 8) | static_cast<uint8_t>(bytes[at + i]);
    return v;
  };
  return {be32(16), be32(20)};
}

// A contact sheet of `rows` rows of cells `cell` pixels tall, each with a
// label row of 12 or 24 pixels (one or two font sizes), padding 4.
bool RowsOf(int64_t height, int64_t rows, int64_t cell) {
  if ((height - 4) % rows != 0) return false;
  const int64_t label = (height - 4) / rows - cell - 4;
  return label == 12 || label == 24 || label == 36 || label == 48;
}

class MultiRenderCliTest : public SharedServerTest {
 protected:
  static void SetUpTestSuite() {
    // The flat classifier, and the repository model "mnist" in two
    // versions: 1 the classifier, 2 with its last layer's weights halved
    // (the same conv features, other logits).
    repo_ = ScratchDir("repo");
    const fs::path models(kModels);
    fs::copy_file(models / "mnist_classifier.pt", fs::path(repo_) / "mnist_classifier.pt");
    fs::copy_file(models / "mnist_classifier.card.json",
                  fs::path(repo_) / "mnist_classifier.card.json");
    for (const char* version : {"1", "2"}) {
      const fs::path dir = fs::path(repo_) / "mnist" / version;
      fs::create_directories(dir);
      fs::copy_file(models / "mnist_classifier.card.json", dir / "model.card.json");
    }
    fs::copy_file(models / "mnist_classifier.pt",
                  fs::path(repo_) / "mnist" / "1" / "model.pt");
    absl::StatusOr<CommandResult> made = RunCommand(
        {"/usr/bin/python3", "-c",
         "import sys, torch\n"
         "m = torch.jit.load(sys.argv[1])\n"
         "with torch.no_grad():\n"
         "    m.fc2.weight.mul_(0.5)\n"
         "m.save(sys.argv[2])\n",
         (models / "mnist_classifier.pt").string(),
         (fs::path(repo_) / "mnist" / "2" / "model.pt").string()});
    if (!made.ok() || made->exit_code != 0) {
      start_error_ = absl::StrCat("cannot make mnist version 2: ",
                                  made.ok() ? made->err : made.status().ToString());
      return;
    }
    StartSharedServer(kServer, repo_, "multi_render_cli_test");
  }
  static void TearDownTestSuite() {
    StopSharedServer();
    fs::remove_all(repo_);
  }

  static CommandResult Run(std::vector<std::string> args) {
    args.insert(args.begin(), {kCli, "--server", server_->address()});
    absl::StatusOr<CommandResult> r = RunCommand(args);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : CommandResult{};
  }

  // A usage error: exit 2, nothing on stdout, `message` on stderr.
  void ExpectUsage(const std::vector<std::string>& args,
                   const std::string& message) {
    const CommandResult r = Run(args);
    EXPECT_EQ(r.exit_code, 2) << r.err;
    EXPECT_EQ(r.out, "");
    EXPECT_TRUE(absl::StrContains(r.err, message)) << r.err;
  }

  inline static std::string repo_;
};

TEST_F(MultiRenderCliTest, AStarWithoutUnitsRendersEveryChannelOnOneSheet) {
  const std::string dir = ScratchDir("all");
  const CommandResult r =
      Run({"render", "mnist_classifier", "channel(conv2, *)", "--steps", "16",
           "--seed", "0", "--out", dir + "/conv2.png", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json report = json::parse(r.out);
  EXPECT_EQ(report["layer"], "conv2");
  EXPECT_EQ(report["channels"], 32);
  ASSERT_EQ(report["units"].size(), 32u);
  ASSERT_EQ(report["requests"].size(), 1u);  // One batched request.
  EXPECT_EQ(report["requests"][0]["units"].size(), 32u);
  for (int64_t u = 0; u < 32; ++u) {
    const json& unit = report["units"][u];
    EXPECT_EQ(unit["unit"], u);
    EXPECT_EQ(unit["term"], absl::StrCat("channel(conv2, ", u, ", batch=", u, ")"));
    EXPECT_TRUE(unit["value"].is_number()) << unit;
    EXPECT_TRUE(unit["top_class"].is_number()) << unit;
  }
  // 32 cells of 28 pixels magnified 4x, in 6 columns and 6 rows.
  const auto [width, height] = PngSize(dir + "/conv2.png");
  EXPECT_EQ(width, 4 + 6 * (112 + 4));
  EXPECT_TRUE(RowsOf(height, 6, 112)) << height;
  std::printf("look at %s\n", (dir + "/conv2.png").c_str());
}

TEST_F(MultiRenderCliTest, UnitsRangeRendersThoseNeuronsWithTheOtherTerms) {
  const std::string dir = ScratchDir("range");
  const CommandResult r =
      Run({"render", "mnist_classifier", "neuron(fc1, *) - 0.01 * tv()",
           "--units", "0-15", "--steps", "16", "--seed", "1", "--out",
           dir + "/fc1.png", "--npy", dir + "/fc1.npy", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json report = json::parse(r.out);
  ASSERT_EQ(report["units"].size(), 16u);
  EXPECT_EQ(report["units"][15]["unit"], 15);
  EXPECT_TRUE(absl::StrContains(report["requests"][0]["objective"].get<std::string>(),
                                "- 0.01 * tv()"))
      << report["requests"][0]["objective"];
  const auto [width, height] = PngSize(dir + "/fc1.png");
  EXPECT_EQ(width, 4 + 4 * (112 + 4));
  EXPECT_TRUE(RowsOf(height, 4, 112)) << height;
  EXPECT_TRUE(absl::StrContains(ReadFileOrEmpty(dir + "/fc1.npy").substr(0, 128),
                                "'shape': (16, 1, 28, 28)"));
}

TEST_F(MultiRenderCliTest, UnitsListKeepsItsOrderAndPrintsASummary) {
  const std::string dir = ScratchDir("list");
  const CommandResult r =
      Run({"render", "mnist_classifier", "conv2:*", "--units", "9,3,5", "--steps",
           "8", "--out", dir + "/three.png", "--png_dir", dir + "/units"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(absl::StrContains(r.out, "3 units of conv2 in 1 request")) << r.out;
  EXPECT_EQ(PngSize(dir + "/three.png").first, 4 + 3 * (112 + 4));
  for (int unit : {9, 3, 5}) {
    EXPECT_EQ(PngSize(absl::StrCat(dir, "/units/unit_", unit, ".png")),
              (std::pair<int64_t, int64_t>{28, 28}));
  }
}

TEST_F(MultiRenderCliTest, ManyOtherTermsSplitTheUnitsAtTheTermLimit) {
  std::string objective = "channel(conv2, *)";
  for (int i = 0; i < 230; ++i) absl::StrAppend(&objective, " - 0.0001 * l1()");
  const CommandResult r = Run({"render", "mnist_classifier", objective, "--steps",
                               "4", "--out=", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json report = json::parse(r.out);
  EXPECT_EQ(report["units"].size(), 32u);
  ASSERT_EQ(report["requests"].size(), 2u);  // 26 units + 230 terms = 256.
  EXPECT_EQ(report["requests"][0]["units"].size(), 26u);
  EXPECT_EQ(report["requests"][1]["units"].size(), 6u);
  EXPECT_EQ(report["units"][31]["term"], "channel(conv2, 31, batch=5)");
}

TEST_F(MultiRenderCliTest, BadUnitsAndTemplatesArePreciseUsageErrors) {
  ExpectUsage({"render", "mnist_classifier", "channel(conv2, *)", "--units", "99-5"},
              "featviz: --units: range 99-5 runs backwards; write 5-99");
  ExpectUsage({"render", "mnist_classifier", "neuron(fc1, *)", "--units", "1000"},
              "--units: unit 1000 is out of range for layer fc1 with 64 channels "
              "(units 0-63)");
  ExpectUsage({"render", "mnist_classifier", "channel(conv2, *) + neuron(fc1, *)"},
              "the objective has 2 '*' (at columns 16, 33)");
  ExpectUsage({"render", "mnist_classifier", "logit(*)", "--units", "3"},
              "'*' in logit(*) (column 7) has no layer to take units of");
  ExpectUsage({"render", "mnist_classifier", "* - 0.01 * tv()"},
              "'*' at column 1 is not inside a term, so it names no layer");
  ExpectUsage({"render", "mnist_classifier", "channel(conv2, 5)", "--units", "3"},
              "--units needs an objective with '*' for the unit");
  ExpectUsage({"render", "mnist_classifier", "channel(conv9, *)"},
              "model mnist_classifier has no layer conv9 (layers: conv1, conv2, "
              "fc1, fc2)");
  ExpectUsage({"render", "mnist_classifier", "channel(conv2, *)", "--batch", "2"},
              "--batch does not apply to a render of a layer's units");
  ExpectUsage({"submit", "mnist_classifier", "channel(conv2, *)"},
              "works with featviz render");
}

TEST_F(MultiRenderCliTest, CompareTwoVersionsWritesTwoLabelledRowsAndJson) {
  const std::string dir = ScratchDir("compare");
  const CommandResult r =
      Run({"compare", "mnist/1", "mnist@2", "logit(3) + channel(conv2, 5)",
           "--steps", "16", "--out", dir + "/cmp.png", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json report = json::parse(r.out);
  ASSERT_EQ(report["models"].size(), 2u);
  EXPECT_EQ(report["models"][0]["label"], "mnist@1");
  EXPECT_EQ(report["models"][1]["label"], "mnist@2");
  EXPECT_NE(report["models"][0]["model_hash"], report["models"][1]["model_hash"]);
  EXPECT_TRUE(report["seed"].is_number());
  for (const json& m : report["models"]) {
    ASSERT_EQ(m["terms"].size(), 2u) << m;
    ASSERT_EQ(m["layers"].size(), 1u) << m;
    EXPECT_EQ(m["layers"][0]["layer"], "conv2");
    EXPECT_GE(m["layers"][0]["max"].get<double>(), m["layers"][0]["mean"].get<double>());
    EXPECT_EQ(m["top_class"].size(), 1u);
  }
  // Version 2 halves the last layer: the same seed gives other logits.
  EXPECT_NE(report["models"][0]["terms"][0]["final_value"],
            report["models"][1]["terms"][0]["final_value"]);
  EXPECT_EQ(report["files"]["out"], dir + "/cmp.png");
  // Two rows of one 28-pixel image magnified 10x to 280 (cells >= 256).
  const auto [width, height] = PngSize(dir + "/cmp.png");
  EXPECT_EQ(width, 4 + 280 + 4);
  EXPECT_TRUE(RowsOf(height, 2, 280)) << height;
  std::printf("look at %s\n", (dir + "/cmp.png").c_str());
}

TEST_F(MultiRenderCliTest, ComparePrintsATableOfValuesAndStatistics) {
  const std::string dir = ScratchDir("compare_text");
  const CommandResult r =
      Run({"compare", "mnist_classifier", "mnist", "channel(conv2, 5)", "--steps",
           "8", "--seed", "7", "--batch", "2", "--out", dir + "/c.png"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  for (const char* text :
       {"channel(conv2, 5), seed 7, 8 steps", "mnist_classifier@1", "mnist@2",
        "objective total", "top class", "conv2 mean", "conv2 max",
        "wrote "}) {
    EXPECT_TRUE(absl::StrContains(r.out, text)) << text << "\n" << r.out;
  }
  // Two images per model: two columns.
  EXPECT_EQ(PngSize(dir + "/c.png").first, 4 + 2 * (280 + 4));
}

TEST_F(MultiRenderCliTest, CompareRefusesAStarAndNamesAnUnknownModel) {
  ExpectUsage({"compare", "mnist@1", "mnist@2", "channel(conv2, *)"},
              "featviz compare renders one objective");
  ExpectUsage({"compare", "mnist@1", "channel(conv2, 5)"},
              "usage: featviz compare MODEL_A MODEL_B 'OBJECTIVE'");
  const CommandResult r =
      Run({"compare", "mnist@1", "mnist@9", "logit(1)", "--steps", "2", "--out="});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(absl::StrContains(r.err, "has no version '9'")) << r.err;
}

}  // namespace
}  // namespace featviz::testing
