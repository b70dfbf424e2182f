// Models that were not written for featviz (issue 14): outputs of any
// structure, layers of any name, non-square and gray inputs. The models are
// built by tests/models/wild_models.py.
#include <algorithm>
#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <torch/script.h>

#include "core/image.h"
#include "core/model.h"
#include "core/model_card.h"
#include "core/objective.h"
#include "core/render.h"
#include "tests/core/test_paths.h"

namespace featviz::core {
namespace {

using ::featviz::testing::TestModel;

std::unique_ptr<Model> MustLoad(const std::string& file) {
  absl::StatusOr<std::unique_ptr<Model>> model = Model::Load(TestModel(file));
  EXPECT_TRUE(model.ok()) << file << ": " << model.status();
  return model.ok() ? *std::move(model) : nullptr;
}

bool Contains(absl::string_view text, absl::string_view part) {
  return text.find(part) != absl::string_view::npos;
}

// Writes the images where FEATVIZ_TEST_PNG_DIR says (to look at them).
void Keep(const at::Tensor& images, const std::string& name) {
  const char* dir = std::getenv("FEATVIZ_TEST_PNG_DIR");
  if (dir == nullptr) return;
  GridOptions options;
  options.scale = std::max<int64_t>(1, 96 / images.size(2));
  absl::StatusOr<at::Tensor> grid = MakeGrid(images, options);
  ASSERT_TRUE(grid.ok()) << grid.status();
  ASSERT_TRUE(WritePng(*grid, std::string(dir) + "/" + name + ".png").ok());
}

RenderOptions Steps(int64_t steps) {
  RenderOptions options;
  options.steps = steps;
  return options;
}

// ------------------------------------------------------------ model cards

TEST(ModelCardLogits, ReadsAnIndexAKeyAPathAndNull) {
  struct Case {
    const char* json;
    ModelCard::LogitsAt at;
    const char* output;
  };
  for (const Case& c : std::vector<Case>{
           {R"({"logits": 0})", ModelCard::LogitsAt::kOutput, "0"},
           {R"({"logits": "age"})", ModelCard::LogitsAt::kOutput, "age"},
           {R"({"logits": [1, "age"]})", ModelCard::LogitsAt::kOutput, "1.age"},
           {R"({"logits": "1.age"})", ModelCard::LogitsAt::kOutput, "1.age"},
           {R"({"logits": null})", ModelCard::LogitsAt::kNone, ""},
           {R"({})", ModelCard::LogitsAt::kAuto, ""},
       }) {
    absl::StatusOr<ModelCard> card = ModelCard::Parse(c.json);
    ASSERT_TRUE(card.ok()) << c.json << ": " << card.status();
    EXPECT_EQ(card->logits_at, c.at) << c.json;
    EXPECT_EQ(card->logits_output, c.output) << c.json;
    // ToJson writes it back the same way.
    absl::StatusOr<ModelCard> again = ModelCard::Parse(card->ToJson());
    ASSERT_TRUE(again.ok()) << again.status();
    EXPECT_EQ(again->logits_at, c.at);
    EXPECT_EQ(again->logits_output, c.output);
  }
}

TEST(ModelCardLogits, ReadsLogProbs) {
  absl::StatusOr<ModelCard> card = ModelCard::Parse(R"({"output": "log_probs"})");
  ASSERT_TRUE(card.ok()) << card.status();
  EXPECT_TRUE(card->log_probs);
  EXPECT_FALSE(ModelCard::Parse(R"({"output": "probs"})").ok());
}

TEST(ModelCardLogits, RefusesWhatIsNotAnIndexKeyOrPathNamingTheField) {
  for (const char* json :
       {R"({"logits": -1})", R"({"logits": 1.5})", R"({"logits": ""})",
        R"({"logits": true})", R"({"logits": []})", R"({"logits": {"a": 1}})",
        R"({"logits": [0, [1]]})", R"({"logits": 99999999999})",
        R"({"logits": "a..b"})"}) {
    absl::StatusOr<ModelCard> card = ModelCard::Parse(json);
    ASSERT_FALSE(card.ok()) << json;
    EXPECT_EQ(card.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_TRUE(Contains(card.status().message(), "'logits'"))
        << json << ": " << card.status();
  }
}

// ----------------------------------------------------------- layer names

TEST(ObjectiveNames, ReadsQuotedAndNumericPathsAndPrintsThemCanonically) {
  struct Case {
    const char* text;
    const char* canonical;
  };
  for (const Case& c : std::vector<Case>{
           {"channel('0', 3)", "channel('0', 3)"},
           {"channel(0, 3)", "channel('0', 3)"},
           {"0:3", "channel('0', 3)"},
           {"'features.block-1':2", "channel('features.block-1', 2)"},
           {"channel(\"features.block-1\", 2)", "channel('features.block-1', 2)"},
           {"neuron(1.conv, 0, 2, 3)", "neuron('1.conv', 0, 2, 3)"},
           {"layer(features.0)", "layer(features.0)"},
           {"direction('0', [1, -2])", "direction('0', [1, -2])"},
           {"output(age, 3)", "output(age, 3)"},
           {"output(1, 0) - 0.5 * output('1.age', 2, batch=1)",
            "output('1', 0) - 0.5 * output('1.age', 2, batch=1)"},
           {"layer('it\\'s')", "layer('it\\'s')"},
           {"layer('back\\\\slash')", "layer('back\\\\slash')"},
           {"channel('a b', 1)", "channel('a b', 1)"},
       }) {
    absl::StatusOr<Objective> objective = Objective::Parse(c.text);
    ASSERT_TRUE(objective.ok()) << c.text << ": " << objective.status();
    EXPECT_EQ(objective->ToString(), c.canonical) << c.text;
    absl::StatusOr<Objective> again = Objective::Parse(objective->ToString());
    ASSERT_TRUE(again.ok()) << again.status();
    EXPECT_EQ(*again, *objective) << c.text;
  }
}

TEST(ObjectiveNames, AnyNameRoundTripsThroughCanonicalText) {
  for (const std::string name :
       {"0", "12.3", "1e5", "block-1", "a.b-c.0", "'", "\\", "\"", "x y",
        "räder", "a:b", "conv(1)", "0.conv", "_x", "a..b", ".a", "a."}) {
    for (const Objective& o :
         {Channel(name, 1), LayerObjective(name), Output(name, 2),
          Neuron(name, 0, 1, 2), Direction(name, {0.5, -1})}) {
      absl::StatusOr<Objective> again = Objective::Parse(o.ToString());
      ASSERT_TRUE(again.ok()) << name << " -> " << o.ToString() << ": "
                              << again.status();
      EXPECT_EQ(*again, o) << o.ToString();
    }
  }
}

TEST(ObjectiveNames, SaysWhatIsWrongWithAQuote) {
  absl::StatusOr<Objective> o = Objective::Parse("channel('conv, 3)");
  ASSERT_FALSE(o.ok());
  EXPECT_TRUE(Contains(o.status().message(), "unterminated")) << o.status();
  o = Objective::Parse("channel('', 3)");
  ASSERT_FALSE(o.ok());
  EXPECT_TRUE(Contains(o.status().message(), "empty")) << o.status();
  o = Objective::Parse("channel(block-1, 3)");
  ASSERT_FALSE(o.ok());
  EXPECT_TRUE(Contains(o.status().message(), "quote it")) << o.status();
}

ModelShape Backbone() {
  ModelShape shape;
  shape.model_name = "trunk";
  shape.no_classes_reason = "its card says \"logits\": null";
  LayerInfo conv;
  conv.path = "0";
  conv.kind = "Conv2d";
  conv.shape = {1, 8, 4, 4};
  conv.channels = 8;
  LayerInfo rarely;
  rarely.path = "rarely";
  rarely.kind = "Conv2d";
  rarely.tappable = false;
  rarely.untappable_reason = "forward() calls it only inside control flow";
  shape.layers = {conv, rarely};
  shape.outputs = {OutputInfo{"features", {1, 8, 4, 4}, 8},
                   OutputInfo{"norm", {1}, 0}};
  return shape;
}

TEST(ObjectiveValidation, RefusesClassTermsOnAModelWithoutClassesNamingIt) {
  for (const char* text : {"logit(0)", "channel('0', 1) + prob(2)"}) {
    absl::Status s = Objective::Parse(text)->Validate(Backbone(), 1);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << text;
    EXPECT_TRUE(Contains(s.message(), "trunk")) << s;
    EXPECT_TRUE(Contains(s.message(), "no class output")) << s;
    EXPECT_TRUE(Contains(s.message(), "null")) << s;
  }
  // Every other term works.
  EXPECT_TRUE(Objective::Parse("channel(0, 1) + layer('0') + output(features, 7) "
                               "- 0.1 * tv() + direction(0, [1,1,1,1,1,1,1,1])")
                  ->Validate(Backbone(), 2)
                  .ok());
}

TEST(ObjectiveValidation, ChecksOutputsByNameAndChannel) {
  absl::Status s = Objective::Parse("output(logits, 0)")->Validate(Backbone(), 1);
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(Contains(s.message(), "outputs are: features, norm")) << s;
  s = Objective::Parse("output(features, 8)")->Validate(Backbone(), 1);
  EXPECT_EQ(s.code(), absl::StatusCode::kOutOfRange) << s;
  s = Objective::Parse("output(norm, 0)")->Validate(Backbone(), 1);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
}

TEST(ObjectiveValidation, RefusesAnUntappableLayerSayingWhy) {
  absl::Status s = Objective::Parse("rarely:0")->Validate(Backbone(), 1);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(s.message(), "cannot be tapped")) << s;
  EXPECT_TRUE(Contains(s.message(), "control flow")) << s;
}

// ------------------------------------------------------------- the models

struct Wild {
  const char* file;
  int64_t classes;
  std::vector<std::string> outputs;
  const char* logits;      // Output holding the classes; "" for none.
  const char* some_layer;  // A layer the catalogue must list, tappable.
  const char* channel;     // A channel objective to render.
  int64_t cls;             // A class to reach (when classes).
  int64_t steps;           // Steps for it.
};

std::ostream& operator<<(std::ostream& out, const Wild& w) { return out << w.file; }

std::vector<Wild> WildModels() {
  return {
      {"mobilenet_like.pt", 10, {"0"}, "0", "blocks.1.3", "channel(blocks.1.3, 5)", 5, 128},
      {"sequential.pt", 4, {"0"}, "0", "3", "channel('3', 2)", 1, 64},
      {"face_heads.pt", 2, {"0", "1", "2"}, "1", "trunk.3", "channel(trunk.3, 1)", 1, 64},
      {"dict_heads.pt", 6, {"species", "mask"}, "species", "encoder.0",
       "channel(encoder.0, 3)", 4, 64},
      {"backbone.pt", 0, {"0"}, "", "layer2.0", "channel(layer2.0, 7)", 0, 0},
      {"wide_input.pt", 3, {"0"}, "0", "conv2", "channel(conv2, 4)", 1, 64},
      {"log_softmax.pt", 5, {"0"}, "0", "conv", "channel(conv, 2)", 3, 64},
      {"odd_names.pt", 3, {"0"}, "0", "features.block-1",
       "channel('features.block-2', 6)", 2, 64},
  };
}

class WildModel : public ::testing::TestWithParam<Wild> {};

TEST_P(WildModel, LoadsAndListsItsLayersAndOutputs) {
  const Wild& w = GetParam();
  auto model = MustLoad(w.file);
  ASSERT_NE(model, nullptr);
  EXPECT_EQ(model->shape().num_classes, w.classes);
  EXPECT_EQ(model->logits_output(), w.logits);
  std::vector<std::string> outputs;
  for (const OutputInfo& o : model->outputs()) outputs.push_back(o.name);
  std::sort(outputs.begin(), outputs.end());
  std::vector<std::string> expected = w.outputs;
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ(outputs, expected);
  absl::StatusOr<LayerInfo> layer = model->FindLayer(w.some_layer);
  ASSERT_TRUE(layer.ok()) << layer.status();
  EXPECT_TRUE(layer->tappable);
  EXPECT_GT(layer->channels, 0);
  for (const LayerInfo& info : model->layers()) {
    EXPECT_EQ(info.tappable, info.untappable_reason.empty()) << info.path;
  }
}

TEST_P(WildModel, RendersAChannel) {
  const Wild& w = GetParam();
  auto model = MustLoad(w.file);
  ASSERT_NE(model, nullptr);
  absl::StatusOr<Objective> objective = Objective::Parse(w.channel);
  ASSERT_TRUE(objective.ok()) << objective.status();
  RenderOptions options;
  options.steps = 24;
  options.param.batch = 2;
  absl::StatusOr<RenderResult> r = Render(*model, *objective, options);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_GT(r->final_values[0], r->trace[0][0].item<double>()) << w.channel;
  EXPECT_EQ(r->probs.size(1), w.classes);
  Keep(r->images, std::string("channel_") + model->card().name);
}

TEST_P(WildModel, ReachesAClassWhenItHasClasses) {
  const Wild& w = GetParam();
  auto model = MustLoad(w.file);
  ASSERT_NE(model, nullptr);
  if (w.classes == 0) {
    absl::StatusOr<RenderResult> r =
        Render(*model, Prob(0), Steps(1));
    ASSERT_FALSE(r.ok());
    EXPECT_TRUE(Contains(r.status().message(), model->card().name)) << r.status();
    return;
  }
  RenderOptions options;
  options.steps = w.steps;
  options.seed = 1;
  // The logit, as Lucid maximises classes: prob(c)'s gradient is scaled by
  // the probability itself, tiny at the start with a thousand classes.
  absl::StatusOr<RenderResult> r = Render(*model, Logit(w.cls), options);
  ASSERT_TRUE(r.ok()) << r.status();
  const double p = r->probs[0][w.cls].item<double>();
  std::cout << w.file << ": prob(" << w.cls << ") = " << p << " after "
            << w.steps << " steps\n";
  EXPECT_GE(p, 0.9);
  EXPECT_EQ(r->probs[0].argmax().item<int64_t>(), w.cls);
  Keep(r->images, std::string("class_") + model->card().name);
}

INSTANTIATE_TEST_SUITE_P(IssueFourteen, WildModel, ::testing::ValuesIn(WildModels()),
                         [](const auto& info) {
                           std::string name = info.param.file;
                           return name.substr(0, name.find('.'));
                         });

TEST(WildModels, ResNet18LoadsWithItsImageNetCatalogue) {
  auto model = MustLoad("resnet18.pt");
  ASSERT_NE(model, nullptr);
  EXPECT_EQ(model->shape().num_classes, 1000);
  EXPECT_EQ(model->card().height, 224);
  absl::StatusOr<LayerInfo> conv = model->FindLayer("layer4.1.conv2");
  ASSERT_TRUE(conv.ok()) << conv.status();
  EXPECT_EQ(conv->shape, (std::vector<int64_t>{1, 512, 7, 7}));
  EXPECT_TRUE(model->FindLayer("fc").ok());
}

// ResNet-18 at 224 px is slow on a CPU; its card's geometry is only what it
// was trained on, and the network runs at any size (adaptive pooling), so the
// render tests give it a 64 px card.
std::unique_ptr<Model> SmallResNet() {
  absl::StatusOr<ModelCard> card =
      ModelCard::Load(TestModel("resnet18.card.json"));
  EXPECT_TRUE(card.ok()) << card.status();
  card->height = 64;
  card->width = 64;
  torch::jit::Module module = torch::jit::load(TestModel("resnet18.pt"));
  absl::StatusOr<std::unique_ptr<Model>> model =
      Model::Create(module, *card, c10::kCPU);
  EXPECT_TRUE(model.ok()) << model.status();
  return model.ok() ? *std::move(model) : nullptr;
}

TEST(WildModels, ResNet18RendersAChannelAndReachesAClassAt64Pixels) {
  auto model = SmallResNet();
  ASSERT_NE(model, nullptr);
  absl::StatusOr<RenderResult> r =
      Render(*model, *Objective::Parse("channel(layer3.0.conv1, 9)"),
             Steps(16));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_GT(r->final_values[0], r->trace[0][0].item<double>());
  Keep(r->images, "channel_resnet18");
  // A random backbone's features vary little from one image to the next, so
  // a class of a thousand takes more steps than on the small nets (64 steps
  // reach about 0.5 with the head at a trained network's logit range).
  r = Render(*model, Logit(7), Steps(256));
  ASSERT_TRUE(r.ok()) << r.status();
  const double p = r->probs[0][7].item<double>();
  std::cout << "resnet18: prob(7) = " << p << ", top class "
            << r->probs[0].argmax().item<int64_t>() << "\n";
  EXPECT_GE(p, 0.9);
  EXPECT_EQ(r->probs[0].argmax().item<int64_t>(), 7);
  Keep(r->images, "class_resnet18");
}

TEST(WildModels, LogSoftmaxLogitIsTheLogProbabilityAsGiven) {
  auto model = MustLoad("log_softmax.pt");
  ASSERT_NE(model, nullptr);
  absl::StatusOr<Taps> taps = model->Forward(at::rand({3, 1, 16, 16}), {});
  ASSERT_TRUE(taps.ok()) << taps.status();
  EXPECT_TRUE(at::allclose(taps->probs.sum(1), at::ones({3}), 1e-5, 1e-5));
  EXPECT_TRUE(at::allclose(taps->logits, taps->probs.log(), 1e-5, 1e-5));
}

TEST(WildModels, OutputTermsReadTheNamedOutput) {
  auto model = MustLoad("dict_heads.pt");
  ASSERT_NE(model, nullptr);
  absl::StatusOr<RenderResult> r = Render(
      *model, *Objective::Parse("output(mask, 0) + output(species, 2)"),
      Steps(16));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_GT(r->final_values[0], r->trace[0][0].item<double>());
  Keep(r->images, "output_mask");
}

TEST(WildModels, CatalogueListsUntappableAndDashedLayers) {
  auto model = MustLoad("odd_names.pt");
  ASSERT_NE(model, nullptr);
  std::vector<std::string> paths;
  for (const LayerInfo& l : model->layers()) paths.push_back(l.path);
  EXPECT_EQ(paths, (std::vector<std::string>{"features", "features.block-1",
                                             "features.relu-1", "features.block-2",
                                             "features.relu-2", "rarely", "fc"}));
  const LayerInfo& rarely = model->layers()[5];
  EXPECT_FALSE(rarely.tappable);
  EXPECT_TRUE(Contains(rarely.untappable_reason, "control flow"));
  absl::StatusOr<LayerInfo> found = model->FindLayer("rarely");
  ASSERT_FALSE(found.ok());
  EXPECT_TRUE(Contains(found.status().message(), "cannot be tapped"));
  absl::StatusOr<RenderResult> r =
      Render(*model, *Objective::Parse("channel(rarely, 0)"), Steps(1));
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(Contains(r.status().message(), "cannot be tapped")) << r.status();
}

// ----------------------------------------------------------- geometry

TEST(WildGeometry, RendersNonSquareImagesAtTheModelsSizeAndAtOthers) {
  auto model = MustLoad("wide_input.pt");
  ASSERT_NE(model, nullptr);
  for (auto [h, w] : std::vector<std::pair<int64_t, int64_t>>{
           {0, 0}, {20, 36}, {36, 20}, {8, 8}, {9, 13}}) {
    for (ParamKind kind : {ParamKind::kFft, ParamKind::kPixel}) {
      RenderOptions options;
      options.steps = 4;
      options.param.kind = kind;
      options.param.height = h;
      options.param.width = w;
      absl::StatusOr<RenderResult> r =
          Render(*model, *Objective::Parse("channel(conv2, 1)"), options);
      ASSERT_TRUE(r.ok()) << h << "x" << w << ": " << r.status();
      EXPECT_EQ(r->images.size(2), h == 0 ? 24 : h);
      EXPECT_EQ(r->images.size(3), w == 0 ? 40 : w);
      absl::StatusOr<std::string> png = EncodePng(r->images[0]);
      ASSERT_TRUE(png.ok()) << png.status();
      absl::StatusOr<at::Tensor> back = DecodePng(*png);
      ASSERT_TRUE(back.ok());
      EXPECT_EQ(back->sizes(), r->images[0].sizes());
      GridOptions grid_options;
      grid_options.padding = 0;
      grid_options.background = 0;
      absl::StatusOr<at::Tensor> grid = MakeGrid(r->images, grid_options);
      ASSERT_TRUE(grid.ok()) << grid.status();
      EXPECT_EQ(grid->size(1), r->images.size(2));
      EXPECT_EQ(grid->size(2), r->images.size(3));
    }
  }
}

TEST(WildGeometry, RendersFrom8To512Pixels) {
  auto model = MustLoad("sequential.pt");
  ASSERT_NE(model, nullptr);
  for (auto [h, w] : std::vector<std::pair<int64_t, int64_t>>{{8, 8}, {512, 320}}) {
    RenderOptions options;
    options.steps = 2;
    options.param.height = h;
    options.param.width = w;
    absl::StatusOr<RenderResult> r =
        Render(*model, *Objective::Parse("channel('3', 0)"), options);
    ASSERT_TRUE(r.ok()) << h << "x" << w << ": " << r.status();
    EXPECT_EQ(r->images.sizes(), (std::vector<int64_t>{1, 1, h, w}));
  }
}

TEST(WildGeometry, GrayStimuliForAnRgbModelAndNotTheReverse) {
  auto rgb = MustLoad("face_heads.pt");
  ASSERT_NE(rgb, nullptr);
  RenderOptions gray;
  gray.steps = 24;
  gray.param.channels = 1;
  absl::StatusOr<RenderResult> r = Render(*rgb, Prob(1), gray);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->images.size(1), 1);
  EXPECT_GT(r->probs[0][1].item<double>(), r->trace[0][0].item<double>());
  Keep(r->images, "gray_face_heads");

  auto one_channel = MustLoad("sequential.pt");
  ASSERT_NE(one_channel, nullptr);
  RenderOptions colour;
  colour.steps = 1;
  colour.param.channels = 3;
  r = Render(*one_channel, Prob(1), colour);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(r.status().message(), "one-channel model")) << r.status();
}

}  // namespace
}  // namespace featviz::core
