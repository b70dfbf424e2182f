// Transformers and other token-layer models (issue 24): a [B, T, D] layer's
// channels are its D features, attention blocks load and can be tapped, and
// no objective on any layer surfaces an internal error. The models are built
// by tests/models/make_transformer_models.py.
#include <gtest/gtest.h>
#include <torch/script.h>

#include <algorithm>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/analysis.h"
#include "core/model.h"
#include "core/objective.h"
#include "core/objective_eval.h"
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

const LayerInfo& Layer(const Model& model, const std::string& path) {
  const LayerInfo* layer = model.Layer(path);
  EXPECT_NE(layer, nullptr) << path;
  static const LayerInfo kNone;
  return layer == nullptr ? kNone : *layer;
}

bool Contains(absl::string_view text, absl::string_view part) {
  return text.find(part) != absl::string_view::npos;
}

RenderOptions Steps(int64_t steps) {
  RenderOptions options;
  options.steps = steps;
  options.transforms = TransformList{};
  return options;
}

const char* const kTransformers[] = {"vit_scripted.pt", "vit_traced.pt",
                                     "vit_encoder_layer.pt", "mixer.pt"};

TEST(TokenLayers, EveryTransformerLoadsScriptedAndTraced) {
  for (const char* file : kTransformers) {
    std::unique_ptr<Model> model = MustLoad(file);
    ASSERT_NE(model, nullptr) << file;
    int64_t token_layers = 0;
    for (const LayerInfo& layer : model->layers()) {
      if (layer.layout == LayerLayout::kTokens) ++token_layers;
    }
    EXPECT_GT(token_layers, 4) << file;
  }
}

TEST(TokenLayers, ChannelsAreTheFeaturesNotTheTokens) {
  std::unique_ptr<Model> model = MustLoad("vit_scripted.pt");
  ASSERT_NE(model, nullptr);
  // The MLP's expansion: Linear(64, 128) over 1 class token + 4x4 patches.
  const LayerInfo& mlp = Layer(*model, "blocks.0.mlp.0");
  EXPECT_EQ(mlp.shape, (std::vector<int64_t>{1, 17, 128}));
  EXPECT_EQ(mlp.layout, LayerLayout::kTokens);
  EXPECT_EQ(mlp.channels, 128);
  EXPECT_EQ(mlp.tokens, 17);
  EXPECT_EQ(mlp.token_prefix, 1);
  EXPECT_EQ(mlp.grid_h, 4);
  EXPECT_EQ(mlp.grid_w, 4);
  // The patch embedding is an ordinary map.
  const LayerInfo& patches = Layer(*model, "patch_embed");
  EXPECT_EQ(patches.layout, LayerLayout::kSpatial);
  EXPECT_EQ(patches.channels, 64);
  // The head reads the class token: a flat layer.
  EXPECT_EQ(Layer(*model, "head").layout, LayerLayout::kFlat);
}

TEST(TokenLayers, AttentionBlocksAreTappableWithAndWithoutWeights) {
  for (const char* file : {"vit_scripted.pt", "vit_traced.pt"}) {
    std::unique_ptr<Model> model = MustLoad(file);
    ASSERT_NE(model, nullptr) << file;
    const LayerInfo& attn = Layer(*model, "blocks.1.attn");
    EXPECT_TRUE(attn.tappable) << file << ": " << attn.untappable_reason;
    EXPECT_EQ(attn.layout, LayerLayout::kTokens) << file;
    EXPECT_EQ(attn.channels, 64) << file;
    absl::StatusOr<RenderResult> result =
        Render(*model, Channel("blocks.1.attn", 7), Steps(2));
    EXPECT_TRUE(result.ok()) << file << ": " << result.status();
  }
  std::unique_ptr<Model> encoder = MustLoad("vit_encoder_layer.pt");
  ASSERT_NE(encoder, nullptr);
  EXPECT_TRUE(Layer(*encoder, "encoder.layers.0.linear1").tappable);
  EXPECT_EQ(Layer(*encoder, "encoder.layers.0.linear1").channels, 128);
}

