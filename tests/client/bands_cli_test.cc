// End-to-end tests of a 4-band (RGB + NIR) model through the real
// featviz-server, the `featviz` CLI and `featviz-render`: the composite the
// card chooses, the band sheet beside it, and the options that cannot apply.
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "tests/client/process.h"

namespace featviz::testing {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

const char kCli[] = FEATVIZ_CLI_BINARY;
const char kServer[] = FEATVIZ_SERVER_BINARY;
const char kTestModels[] = FEATVIZ_TEST_MODELS_DIR;

std::string ScratchDir(const std::string& name) {
  const std::string dir = absl::StrCat(::testing::TempDir(),
                                       "featviz_bands_cli_test_", getpid(), "_", name);
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

// Width, height and colour type (0 gray, 2 RGB) from a PNG's IHDR chunk.
struct PngInfo {
  int64_t width = 0;
  int64_t height = 0;
  int color_type = -1;
};
PngInfo ReadPngInfo(const std::string& path) {
  const std::string bytes = ReadFileOrEmpty(path);
  PngInfo info;
  if (bytes.size() < 26 || bytes.substr(1, 3) != "PNG") return info;
  auto be32 = [&](size_t at) {
    int64_t v = 0;
    for (size_t i = 0; i < 4; ++i) v = (v << 8) | static_cast<uint8_t>(bytes[at + i]);
    return v;
  };
  info.width = be32(16);
  info.height = be32(20);
  info.color_type = static_cast<uint8_t>(bytes[25]);
  return info;
}

// featviz-render sits beside featviz in the build tree.
std::string RenderBinary() {
  return (fs::path(kCli).parent_path() / "featviz-render").string();
}

class BandsCliTest : public SharedServerTest {
 protected:
  static void SetUpTestSuite() {
    repo_ = ScratchDir("repo");
    for (const char* file : {"multiband.pt", "multiband.card.json"}) {
      fs::copy_file(fs::path(kTestModels) / file, fs::path(repo_) / file);
    }
    StartSharedServer(kServer, repo_, "bands_cli_test");
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

  inline static std::string repo_;
};

TEST_F(BandsCliTest, ModelsNameTheBandsAndTheComposite) {
  const CommandResult r = Run({"models", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json models = json::parse(r.out);
  ASSERT_EQ(models.size(), 1u) << r.out;
  EXPECT_EQ(models[0]["input"]["channels"], 4);
  EXPECT_EQ(models[0]["input"]["band_names"],
            json({"red", "green", "blue", "nir"}));
  EXPECT_EQ(models[0]["input"]["composite"], json({0, 1, 2}));
}

TEST_F(BandsCliTest, RenderWritesTheCompositeAndTheBandSheetBesideIt) {
  const std::string dir = ScratchDir("render");
  const CommandResult r =
      Run({"render", "multiband", "channel(conv2, 3)", "--steps", "32", "--seed",
           "0", "--out", dir + "/x.png", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json report = json::parse(r.out);
  EXPECT_EQ(report["image_shape"], json({1, 4, 32, 32}));
  EXPECT_EQ(report["bands"]["names"], json({"red", "green", "blue", "nir"}));
  EXPECT_EQ(report["bands"]["composite"], json({0, 1, 2}));
  EXPECT_EQ(report["files"]["out"], dir + "/x.png");
  EXPECT_EQ(report["files"]["bands"], dir + "/x.bands.png");

  // One 32x32 picture magnified 4x to 128 pixels, in RGB.
  const PngInfo sheet = ReadPngInfo(dir + "/x.png");
  EXPECT_EQ(sheet.width, 4 + 128 + 4);
  EXPECT_GT(sheet.height, 4 + 128 + 4);
  EXPECT_EQ(sheet.color_type, 2);
  // Four gray panels of 128 pixels side by side, labelled underneath.
  const PngInfo bands = ReadPngInfo(dir + "/x.bands.png");
  EXPECT_EQ(bands.width, 4 + 4 * (128 + 4));
  EXPECT_GT(bands.height, 4 + 128 + 4);
  std::printf("look at %s and %s\n", (dir + "/x.png").c_str(),
              (dir + "/x.bands.png").c_str());
}

TEST_F(BandsCliTest, ServerPngsAreCompositesWithABandSheetEach) {
  const std::string dir = ScratchDir("png_dir");
  const CommandResult r =
      Run({"render", "multiband", "logit(2, batch=0) + logit(4, batch=1)",
           "--batch", "2", "--steps", "16", "--seed", "1", "--progress_every",
           "8", "--out", dir + "/grid.png", "--png_dir", dir, "--preview_dir",
           dir + "/previews"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  for (int b = 0; b < 2; ++b) {
    const PngInfo picture = ReadPngInfo(absl::StrCat(dir, "/image_", b, ".png"));
    EXPECT_EQ(picture.width, 32);
    EXPECT_EQ(picture.height, 32);
    EXPECT_EQ(picture.color_type, 2);
    const PngInfo bands = ReadPngInfo(absl::StrCat(dir, "/image_", b, ".bands.png"));
    EXPECT_EQ(bands.width, 4 + 4 * (128 + 4));
  }
  // Two images: a band sheet with a row each.
  const PngInfo one = ReadPngInfo(dir + "/image_0.bands.png");
  const PngInfo both = ReadPngInfo(dir + "/grid.bands.png");
  EXPECT_EQ(both.width, one.width);
  EXPECT_GT(both.height, one.height + 128);
  const PngInfo preview = ReadPngInfo(dir + "/previews/step_00016.png");
  EXPECT_EQ(preview.color_type, 2);
  EXPECT_GT(preview.width, 64);
}

TEST_F(BandsCliTest, WatchingAPngOnlyJobWritesTheServersBandSheets) {
  const std::string dir = ScratchDir("watch");
  const CommandResult submitted =
      Run({"submit", "multiband", "channel(conv1, 2)", "--steps", "8", "--out="});
  ASSERT_EQ(submitted.exit_code, 0) << submitted.err;
  const std::string id(absl::StripAsciiWhitespace(submitted.out));
  const CommandResult watched = Run({"watch", id, "--out", dir + "/w.png"});
  ASSERT_EQ(watched.exit_code, 0) << watched.err;
  EXPECT_EQ(ReadPngInfo(dir + "/w.png").color_type, 2);
  EXPECT_EQ(ReadPngInfo(dir + "/w.bands.png").width, 4 + 4 * (128 + 4));
}

TEST_F(BandsCliTest, MacoRendersFourBandsFromTheOneOverFSpectrum) {
  const std::string dir = ScratchDir("maco");
  const CommandResult r =
      Run({"render", "multiband", "channel(conv2, 5)", "--parameterization",
           "maco", "--steps", "16", "--out", dir + "/m.png", "--transparency",
           dir + "/t.png", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(json::parse(r.out)["maco_magnitude"], "1/f");
  EXPECT_EQ(ReadPngInfo(dir + "/m.bands.png").width, 4 + 4 * (128 + 4));
  EXPECT_EQ(ReadPngInfo(dir + "/t.png").color_type, 2);
}

TEST_F(BandsCliTest, GrayStimuliAndPngReferencesAreRefusedNamingTheChannels) {
  const CommandResult gray =
      Run({"render", "multiband", "channel(conv2, 3)", "--gray", "--out="});
  EXPECT_EQ(gray.exit_code, 1);
  EXPECT_TRUE(absl::StrContains(
      gray.err, "COLOR_GRAY needs a model of 1 or 3 channels; model multiband "
                "takes 4"))
      << gray.err;

  // A PNG holds 1 or 3 channels: never a reference for 4 bands.
  const std::string dir = ScratchDir("reference");
  const CommandResult rendered =
      Run({"render", "multiband", "logit(1)", "--steps", "2", "--png_dir", dir,
           "--out="});
  ASSERT_EQ(rendered.exit_code, 0) << rendered.err;
  const CommandResult reference =
      Run({"render", "multiband", "inversion(conv1, reference(0))", "--reference",
           dir + "/image_0.png", "--out="});
  EXPECT_EQ(reference.exit_code, 1);
  EXPECT_TRUE(absl::StrContains(reference.err, "[3, 32, 32]")) << reference.err;
  EXPECT_TRUE(absl::StrContains(reference.err, "takes [4, 32, 32]")) << reference.err;
}

TEST(BandsRenderTool, FeatvizRenderWritesTheCompositeAndTheBands) {
  const std::string dir = ScratchDir("featviz_render");
  absl::StatusOr<CommandResult> r = RunCommand(
      {RenderBinary(), std::string(kTestModels) + "/multiband.pt",
       "channel(conv2, 7)", "--steps", "16", "--seed", "0", "--out",
       dir + "/r.png"});
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->exit_code, 0) << r->err;
  EXPECT_TRUE(absl::StrContains(r->out, dir + "/r.bands.png")) << r->out;
  EXPECT_EQ(ReadPngInfo(dir + "/r.png").color_type, 2);
  EXPECT_EQ(ReadPngInfo(dir + "/r.bands.png").width, 4 + 4 * (128 + 4));

  // A PNG cannot start a 4-band render.
  absl::StatusOr<CommandResult> init = RunCommand(
      {RenderBinary(), std::string(kTestModels) + "/multiband.pt", "logit(0)",
       "--steps", "2", "--init", dir + "/r.png", "--out", dir + "/i.png"});
  ASSERT_TRUE(init.ok()) << init.status();
  EXPECT_EQ(init->exit_code, 1);
  EXPECT_TRUE(absl::StrContains(init->err, "--init: a PNG holds 1 or 3 "
                                           "channels, but model multiband "
                                           "takes 4-channel images"))
      << init->err;
}

}  // namespace
}  // namespace featviz::testing
