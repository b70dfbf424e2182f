// A 4-band (RGB + NIR) model through the server's own code in process: the
// plan's display, the result's composite PNGs and band sheets, the preview,
// the protos, and the colour options that cannot apply to it.
#include <stdlib.h>

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "core/image.h"
#include "core/render.h"
#include "server/convert.h"
#include "server/engine/engine_types.h"
#include "server/engine/model_registry.h"

namespace featviz::server {
namespace {

namespace fs = std::filesystem;

class BandResultsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    char dir[] = "/tmp/featviz_bands_repo_XXXXXX";
    ASSERT_NE(mkdtemp(dir), nullptr);
    dir_ = dir;
    for (const char* file : {"multiband.pt", "multiband.card.json"}) {
      fs::copy_file(fs::path(FEATVIZ_TEST_MODELS_DIR) / file, fs::path(dir_) / file);
    }
    fs::copy_file(fs::path(FEATVIZ_MODELS_DIR) / "mnist_classifier.pt",
                  fs::path(dir_) / "mnist_classifier.pt");
    fs::copy_file(fs::path(FEATVIZ_MODELS_DIR) / "mnist_classifier.card.json",
                  fs::path(dir_) / "mnist_classifier.card.json");
    absl::StatusOr<ModelRegistryPtr> registry =
        ModelRegistry::Create(dir_, {c10::kCPU});
    ASSERT_TRUE(registry.ok()) << registry.status();
    registry_ = registry->release();
  }
  static void TearDownTestSuite() {
    delete registry_;
    registry_ = nullptr;
    fs::remove_all(dir_);
  }

  static v1::RenderRequest Request(const std::string& model,
                                   const std::string& objective) {
    v1::RenderRequest request;
    request.set_model(model);
    request.set_objective_text(objective);
    request.mutable_optimizer()->set_steps(8);
    request.set_seed(0);
    return request;
  }

  inline static std::string dir_;
  inline static ModelRegistry* registry_ = nullptr;
  Limits limits_;
};

TEST_F(BandResultsTest, PlansTheCardsCompositeAndBandNames) {
  absl::StatusOr<RenderPlan> plan =
      PlanRender(Request("multiband", "channel(conv2, 3)"), *registry_, limits_);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->options.param.channels, 4);
  ASSERT_TRUE(plan->display.shows_bands());
  EXPECT_EQ(plan->display.composite, (std::vector<int64_t>{0, 1, 2}));
  EXPECT_EQ(plan->display.names,
            (std::vector<std::string>{"red", "green", "blue", "nir"}));

  absl::StatusOr<RenderPlan> mnist = PlanRender(
      Request("mnist_classifier", "channel(conv2, 3)"), *registry_, limits_);
  ASSERT_TRUE(mnist.ok()) << mnist.status();
  EXPECT_FALSE(mnist->display.shows_bands());
}

TEST_F(BandResultsTest, RefusesGrayAndColourStimuliNamingTheChannels) {
  v1::RenderRequest gray = Request("multiband", "channel(conv2, 3)");
  gray.mutable_image()->set_color(v1::ImageSpec::COLOR_GRAY);
  const absl::Status g = PlanRender(gray, *registry_, limits_).status();
  EXPECT_EQ(g.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(
      g.message(), "COLOR_GRAY needs a model of 1 or 3 channels; model "
                   "multiband takes 4"))
      << g;
  v1::RenderRequest rgb = Request("multiband", "channel(conv2, 3)");
  rgb.mutable_image()->set_color(v1::ImageSpec::COLOR_RGB);
  const absl::Status c = PlanRender(rgb, *registry_, limits_).status();
  EXPECT_TRUE(absl::StrContains(c.message(), "model multiband takes 4-channel"))
      << c;
}

TEST_F(BandResultsTest, AcceptsAFourBandInitImageAndRefusesAThreeBandOne) {
  v1::RenderRequest request = Request("multiband", "channel(conv2, 3)");
  v1::Tensor* init = request.mutable_image()->mutable_init_image();
  init->set_dtype(v1::Tensor::DTYPE_FLOAT32);
  for (int64_t d : {4, 32, 32}) init->add_shape(d);
  init->set_data(std::string(4 * 32 * 32 * sizeof(float), '\0'));
  EXPECT_TRUE(PlanRender(request, *registry_, limits_).ok());
  init->clear_shape();
  for (int64_t d : {3, 32, 32}) init->add_shape(d);
  init->set_data(std::string(3 * 32 * 32 * sizeof(float), '\0'));
  const absl::Status status = PlanRender(request, *registry_, limits_).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(status.message(), "[4, 32, 32]")) << status;
}