TEST(TokenLayers, InfersTheGridWithoutACard) {
  // vit_encoder_layer's card has no "tokens": 17 tokens = 1 + 4x4.
  std::unique_ptr<Model> model = MustLoad("vit_encoder_layer.pt");
  ASSERT_NE(model, nullptr);
  const LayerInfo& layer = Layer(*model, "encoder.layers.0.linear1");
  EXPECT_EQ(layer.token_prefix, 1);
  EXPECT_EQ(layer.grid_h, 4);
  EXPECT_EQ(layer.grid_w, 4);
}

TEST(TokenLayers, ValidationNamesTheLayerItsShapeAndWhatTheTermNeeds) {
  std::unique_ptr<Model> model = MustLoad("vit_scripted.pt");
  ASSERT_NE(model, nullptr);
  const ModelShape shape = model->shape();
  auto check = [&](const std::string& text) {
    absl::StatusOr<Objective> objective = Objective::Parse(text);
    EXPECT_TRUE(objective.ok()) << text << ": " << objective.status();
    return objective.ok() ? objective->Validate(shape, 2) : objective.status();
  };
  EXPECT_TRUE(check("channel(blocks.0.mlp.0, 100)").ok());
  EXPECT_TRUE(check("neuron(blocks.0.mlp.0, 5, 3)").ok());
  EXPECT_TRUE(check("neuron(blocks.0.mlp.0, 5, 1, 2)").ok());
  EXPECT_TRUE(check("channel(blocks.0.mlp.0, 5, tokens=cls)").ok());
  EXPECT_TRUE(check("channel(blocks.0.mlp.0, 5, tokens=patches)").ok());
  EXPECT_TRUE(check("layer(blocks.1, tokens=patches)").ok());

  absl::Status s = check("channel(blocks.0.mlp.0, 128)");
  EXPECT_EQ(s.code(), absl::StatusCode::kOutOfRange) << s;
  EXPECT_TRUE(Contains(s.message(), "128 channels")) << s;
  s = check("neuron(blocks.0.mlp.0, 5, 17)");
  EXPECT_EQ(s.code(), absl::StatusCode::kOutOfRange) << s;
  EXPECT_TRUE(Contains(s.message(), "token 17")) << s;
  EXPECT_TRUE(Contains(s.message(), "[1, 17, 128]")) << s;
  s = check("neuron(blocks.0.mlp.0, 5, 4, 0)");
  EXPECT_EQ(s.code(), absl::StatusCode::kOutOfRange) << s;
  EXPECT_TRUE(Contains(s.message(), "1 + 4x4 patches")) << s;
  s = check("neuron(patch_embed, 5, 3)");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_TRUE(Contains(s.message(), "not a token layer")) << s;
  s = check("channel(patch_embed, 5, tokens=cls)");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_TRUE(Contains(s.message(), "needs a token layer")) << s;
  s = check("direction(blocks.0.mlp.0, [1, 2, 3])");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_TRUE(Contains(s.message(), "128 channels")) << s;

  std::unique_ptr<Model> mixer = MustLoad("mixer.pt");
  ASSERT_NE(mixer, nullptr);
  absl::StatusOr<Objective> cls =
      Objective::Parse("channel(blocks.0.channel_mix.mlp.0, 1, tokens=cls)");
  ASSERT_TRUE(cls.ok());
  s = cls->Validate(mixer->shape(), 1);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_TRUE(Contains(s.message(), "has none before its patches")) << s;
}

TEST(TokenLayers, TermsPrintBackToWhatTheyParseFrom) {
  for (const char* text :
       {"neuron(blocks.0.mlp.0, 5, 3)", "neuron(blocks.0.mlp.0, 5, 1, 2)",
        "channel(blocks.0.mlp.0, 5, tokens=cls)",
        "direction(blocks.0.mlp.0, [1, 2], tokens=patches, batch=1)",
        "layer(blocks.1, tokens=patches)"}) {
    absl::StatusOr<Objective> objective = Objective::Parse(text);
    ASSERT_TRUE(objective.ok()) << text << ": " << objective.status();
    EXPECT_EQ(objective->ToString(), text);
    absl::StatusOr<Objective> again = Objective::Parse(objective->ToString());
    ASSERT_TRUE(again.ok());
    EXPECT_EQ(*again, *objective);
  }
  EXPECT_FALSE(Objective::Parse("channel(l, 1, tokens=some)").ok());
  EXPECT_FALSE(Objective::Parse("neuron(l, 1, 2, token=3)").ok());
  EXPECT_FALSE(Objective::Parse("logit(1, tokens=cls)").ok());
}

