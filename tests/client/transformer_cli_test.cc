// Transformers and other token-layer models through the server (issue 24):
// a scripted and a traced ViT (nn.MultiheadAttention without and with
// weights), a ViT of nn.TransformerEncoderLayer, an MLP-mixer and a 4-band
// model are
// uploaded with the CLI to a real featviz-server, listed with their token
// layers, and rendered by token-layer objectives; bad token terms are
// refused with the layer's shape named. The models are built by
// tests/models/make_transformer_models.py.
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

constexpr char kUploader[] = "uploader-vit-0123456789-token";

std::string Scratch() {
  static const std::string dir = [] {
    const std::string d = absl::StrCat(::testing::TempDir(),
                                       "featviz_transformer_cli_", getpid());
    fs::remove_all(d);
    fs::create_directories(d + "/repo");
    std::ofstream(d + "/tokens") << kUploader << " lab uploader\n";
    std::ofstream(d + "/uploader") << kUploader << "\n";
    return d;
  }();
  return dir;
}

std::string TestModel(const std::string& file) {
  return std::string(FEATVIZ_TEST_MODELS_DIR) + "/" + file;
}

class TransformerCliTest : public SharedServerTest {
 protected:
  static void SetUpTestSuite() {
    StartSharedServer(FEATVIZ_SERVER_BINARY, Scratch() + "/repo",
                      "transformer_cli",
                      {"--tokens_file=" + Scratch() + "/tokens"});
  }
  static void TearDownTestSuite() { StopSharedServer(); }

  static CommandResult Run(std::vector<std::string> args) {
    args.insert(args.begin(), {"--server", server_->address(), "--token_file",
                               Scratch() + "/uploader"});
    args.insert(args.begin(), FEATVIZ_CLI_BINARY);
    absl::StatusOr<CommandResult> result = RunCommand(args);
    EXPECT_TRUE(result.ok()) << result.status();
    return result.ok() ? *result : CommandResult{};
  }

  // Uploads a test model (its card beside it travels with it) once.
  static void Upload(const std::string& stem) {
    CommandResult r =
        Run({"upload", TestModel(stem + ".pt"), "--name", stem, "--json"});
    ASSERT_EQ(r.exit_code, 0) << stem << ": " << r.err;
  }
};

