#include "client/json.h"

#include <tuple>
#include <vector>

#include <gtest/gtest.h>

namespace featviz::client {
namespace {

namespace v1 = featviz::v1;

void SetMatrix(v1::Tensor* t, int64_t rows, int64_t cols,
               const std::vector<float>& values) {
  t->add_shape(rows);
  t->add_shape(cols);
  t->set_dtype(v1::Tensor::DTYPE_FLOAT32);
  t->set_data(std::string(reinterpret_cast<const char*>(values.data()),
                          values.size() * sizeof(float)));
}

TEST(ShortestFloat, PrintsFloatsAsTheyWereWritten) {
  EXPECT_EQ(ShortestFloat(0.99f), 0.99);
  EXPECT_EQ(ShortestFloat(1.0f), 1.0);
  EXPECT_EQ(static_cast<float>(ShortestFloat(0.1234567f)), 0.1234567f);
}

TEST(RenderResultToJson, CarriesTheStatistics) {
  v1::RenderResult result;
  result.set_model("m");
  result.set_model_hash("abc");
  result.set_objective("prob(1) - 0.5 * tv()");
  result.set_seed(7);
  result.set_steps(16);
  result.set_transforms("none");
  auto* t = result.add_terms();
  t->set_term("prob(1)");
  t->set_weight(1);
  t->set_final_value(0.75);
  t->add_trace(0.5);
  result.set_final_total(0.7);
  SetMatrix(result.mutable_logits(), 2, 2, {1, 2, 4, 3});
  SetMatrix(result.mutable_probs(), 2, 2, {0.25f, 0.75f, 0.75f, 0.25f});
  auto* s = result.add_layer_stats();
  s->set_layer("conv2");
  SetMatrix(s->mutable_mean(), 2, 1, {0.5f, 1.5f});
  SetMatrix(s->mutable_max(), 2, 1, {1, 2});
  result.mutable_timings()->set_compute_seconds(1.5);
  result.set_parameterization(v1::PARAMETERIZATION_PIXEL);
  result.add_warnings("prob(1) saturated");

  auto j = RenderResultToJson(result, {"zero", "one"});
  ASSERT_TRUE(j.ok()) << j.status();
  EXPECT_EQ((*j)["model"], "m");
  EXPECT_EQ((*j)["seed"], 7);
  EXPECT_EQ((*j)["terms"][0]["term"], "prob(1)");
  EXPECT_EQ((*j)["terms"][0]["final_value"], 0.75);
  EXPECT_FALSE((*j)["terms"][0].contains("trace"));
  EXPECT_EQ((*j)["probs"], nlohmann::ordered_json::parse("[[0.25, 0.75], [0.75, 0.25]]"));
  EXPECT_EQ((*j)["top_class"], nlohmann::ordered_json::parse("[1, 0]"));
  EXPECT_EQ((*j)["top_class_name"], nlohmann::ordered_json::parse(R"(["one", "zero"])"));
  EXPECT_EQ((*j)["layer_stats"][0]["layer"], "conv2");
  EXPECT_EQ((*j)["layer_stats"][0]["mean"], nlohmann::ordered_json::parse("[[0.5], [1.5]]"));
  EXPECT_EQ((*j)["timings"]["compute_seconds"], 1.5);
  EXPECT_EQ((*j)["parameterization"], "pixel");
  EXPECT_EQ((*j)["warnings"],
            nlohmann::ordered_json::parse(R"(["prob(1) saturated"])"));
}

// The progress line, the term values and final_total used to disagree with
// nothing saying which was which (issue 27): the JSON names each figure.
TEST(RenderResultToJson, NamesTheObjectivePerImageAtTheLastStepAndSummed) {
  v1::RenderResult result;
  for (const auto& [term, weight, value, last] :
       std::vector<std::tuple<const char*, double, double, float>>{
           {"channel(conv2, 5)", 1.0, 1.41, 1.6f}, {"tv()", -0.01, 2.0, 3.0f}}) {
    auto* t = result.add_terms();
    t->set_term(term);
    t->set_weight(weight);
    t->set_final_value(value);
    t->add_trace(0.0f);
    t->add_trace(last);
  }
  result.set_objective("channel(conv2, 5) - 0.01 * tv()");
  result.set_final_total(4 * (1.41 - 0.02));
  SetMatrix(result.mutable_logits(), 4, 1, {0, 0, 0, 0});
  SetMatrix(result.mutable_probs(), 4, 1, {1, 1, 1, 1});
  auto j = RenderResultToJson(result, {"a"});
  ASSERT_TRUE(j.ok()) << j.status();
  // "objective" stays the objective's text.
  EXPECT_EQ((*j)["objective"], "channel(conv2, 5) - 0.01 * tv()");
  EXPECT_DOUBLE_EQ((*j)["objective_values"]["per_image"].get<double>(), 1.41 - 0.02);
  EXPECT_NEAR((*j)["objective_values"]["per_image_at_last_step"].get<double>(), 1.6 - 0.03,
              1e-6);
  EXPECT_DOUBLE_EQ((*j)["objective_values"]["summed_over_images"].get<double>(),
                   result.final_total());
  EXPECT_DOUBLE_EQ((*j)["final_total"].get<double>(), result.final_total());
}

TEST(RenderResultToJson, RejectsAMalformedTensor) {
  v1::RenderResult result;
  SetMatrix(result.mutable_logits(), 2, 2, {1, 2});
  SetMatrix(result.mutable_probs(), 1, 1, {1});
  EXPECT_FALSE(RenderResultToJson(result).ok());
}

TEST(ModelToJson, KeepsTheFullHashAndLayers) {
  v1::Model m;
  m.set_name("mnist");
  m.set_content_hash(std::string(64, 'a'));
  m.mutable_input()->set_channels(1);
  auto* layer = m.add_layers();
  layer->set_path("conv2");
  layer->add_output_shape(1);
  layer->add_output_shape(32);
  layer->set_channels(32);
  const nlohmann::ordered_json j = ModelToJson(m);
  EXPECT_EQ(j["content_hash"].get<std::string>().size(), 64u);
  EXPECT_EQ(j["layers"][0]["output_shape"], nlohmann::ordered_json::parse("[1, 32]"));
  EXPECT_EQ(j["input"]["channels"], 1);
}

}  // namespace
}  // namespace featviz::client
