// The circuit tools on hand-built models with known answers and on the real
// classifier and digits: datasets, activation maps, attribution (scores,
// direct weights, GradCAM), top dataset examples, detector circuits, drawn
// digits.
#include "core/analysis.h"

#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "core/dataset.h"
#include "core/digits.h"
#include "core/heatmap.h"
#include "core/image.h"
#include "tests/core/test_paths.h"

namespace featviz::core {
namespace {

namespace fs = std::filesystem;

ModelPtr LoadOrDie(const std::string& path) {
  absl::StatusOr<ModelPtr> model = Model::Load(path);
  EXPECT_TRUE(model.ok()) << model.status();
  return model.ok() ? *std::move(model) : nullptr;
}

const Dataset& Mnist() {
  static const DatasetPtr* dataset = [] {
    absl::StatusOr<std::vector<DatasetPtr>> all =
        LoadDatasetDir(testing::MnistDir());
    EXPECT_TRUE(all.ok()) << all.status();
    return new DatasetPtr(all.ok() && !all->empty() ? all->front() : nullptr);
  }();
  return **dataset;
}

fs::path TempDir(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() /
                       ("featviz_analysis_" + name + "_" +
                        std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

// ---------------------------------------------------------------- datasets

TEST(Dataset, MnistFolderIsOneLabelledDatasetNamedAfterIt) {
  const Dataset& mnist = Mnist();
  EXPECT_EQ(mnist.name, "mnist");
  EXPECT_EQ(mnist.source, "idx");
  EXPECT_EQ(mnist.images.sizes(), (std::vector<int64_t>{10000, 1, 28, 28}));
  EXPECT_EQ(mnist.class_names.size(), 10u);
  // The test set's first label is a 7 (the well-known first digit).
  EXPECT_EQ(mnist.labels[0].item<int64_t>(), 7);
  EXPECT_EQ(mnist.IndicesOfClass(7).front(), 0);
}

TEST(Dataset, PngFoldersPerClassAreLabelledInNumericOrder) {
  const fs::path root = TempDir("png");
  for (const std::string cls : {"2", "10", "cat"}) {
    fs::create_directories(root / "set" / cls);
    ASSERT_TRUE(WritePng(at::full({1, 5, 4}, 0.5), (root / "set" / cls / "a.png").string()).ok());
  }
  ASSERT_TRUE(WritePng(at::zeros({1, 5, 4}), (root / "set" / "loose.png").string()).ok());
  absl::StatusOr<std::vector<DatasetPtr>> all = LoadDatasetDir(root.string());
  ASSERT_TRUE(all.ok()) << all.status();
  ASSERT_EQ(all->size(), 1u);
  const Dataset& set = *all->front();
  EXPECT_EQ(set.name, "set");
  EXPECT_EQ(set.class_names, (std::vector<std::string>{"2", "10", "cat"}));
  EXPECT_EQ(set.images.sizes(), (std::vector<int64_t>{4, 1, 5, 4}));
  EXPECT_EQ(std::vector<int64_t>(set.labels.data_ptr<int64_t>(),
                                 set.labels.data_ptr<int64_t>() + 4),
            (std::vector<int64_t>{0, 1, 2, -1}));
}

TEST(Dataset, BadDirectoriesAreRefusedNamingTheProblem) {
  EXPECT_EQ(LoadDatasetDir("/nonexistent/featviz").status().code(),
            absl::StatusCode::kNotFound);
  const fs::path root = TempDir("bad");
  fs::create_directories(root / "empty");
  absl::StatusOr<DatasetPtr> empty = LoadDataset((root / "empty").string(), "e");
  EXPECT_EQ(empty.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(empty.status().message(), "holds no images")) << empty.status().message();

  fs::create_directories(root / "mixed");
  ASSERT_TRUE(WritePng(at::zeros({1, 4, 4}), (root / "mixed" / "a.png").string()).ok());
  ASSERT_TRUE(WritePng(at::zeros({1, 5, 4}), (root / "mixed" / "b.png").string()).ok());
  absl::StatusOr<DatasetPtr> mixed = LoadDataset((root / "mixed").string(), "m");
  EXPECT_EQ(mixed.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(mixed.status().message(), "b.png")) << mixed.status().message();
  // A directory of datasets skips the broken ones and keeps the rest.
  fs::create_directories(root / "good");
  ASSERT_TRUE(WritePng(at::zeros({1, 4, 4}), (root / "good" / "a.png").string()).ok());
  absl::StatusOr<std::vector<DatasetPtr>> all = LoadDatasetDir(root.string());
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), 1u);
  EXPECT_EQ(all->front()->name, "good");
}

TEST(Digits, DrawnDigitsAreDeterministicAndReadAsDigits) {
  absl::StatusOr<DatasetPtr> a = DrawDigits(20, 1);
  ASSERT_TRUE(a.ok()) << a.status();
  absl::StatusOr<DatasetPtr> b = DrawDigits(20, 1);
  ASSERT_TRUE(b.ok());
  EXPECT_TRUE(at::equal((*a)->images, (*b)->images));
  EXPECT_EQ((*a)->images.sizes(), (std::vector<int64_t>{200, 1, 28, 28}));
  // The classifier trained on real handwriting reads most of them right.
  ModelPtr model = LoadOrDie(testing::MnistModel());
  absl::StatusOr<Taps> taps = model->Forward((*a)->images, {});
  ASSERT_TRUE(taps.ok());
  const double accuracy =
      (taps->logits.argmax(1) == (*a)->labels).to(at::kFloat).mean().item<double>();
  EXPECT_GE(accuracy, 0.6) << "drawn digits should look like digits";
  EXPECT_EQ(DrawDigits(1, 0, "/nonexistent.ttf").status().code(),
            absl::StatusCode::kNotFound);
}

// ------------------------------------------------------------- activations

TEST(ComputeActivations, MapsAreTheTappedChannelsWithTheirStatistics) {
  ModelPtr model = LoadOrDie(testing::MnistModel());
  const at::Tensor images = Mnist().images.narrow(0, 0, 300);  // > one chunk
  absl::StatusOr<std::vector<LayerActivations>> maps =
      ComputeActivations(*model, images, {{"conv2", {3, 17}}, {"fc1", {}}});
  ASSERT_TRUE(maps.ok()) << maps.status();
  ASSERT_EQ(maps->size(), 2u);
  const LayerActivations& conv2 = (*maps)[0];
  EXPECT_EQ(conv2.maps.sizes(), (std::vector<int64_t>{300, 2, 8, 8}));
  absl::StatusOr<Taps> taps = model->Forward(images, {"conv2"});
  ASSERT_TRUE(taps.ok());
  const at::Tensor expected = taps->activations["conv2"].index_select(
      1, at::tensor({3, 17}, at::kLong));
  EXPECT_TRUE(at::allclose(conv2.maps, expected, 1e-5, 1e-5));
  EXPECT_NEAR(conv2.max[1].item<double>(), expected.select(1, 1).max().item<double>(), 1e-5);
  EXPECT_NEAR(conv2.mean[0].item<double>(), expected.select(1, 0).mean().item<double>(), 1e-5);
  EXPECT_NEAR(conv2.fraction_active[0].item<double>(),
              (expected.select(1, 0) > 0).to(at::kFloat).mean().item<double>(), 1e-6);
  EXPECT_EQ((*maps)[1].channels.size(), 64u);
  EXPECT_EQ((*maps)[1].maps.sizes(), (std::vector<int64_t>{300, 64}));
}

TEST(ComputeActivations, BadRequestsNameTheProblem) {
  ModelPtr model = LoadOrDie(testing::MnistModel());
  const at::Tensor images = Mnist().images.narrow(0, 0, 2);
  auto code = [&](const at::Tensor& x, const std::string& layer,
                  std::vector<int64_t> channels) {
    return ComputeActivations(*model, x, {{layer, channels}}).status();
  };
  EXPECT_EQ(code(images, "conv9", {}).code(), absl::StatusCode::kNotFound);
  absl::Status range = code(images, "conv2", {32});
  EXPECT_EQ(range.code(), absl::StatusCode::kOutOfRange);
  EXPECT_TRUE(absl::StrContains(range.message(), "channel 32 out of range for layer conv2")) << range.message();
  absl::Status shape = code(at::zeros({2, 3, 28, 28}), "conv2", {});
  EXPECT_EQ(shape.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(shape.message(), "[B, 1, 28, 28]")) << shape.message();
}

// ------------------------------------------------------------- attribution

TEST(Attribute, ScoresAndDirectWeightsOfAKnownLinearModel) {
  ModelPtr model = LoadOrDie(testing::TestModel("known_weights.pt"));
  // Conv channel k is w_k * x with w = (1, 2, 3); logit 0 weighs channel 0
  // by 1 and channel 1 by 0.5 at each of the 64 positions.
  const at::Tensor images =
      at::stack({at::ones({1, 8, 8}), at::full({1, 8, 8}, 0.5)});
  absl::StatusOr<Attribution> a =
      Attribute(*model, Logit(0), "conv", images, /*gradcam=*/false);
  ASSERT_TRUE(a.ok()) << a.status();
  // Image 1: 64 * (1*1, 0.5*2, 0); image 2 half that.
  EXPECT_TRUE(at::allclose(a->per_image,
                           at::tensor({64.f, 64.f, 0.f, 32.f, 32.f, 0.f}).view({2, 3}),
                           1e-4, 1e-4))
      << a->per_image;
  EXPECT_TRUE(at::allclose(a->scores, at::tensor({48.f, 48.f, 0.f}), 1e-4, 1e-4));
  ASSERT_TRUE(a->linear_path);
  EXPECT_TRUE(at::allclose(a->direct_weights, at::tensor({64.f, 32.f, 0.f}), 1e-4, 1e-4));
}

TEST(Attribute, AReluOnThePathIsNotLinear) {
  ModelPtr model = LoadOrDie(testing::TestModel("known_weights_relu.pt"));
  absl::StatusOr<Attribution> a = Attribute(
      *model, Logit(0), "conv", at::full({1, 1, 8, 8}, 0.25), /*gradcam=*/false);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_FALSE(a->linear_path);
  EXPECT_FALSE(a->direct_weights.defined());
  // relu(0.25 - 0.5) = 0: channel 0 contributes nothing to this image.
  EXPECT_NEAR(a->scores[0].item<double>(), 0.0, 1e-6);
  EXPECT_NEAR(a->scores[1].item<double>(), 64 * 0.5 * 0.5, 1e-4);
}

TEST(Attribute, GradCamPeaksWhereTheEvidenceIs) {
  ModelPtr model = LoadOrDie(testing::TestModel("known_weights.pt"));
  // Logit 1 reads channel 2; each image has one bright blob, placed off the
  // diagonal so that a transposed map would fail.
  at::Tensor images = at::zeros({2, 1, 8, 8});
  images[0][0][1][6] = 1;
  images[1][0][6][2] = 1;
  absl::StatusOr<Attribution> a =
      Attribute(*model, Logit(1), "conv", images, /*gradcam=*/true);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_EQ(a->gradcam.sizes(), (std::vector<int64_t>{2, 8, 8}));
  EXPECT_EQ(a->gradcam[0].argmax().item<int64_t>(), 1 * 8 + 6);
  EXPECT_EQ(a->gradcam[1].argmax().item<int64_t>(), 6 * 8 + 2);
  EXPECT_NEAR(a->gradcam.max().item<double>(), 1.0, 1e-6);
}

TEST(Attribute, RefusesTargetsItCannotAttribute) {
  ModelPtr model = LoadOrDie(testing::MnistModel());
  const at::Tensor images = Mnist().images.narrow(0, 0, 2);
  absl::Status diversity =
      Attribute(*model, Diversity("conv2"), "conv1", images, false).status();
  EXPECT_EQ(diversity.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(diversity.message(), "couples the images")) << diversity.message();
  // conv2 comes after conv1: channel(conv1, 0) does not depend on it.
  absl::Status order =
      Attribute(*model, Channel("conv1", 0), "conv2", images, false).status();
  EXPECT_EQ(order.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(order.message(), "does not depend on layer conv2")) << order.message();
  EXPECT_EQ(Attribute(*model, Logit(10), "conv2", images, false).status().code(),
            absl::StatusCode::kOutOfRange);
  absl::Status flat = Attribute(*model, Logit(1), "fc1", images, true).status();
  EXPECT_EQ(flat.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(flat.message(), "gradcam needs a layer with spatial maps")) << flat.message();
}

// --------------------------------------------------------------- examples

TEST(TopUnits, AreTheDatasetMaximaOfEachUnit) {
  ModelPtr model = LoadOrDie(testing::MnistModel());
  const at::Tensor images = Mnist().images.narrow(0, 0, 700);
  absl::StatusOr<at::Tensor> values = UnitValues(*model, images, "conv2", 256);
  ASSERT_TRUE(values.ok()) << values.status();
  ASSERT_EQ(values->sizes(), (std::vector<int64_t>{700, 32}));
  absl::StatusOr<std::vector<TopUnitExamples>> top = TopUnits(*values, {5, 30}, 6);
  ASSERT_TRUE(top.ok());
  // Brute force: each image's spatial max of channel 5, from a plain pass.
  absl::StatusOr<Taps> taps = model->Forward(images, {"conv2"});
  ASSERT_TRUE(taps.ok());
  const at::Tensor maxima =
      std::get<0>(taps->activations["conv2"].select(1, 5).flatten(1).max(1));
  const at::Tensor sorted = std::get<0>(maxima.sort(0, /*descending=*/true));
  const TopUnitExamples& unit = (*top)[0];
  EXPECT_EQ(unit.channel, 5);
  ASSERT_EQ(unit.indices.size(), 6u);
  for (int i = 0; i < 6; ++i) {
    EXPECT_NEAR(unit.values[i], sorted[i].item<float>(), 1e-5);
    EXPECT_NEAR(maxima[unit.indices[i]].item<float>(), unit.values[i], 1e-5);
  }
  EXPECT_EQ(TopUnits(*values, {32}, 3).status().code(), absl::StatusCode::kOutOfRange);
}

TEST(FindDetectors, TopChannelsByAttributionWithTheirMapOnACorrectExample) {
  ModelPtr model = LoadOrDie(testing::MnistModel());
  const Dataset& mnist = Mnist();
  std::vector<int64_t> sevens = mnist.IndicesOfClass(7);
  sevens.resize(32);
  const at::Tensor images =
      mnist.images.index_select(0, at::tensor(sevens, at::kLong));
  absl::StatusOr<ClassDetectors> found = FindDetectors(*model, images, 7, "conv2", 3);
  ASSERT_TRUE(found.ok()) << found.status();
  ASSERT_EQ(found->detectors.size(), 3u);
  absl::StatusOr<Attribution> a = Attribute(*model, Logit(7), "conv2", images, false);
  ASSERT_TRUE(a.ok());
  const at::Tensor best = std::get<1>(a->scores.topk(3));
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(found->detectors[i].channel, best[i].item<int64_t>());
    EXPECT_GT(found->detectors[i].score, 0) << "a detector supports its class";
  }
  EXPECT_GE(found->detectors[0].score, found->detectors[1].score);
  EXPECT_EQ(found->detectors[0].example_map.sizes(), (std::vector<int64_t>{8, 8}));
  absl::StatusOr<Taps> taps =
      model->Forward(images.narrow(0, found->example, 1), {});
  ASSERT_TRUE(taps.ok());
  EXPECT_EQ(taps->logits.argmax(1).item<int64_t>(), 7);
  EXPECT_EQ(FindDetectors(*model, images, 7, "conv2", 33).status().code(),
            absl::StatusCode::kOutOfRange);
}

TEST(Heatmap, OverlayIsRgbAtTheImageSizeAndBrightestAtThePeak) {
  const at::Tensor image = at::zeros({1, 28, 28});
  at::Tensor map = at::zeros({8, 8});
  map[2][5] = 3;
  const at::Tensor overlay = Overlay(image, map);
  ASSERT_EQ(overlay.sizes(), (std::vector<int64_t>{3, 28, 28}));
  const at::Tensor brightness = overlay.sum(0);
  const int64_t peak = brightness.argmax().item<int64_t>();
  EXPECT_NEAR(peak / 28, 2 * 3.5 + 1.75, 2.0);
  EXPECT_NEAR(peak % 28, 5 * 3.5 + 1.75, 2.0);
  // The colour map runs dark to bright.
  const at::Tensor ramp = Colourise(at::linspace(0, 1, 11)).sum(0);
  EXPECT_TRUE((ramp.diff() > 0).all().item<bool>()) << ramp;
}

}  // namespace
}  // namespace featviz::core