TEST_F(TransformerCliTest, EveryTransformerUploadsListsAndRenders) {
  struct Case {
    const char* stem;
    const char* mlp;  // A token layer: the MLP's expansion, 128 features.
    const char* attention;
  };
  for (const Case& c : std::vector<Case>{
           {"vit_scripted", "blocks.0.mlp.0", "blocks.1.attn"},
           {"vit_traced", "blocks.0.mlp.0", "blocks.1.attn"},
           {"vit_encoder_layer", "encoder.layers.0.linear1",
            "encoder.layers.1.self_attn"},
           {"mixer", "blocks.0.channel_mix.mlp.0", ""}}) {
    SCOPED_TRACE(c.stem);
    Upload(c.stem);
    CommandResult r = Run({"layers", c.stem, "--json"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    bool seen = false;
    for (const nlohmann::json& layer : nlohmann::json::parse(r.out)) {
      if (layer["path"] != c.mlp) continue;
      seen = true;
      EXPECT_EQ(layer["layout"], "tokens") << layer.dump();
      EXPECT_EQ(layer["channels"], 128) << layer.dump();
      EXPECT_EQ(layer["grid"], nlohmann::json({4, 4})) << layer.dump();
    }
    EXPECT_TRUE(seen) << r.out;

    r = Run({"layers", c.stem});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_TRUE(absl::StrContains(r.out, "4x4 patches")) << r.out;

    const std::string objective =
        absl::StrCat("channel(", c.mlp, ", 100) + neuron(", c.mlp, ", 7, 2, 1)",
                     *c.attention ? absl::StrCat(" + channel(", c.attention,
                                                 ", 60, tokens=patches)")
                                  : std::string());
    r = Run({"render", c.stem, objective, "--steps", "8", "--batch", "2",
             "--json", "--out", Scratch() + "/" + c.stem + ".png"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const nlohmann::json report = nlohmann::json::parse(r.out);
    EXPECT_TRUE(fs::exists(Scratch() + "/" + c.stem + ".png"));
    EXPECT_FALSE(report.dump().empty());
  }
}

TEST_F(TransformerCliTest, AFourBandModelUploadsAndRendersItsCompositeAndBands) {
  Upload("multiband");
  const std::string out = Scratch() + "/multiband.png";
  CommandResult r = Run({"render", "multiband", "conv2:3", "--steps", "8",
                         "--batch", "2", "--out", out, "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(fs::exists(out));
  EXPECT_TRUE(fs::exists(Scratch() + "/multiband.bands.png"));
  const nlohmann::json report = nlohmann::json::parse(r.out);
  EXPECT_EQ(report["image_shape"], nlohmann::json({2, 4, 32, 32})) << r.out;
  EXPECT_EQ(report["bands"]["names"],
            nlohmann::json({"red", "green", "blue", "nir"}));
}

// The small ViT trained on the coloured digits (tests/models/colour_vit.pt),
// uploaded and rendered with the server's defaults: every class picture is
// its class at p >= 0.9.
TEST_F(TransformerCliTest, TheTrainedVitsClassPicturesReachPointNine) {
  CommandResult r = Run({"upload",
                         std::string(FEATVIZ_SOURCE_TESTS_DIR) +
                             "/models/colour_vit.pt",
                         "--name", "colour_vit", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::string objective;
  for (int c = 0; c < 10; ++c) {
    absl::StrAppend(&objective, c > 0 ? " + " : "", "logit(", c, ", batch=", c,
                    ")");
  }
  r = Run({"render", "colour_vit", objective, "--batch", "10", "--seed", "0",
           "--json", "--out", Scratch() + "/colour_vit.png"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const nlohmann::json report = nlohmann::json::parse(r.out);
  for (int c = 0; c < 10; ++c) {
    EXPECT_GE(report["probs"][c][c].get<double>(), 0.9) << "class " << c;
  }
}

TEST_F(TransformerCliTest, BadTokenTermsNameTheLayerAndItsShape) {
  Upload("vit_scripted");
  struct Case {
    const char* objective;
    const char* phrases[2];
  };
  for (const Case& c : std::vector<Case>{
           {"channel(blocks.0.mlp.0, 128)", {"OUT_OF_RANGE", "128 channels"}},
           {"neuron(blocks.0.mlp.0, 5, 17)",
            {"token 17 out of range", "[1, 17, 128]"}},
           {"neuron(blocks.0.mlp.0, 5, 4, 0)", {"OUT_OF_RANGE", "4x4 patches"}},
           {"neuron(patch_embed, 5, 3)", {"INVALID_ARGUMENT", "not a token layer"}},
           {"channel(patch_embed, 1, tokens=cls)",
            {"INVALID_ARGUMENT", "needs a token layer"}},
           {"direction(blocks.0.mlp.0, [1, 2])", {"INVALID_ARGUMENT", "128 channels"}},
           {"channel(blocks.0.mlp.0, 1, tokens=first)",
            {"INVALID_ARGUMENT", "all, cls or patches"}}}) {
    CommandResult r = Run({"render", "vit_scripted", c.objective, "--steps", "2"});
    EXPECT_EQ(r.exit_code, 1) << c.objective << ": " << r.out;
    for (const char* phrase : c.phrases) {
      EXPECT_TRUE(absl::StrContains(r.err, phrase))
          << c.objective << ": " << r.err;
    }
    EXPECT_FALSE(absl::StrContains(r.err, "INTERNAL")) << r.err;
  }
}

}  // namespace
}  // namespace featviz::testing