TEST_F(BandResultsTest, ResultCarriesCompositePngsAndABandSheetPerImage) {
  v1::RenderRequest request = Request("multiband", "channel(conv2, 3)");
  request.mutable_image()->set_batch(2);
  request.mutable_output()->set_png(true);
  request.mutable_output()->set_tensor(true);
  absl::StatusOr<RenderPlan> plan = PlanRender(request, *registry_, limits_);
  ASSERT_TRUE(plan.ok()) << plan.status();
  absl::StatusOr<SharedModel> model = registry_->Resolve("multiband");
  ASSERT_TRUE(model.ok()) << model.status();
  absl::StatusOr<core::RenderResult> rendered =
      core::Render(**model, plan->objective, plan->options);
  ASSERT_TRUE(rendered.ok()) << rendered.status();
  absl::StatusOr<JobResult> result = MakeJobResult(*rendered, *plan, 0, 0);
  ASSERT_TRUE(result.ok()) << result.status();

  EXPECT_EQ(result->composite, (std::vector<int64_t>{0, 1, 2}));
  EXPECT_EQ(result->band_names.size(), 4u);
  ASSERT_EQ(result->png.size(), 2u);
  ASSERT_EQ(result->band_png.size(), 2u);
  absl::StatusOr<at::Tensor> picture = core::DecodePng(result->png[1]);
  ASSERT_TRUE(picture.ok()) << picture.status();
  EXPECT_EQ(picture->sizes(), (at::IntArrayRef{3, 32, 32}));
  absl::StatusOr<at::Tensor> sheet = core::DecodePng(result->band_png[1]);
  ASSERT_TRUE(sheet.ok()) << sheet.status();
  EXPECT_EQ(sheet->size(0), 3);
  EXPECT_EQ(sheet->size(2), 4 + 4 * (128 + 4));  // Four 128-pixel panels.
  EXPECT_GT(result->bytes(), static_cast<int64_t>(result->band_png[0].size()));

  const v1::RenderResult proto = ResultToProto(*result);
  EXPECT_EQ(proto.composite_size(), 3);
  EXPECT_EQ(proto.band_names(3), "nir");
  EXPECT_EQ(proto.band_png_size(), 2);
  EXPECT_EQ(proto.images().shape(1), 4);  // The tensor keeps every band.
}

TEST_F(BandResultsTest, PreviewShowsTheComposite) {
  core::ProgressEvent event;
  event.step = 1;
  event.images = at::rand({2, 4, 32, 32});
  absl::StatusOr<JobProgress> progress =
      MakeJobProgress(event, 8, /*preview_png=*/true, {0, 1, 2});
  ASSERT_TRUE(progress.ok()) << progress.status();
  absl::StatusOr<at::Tensor> preview = core::DecodePng(progress->preview_png);
  ASSERT_TRUE(preview.ok()) << preview.status();
  EXPECT_EQ(preview->size(0), 3);
  // Without the composite a 4-band preview cannot be drawn, and says why.
  absl::StatusOr<JobProgress> without = MakeJobProgress(event, 8, true, {});
  ASSERT_FALSE(without.ok());
  EXPECT_TRUE(absl::StrContains(without.status().message(), "4 bands"))
      << without.status();
}

TEST_F(BandResultsTest, ModelDescriptionNamesTheBands) {
  absl::StatusOr<ModelSummary> summary = registry_->Describe("multiband");
  ASSERT_TRUE(summary.ok()) << summary.status();
  const v1::Model model = ModelToProto(*summary);
  EXPECT_EQ(model.input().channels(), 4);
  ASSERT_EQ(model.input().band_names_size(), 4);
  EXPECT_EQ(model.input().band_names(3), "nir");
  EXPECT_EQ(model.input().composite_size(), 3);
}

}  // namespace
}  // namespace featviz::server
