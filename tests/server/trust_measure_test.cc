// The pieces of the path similarity check and the cache of dataset passes,
// in process (server/engine/trust.h, unit_values_cache.h).
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/dataset.h"
#include "core/model.h"
#include "core/objective.h"
#include "server/engine/engine_types.h"
#include "server/engine/trust.h"
#include "server/engine/unit_values_cache.h"
#include "tests/core/test_paths.h"

namespace featviz::server {
namespace {

using ::featviz::testing::MnistModel;

TEST(Spearman, IsOneForTheSameOrderAndMinusOneForTheReverse) {
  EXPECT_DOUBLE_EQ(Spearman({1, 2, 3, 4}, {10, 20, 30, 1000}), 1.0);
  EXPECT_DOUBLE_EQ(Spearman({1, 2, 3, 4}, {4, 3, 2, 1}), -1.0);
}

TEST(Spearman, GivesTiesTheirMeanRankAndConstantsZero) {
  // Ranks (0.5, 0.5, 2, 3) against (0, 1, 2, 3).
  EXPECT_NEAR(Spearman({5, 5, 6, 7}, {1, 2, 3, 4}), 0.9486832980505138, 1e-12);
  EXPECT_EQ(Spearman({1, 1, 1}, {1, 2, 3}), 0.0);
  EXPECT_EQ(Spearman({1}, {1}), 0.0);
  EXPECT_EQ(Spearman({1, 2}, {1, 2, 3}), 0.0);
}

TEST(TrustUnitsOf, TakesEachImagesFirstPositiveUnitTerm) {
  absl::StatusOr<core::Objective> objective = core::Objective::Parse(
      "-0.1 * tv() + neuron(conv2, 3, batch=1) + channel(conv1, 2) + logit(4)");
  ASSERT_TRUE(objective.ok()) << objective.status();
  absl::StatusOr<std::vector<core::Term>> units = TrustUnitsOf(*objective, 2);
  ASSERT_TRUE(units.ok()) << units.status();
  EXPECT_EQ((*units)[0].ToString(), "channel(conv1, 2)");
  EXPECT_EQ((*units)[1].ToString(), "channel(conv2, 3)");
}

TEST(TrustUnitsOf, RefusesAnObjectiveWithoutAUnitNamingIt) {
  for (const char* text : {"tv()", "-1 * logit(3)", "layer(conv2)",
                           "channel(conv2, 1, batch=1)"}) {
    absl::StatusOr<core::Objective> objective = core::Objective::Parse(text);
    ASSERT_TRUE(objective.ok()) << text;
    absl::StatusOr<std::vector<core::Term>> units =
        TrustUnitsOf(*objective, 1);
    EXPECT_EQ(units.status().code(), absl::StatusCode::kInvalidArgument)
        << text;
    EXPECT_NE(units.status().message().find("has no unit"), std::string::npos)
        << units.status();
  }
}

TEST(TrustCacheKey, TrustSettingsAndTheDatasetEnterTheKeyOnlyWhenAsked) {
  RenderPlan plan;
  plan.model_name = "mnist_classifier";
  plan.model_version = "1";
  plan.model_hash = "abc";
  plan.seed = 7;
  plan.trust.dataset_name = "mnist";  // Named, but nothing asked.
  const std::string plain = CacheKey(plan);
  plan.trust.dataset_name.clear();
  EXPECT_EQ(CacheKey(plan), plain);

  auto mnist = std::make_shared<core::Dataset>();
  mnist->name = "mnist";
  mnist->images = at::zeros({10, 1, 28, 28});
  plan.trust.dataset = mnist;
  core::Term unit;
  unit.layer = "conv2";
  unit.index = 5;
  plan.trust.units = {unit};
  plan.trust.exemplars = 5;
  const std::string five = CacheKey(plan);
  EXPECT_NE(five, plain);
  plan.trust.exemplars = 6;
  EXPECT_NE(CacheKey(plan), five);
  plan.trust.exemplars = 5;
  plan.trust.path_similarity = true;
  const std::string checked = CacheKey(plan);
  EXPECT_NE(checked, five);
  auto bigger = std::make_shared<core::Dataset>(*mnist);
  bigger->images = at::zeros({11, 1, 28, 28});
  plan.trust.dataset = bigger;
  EXPECT_NE(CacheKey(plan), checked);
  plan.trust.dataset = mnist;
  plan.trust.units[0].index = 6;
  EXPECT_NE(CacheKey(plan), checked);
}

class UnitValuesCacheTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<core::ModelPtr> model = core::Model::Load(MnistModel());
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = *std::move(model);
  }
  core::DatasetPtr Dataset(const std::string& name, int64_t n, float level) {
    auto d = std::make_shared<core::Dataset>();
    d->name = name;
    d->images = at::full({n, 1, 28, 28}, level);
    d->images[0].fill_(1.0f);
    d->labels = at::full({n}, -1, at::kLong);
    return d;
  }
  core::ModelPtr model_;
};

