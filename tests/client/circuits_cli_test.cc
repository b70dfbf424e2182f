// `featviz circuits` and `featviz atlas` end to end: the real server with
// the MNIST classifier and the MNIST test set, the CLI writing the figure
// and the site, and the site opened in headless Chromium.
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <regex>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/image.h"
#include "tests/client/process.h"

namespace featviz::testing {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

const char kCli[] = FEATVIZ_CLI_BINARY;
const char kServer[] = FEATVIZ_SERVER_BINARY;
const char kModels[] = FEATVIZ_MODELS_DIR;
const char kChromium[] = "/usr/bin/chromium";

std::string ScratchDir(const std::string& name) {
  const std::string dir = absl::StrCat(::testing::TempDir(), "featviz_circuits_",
                                       getpid(), "_", name);
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

class CircuitsCliTest : public SharedServerTest {
 protected:
  static void SetUpTestSuite() {
    StartSharedServer(kServer, kModels, "circuits_cli",
                      {"--dataset_dir", FEATVIZ_MNIST_DIR});
  }
  static void TearDownTestSuite() { StopSharedServer(); }

  static CommandResult Run(std::vector<std::string> args) {
    std::vector<std::string> argv = {kCli, "--server", server_->address()};
    argv.insert(argv.end(), args.begin(), args.end());
    absl::StatusOr<CommandResult> result = RunCommand(argv, {}, absl::Minutes(10));
    EXPECT_TRUE(result.ok()) << result.status();
    return result.ok() ? *result : CommandResult{};
  }
};

TEST_F(CircuitsCliTest, CircuitsWritesOneRowPerClassWithScoresAndMaps) {
  const std::string dir = ScratchDir("circuits");
  CommandResult r = Run({"circuits", "mnist_classifier", "--layer", "conv2", "--top_k",
                         "2", "--classes", "1,7", "--steps", "24",
                         "--examples_per_class", "16", "--out_dir", dir + "/"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(absl::StrContains(r.out, "class 1")) << r.out;
  // A folder given with its slash is not written with two.
  EXPECT_TRUE(absl::StrContains(r.out, "wrote " + dir + "/circuits.png, " +
                                           dir + "/class_<c>.png and " + dir +
                                           "/circuits.json in "))
      << r.out;
  EXPECT_TRUE(absl::StrContains(r.out, "class 7")) << r.out;
  const json doc = json::parse(ReadFileOrEmpty(dir + "/circuits.json"));
  EXPECT_EQ(doc["layer"], "conv2");
  EXPECT_EQ(doc["dataset"], "mnist");
  ASSERT_EQ(doc["classes"].size(), 2u);
  for (const json& c : doc["classes"]) {
    ASSERT_EQ(c["detectors"].size(), 2u);
    EXPECT_GE(c["detectors"][0]["score"].get<double>(),
              c["detectors"][1]["score"].get<double>());
    EXPECT_GE(c["detectors"][0]["channel"].get<int>(), 0);
    EXPECT_LT(c["detectors"][0]["channel"].get<int>(), 32);
  }
  // Each row: class picture, then picture and map for each detector, 28 px
  // cells magnified 4x: 5 cells wide, 1 high.
  absl::StatusOr<at::Tensor> row = core::ReadPng(dir + "/class_7.png");
  ASSERT_TRUE(row.ok()) << row.status();
  EXPECT_EQ(row->size(0), 3);
  EXPECT_GE(row->size(2), 5 * 112);
  EXPECT_LT(row->size(2), 6 * 112);
  absl::StatusOr<at::Tensor> all = core::ReadPng(dir + "/circuits.png");
  ASSERT_TRUE(all.ok());
  EXPECT_GE(all->size(1), 2 * 112);
  EXPECT_EQ(all->size(2), row->size(2));
}

TEST_F(CircuitsCliTest, DatasetsActivationsAttributeAndTopAnswerInJson) {
  const CommandResult datasets = Run({"datasets", "--json"});
  ASSERT_EQ(datasets.exit_code, 0) << datasets.err;
  const json list = json::parse(datasets.out);
  ASSERT_EQ(list.size(), 1u) << datasets.out;
  EXPECT_EQ(list[0]["name"], "mnist");

  const std::string dir = ScratchDir("rpc_commands");
  const CommandResult acts =
      Run({"activations", "mnist_classifier", "--layer", "conv2", "--channels",
           "5,7", "--indices", "0,1,2", "--npy", dir + "/maps.npy", "--json"});
  ASSERT_EQ(acts.exit_code, 0) << acts.err;
  const json a = json::parse(acts.out);
  EXPECT_EQ(a["shape"], json::array({3, 2, 8, 8})) << acts.out;
  EXPECT_EQ(a["stats"].size(), 2u);
  EXPECT_EQ(a["stats"][1]["channel"], 7);
  EXPECT_EQ(ReadFileOrEmpty(dir + "/maps.npy").substr(1, 5), "NUMPY");

  const CommandResult attr =
      Run({"attribute", "mnist_classifier", "logit(3)", "--layer", "conv2",
           "--label", "3", "--count", "8", "--json"});
  ASSERT_EQ(attr.exit_code, 0) << attr.err;
  const json scores = json::parse(attr.out)["scores"];
  ASSERT_EQ(scores.size(), 32u) << attr.out;
  EXPECT_GE(scores[0]["score"].get<double>(), scores[1]["score"].get<double>());

  const CommandResult table = Run({"attribute", "mnist_classifier", "logit(3)",
                                   "--layer", "conv2", "--top_k", "3"});
  ASSERT_EQ(table.exit_code, 0) << table.err;
  // A title line, the header, the top 3.
  EXPECT_EQ(std::count(table.out.begin(), table.out.end(), '\n'), 5) << table.out;

  const CommandResult top =
      Run({"top", "mnist_classifier", "--layer", "conv2", "--channels", "5",
           "--top_n", "4", "--out_dir", dir + "/top", "--json"});
  ASSERT_EQ(top.exit_code, 0) << top.err;
  const json t = json::parse(top.out);
  ASSERT_EQ(t["units"].size(), 1u);
  EXPECT_EQ(t["units"][0]["indices"].size(), 4u);
  EXPECT_EQ(t["files"].size(), 4u);
  EXPECT_EQ(ReadFileOrEmpty(dir + "/top/conv2_5_top1.png").substr(1, 3), "PNG");
  EXPECT_EQ(t["sheet"], dir + "/top/conv2_top.png");
}

// The ink of the label band under cell `column` of row `row` of a white
// sheet of `cell`-pixel cells, padding 4, label rows `label_h` high.
at::Tensor LabelBand(const at::Tensor& sheet, int64_t cell, int64_t label_h,
                     int64_t row, int64_t column) {
  return sheet.narrow(1, 4 + row * (cell + label_h + 4) + cell, label_h)
      .narrow(2, 4 + column * (cell + 4), cell)
      .lt(0.5)
      .all(0);
}

TEST_F(CircuitsCliTest, TopWritesALabelledContactSheetAndNamesIt) {
  const std::string dir = ScratchDir("top_sheet");
  const CommandResult one =
      Run({"top", "mnist_classifier", "--layer", "conv2", "--channels", "5",
           "--top_n", "4", "--out_dir", dir});
  ASSERT_EQ(one.exit_code, 0) << one.err;
  const std::string sheet_path = dir + "/conv2_top.png";
  EXPECT_TRUE(absl::StrContains(one.out, "wrote " + sheet_path + " ")) << one.out;
  absl::StatusOr<at::Tensor> sheet = core::ReadPng(sheet_path);
  ASSERT_TRUE(sheet.ok()) << sheet.status();
  // Four 28x28 digits magnified to 112 pixels in one row, a label under
  // each.
  EXPECT_EQ(sheet->size(2), 4 + 4 * (112 + 4));
  const int64_t label_h = sheet->size(1) - (4 + 112 + 4);
  EXPECT_TRUE(label_h == 12 || label_h == 24) << label_h;
  for (int64_t c = 0; c < 4; ++c) {
    EXPECT_GT(LabelBand(*sheet, 112, label_h, 0, c).sum().item<int64_t>(), 10)
        << "no label under example " << c;
  }

  // Two units: a row each.
  const CommandResult two =
      Run({"top", "mnist_classifier", "--layer", "conv2", "--channels", "5,7",
           "--top_n", "3", "--out_dir", dir, "--json"});
  ASSERT_EQ(two.exit_code, 0) << two.err;
  EXPECT_EQ(json::parse(two.out)["sheet"], sheet_path);
  sheet = core::ReadPng(sheet_path);
  ASSERT_TRUE(sheet.ok()) << sheet.status();
  EXPECT_EQ(sheet->size(2), 4 + 3 * (112 + 4));
  EXPECT_EQ((sheet->size(1) - 4) % 2, 0);
  const int64_t row_h = (sheet->size(1) - 4) / 2;
  for (int64_t r = 0; r < 2; ++r) {
    for (int64_t c = 0; c < 3; ++c) {
      EXPECT_GT(LabelBand(*sheet, 112, row_h - 116, r, c).sum().item<int64_t>(),
                10)
          << "no label under row " << r << " example " << c;
    }
  }
}

TEST_F(CircuitsCliTest, CircuitsRefusesALayerTheModelLacks) {
  CommandResult r = Run({"circuits", "mnist_classifier", "--layer", "conv9",
                         "--out", ScratchDir("bad")});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(absl::StrContains(r.err, "NOT_FOUND: layer:")) << r.err;
  CommandResult usage = Run({"circuits", "mnist_classifier", "--out", "x"});
  EXPECT_EQ(usage.exit_code, 2) << usage.err;
}

TEST_F(CircuitsCliTest, AtlasWritesASiteThatChromiumLoads) {
  const std::string dir = ScratchDir("atlas");
  // The old spellings (--examples, --out for a folder) still work.
  CommandResult r = Run({"atlas", "mnist_classifier", "--layers", "conv1,fc2",
                         "--steps", "16", "--examples", "4", "--out", dir});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(absl::StrContains(r.err, "--examples is deprecated here; use --top_n"))
      << r.err;
  EXPECT_TRUE(absl::StrContains(r.err, "use --out_dir")) << r.err;
  EXPECT_FALSE(absl::StrContains(r.err, "\r")) << "piped: no carriage returns";
  EXPECT_TRUE(absl::StrContains(r.out, "26 units in 2 layers")) << r.out;
  for (const std::string file :
       {"index.html", "conv1/index.html", "conv1/sheet.png", "conv1/unit_15.html",
        "conv1/unit_15.png", "conv1/unit_15_ex3.png", "fc2/unit_9.html",
        // Beside every picture (docs/trust.md): the examples' activation
        // maps, the top example accentuated and what that changed.
        "conv1/unit_15_ex3_map.png", "conv1/unit_15_accent.png",
        "conv1/unit_15_change.png", "fc2/unit_9_accent.png"}) {
    EXPECT_TRUE(fs::exists(dir + "/" + file)) << file;
  }
  const std::string unit = ReadFileOrEmpty(dir + "/fc2/unit_3.html");
  EXPECT_TRUE(absl::StrContains(unit, "neuron(fc2, 3)")) << unit;
  EXPECT_TRUE(absl::StrContains(unit, "<polyline")) << "loss curve";
  EXPECT_TRUE(absl::StrContains(unit, "Top dataset examples"));
  // Per unit: exemplars, label, reliability score, accentuated exemplar.
  for (const std::string page : {"conv1/unit_15.html", "fc2/unit_3.html"}) {
    const std::string html = ReadFileOrEmpty(dir + "/" + page);
    EXPECT_TRUE(absl::StrContains(html, "<h2>Label</h2>")) << page;
    EXPECT_TRUE(absl::StrContains(html, "of its top 100</p>")) << page;
    EXPECT_TRUE(absl::StrContains(html, "<h2>Path similarity</h2>")) << page;
    EXPECT_TRUE(std::regex_search(
        html, std::regex("class=\"badge (ok|flag)\"[^>]*>[01]\\.[0-9][0-9] "
                         "(reliable|flagged)</span>")))
        << page;
    EXPECT_TRUE(absl::StrContains(html, "<h2>Accentuated exemplar</h2>")) << page;
  }
  // fc2's neurons are the class logits: the label says which digit.
  EXPECT_TRUE(absl::StrContains(unit, "fires on 3s:")) << unit;
  EXPECT_TRUE(absl::StrContains(ReadFileOrEmpty(dir + "/conv1/index.html"),
                                " reliable; red: flagged"));

  if (access(kChromium, X_OK) != 0) {
    GTEST_SKIP() << "no " << kChromium << " (scripts/setup installs chromium)";
  }
  // Chromium runs the page's check after load and records how many of its
  // images decoded on <body data-images="LOADED/TOTAL">.
  for (const std::string page : {"index.html", "conv1/index.html", "fc2/unit_3.html"}) {
    absl::StatusOr<CommandResult> dom = RunCommand(
        {kChromium, "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync",
         absl::StrCat("--user-data-dir=", ScratchDir("chromium_profile")),
         "--virtual-time-budget=5000", "--dump-dom",
         absl::StrCat("file://", dir, "/", page)},
        {}, absl::Minutes(2));
    ASSERT_TRUE(dom.ok()) << dom.status();
    std::smatch match;
    const std::regex images("data-images=\"([0-9]+)/([0-9]+)\"");
    ASSERT_TRUE(std::regex_search(dom->out, match, images))
        << page << ": no image check in the DOM; stderr:\n" << dom->err;
    EXPECT_EQ(match[1], match[2]) << page << " has images that did not load";
    EXPECT_GT(std::stoi(match[2]), 0) << page;
  }
}

}  // namespace
}  // namespace featviz::testing
