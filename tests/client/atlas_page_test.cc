#include "client/atlas_page.h"

#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "absl/strings/match.h"

namespace featviz::client {
namespace {

namespace v1 = featviz::v1;

v1::Tensor Matrix(int64_t rows, int64_t cols, const std::vector<float>& values) {
  v1::Tensor t;
  t.add_shape(rows);
  t.add_shape(cols);
  t.set_dtype(v1::Tensor::DTYPE_FLOAT32);
  t.set_data(std::string(reinterpret_cast<const char*>(values.data()),
                         values.size() * sizeof(float)));
  return t;
}

AtlasLayer Conv2() {
  AtlasLayer layer;
  layer.layer.set_path("conv2");
  layer.layer.set_kind("Conv2d");
  layer.layer.set_channels(3);
  layer.spatial = true;
  return layer;
}

AtlasUnit Unit(int64_t index) {
  AtlasUnit unit;
  unit.index = index;
  unit.objective = Conv2().Objective(index);
  unit.result.set_objective(unit.objective);
  unit.result.set_final_total(2.5f);
  return unit;
}

TEST(AtlasPage, UnitPageShowsTheUnitsStatisticsFromItsLayer) {
  v1::Model model;
  model.set_name("m<1>");
  AtlasUnit unit = Unit(1);
  v1::LayerStats* stats = unit.result.add_layer_stats();
  stats->set_layer("conv2");
  *stats->mutable_mean() = Matrix(1, 3, {0.25f, 0.5f, 0.75f});
  *stats->mutable_max() = Matrix(1, 3, {1.f, 2.f, 3.f});
  absl::StatusOr<std::string> page =
      AtlasUnitPage(model, Conv2(), unit, nullptr, "");
  ASSERT_TRUE(page.ok()) << page.status();
  EXPECT_TRUE(absl::StrContains(
      *page, "<tr><td>mean / max on the picture</td><td>0.5 / 2</td></tr>"))
      << *page;
  // Neighbours on both sides, the title escaped.
  EXPECT_TRUE(absl::StrContains(*page, "<a href=\"unit_0.html\">&larr; 0</a>"));
  EXPECT_TRUE(absl::StrContains(*page, "<a href=\"unit_2.html\">2 &rarr;</a>"));
  EXPECT_TRUE(absl::StrContains(*page, "<title>m&lt;1&gt; conv2 1</title>"));
  EXPECT_EQ(unit.objective, "channel(conv2, 1)");
}

TEST(AtlasPage, UnitPageRefusesStatisticsOfTheWrongSize) {
  AtlasUnit unit = Unit(0);
  v1::LayerStats* stats = unit.result.add_layer_stats();
  stats->set_layer("conv2");
  // Three channels promised, two floats sent.
  *stats->mutable_mean() = Matrix(1, 3, {0.25f, 0.5f});
  *stats->mutable_max() = Matrix(1, 3, {1.f, 2.f, 3.f});
  absl::StatusOr<std::string> page =
      AtlasUnitPage(v1::Model(), Conv2(), unit, nullptr, "");
  EXPECT_EQ(page.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(AtlasPage, LayerPageLinksEveryUnitAndTheIndexShowsTheSheet) {
  v1::Model model;
  model.set_name("m");
  const AtlasUnit a = Unit(0), b = Unit(1);
  const std::string layer = AtlasLayerPage(model, Conv2(), 90, {&a, &b});
  EXPECT_TRUE(absl::StrContains(
      layer, "<a class=\"unit\" href=\"unit_1.html\"><img class=\"px\" "
             "src=\"unit_1.png\" alt=\"unit 1\">1</a>\n"));
  EXPECT_TRUE(absl::StrContains(layer, "each unit's channel (spatial mean) maximised."));
  const std::string entry = AtlasIndexEntry(Conv2(), 2000);
  EXPECT_TRUE(absl::StrContains(entry, "width=\"960\"")) << entry;
  AtlasSummary summary;
  summary.units = 2;
  summary.dataset = "mnist";
  const std::string index = AtlasIndexPage(model, summary, {entry});
  EXPECT_TRUE(absl::StrContains(index, "2 units rendered, seed 0; dataset "
                                       "examples from <b>mnist</b>."))
      << index;
  EXPECT_TRUE(absl::StrContains(index, entry));
}

}  // namespace
}  // namespace featviz::client