TEST_F(UnitValuesCacheTest, KeepsAPassAndComputesAReplacedDatasetAgain) {
  UnitValuesCache cache(2);
  core::DatasetPtr a = Dataset("a", 4, 0.1f);
  bool cached = true;
  absl::StatusOr<at::Tensor> first = cache.Get(*model_, a, "conv2", cached);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_FALSE(cached);
  EXPECT_EQ(first->sizes(), (std::vector<int64_t>{4, 32}));
  absl::StatusOr<at::Tensor> again = cache.Get(*model_, a, "conv2", cached);
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(cached);
  EXPECT_TRUE(at::equal(*first, *again));

  // Another dataset object under the same name: not the old values.
  core::DatasetPtr replaced = Dataset("a", 3, 0.2f);
  absl::StatusOr<at::Tensor> other =
      cache.Get(*model_, replaced, "conv2", cached);
  ASSERT_TRUE(other.ok());
  EXPECT_FALSE(cached);
  EXPECT_EQ(other->size(0), 3);

  absl::StatusOr<at::Tensor> logits =
      cache.Get(*model_, replaced, kLogitsKey, cached);
  ASSERT_TRUE(logits.ok()) << logits.status();
  EXPECT_EQ(logits->sizes(), (std::vector<int64_t>{3, 10}));
  ASSERT_TRUE(cache.Get(*model_, replaced, "conv1", cached).ok());
  EXPECT_EQ(cache.size(), 2);  // Bounded: the oldest went.
  EXPECT_EQ(cache.bytes(), (3 * 10 + 3 * 16) * 4);  // logits, conv1
}

TEST_F(UnitValuesCacheTest, KeepsWithinItsBytesButAlwaysTheNewest) {
  UnitValuesCache cache(8, /*max_bytes=*/4 * 32 * 4);  // One conv2 pass.
  core::DatasetPtr a = Dataset("a", 4, 0.1f);
  bool cached = false;
  ASSERT_TRUE(cache.Get(*model_, a, "conv2", cached).ok());
  ASSERT_TRUE(cache.Get(*model_, a, "conv1", cached).ok());
  EXPECT_EQ(cache.size(), 1);  // conv2's went to make room.
  ASSERT_TRUE(cache.Get(*model_, a, "conv1", cached).ok());
  EXPECT_TRUE(cached);
  UnitValuesCache tiny(8, /*max_bytes=*/1);
  ASSERT_TRUE(tiny.Get(*model_, a, "conv2", cached).ok());
  EXPECT_EQ(tiny.size(), 1);
}

TEST_F(UnitValuesCacheTest, PathLayersAreTheEarlierLayersAndTheUnitsOwn) {
  core::Term unit;
  unit.kind = core::TermKind::kChannel;
  unit.layer = "conv2";
  unit.index = 5;
  EXPECT_EQ(PathLayers(*model_, unit),
            (std::vector<std::pair<std::string, int64_t>>{{"conv1", -1},
                                                          {"conv2", 5}}));
  unit.layer = "conv1";
  EXPECT_EQ(PathLayers(*model_, unit),
            (std::vector<std::pair<std::string, int64_t>>{{"conv1", 5}}));
  core::Term logit;
  logit.kind = core::TermKind::kLogit;
  logit.index = 3;
  EXPECT_EQ(PathLayers(*model_, logit),
            (std::vector<std::pair<std::string, int64_t>>{
                {"conv1", -1}, {"conv2", -1}, {"fc1", -1}, {"fc2", 3}}));
}

// The random images' profiles are one cache entry per set of path layers:
// a second unit of the same layer reads them (and its layer's values) from
// the cache, and its scores are those a fresh cache gives.
TEST_F(UnitValuesCacheTest, PathBaselineIsComputedOncePerLayer) {
  at::manual_seed(3);
  auto noise = std::make_shared<core::Dataset>();
  noise->name = "noise";
  noise->images = at::rand({100, 1, 28, 28});
  noise->labels = at::full({100}, -1, at::kLong);
  const at::Tensor pictures = at::rand({2, 1, 28, 28});
  auto check = [&](UnitValuesCache& cache, const std::string& layer,
                   int64_t index) {
    RenderPlan plan;
    plan.trust.path_similarity = true;
    plan.trust.dataset = noise;
    core::Term unit;
    unit.kind = core::TermKind::kChannel;
    unit.layer = layer;
    unit.index = index;
    plan.trust.units = {unit, unit};
    JobResult result;
    const absl::Status status =
        AddTrust(*model_, plan, pictures, cache, result);
    EXPECT_TRUE(status.ok()) << status;
    return result.path_similarity;
  };
  UnitValuesCache cache;
  check(cache, "conv2", 5);
  EXPECT_EQ(cache.size(), 2);  // conv2's values and the baseline.
  const std::vector<PathScore> seven = check(cache, "conv2", 7);
  EXPECT_EQ(cache.size(), 2);
  UnitValuesCache fresh;
  const std::vector<PathScore> seven_fresh = check(fresh, "conv2", 7);
  ASSERT_EQ(seven.size(), 2u);
  ASSERT_EQ(seven_fresh.size(), 2u);
  for (size_t i = 0; i < seven.size(); ++i) {
    EXPECT_EQ(seven[i].score, seven_fresh[i].score);
    ASSERT_EQ(seven[i].layers.size(), 2u);
    for (size_t l = 0; l < seven[i].layers.size(); ++l) {
      EXPECT_EQ(seven[i].layers[l].layer, seven_fresh[i].layers[l].layer);
      EXPECT_EQ(seven[i].layers[l].random_similarity,
                seven_fresh[i].layers[l].random_similarity);
      EXPECT_EQ(seven[i].layers[l].similarity,
                seven_fresh[i].layers[l].similarity);
    }
  }
  check(cache, "conv1", 2);  // Another path: its own baseline.
  EXPECT_EQ(cache.size(), 4);
}

}  // namespace
}  // namespace featviz::server