TEST(TokenLayers, TermsReadTheFeaturesOfTheTokens) {
  std::unique_ptr<Model> model = MustLoad("vit_scripted.pt");
  ASSERT_NE(model, nullptr);
  at::manual_seed(3);
  const at::Tensor images = at::rand({2, 3, 32, 32});
  absl::StatusOr<Taps> taps = model->Forward(images, {"blocks.0.mlp.0"});
  ASSERT_TRUE(taps.ok()) << taps.status();
  // Channels first: [B, D, T].
  const at::Tensor a = taps->activations.at("blocks.0.mlp.0");
  ASSERT_EQ(a.sizes(), (std::vector<int64_t>{2, 128, 17}));
  auto value = [&](const std::string& text) {
    absl::StatusOr<Objective> objective = Objective::Parse(text);
    EXPECT_TRUE(objective.ok()) << objective.status();
    absl::StatusOr<ObjectiveValue> v =
        EvaluateObjective(*objective, *taps, images);
    EXPECT_TRUE(v.ok()) << v.status();
    return v.ok() ? v->terms[0].item<double>() : 0.0;
  };
  EXPECT_NEAR(value("channel(blocks.0.mlp.0, 40)"),
              a.select(1, 40).mean().item<double>(), 1e-5);
  EXPECT_NEAR(value("channel(blocks.0.mlp.0, 40, tokens=cls)"),
              a.select(1, 40).select(1, 0).mean().item<double>(), 1e-5);
  EXPECT_NEAR(value("channel(blocks.0.mlp.0, 40, tokens=patches)"),
              a.select(1, 40).narrow(1, 1, 16).mean().item<double>(), 1e-5);
  EXPECT_NEAR(value("neuron(blocks.0.mlp.0, 40, 6)"),
              a.select(1, 40).select(1, 6).mean().item<double>(), 1e-5);
  // Patch (x 2, y 1) of the 4x4 grid is token 1 + 1 * 4 + 2.
  EXPECT_NEAR(value("neuron(blocks.0.mlp.0, 40, 2, 1)"),
              a.select(1, 40).select(1, 7).mean().item<double>(), 1e-5);
  // Unset: the class token.
  EXPECT_NEAR(value("neuron(blocks.0.mlp.0, 40)"),
              a.select(1, 40).select(1, 0).mean().item<double>(), 1e-5);
}

// Every term kind on every tappable layer of every token model either is
// refused by validation with a named, non-internal status, or renders.
TEST(TokenLayers, NoObjectiveOnAnyLayerIsAnInternalError) {
  for (const char* file : kTransformers) {
    std::unique_ptr<Model> model = MustLoad(file);
    ASSERT_NE(model, nullptr) << file;
    int64_t rendered = 0;
    for (const LayerInfo& layer : model->layers()) {
      if (!layer.tappable) continue;
      const std::string l = absl::StrCat("'", layer.path, "'");
      std::vector<std::string> texts = {
          absl::StrCat("neuron(", l, ", 1)"),
          absl::StrCat("neuron(", l, ", 1, 2)"),
          absl::StrCat("neuron(", l, ", 1, 1, 1)"),
          absl::StrCat("channel(", l, ", 1)"),
          absl::StrCat("channel(", l, ", 1, tokens=cls)"),
          absl::StrCat("channel(", l, ", 1, tokens=patches)"),
          absl::StrCat("layer(", l, ")"),
          absl::StrCat("diversity(", l, ")"),
          absl::StrCat(
              "direction(", l, ", [",
              absl::StrJoin(
                  std::vector<int>(std::max<int64_t>(layer.channels, 1), 1),
                  ", "),
              "])"),
      };
      for (const std::string& text : texts) {
        absl::StatusOr<Objective> objective = Objective::Parse(text);
        ASSERT_TRUE(objective.ok()) << text << ": " << objective.status();
        absl::Status valid = objective->Validate(model->shape(), 2);
        if (!valid.ok()) {
          EXPECT_NE(valid.code(), absl::StatusCode::kInternal)
              << file << " " << text << ": " << valid;
          EXPECT_NE(valid.code(), absl::StatusCode::kUnknown)
              << file << " " << text << ": " << valid;
          continue;
        }
        RenderOptions options = Steps(1);
        options.param.batch = 2;
        absl::StatusOr<RenderResult> result =
            Render(*model, *objective, options);
        EXPECT_TRUE(result.ok())
            << file << " " << text << ": " << result.status();
        ++rendered;
      }
    }
    EXPECT_GT(rendered, 50) << file;
  }
}

