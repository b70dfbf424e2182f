// `featviz units` end to end: the real server with the MNIST classifier and
// the MNIST test set, the CLI printing each unit's automatic label, and the
// units most selective for a digit across the layers.
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "absl/strings/match.h"
#include "tests/client/process.h"

namespace featviz::testing {
namespace {

using nlohmann::json;

class UnitsCliTest : public SharedServerTest {
 protected:
  static void SetUpTestSuite() {
    StartSharedServer(FEATVIZ_SERVER_BINARY, FEATVIZ_MODELS_DIR, "units_cli",
                      {"--dataset_dir", FEATVIZ_MNIST_DIR});
  }
  static void TearDownTestSuite() { StopSharedServer(); }

  static CommandResult Run(std::vector<std::string> args) {
    std::vector<std::string> argv = {FEATVIZ_CLI_BINARY, "--server",
                                     server_->address()};
    argv.insert(argv.end(), args.begin(), args.end());
    absl::StatusOr<CommandResult> result =
        RunCommand(argv, {}, absl::Minutes(10));
    EXPECT_TRUE(result.ok()) << result.status();
    return result.ok() ? *result : CommandResult{};
  }
};

TEST_F(UnitsCliTest, LabelsEveryLayerButTheLogits) {
  const CommandResult r = Run({"units", "mnist_classifier"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  for (const char* layer : {"conv1 of", "conv2 of", "fc1 of"}) {
    EXPECT_TRUE(absl::StrContains(r.out, layer)) << r.out;
  }
  EXPECT_FALSE(absl::StrContains(r.out, "fc2")) << r.out;
  EXPECT_TRUE(absl::StrContains(r.out, "CHANNEL  LABEL")) << r.out;
  EXPECT_TRUE(absl::StrContains(r.out, "% of its top 100")) << r.out;
}

TEST_F(UnitsCliTest, LabelListsTheUnitsMostSelectiveForADigit) {
  CommandResult r = Run({"units", "mnist_classifier", "--label", "7",
                         "--limit", "6"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(absl::StrContains(r.out, "units most selective for 7s")) << r.out;
  EXPECT_TRUE(absl::StrContains(r.out, "fires on 7s:")) << r.out;

  r = Run({"units", "mnist_classifier", "--label", "7", "--limit", "6",
           "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json doc = json::parse(r.out);
  EXPECT_EQ(doc["dataset"], "mnist");
  EXPECT_EQ(doc["top_n"], 100);
  ASSERT_EQ(doc["units"].size(), 6u);
  double previous = 1;
  for (const json& unit : doc["units"]) {
    const double share = unit["share"].get<double>();
    EXPECT_GT(share, 0);
    EXPECT_LE(share, previous);
    previous = share;
    bool has_7 = false;
    for (const json& c : unit["classes"]) has_7 |= c["class_index"] == 7;
    EXPECT_TRUE(has_7) << unit.dump();
    EXPECT_NE(unit["layer"], "fc2");
  }
}

TEST_F(UnitsCliTest, OneLayerAsJson) {
  const CommandResult r = Run({"units", "mnist_classifier", "--layer", "conv2",
                               "--top_n", "50", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json doc = json::parse(r.out);
  ASSERT_EQ(doc["layers"].size(), 1u);
  EXPECT_EQ(doc["layers"][0]["layer"], "conv2");
  ASSERT_EQ(doc["layers"][0]["units"].size(), 32u);
  const json& unit = doc["layers"][0]["units"][0];
  EXPECT_TRUE(absl::StrContains(unit["label"].get<std::string>(),
                                "% of its top 50"));
  EXPECT_LE(unit["attribution"].size(), 3u);
}

TEST_F(UnitsCliTest, BadValuesAreUsageOrNamedServerErrors) {
  CommandResult r = Run({"units", "mnist_classifier", "--layer", "conv2",
                         "--label", "10"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(absl::StrContains(r.err, "label: class 10 out of range")) << r.err;
  r = Run({"units", "mnist_classifier", "--layer", "conv2", "--label", "7",
           "--limit", "-5"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_TRUE(absl::StrContains(r.err, "--limit must be >= 0")) << r.err;
  r = Run({"units", "mnist_classifier", "--limit", "3"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_TRUE(absl::StrContains(r.err, "--limit needs --label")) << r.err;
  r = Run({"units", "mnist_classifier", "--layer", "conv9"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(absl::StrContains(r.err, "layer")) << r.err;
}

}  // namespace
}  // namespace featviz::testing
