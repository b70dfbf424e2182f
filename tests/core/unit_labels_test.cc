#include "core/unit_labels.h"

#include <gtest/gtest.h>

#include "absl/strings/match.h"

namespace featviz::core {
namespace {

// Six images of classes 0, 0, 1, 1, 2, 2 (a third each). Unit 0 is highest
// on the class-0 images, unit 1 on images of every class alike.
struct Fixture {
  at::Tensor values = at::tensor({9.f, 6.f, 8.f, 5.f, 1.f, 4.f,
                                  2.f, 3.f, 3.f, 2.f, 0.f, 1.f})
                          .view({6, 2});
  at::Tensor labels = at::tensor({0, 0, 1, 1, 2, 2}, at::kLong);
};

TEST(ClassSelectivity, CountsTheClassesOfEachUnitsTopExamples) {
  Fixture f;
  absl::StatusOr<std::vector<UnitClassSelectivity>> units =
      ClassSelectivity(f.values, f.labels, 3, {}, 2);
  ASSERT_TRUE(units.ok()) << units.status();
  ASSERT_EQ(units->size(), 2u);
  const UnitClassSelectivity& zero = (*units)[0];
  EXPECT_EQ(zero.top_n, 2);
  ASSERT_EQ(zero.classes.size(), 1u);
  EXPECT_EQ(zero.classes[0].class_index, 0);
  EXPECT_EQ(zero.classes[0].count, 2);
  EXPECT_DOUBLE_EQ(zero.classes[0].fraction, 1.0);
  EXPECT_DOUBLE_EQ(zero.selectivity, 1.0);
  EXPECT_FLOAT_EQ(zero.max_value, 9.f);
  EXPECT_DOUBLE_EQ(zero.FractionOf(1), 0.0);
}

TEST(ClassSelectivity, IsZeroWhenTheTopExamplesSpreadLikeTheDataset) {
  Fixture f;
  // Over all six images every unit's classes are the dataset's.
  absl::StatusOr<std::vector<UnitClassSelectivity>> units =
      ClassSelectivity(f.values, f.labels, 3, {1}, 100);
  ASSERT_TRUE(units.ok()) << units.status();
  ASSERT_EQ(units->size(), 1u);
  EXPECT_EQ((*units)[0].channel, 1);
  EXPECT_EQ((*units)[0].top_n, 6);  // The dataset's size.
  ASSERT_EQ((*units)[0].classes.size(), 3u);
  double total = 0;
  for (const ClassCount& c : (*units)[0].classes) total += c.fraction;
  EXPECT_DOUBLE_EQ(total, 1.0);
  // Ties keep the lower class first.
  EXPECT_EQ((*units)[0].classes[0].class_index, 0);
  EXPECT_DOUBLE_EQ((*units)[0].selectivity, 0.0);
}

TEST(SelectivityIndex, MeasuresTheShareAboveTheClassesBaseRate) {
  EXPECT_DOUBLE_EQ(SelectivityIndex(0.1, 0.1), 0.0);
  EXPECT_DOUBLE_EQ(SelectivityIndex(1.0, 0.1), 1.0);
  EXPECT_DOUBLE_EQ(SelectivityIndex(0.55, 0.1), 0.5);
  // A majority class that is 90 % of the data: 90 % of the top examples
  // says nothing.
  EXPECT_DOUBLE_EQ(SelectivityIndex(0.9, 0.9), 0.0);
  EXPECT_DOUBLE_EQ(SelectivityIndex(0.05, 0.1), 0.0);  // Clamped.
  EXPECT_DOUBLE_EQ(SelectivityIndex(1.0, 1.0), 1.0);
}

TEST(ClassSelectivity, RefusesBadShapesLabelsAndChannels) {
  Fixture f;
  EXPECT_EQ(ClassSelectivity(f.values, f.labels, 3, {2}, 2).status().code(),
            absl::StatusCode::kOutOfRange);
  EXPECT_EQ(ClassSelectivity(f.values, f.labels, 3, {}, 0).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ClassSelectivity(f.values, f.labels, 2, {}, 2).status().code(),
            absl::StatusCode::kInvalidArgument);
  const absl::Status unlabelled =
      ClassSelectivity(f.values, at::full({6}, -1, at::kLong), 3, {}, 2)
          .status();
  EXPECT_EQ(unlabelled.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(unlabelled.message(), "got -1"))
      << unlabelled;
  EXPECT_EQ(ClassSelectivity(f.values, f.labels.narrow(0, 0, 5), 3, {}, 2)
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(UnitLabelText, SaysTheClassItsShareAndTheTopN) {
  EXPECT_EQ(UnitLabelText("7", 0.82, 100), "fires on 7s: 82 % of its top 100");
  EXPECT_EQ(UnitLabelText("cat", 0.5, 8), "fires on cats: 50 % of its top 8");
  EXPECT_EQ(UnitLabelText("7", 0.71, 100, -1.07f),
            "never fires; closest on 7s: 71 % of its top 100");
}

}  // namespace
}  // namespace featviz::core
