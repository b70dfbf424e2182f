// Feature accentuation (RenderRequest.accentuate; docs/trust.md) end to end:
// the real featviz-server with the bundled MNIST classifier and the MNIST
// test set as its dataset directory.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/mnist.h"
#include "core/model.h"
#include "featviz/v1/featviz.grpc.pb.h"
#include "tests/server/server_process.h"
#include "tests/server/shared_server.h"
#include "tests/server/test_client.h"

namespace featviz::testing {
namespace {

using grpc::StatusCode;

// What docs/trust.md ("Feature accentuation") promises on this model, with
// margin beyond what was measured there with these requests (pixels: x2.84
// at distance 0.139; conv1: x2.43 at 0.141; over the first 32 digits as
// seeds, x1.25 at the least and 0.162 at the most): the accentuated picture
// raises the unit by at least this
// factor while its RMS pixel distance from the seed stays below this bound,
// with the default weight, steps and learning rate.
constexpr double kMinFactor = 1.5;
constexpr double kMaxPixelDistance = 0.2;

class AccentuationServiceTest : public SharedServerTest<AccentuationServiceTest> {
 public:
  static std::vector<std::string> ServerFlags() { return MnistServerFlags(); }
};

// The unit and its seed, by rule rather than by hand: the conv2 channel
// with the highest median response over the first 64 test digits (conv2 is
// taken before its ReLU, so most channels are negative on most digits, and
// a factor needs a positive start), seeded with the digit at that median (a
// moderate response, with room to grow and something in the image to grow
// from).
struct Unit {
  int64_t channel = 0;
  int64_t image = 0;
  std::string Text() const { return absl::StrCat("channel(conv2, ", channel, ")"); }
};

Unit ModerateUnit() {
  absl::StatusOr<core::ModelPtr> model =
      core::Model::Load(FEATVIZ_MODELS_DIR "/mnist_classifier.pt");
  EXPECT_TRUE(model.ok()) << model.status();
  absl::StatusOr<core::LabelledImages> digits =
      core::LoadMnistTestSet(FEATVIZ_MNIST_DIR);
  EXPECT_TRUE(digits.ok()) << digits.status();
  if (!model.ok() || !digits.ok()) return {};
  at::NoGradGuard no_grad;
  absl::StatusOr<core::Taps> taps =
      (*model)->Forward(digits->images.narrow(0, 0, 64), {"conv2"});
  EXPECT_TRUE(taps.ok()) << taps.status();
  if (!taps.ok()) return {};
  // [64, channels]: each channel's spatial mean on each digit.
  const at::Tensor means = taps->activations.at("conv2").flatten(2).mean(2);
  const at::Tensor sorted = std::get<0>(means.sort(0));
  Unit unit;
  unit.channel = sorted[32].argmax().item<int64_t>();
  const at::Tensor column = means.select(1, unit.channel);
  unit.image = std::get<1>(column.sort(0))[32].item<int64_t>();
  return unit;
}

v1::RenderRequest Accentuate(const Unit& unit, const std::string& layer,
                             double weight) {
  v1::RenderRequest request = TextRequest(unit.Text(), 0);
  request.set_seed(3);
  v1::Accentuation* accentuate = request.mutable_accentuate();
  accentuate->mutable_image()->mutable_dataset_image()->set_index(unit.image);
  accentuate->set_layer(layer);
  accentuate->set_weight(weight);
  return request;
}

v1::RenderRequest Accentuate(int64_t index, const std::string& layer,
                             double weight) {
  return Accentuate(Unit{2, index}, layer, weight);
}

// The pixel distance the server reports, measured again from the picture
// and the seed as the dataset holds it.
double Distance(const std::vector<float>& picture, const at::Tensor& seed) {
  const at::Tensor p = at::tensor(picture).view_as(seed);
  return (p - seed).pow(2).mean().sqrt().item<double>();
}

TEST_F(AccentuationServiceTest, RaisesTheUnitWhileStayingCloseToTheSeedPixels) {
  const Unit unit = ModerateUnit();
  absl::StatusOr<core::LabelledImages> digits =
      core::LoadMnistTestSet(FEATVIZ_MNIST_DIR);
  ASSERT_TRUE(digits.ok()) << digits.status();
  const at::Tensor seed = digits->images[unit.image];

  v1::RenderRequest request = Accentuate(unit, "", 0);
  request.mutable_image()->set_batch(2);
  RenderOutcome outcome = RenderAll(*stub_, request);
  ASSERT_TRUE(outcome.status.ok()) << outcome.status.error_message();
  ASSERT_TRUE(outcome.result.has_value());
  const v1::RenderResult& result = *outcome.result;
  // It started from the seed, in the parameterisation that can, with the
  // accentuation's own defaults.
  EXPECT_EQ(result.parameterization(), v1::PARAMETERIZATION_FFT);
  EXPECT_EQ(result.steps(), 64);
  EXPECT_TRUE(absl::StrContains(
      result.objective(), absl::StrCat("- 4 * l2(dataset(", unit.image, "))")))
      << result.objective();
  ASSERT_EQ(result.accentuation_size(), 2);
  const std::vector<float> images = Floats(result.images());
  for (int b = 0; b < 2; ++b) {
    const v1::AccentuationOutcome& a = result.accentuation(b);
    SCOPED_TRACE(::testing::Message()
                 << unit.Text() << " from image " << unit.image << ", picture "
                 << b << ": unit " << a.seed_value() << " -> " << a.value()
                 << ", distance " << a.pixel_distance());
    ASSERT_GT(a.seed_value(), 0);
    EXPECT_GE(a.value() / a.seed_value(), kMinFactor);
    EXPECT_LE(a.pixel_distance(), kMaxPixelDistance);
    const std::vector<float> picture(images.begin() + b * 784,
                                     images.begin() + (b + 1) * 784);
    EXPECT_NEAR(a.pixel_distance(), Distance(picture, seed), 1e-4);
  }
}

TEST_F(AccentuationServiceTest, RaisesTheUnitWhileStayingCloseInALayer) {
  const Unit unit = ModerateUnit();
  RenderOutcome outcome = RenderAll(*stub_, Accentuate(unit, "conv1", 0));
  ASSERT_TRUE(outcome.status.ok()) << outcome.status.error_message();
  ASSERT_TRUE(outcome.result.has_value());
  EXPECT_TRUE(absl::StrContains(
      outcome.result->objective(),
      absl::StrCat("+ 4 * inversion_l2(conv1, dataset(", unit.image, "))")))
      << outcome.result->objective();
  ASSERT_EQ(outcome.result->accentuation_size(), 1);
  const v1::AccentuationOutcome& a = outcome.result->accentuation(0);
  SCOPED_TRACE(::testing::Message()
               << unit.Text() << " from image " << unit.image << ": unit "
               << a.seed_value() << " -> " << a.value() << ", distance "
               << a.pixel_distance());
  ASSERT_GT(a.seed_value(), 0);
  EXPECT_GE(a.value() / a.seed_value(), kMinFactor);
  EXPECT_LE(a.pixel_distance(), kMaxPixelDistance);
}

TEST_F(AccentuationServiceTest, StartsFromARequestTensorToo) {
  absl::StatusOr<core::LabelledImages> digits =
      core::LoadMnistTestSet(FEATVIZ_MNIST_DIR);
  ASSERT_TRUE(digits.ok()) << digits.status();
  const at::Tensor seed = digits->images[7].contiguous();
  v1::RenderRequest request = Accentuate(0, "", 0);
  request.mutable_optimizer()->set_steps(8);
  request.mutable_accentuate()->mutable_image()->set_request_index(0);
  *request.add_references() = FloatTensor(
      {1, 28, 28}, std::vector<float>(seed.data_ptr<float>(),
                                      seed.data_ptr<float>() + 784));
  RenderOutcome outcome = RenderAll(*stub_, request);
  ASSERT_TRUE(outcome.status.ok()) << outcome.status.error_message();
  ASSERT_EQ(outcome.result->accentuation_size(), 1);
  EXPECT_TRUE(absl::StrContains(outcome.result->objective(),
                                "l2(reference(0))"))
      << outcome.result->objective();
  EXPECT_LT(outcome.result->accentuation(0).pixel_distance(), 0.1);

  // Another seed is another job, never the cached one.
  v1::RenderRequest other = request;
  const at::Tensor seed2 = digits->images[8].contiguous();
  *other.mutable_references(0) = FloatTensor(
      {1, 28, 28}, std::vector<float>(seed2.data_ptr<float>(),
                                      seed2.data_ptr<float>() + 784));
  RenderOutcome second = RenderAll(*stub_, other);
  ASSERT_TRUE(second.status.ok()) << second.status.error_message();
  EXPECT_NE(Floats(second.result->images()), Floats(outcome.result->images()));
}

TEST_F(AccentuationServiceTest, AnOrdinaryRenderReportsNoAccentuation) {
  v1::RenderRequest request = TextRequest("channel(conv2, 2)", 4);
  request.set_seed(1);
  RenderOutcome outcome = RenderAll(*stub_, request);
  ASSERT_TRUE(outcome.status.ok()) << outcome.status.error_message();
  EXPECT_EQ(outcome.result->accentuation_size(), 0);
}

TEST_F(AccentuationServiceTest, RefusesHostileWeightsNamingTheField) {
  for (double weight : {std::nan(""), std::numeric_limits<double>::infinity(),
                        -std::numeric_limits<double>::infinity(), -1.0, 1e300,
                        1e6 + 1}) {
    SCOPED_TRACE(weight);
    RenderOutcome outcome = RenderAll(*stub_, Accentuate(3, "", weight));
    ExpectError(outcome.status, StatusCode::INVALID_ARGUMENT,
                "accentuate.weight");
  }
  // The largest weight allowed is a weight like any other.
  v1::RenderRequest largest = Accentuate(3, "", 1e6);
  largest.mutable_optimizer()->set_steps(2);
  EXPECT_TRUE(RenderAll(*stub_, largest).status.ok());
}

TEST_F(AccentuationServiceTest, RefusesWhatItCannotStartFromNamingTheField) {
  v1::RenderRequest no_image = Accentuate(3, "", 0);
  no_image.mutable_accentuate()->clear_image();
  ExpectError(RenderAll(*stub_, no_image).status, StatusCode::INVALID_ARGUMENT,
              "accentuate.image");

  v1::RenderRequest negative = Accentuate(-1, "", 0);
  ExpectError(RenderAll(*stub_, negative).status, StatusCode::INVALID_ARGUMENT,
              "accentuate.image.dataset_image.index");

  ExpectError(RenderAll(*stub_, Accentuate(20000, "", 0)).status,
              StatusCode::OUT_OF_RANGE, "accentuate.image");

  v1::RenderRequest tensor = Accentuate(0, "", 0);
  tensor.mutable_accentuate()->mutable_image()->set_request_index(1);
  *tensor.add_references() =
      FloatTensor({1, 28, 28}, std::vector<float>(784, 0.5f));
  ExpectError(RenderAll(*stub_, tensor).status, StatusCode::OUT_OF_RANGE,
              "accentuate.image.request_index 1");

  std::vector<float> bright(784, 0.5f);
  bright[17] = 2.0f;
  *tensor.mutable_references(0) = FloatTensor({1, 28, 28}, bright);
  tensor.mutable_accentuate()->mutable_image()->set_request_index(0);
  ExpectError(RenderAll(*stub_, tensor).status, StatusCode::INVALID_ARGUMENT,
              "accentuate.image reference(0) must hold values in [0, 1]");

  v1::RenderRequest unknown = Accentuate(3, "conv9", 0);
  ExpectError(RenderAll(*stub_, unknown).status, StatusCode::INVALID_ARGUMENT,
              "accentuate.layer");

  v1::RenderRequest maco = Accentuate(3, "", 0);
  maco.mutable_image()->set_parameterization(v1::PARAMETERIZATION_MACO);
  ExpectError(RenderAll(*stub_, maco).status, StatusCode::INVALID_ARGUMENT,
              "PARAMETERIZATION_MACO");

  v1::RenderRequest init = Accentuate(3, "", 0);
  *init.mutable_image()->mutable_init_image() =
      FloatTensor({1, 28, 28}, std::vector<float>(784, 0.5f));
  ExpectError(RenderAll(*stub_, init).status, StatusCode::INVALID_ARGUMENT,
              "image.init_image");

  v1::RenderRequest resized = Accentuate(3, "", 0);
  resized.mutable_image()->set_size(56);
  ExpectError(RenderAll(*stub_, resized).status, StatusCode::INVALID_ARGUMENT,
              "image.size");

  v1::RenderRequest no_unit = Accentuate(3, "", 0);
  no_unit.set_objective_text("layer(conv2)");
  ExpectError(RenderAll(*stub_, no_unit).status, StatusCode::INVALID_ARGUMENT,
              "a unit to accentuate");
}

TEST_F(AccentuationServiceTest, ResolvesAPixelReferenceInTheObjective) {
  v1::RenderRequest request =
      TextRequest("channel(conv2, 5) - 2 * l2(dataset(mnist, 4))", 4);
  request.set_seed(1);
  RenderOutcome outcome = RenderAll(*stub_, request);
  ASSERT_TRUE(outcome.status.ok()) << outcome.status.error_message();
  ASSERT_EQ(outcome.result->terms_size(), 2);
  EXPECT_GT(outcome.result->terms(1).final_value(), 0);

  request.set_objective_text("channel(conv2, 5) - 2 * l2(dataset(mnist, 20000))");
  ExpectError(RenderAll(*stub_, request).status, StatusCode::OUT_OF_RANGE,
              "l2(dataset(mnist, 20000))");
}

}  // namespace
}  // namespace featviz::testing