TEST(TokenLayers, ActivationMapsLieOverThePatchGrid) {
  std::unique_ptr<Model> model = MustLoad("vit_traced.pt");
  ASSERT_NE(model, nullptr);
  at::manual_seed(4);
  const at::Tensor images = at::rand({3, 3, 32, 32});
  absl::StatusOr<std::vector<LayerActivations>> maps =
      ComputeActivations(*model, images, {{"blocks.1.mlp.0", {3, 9}}});
  ASSERT_TRUE(maps.ok()) << maps.status();
  EXPECT_EQ((*maps)[0].maps.sizes(), (std::vector<int64_t>{3, 2, 4, 4}));
  absl::StatusOr<Attribution> attribution =
      Attribute(*model, Logit(2), "blocks.1.mlp.0", images, /*gradcam=*/true);
  ASSERT_TRUE(attribution.ok()) << attribution.status();
  EXPECT_EQ(attribution->scores.size(0), 128);
  EXPECT_EQ(attribution->gradcam.sizes(), (std::vector<int64_t>{3, 32, 32}));
  absl::StatusOr<ClassDetectors> detectors =
      FindDetectors(*model, images, 1, "blocks.1.mlp.0", 3);
  ASSERT_TRUE(detectors.ok()) << detectors.status();
  EXPECT_EQ(detectors->detectors[0].example_map.sizes(),
            (std::vector<int64_t>{4, 4}));
}

TEST(TokenLayers, AClassLogitRisesOnEveryTransformer) {
  for (const char* file : kTransformers) {
    std::unique_ptr<Model> model = MustLoad(file);
    ASSERT_NE(model, nullptr) << file;
    absl::StatusOr<RenderResult> result = Render(*model, Logit(1), Steps(24));
    ASSERT_TRUE(result.ok()) << file << ": " << result.status();
    const double first = result->trace[0][0].item<double>();
    EXPECT_GT(result->final_values[0], first) << file;
  }
}

// The small ViT trained on the coloured digits (scripts/quality_models.py,
// 6 epochs, committed as tests/models/colour_vit.pt): with the default
// options every class picture is its class at p >= 0.9.
TEST(TrainedVit, ClassPicturesReachProbabilityPointNineWithTheDefaults) {
  absl::StatusOr<std::unique_ptr<Model>> model =
      Model::Load(std::string(FEATVIZ_SOURCE_TESTS_DIR) +
                  "/models/colour_vit.pt");
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_TRUE((*model)->IsTokenModel());
  Objective objective;
  for (int64_t c = 0; c < 10; ++c) objective = objective + ForBatch(Logit(c), c);
  RenderOptions options;  // Every default: FFT, the default transforms.
  options.param.batch = 10;
  absl::StatusOr<RenderResult> result = Render(**model, objective, options);
  ASSERT_TRUE(result.ok()) << result.status();
  for (int64_t c = 0; c < 10; ++c) {
    EXPECT_GE(result->probs[c][c].item<double>(), 0.9) << "class " << c;
  }
}

}  // namespace
}  // namespace featviz::core
