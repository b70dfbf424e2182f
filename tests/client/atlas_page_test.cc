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
      AtlasUnitPage(model, Conv2(), unit, "");
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
      AtlasUnitPage(v1::Model(), Conv2(), unit, "");
  EXPECT_EQ(page.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(AtlasPage, LayerPageLinksEveryUnitAndTheIndexShowsTheSheet) {
  v1::Model model;
  model.set_name("m");
  const AtlasUnit a = Unit(0), b = Unit(1);
  const std::string layer = AtlasLayerPage(model, Conv2(), 90, {&a, &b});
  EXPECT_TRUE(absl::StrContains(
      layer, "<a class=\"unit\" href=\"unit_1.html\"><img class=\"px\" "
             "src=\"unit_1.png\" alt=\"unit 1\">1 </a>\n"));
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

// A unit with everything docs/trust.md describes: the page shows the
// label (names from the dataset escaped), the path similarity with each
// layer, the accentuated exemplar beside its seed, and the exemplars with
// their maps; the layer page marks a flagged picture.
AtlasUnit TrustedUnit(bool reliable) {
  AtlasUnit unit = Unit(2);
  v1::Exemplars* exemplars = unit.result.mutable_exemplars();
  exemplars->set_dataset("mnist");
  exemplars->set_unit("channel(conv2, 2)");
  for (int i = 0; i < 2; ++i) {
    v1::Exemplar* e = exemplars->add_examples();
    e->set_index(40 + i);
    e->set_value(3.5f - i);
    e->set_label(7);
    e->set_png("png");
    e->set_activation_png("map");
  }
  v1::PathSimilarity* path = unit.result.add_path_similarity();
  path->set_score(reliable ? 0.81 : 0.12);
  path->set_threshold(0.5);
  path->set_reliable(reliable);
  v1::LayerPathSimilarity* layer = path->add_layers();
  layer->set_layer("conv1");
  layer->set_score(path->score());
  layer->set_similarity(0.6);
  layer->set_natural_similarity(0.7);
  layer->set_random_similarity(0.1);
  v1::UnitLabel label;
  label.set_channel(2);
  label.set_label("fires on <b>7s: 82 % of its top 100");
  label.set_selectivity(0.74);
  v1::ClassShare* share = label.add_classes();
  share->set_class_name("<b>7");
  share->set_fraction(0.82);
  v1::ClassAttribution* feeds = label.add_attribution();
  feeds->set_class_name("<b>7");
  feeds->set_score(0.31);
  unit.label = label;
  unit.accentuated.add_png("accent");
  v1::AccentuationOutcome* outcome = unit.accentuated.add_accentuation();
  outcome->set_seed_value(3.5);
  outcome->set_value(9.25);
  outcome->set_pixel_distance(0.061);
  return unit;
}

TEST(AtlasPage, UnitPageSaysHowFarToBelieveThePicture) {
  const AtlasUnit unit = TrustedUnit(/*reliable=*/false);
  absl::StatusOr<std::string> page = AtlasUnitPage(v1::Model(), Conv2(), unit, "mnist");
  ASSERT_TRUE(page.ok()) << page.status();
  EXPECT_TRUE(absl::StrContains(
      *page, "<p class=\"label\">fires on &lt;b&gt;7s: 82 % of its top 100</p>"))
      << *page;
  EXPECT_TRUE(absl::StrContains(*page, "class selectivity 0.74")) << *page;
  EXPECT_TRUE(absl::StrContains(*page, "&lt;b&gt;7 (+0.31)")) << *page;
  EXPECT_FALSE(absl::StrContains(*page, "<b>7")) << "names are text, not markup";
  EXPECT_TRUE(absl::StrContains(*page, "0.12 flagged")) << *page;
  EXPECT_TRUE(absl::StrContains(
      *page, "<tr><td>conv1</td><td>0.12</td><td>0.60</td><td>0.70</td><td>0.10</td></tr>"))
      << *page;
  EXPECT_TRUE(absl::StrContains(*page, "src=\"unit_2_accent.png\"")) << *page;
  EXPECT_TRUE(absl::StrContains(*page, "src=\"unit_2_change.png\"")) << *page;
  EXPECT_TRUE(absl::StrContains(*page, "3.5 &rarr; 9.25<br>RMS 0.061")) << *page;
  EXPECT_TRUE(absl::StrContains(*page, "src=\"unit_2_ex1_map.png\"")) << *page;
  EXPECT_TRUE(absl::StrContains(*page, "#41 label 7<br>2.5")) << *page;

  const AtlasUnit fine = TrustedUnit(/*reliable=*/true);
  const std::string layer = AtlasLayerPage(v1::Model(), Conv2(), 90, {&unit, &fine});
  EXPECT_TRUE(absl::StrContains(layer, "(1 of 2 reliable;")) << layer;
  EXPECT_TRUE(absl::StrContains(layer, "class=\"badge flag\"")) << layer;
  EXPECT_TRUE(absl::StrContains(layer, "class=\"badge ok\"")) << layer;
  EXPECT_TRUE(absl::StrContains(layer, "<span class=\"caption\">&lt;b&gt;7: 82 %</span>"))
      << layer;
}

}  // namespace
}  // namespace featviz::client
