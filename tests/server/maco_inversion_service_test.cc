// MaCo renders (with their transparency maps) and feature inversion /
// caricature objectives end to end: the real featviz-server with the MNIST
// classifier and the MNIST test set as its dataset directory.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <cmath>
#include <memory>

#include "absl/strings/match.h"
#include "core/image.h"
#include "core/mnist.h"
#include "featviz/v1/featviz.grpc.pb.h"
#include "tests/server/server_process.h"
#include "tests/server/shared_server.h"
#include "tests/server/test_client.h"

namespace featviz::testing {
namespace {

using grpc::StatusCode;

class MacoInversionServiceTest : public SharedServerTest<MacoInversionServiceTest> {
 public:
  static std::vector<std::string> ServerFlags() { return MnistServerFlags(); }
};

float Cosine(const std::vector<float>& a, const std::vector<float>& b) {
  double dot = 0, na = 0, nb = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    dot += a[i] * b[i];
    na += a[i] * a[i];
    nb += b[i] * b[i];
  }
  return static_cast<float>(dot / std::sqrt(na * nb));
}

// The default parameterisation by model kind (docs/quality.md): a
// one-channel model on a server hosting one one-channel dataset renders
// with MaCo from it, at MaCo's learning rate, when the request leaves the
// choice open; a request that names FFT, a decay or a start image gets FFT.
TEST_F(MacoInversionServiceTest, AnOpenRequestForAGrayModelIsMacoFromTheDataset) {
  v1::RenderRequest open = TextRequest("logit(3)", 192);
  open.set_seed(2);
  RenderOutcome outcome = RenderAll(*stub_, open);
  ASSERT_TRUE(outcome.status.ok()) << outcome.status.error_message();
  ASSERT_TRUE(outcome.result.has_value());
  EXPECT_EQ(outcome.result->maco_magnitude(), "dataset mnist (2000 images)");
  EXPECT_EQ(outcome.result->transparency_png_size(), 1);
  const std::vector<float> probs = Floats(outcome.result->probs());
  ASSERT_EQ(probs.size(), 10u);
  EXPECT_GT(probs[3], 0.9f);
  // White strokes on a dark background: the dataset's tone.
  float mean = 0;
  const std::vector<float> pixels = Floats(outcome.result->images());
  for (float v : pixels) mean += v / pixels.size();
  EXPECT_LT(mean, 0.3f);

  // Naming MaCo without an lr gives the same job, bit for bit.
  v1::RenderRequest named = open;
  named.mutable_image()->set_parameterization(v1::PARAMETERIZATION_MACO);
  named.mutable_optimizer()->set_lr(0.5);
  RenderOutcome same = RenderAll(*stub_, named);
  ASSERT_TRUE(same.result.has_value()) << same.status.error_message();
  EXPECT_EQ(Floats(same.result->images()), pixels);

  v1::RenderRequest fft = open;
  fft.mutable_image()->set_parameterization(v1::PARAMETERIZATION_FFT);
  v1::RenderRequest decay = open;
  decay.mutable_image()->set_decay_power(1.0);
  for (const v1::RenderRequest& r : {fft, decay}) {
    v1::RenderRequest shorter = r;
    shorter.mutable_optimizer()->set_steps(4);
    RenderOutcome o = RenderAll(*stub_, shorter);
    ASSERT_TRUE(o.result.has_value()) << o.status.error_message();
    EXPECT_EQ(o.result->maco_magnitude(), "");
    EXPECT_EQ(o.result->transparency_png_size(), 0);
  }
}

TEST_F(MacoInversionServiceTest, MacoRendersWithTheDatasetsMagnitudeAndAMap) {
  v1::RenderRequest request = TextRequest("logit(3)", 192);
  request.mutable_image()->set_parameterization(v1::PARAMETERIZATION_MACO);
  request.mutable_image()->set_batch(2);
  request.set_seed(1);
  RenderOutcome outcome = RenderAll(*stub_, request);
  ASSERT_TRUE(outcome.status.ok()) << outcome.status.error_message();
  ASSERT_TRUE(outcome.result.has_value());
  const v1::RenderResult& result = *outcome.result;
  // The server hosts one one-channel dataset: MaCo takes its spectrum.
  EXPECT_EQ(result.maco_magnitude(), "dataset mnist (2000 images)");
  ASSERT_EQ(result.transparency().shape_size(), 4);
  EXPECT_EQ(std::vector<int64_t>(result.transparency().shape().begin(),
                                 result.transparency().shape().end()),
            (std::vector<int64_t>{2, 1, 28, 28}));
  const std::vector<float> map = Floats(result.transparency());
  float sum = 0;
  for (float v : map) {
    EXPECT_GE(v, 0.0f);
    sum += v;
  }
  EXPECT_GT(sum, 0.0f);
  ASSERT_EQ(result.transparency_png_size(), 2);
  absl::StatusOr<at::Tensor> png = core::DecodePng(result.transparency_png(0));
  ASSERT_TRUE(png.ok()) << png.status();
  EXPECT_EQ(png->sizes(), (std::vector<int64_t>{3, 28, 28}));
  // The class is reached.
  const std::vector<float> probs = Floats(result.probs());
  EXPECT_GT(probs[3], 0.9f);
  EXPECT_GT(probs[10 + 3], 0.9f);

  // "1/f" asks for the default; a non-square image works too.
  v1::RenderRequest wide = TextRequest("logit(5)", 16);
  wide.mutable_image()->set_parameterization(v1::PARAMETERIZATION_MACO);
  wide.mutable_image()->set_maco_dataset("1/f");
  wide.mutable_image()->set_height(24);
  wide.mutable_image()->set_width(36);
  outcome = RenderAll(*stub_, wide);
  ASSERT_TRUE(outcome.status.ok()) << outcome.status.error_message();
  EXPECT_EQ(outcome.result->maco_magnitude(), "1/f");
  EXPECT_EQ(std::vector<int64_t>(outcome.result->transparency().shape().begin(),
                                 outcome.result->transparency().shape().end()),
            (std::vector<int64_t>{1, 1, 24, 36}));

  // FFT renders carry no map.
  v1::RenderRequest fft = TextRequest("logit(5)", 4);
  fft.mutable_image()->set_parameterization(v1::PARAMETERIZATION_FFT);
  outcome = RenderAll(*stub_, fft);
  ASSERT_TRUE(outcome.status.ok());
  EXPECT_FALSE(outcome.result->has_transparency());
  EXPECT_EQ(outcome.result->transparency_png_size(), 0);
  EXPECT_TRUE(outcome.result->maco_magnitude().empty());
}

TEST_F(MacoInversionServiceTest, MacoRefusesAnUnknownOrMisplacedDataset) {
  v1::RenderRequest request = TextRequest("logit(3)", 4);
  request.mutable_image()->set_parameterization(v1::PARAMETERIZATION_MACO);
  request.mutable_image()->set_maco_dataset("imagenet");
  ExpectError(RenderAll(*stub_, request).status, StatusCode::NOT_FOUND,
              "image.maco_dataset");
  request.mutable_image()->set_parameterization(v1::PARAMETERIZATION_FFT);
  request.mutable_image()->set_maco_dataset("mnist");
  ExpectError(RenderAll(*stub_, request).status, StatusCode::INVALID_ARGUMENT,
              "image.maco_dataset");
}

TEST_F(MacoInversionServiceTest, InvertsADatasetDigitAtConv2) {
  absl::StatusOr<core::LabelledImages> mnist = core::LoadMnistTestSet(FEATVIZ_MNIST_DIR);
  ASSERT_TRUE(mnist.ok()) << mnist.status();
  // Text syntax, a dataset reference.
  v1::RenderRequest request = TextRequest("inversion(conv2, dataset(mnist, 0))", 256);
  request.set_seed(0);
  RenderOutcome outcome = RenderAll(*stub_, request);
  ASSERT_TRUE(outcome.status.ok()) << outcome.status.error_message();
  const v1::RenderResult& result = *outcome.result;
  EXPECT_EQ(result.objective(), "inversion(conv2, dataset(mnist, 0))");
  ASSERT_EQ(result.terms_size(), 1);
  EXPECT_GT(result.terms(0).final_value(), 0.8);  // 0.835 in core's test.
  // The picture is the digit: its pixels correlate with image 0's.
  const std::vector<float> image = Floats(result.images());
  const at::Tensor digit = mnist->images[0].flatten().contiguous();
  std::vector<float> reference(digit.data_ptr<float>(),
                               digit.data_ptr<float>() + digit.numel());
  float mean_a = 0, mean_b = 0;
  for (size_t i = 0; i < image.size(); ++i) {
    mean_a += image[i] / image.size();
    mean_b += reference[i] / image.size();
  }
  std::vector<float> a(image.size()), b(image.size());
  for (size_t i = 0; i < image.size(); ++i) {
    a[i] = image[i] - mean_a;
    b[i] = reference[i] - mean_b;
  }
  EXPECT_GT(Cosine(a, b), 0.35f);
  const std::vector<float> probs = Floats(result.probs());
  EXPECT_GT(probs[mnist->labels[0].item<int64_t>()], 0.5f);

  // The structured form with a request tensor gives the same canonical
  // objective text for the tensor form, and caricature raises the dot
  // product (image 1, as core's caricature test, 0.88 there).
  const at::Tensor two = mnist->images[1].flatten().contiguous();
  std::vector<float> second(two.data_ptr<float>(), two.data_ptr<float>() + two.numel());
  v1::RenderRequest tree;
  tree.set_model(kModel);
  tree.set_seed(0);
  tree.mutable_optimizer()->set_steps(128);
  tree.mutable_output()->set_tensor(true);
  v1::WeightedTerm* term = tree.mutable_objective_tree()->add_terms();
  term->set_weight(1);
  term->mutable_term()->set_kind(v1::TERM_KIND_CARICATURE);
  term->mutable_term()->set_layer("conv2");
  term->mutable_term()->mutable_reference()->set_request_index(0);
  *tree.add_references() = FloatTensor({1, 28, 28}, second);
  outcome = RenderAll(*stub_, tree);
  ASSERT_TRUE(outcome.status.ok()) << outcome.status.error_message();
  EXPECT_EQ(outcome.result->objective(), "caricature(conv2, reference(0))");
  EXPECT_GT(outcome.result->terms(0).final_value(), 0.7);
}

TEST_F(MacoInversionServiceTest, BadReferencesGetPreciseStatuses) {
  struct Case {
    std::string objective;
    StatusCode code;
    std::string text;
  };
  for (const Case& c : std::vector<Case>{
           {"inversion(conv2, dataset(mnist, 10000))", StatusCode::OUT_OF_RANGE,
            "10000"},
           {"inversion(conv2, dataset(cifar, 0))", StatusCode::NOT_FOUND, "cifar"},
           {"inversion(conv2, reference(0))", StatusCode::OUT_OF_RANGE,
            "references[0]"},
           {"inversion(conv9, dataset(0))", StatusCode::NOT_FOUND, "conv9"},
           {"inversion(conv2, picture(0))", StatusCode::INVALID_ARGUMENT,
            "reference image"}}) {
    ExpectError(RenderAll(*stub_, TextRequest(c.objective, 4)).status, c.code,
                c.text);
  }
  v1::RenderRequest wrong = TextRequest("caricature(fc1, reference(0))", 4);
  *wrong.add_references() = FloatTensor({1, 20, 28}, std::vector<float>(560, 0.5f));
  ExpectError(RenderAll(*stub_, wrong).status, StatusCode::INVALID_ARGUMENT,
              "references[0] has shape [1, 20, 28]");
  // The server is still there.
  EXPECT_TRUE(RenderAll(*stub_, TextRequest("inversion(fc1, dataset(3))", 4)).status.ok());
}

}  // namespace
}  // namespace featviz::testing
