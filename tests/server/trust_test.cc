// RenderRequest.trust end to end: the real featviz-server with the bundled
// MNIST classifier, its fooled copy (tests/models/make_fooled_model.py: a
// side path from a frame of ink in the input into conv2 channel 0) and the
// MNIST test set. Exemplars beside a picture, and the path similarity check
// flagging the fooled unit's picture while passing the bundled one's.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <fstream>
#include <limits>
#include <memory>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "featviz/v1/circuits.grpc.pb.h"
#include "tests/server/server_process.h"
#include "tests/server/shared_server.h"
#include "tests/server/test_client.h"

namespace featviz::testing {
namespace {

using grpc::StatusCode;

constexpr char kFooled[] = "mnist_fooled";
// The channel make_fooled_model.py wires the side path into.
constexpr int kFooledChannel = 0;

class TrustTest : public SharedServerTest<TrustTest> {
 public:
  static std::vector<std::string> ServerFlags() {
    return {"--model_dir=" FEATVIZ_TEST_MODELS_DIR "/trust",
            "--dataset_dir=" FEATVIZ_MNIST_DIR};
  }
};

// A seeded render of `objective` with PNGs.
v1::RenderRequest Request(const std::string& model,
                          const std::string& objective, uint64_t seed,
                          v1::Parameterization param =
                              v1::PARAMETERIZATION_FFT) {
  v1::RenderRequest request = TextRequest(objective, 256);
  request.set_model(model);
  request.set_seed(seed);
  request.mutable_image()->set_parameterization(param);
  request.mutable_output()->set_tensor(false);
  return request;
}

void WritePng(const std::string& name, const std::string& png) {
  std::ofstream(absl::StrCat(::testing::TempDir(), name),
                std::ios::binary) << png;
}

std::string Describe(const v1::PathSimilarity& p) {
  std::string out = absl::StrCat("score ", p.score());
  for (const v1::LayerPathSimilarity& l : p.layers()) {
    absl::StrAppend(&out, "; ", l.layer(), " ", l.score(), " (sim ",
                    l.similarity(), ", natural ", l.natural_similarity(),
                    ", random ", l.random_similarity(), ")");
  }
  return out;
}

TEST_F(TrustTest, FlagsTheFooledUnitAndPassesTheSameUnitOfTheBundledModel) {
  const std::string objective = absl::StrCat("channel(conv2, ", kFooledChannel, ")");
  for (uint64_t seed : {1, 2, 3}) {
    for (const char* model : {kModel, kFooled}) {
      v1::RenderRequest request = Request(model, objective, seed);
      request.mutable_trust()->set_path_similarity(true);
      const RenderOutcome outcome = RenderAll(*stub_, request);
      ASSERT_TRUE(outcome.status.ok()) << outcome.status.error_message();
      ASSERT_TRUE(outcome.result.has_value());
      const v1::RenderResult& result = *outcome.result;
      ASSERT_EQ(result.path_similarity_size(), 1);
      const v1::PathSimilarity& p = result.path_similarity(0);
      ASSERT_EQ(p.layers_size(), 2) << Describe(p);  // conv1, conv2 less one.
      EXPECT_EQ(p.layers(0).layer(), "conv1");
      EXPECT_EQ(p.layers(1).layer(), "conv2");
      EXPECT_GE(p.score(), 0);
      EXPECT_LE(p.score(), 1);
      EXPECT_EQ(p.reliable(), p.score() >= p.threshold());
      const bool fooled = std::string(model) == kFooled;
      EXPECT_EQ(p.reliable(), !fooled)
          << model << " seed " << seed << ": " << Describe(p);
      WritePng(absl::StrCat("trust_", model, "_", seed, ".png"), result.png(0));
    }
  }
}

TEST_F(TrustTest, ExemplarsAreTheTopExamplesOfTheUnitAndCachedTheSecondTime) {
  constexpr int kChannel = 5;
  v1::RenderRequest request =
      Request(kModel, absl::StrCat("channel(conv2, ", kChannel, ")"), 7);
  request.mutable_trust()->set_exemplars(5);
  const RenderOutcome first = RenderAll(*stub_, request);
  ASSERT_TRUE(first.status.ok()) << first.status.error_message();
  const v1::Exemplars& exemplars = first.result->exemplars();
  EXPECT_EQ(exemplars.dataset(), "mnist");
  EXPECT_EQ(exemplars.unit(), "channel(conv2, 5)");
  ASSERT_EQ(exemplars.examples_size(), 5);
  EXPECT_EQ(first.result->path_similarity_size(), 0);

  grpc::ClientContext context;
  v1::TopExamplesRequest top;
  top.set_model(kModel);
  top.set_layer("conv2");
  top.add_channels(kChannel);
  top.set_top_n(5);
  v1::TopExamplesResponse expected;
  ASSERT_TRUE(circuits_->TopExamples(&context, top, &expected).ok());
  ASSERT_EQ(expected.units_size(), 1);
  for (int i = 0; i < 5; ++i) {
    const v1::Exemplar& e = exemplars.examples(i);
    EXPECT_EQ(e.index(), expected.units(0).indices(i)) << i;
    EXPECT_FLOAT_EQ(e.value(), expected.units(0).values(i)) << i;
    EXPECT_EQ(e.label(), expected.units(0).labels(i)) << i;
    EXPECT_TRUE(absl::StartsWith(e.png(), "\x89PNG")) << i;
    EXPECT_TRUE(absl::StartsWith(e.activation_png(), "\x89PNG")) << i;
    if (i > 0) {
      EXPECT_LE(e.value(), exemplars.examples(i - 1).value());
    }
  }
  WritePng("trust_exemplar_0.png", exemplars.examples(0).png());
  WritePng("trust_exemplar_0_map.png", exemplars.examples(0).activation_png());

  // Another seed: not the result cache, but the dataset pass is kept.
  request.set_seed(8);
  const RenderOutcome second = RenderAll(*stub_, request);
  ASSERT_TRUE(second.status.ok()) << second.status.error_message();
  EXPECT_TRUE(second.result->exemplars().cached());
  ASSERT_EQ(second.result->exemplars().examples_size(), 5);
  EXPECT_EQ(second.result->exemplars().examples(0).index(),
            exemplars.examples(0).index());
}

TEST_F(TrustTest, LogitExemplarsAreImagesOfThatClass) {
  v1::RenderRequest request = Request(kModel, "logit(3)", 3);
  request.mutable_trust()->set_exemplars(10);
  const RenderOutcome outcome = RenderAll(*stub_, request);
  ASSERT_TRUE(outcome.status.ok()) << outcome.status.error_message();
  const v1::Exemplars& exemplars = outcome.result->exemplars();
  EXPECT_EQ(exemplars.unit(), "logit(3)");
  ASSERT_EQ(exemplars.examples_size(), 10);
  int threes = 0;
  for (const v1::Exemplar& e : exemplars.examples()) {
    threes += e.label() == 3;
    EXPECT_TRUE(e.activation_png().empty());  // A class has no map.
  }
  EXPECT_GE(threes, 9);
}

TEST_F(TrustTest, RefusesHostileTrustValuesNamingTheField) {
  for (int32_t exemplars : {-1, 65, std::numeric_limits<int32_t>::max(),
                            std::numeric_limits<int32_t>::min()}) {
    v1::RenderRequest request = Request(kModel, "channel(conv2, 1)", 1);
    request.mutable_trust()->set_exemplars(exemplars);
    const RenderOutcome outcome = RenderAll(*stub_, request);
    ExpectError(outcome.status, StatusCode::INVALID_ARGUMENT,
                absl::StrCat("trust.exemplars must be in [0, 64] (0 means "
                             "none), got ", exemplars));
  }
  {
    v1::RenderRequest request = Request(kModel, "channel(conv2, 1)", 1);
    request.mutable_trust()->set_path_similarity(true);
    request.mutable_trust()->set_dataset("imagenet");
    ExpectError(RenderAll(*stub_, request).status, StatusCode::NOT_FOUND,
                "trust.dataset");
  }
  {
    v1::RenderRequest request = Request(kModel, "channel(conv2, 1)", 1);
    request.mutable_trust()->set_exemplars(3);
    request.mutable_trust()->set_dataset(std::string(100000, 'x'));
    ExpectError(RenderAll(*stub_, request).status,
                StatusCode::INVALID_ARGUMENT, "trust.dataset must be at most");
  }
  for (const char* objective :
       {"layer(conv2)", "-1 * channel(conv2, 1)", "tv()"}) {
    v1::RenderRequest request = Request(kModel, objective, 1);
    request.mutable_trust()->set_path_similarity(true);
    const RenderOutcome outcome = RenderAll(*stub_, request);
    ExpectError(outcome.status, StatusCode::INVALID_ARGUMENT,
                "has no unit");
  }
}

TEST_F(TrustTest, ARenderWithoutTrustCarriesNoneOfIt) {
  const RenderOutcome outcome =
      RenderAll(*stub_, Request(kModel, "channel(conv2, 1)", 1));
  ASSERT_TRUE(outcome.status.ok()) << outcome.status.error_message();
  EXPECT_FALSE(outcome.result->has_exemplars());
  EXPECT_EQ(outcome.result->path_similarity_size(), 0);
}

}  // namespace
}  // namespace featviz::testing
