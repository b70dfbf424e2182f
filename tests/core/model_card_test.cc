#include "core/model_card.h"

#include <gtest/gtest.h>

namespace featviz::core {
namespace {

TEST(ModelCard, ReadsEveryField) {
  absl::StatusOr<ModelCard> card = ModelCard::Parse(R"({
    "name": "digits", "version": 3, "description": "d",
    "input": {"channels": 1, "height": 28, "width": 20, "range": [0, 255],
              "mean": [0.5], "std": [0.25]},
    "output": "logits", "classes": ["a", "b"]})");
  ASSERT_TRUE(card.ok()) << card.status();
  EXPECT_EQ(card->name, "digits");
  EXPECT_EQ(card->version, "3");
  EXPECT_EQ(card->width, 20);
  EXPECT_EQ(card->range_max, 255);
  EXPECT_EQ(card->std, std::vector<double>{0.25});
  EXPECT_EQ(card->classes, (std::vector<std::string>{"a", "b"}));
}

TEST(ModelCard, DefaultsEverythingForAnEmptyObject) {
  absl::StatusOr<ModelCard> card = ModelCard::Parse("{}");
  ASSERT_TRUE(card.ok());
  EXPECT_EQ(card->channels, 3);
  EXPECT_EQ(card->height, 224);
  EXPECT_TRUE(card->mean.empty());
}

TEST(ModelCard, RoundTripsThroughJson) {
  ModelCard card;
  card.name = "x";
  card.channels = 1;
  card.mean = {0.1};
  card.std = {0.3};
  card.classes = {"0", "1"};
  absl::StatusOr<ModelCard> back = ModelCard::Parse(card.ToJson());
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->name, "x");
  EXPECT_EQ(back->mean, card.mean);
  EXPECT_EQ(back->classes, card.classes);
}

struct BadCard {
  const char* json;
  const char* field;
};

class ModelCardErrors : public ::testing::TestWithParam<BadCard> {};

TEST_P(ModelCardErrors, NameTheOffendingField) {
  absl::StatusOr<ModelCard> card = ModelCard::Parse(GetParam().json);
  ASSERT_FALSE(card.ok());
  EXPECT_EQ(card.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(card.status().message().find(GetParam().field), std::string::npos)
      << card.status();
}

INSTANTIATE_TEST_SUITE_P(
    Cards, ModelCardErrors,
    ::testing::Values(
        BadCard{"{not json", "JSON"}, BadCard{"[1, 2]", "object"},
        BadCard{R"({"input": {"height": 0}})", "input.height"},
        BadCard{R"({"input": {"width": "big"}})", "input.width"},
        BadCard{R"({"input": {"channels": 3, "mean": [0.5]}})", "input.mean"},
        BadCard{R"({"input": {"channels": 1, "std": [0]}})", "input.std"},
        BadCard{R"({"input": {"range": [1, 0]}})", "input.range"},
        BadCard{R"({"classes": "abc"})", "classes"},
        BadCard{R"({"output": "probs"})", "output"},
        BadCard{R"({"tokens": 1})", "tokens"},
        BadCard{R"({"tokens": {"prefix": -1, "grid": [4, 4]}})",
                "tokens.prefix"},
        BadCard{R"({"tokens": {"prefix": 1e300, "grid": [4, 4]}})",
                "tokens.prefix"},
        BadCard{R"({"tokens": {"prefix": 1, "grid": [4]}})", "tokens.grid"},
        BadCard{R"({"tokens": {"prefix": 1, "grid": [0, 4]}})", "tokens.grid"},
        BadCard{R"({"tokens": {"prefix": 1, "grid": [9223372036854775807, 4]}})",
                "tokens.grid"},
        BadCard{R"({"tokens": {"prefix": 1, "grid": [4, 4], "x": 1}})",
                "unknown key"},
        BadCard{R"({"bands": []})", "bands"},
        BadCard{R"({"input": {"channels": 4}, "bands": {"names": ["a"]}})",
                "bands.names"},
        BadCard{R"({"input": {"channels": 4}, "bands": {"composite": [0, 1]}})",
                "bands.composite"},
        BadCard{R"({"input": {"channels": 4}, "bands": {"composite": [0, 1, 4]}})",
                "bands.composite"},
        BadCard{R"({"input": {"channels": 4}, "bands": {"composite": [-1]}})",
                "bands.composite"},
        BadCard{R"({"input": {"channels": 2}, "bands": {"names": [1, 2]}})",
                "bands.names"}));

TEST(ModelCard, ReadsTokensAndBandsAndRoundTripsThem) {
  absl::StatusOr<ModelCard> card = ModelCard::Parse(
      R"({"input": {"channels": 4, "height": 32, "width": 32},
          "tokens": {"prefix": 1, "grid": [4, 8]},
          "bands": {"names": ["r", "g", "b", "nir"], "composite": [3, 1, 0]}})");
  ASSERT_TRUE(card.ok()) << card.status();
  EXPECT_EQ(card->token_prefix, 1);
  EXPECT_EQ(card->token_grid_h, 4);
  EXPECT_EQ(card->token_grid_w, 8);
  EXPECT_EQ(card->band_names, (std::vector<std::string>{"r", "g", "b", "nir"}));
  EXPECT_EQ(card->CompositeBands(), (std::vector<int64_t>{3, 1, 0}));
  absl::StatusOr<ModelCard> back = ModelCard::Parse(card->ToJson());
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->token_prefix, 1);
  EXPECT_EQ(back->token_grid_w, 8);
  EXPECT_EQ(back->composite, card->composite);
  EXPECT_EQ(ModelCard().token_prefix, -1);  // Unset: inferred per layer.
  EXPECT_EQ(ModelCard().CompositeBands(), (std::vector<int64_t>{0, 1, 2}));
}

}  // namespace
}  // namespace featviz::core
