#include "client/unit_template.h"

#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "client/multi_render.h"
#include "core/objective.h"

namespace featviz::client {
namespace {

UnitTemplate Found(const std::string& objective) {
  absl::StatusOr<std::optional<UnitTemplate>> t = FindUnitTemplate(objective);
  EXPECT_TRUE(t.ok()) << t.status();
  EXPECT_TRUE(t.ok() && t->has_value()) << objective;
  return t.ok() && t->has_value() ? **t : UnitTemplate{};
}

std::string Refusal(const std::string& objective) {
  absl::StatusOr<std::optional<UnitTemplate>> t = FindUnitTemplate(objective);
  EXPECT_FALSE(t.ok()) << objective;
  if (!t.ok()) {
    EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
    return std::string(t.status().message());
  }
  return "";
}

TEST(FindUnitTemplate, FindsNoWildcardInAPlainObjective) {
  for (const char* text : {"channel(conv2, 5)", "2 * channel(conv2, 5) - 0.01*tv()",
                           "prob(3)*2", "'a*b':3"}) {
    absl::StatusOr<std::optional<UnitTemplate>> t = FindUnitTemplate(text);
    ASSERT_TRUE(t.ok()) << text << ": " << t.status();
    EXPECT_FALSE(t->has_value()) << text;
  }
}

TEST(FindUnitTemplate, ExpandsAChannelTermIntoOneBatchTermPerUnit) {
  const UnitTemplate t = Found("channel(conv2, *)");
  EXPECT_EQ(t.kind, "channel");
  EXPECT_EQ(t.layer, "conv2");
  EXPECT_EQ(t.other_terms, 0);
  EXPECT_EQ(t.Expand({0, 1, 5}),
            "(channel(conv2, 0, batch=0) + channel(conv2, 1, batch=1) + "
            "channel(conv2, 5, batch=2))");
  // The expansion is an objective the server's parser reads as three terms.
  absl::StatusOr<core::Objective> parsed = core::Objective::Parse(t.Expand({0, 1, 5}));
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  ASSERT_EQ(parsed->terms().size(), 3u);
  EXPECT_EQ(parsed->terms()[2].term.ToString(), "channel(conv2, 5, batch=2)");
}

TEST(FindUnitTemplate, KeepsOtherTermsAndDistributesTheWeight) {
  const UnitTemplate t = Found("2 * neuron(fc1, *) - 0.01 * tv()");
  EXPECT_EQ(t.kind, "neuron");
  EXPECT_EQ(t.layer, "fc1");
  EXPECT_EQ(t.other_terms, 1);
  absl::StatusOr<core::Objective> parsed = core::Objective::Parse(t.Expand({7, 9}));
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->ToString(),
            "2 * neuron(fc1, 7, batch=0) + 2 * neuron(fc1, 9, batch=1) - "
            "0.01 * tv()");
}

TEST(FindUnitTemplate, ReadsTheShorthandAQuotedLayerAndAPosition) {
  EXPECT_EQ(Found("conv2:*").Expand({4}), "(channel(conv2, 4, batch=0))");
  const UnitTemplate quoted = Found("channel('block-1', *)");
  EXPECT_EQ(quoted.layer, "block-1");
  const UnitTemplate neuron = Found("neuron(conv2, *, 3, 4)");
  EXPECT_EQ(neuron.Term(6, 1), "neuron(conv2, 6, 3, 4, batch=1)");
}

TEST(FindUnitTemplate, RefusesAWildcardInTwoTerms) {
  const std::string message = Refusal("channel(conv2, *) + neuron(fc1, *)");
  EXPECT_TRUE(absl::StrContains(message, "has 2 '*' (at columns 16, 33)"))
      << message;
}

TEST(FindUnitTemplate, RefusesAWildcardWithNoLayer) {
  std::string message = Refusal("logit(*)");
  EXPECT_TRUE(absl::StrContains(message, "'*' in logit(*) (column 7) has no "
                                         "layer to take units of"))
      << message;
  message = Refusal("* + tv()");
  EXPECT_TRUE(absl::StrContains(message, "is not inside a term, so it names "
                                         "no layer"))
      << message;
  message = Refusal("channel(*, 3)");
  EXPECT_TRUE(absl::StrContains(message, "stands where the layer goes"))
      << message;
  message = Refusal(":*");
  EXPECT_TRUE(absl::StrContains(message, "no layer before it")) << message;
}

TEST(FindUnitTemplate, RefusesBatchAndAMalformedRest) {
  std::string message = Refusal("channel(conv2, *, batch=1)");
  EXPECT_TRUE(absl::StrContains(message, "sets batch= (column 19)")) << message;
  message = Refusal("channel(conv2, *) + prob(3");
  EXPECT_TRUE(absl::StrContains(message, "column")) << message;
}

TEST(UnitTemplate, SplitsRequestsAtTheServersTermLimit) {
  EXPECT_EQ(Found("channel(conv2, *)").UnitsPerRequest(), kMaxUnitsPerRequest);
  std::string many = "channel(conv2, *)";
  for (int i = 0; i < 230; ++i) absl::StrAppend(&many, " - 0.001 * l1()");
  const UnitTemplate t = Found(many);
  EXPECT_EQ(t.other_terms, 230);
  EXPECT_EQ(t.UnitsPerRequest(), 256 - 230);
}

TEST(ParseUnits, ReadsAllRangesAndLists) {
  absl::StatusOr<std::vector<int64_t>> all = ParseUnits("all", "conv2", 4);
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_EQ(*all, (std::vector<int64_t>{0, 1, 2, 3}));
  absl::StatusOr<std::vector<int64_t>> mixed = ParseUnits(" 9, 0-2 ,5", "conv2", 32);
  ASSERT_TRUE(mixed.ok()) << mixed.status();
  EXPECT_EQ(*mixed, (std::vector<int64_t>{9, 0, 1, 2, 5}));
}

TEST(ParseUnits, NamesTheItemTheLayerAndItsChannels) {
  auto message = [](const std::string& spec, int64_t channels) {
    absl::StatusOr<std::vector<int64_t>> units = ParseUnits(spec, "fc1", channels);
    EXPECT_FALSE(units.ok()) << spec;
    return units.ok() ? std::string() : std::string(units.status().message());
  };
  EXPECT_EQ(message("99-5", 64), "--units: range 99-5 runs backwards; write 5-99");
  EXPECT_EQ(message("1000", 64),
            "--units: unit 1000 is out of range for layer fc1 with 64 channels "
            "(units 0-63)");
  EXPECT_EQ(message("60-70", 64),
            "--units: range 60-70 reaches unit 70, out of range for layer fc1 "
            "with 64 channels (units 0-63)");
  EXPECT_EQ(message("3,3", 64), "--units: unit 3 is listed twice");
  EXPECT_TRUE(absl::StrContains(message("x", 64), "'x' is not a unit"));
  EXPECT_TRUE(absl::StrContains(message("-3", 64), "'-3' is not a unit"));
  EXPECT_TRUE(absl::StrContains(message("1,,2", 64), "empty item"));
  EXPECT_TRUE(absl::StrContains(message("", 64), "--units is empty"));
}

TEST(ModelVersionRef, SpellsSlashVersionsTheServersWay) {
  EXPECT_EQ(ModelVersionRef("mnist/2"), "mnist@2");
  EXPECT_EQ(ModelVersionRef("mnist@2"), "mnist@2");
  EXPECT_EQ(ModelVersionRef("mnist"), "mnist");
  EXPECT_EQ(ModelVersionRef("mnist/"), "mnist/");
}

}  // namespace
}  // namespace featviz::client
