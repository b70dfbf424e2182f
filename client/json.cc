#include "client/json.h"

#include <cmath>
#include <cstdlib>

#include <google/protobuf/util/json_util.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "client/proto_convert.h"

namespace featviz::client {

namespace v1 = featviz::v1;
using json = nlohmann::ordered_json;

namespace {

json MatrixToJson(const std::vector<std::vector<float>>& rows) {
  json out = json::array();
  for (const std::vector<float>& row : rows) {
    json r = json::array();
    for (float v : row) {
      // JSON has no NaN or infinity; null says "no number" honestly.
      if (std::isfinite(v)) {
        r.push_back(ShortestFloat(v));
      } else {
        r.push_back(nullptr);
      }
    }
    out.push_back(std::move(r));
  }
  return out;
}

json DoubleToJson(double v) {
  return std::isfinite(v) ? json(v) : json(nullptr);
}

}  // namespace

absl::StatusOr<json> MessageToJson(const google::protobuf::Message& message) {
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;
  std::string text;
  const auto status =
      google::protobuf::util::MessageToJsonString(message, &text, options);
  if (!status.ok()) {
    return absl::InternalError(
        absl::StrCat("cannot print ", message.GetTypeName(), " as JSON: ",
                     std::string(status.message())));
  }
  return json::parse(text);
}

double ShortestFloat(float value) {
  if (!std::isfinite(value)) return value;
  for (int precision = 6; precision < 9; ++precision) {
    const std::string text = absl::StrFormat("%.*g", precision, value);
    if (std::strtof(text.c_str(), nullptr) == value) {
      return std::strtod(text.c_str(), nullptr);
    }
  }
  return std::strtod(absl::StrFormat("%.9g", value).c_str(), nullptr);
}

json LayerToJson(const v1::Layer& layer) {
  return json{{"path", layer.path()},
              {"kind", layer.kind()},
              {"output_shape", json(std::vector<int64_t>(
                                   layer.output_shape().begin(),
                                   layer.output_shape().end()))},
              {"channels", layer.channels()},
              {"layout", layer.layout()},
              {"tokens", layer.tokens()},
              {"token_prefix", layer.token_prefix()},
              {"grid", {layer.grid_height(), layer.grid_width()}},
              {"tappable", layer.tappable()},
              {"untappable_reason", layer.untappable_reason()}};
}

json ModelToJson(const v1::Model& model) {
  const v1::InputSpec& in = model.input();
  json layers = json::array();
  for (const v1::Layer& layer : model.layers()) {
    layers.push_back(LayerToJson(layer));
  }
  json copies = json::array();
  for (const v1::ModelCopy& copy : model.copies()) {
    copies.push_back(
        {{"device", copy.device()},
         {"state", ModelStateName(copy.state())},
         {"bytes", copy.bytes()},
         {"users", copy.users()},
         {"last_used", copy.has_last_used_time()
                           ? json(TimestampText(copy.last_used_time()))
                           : json(nullptr)},
         {"error", copy.error()}});
  }
  return json{
      {"name", model.name()},
      {"version", model.version()},
      {"content_hash", model.content_hash()},
      {"description", model.description()},
      {"device", model.device()},
      {"input",
       {{"channels", in.channels()},
        {"height", in.height()},
        {"width", in.width()},
        {"range", {in.range_min(), in.range_max()}},
        {"mean", std::vector<double>(in.mean().begin(), in.mean().end())},
        {"std", std::vector<double>(in.std().begin(), in.std().end())},
        {"band_names", std::vector<std::string>(in.band_names().begin(),
                                                in.band_names().end())},
        {"composite", std::vector<int64_t>(in.composite().begin(),
                                           in.composite().end())}}},
      {"class_names", std::vector<std::string>(model.class_names().begin(),
                                               model.class_names().end())},
      {"layers", std::move(layers)},
      {"state", ModelStateName(model.state())},
      {"memory_bytes", model.memory_bytes()},
      {"activation_bytes", model.activation_bytes()},
      {"last_used", model.has_last_used_time()
                        ? json(TimestampText(model.last_used_time()))
                        : json(nullptr)},
      {"copies", std::move(copies)}};
}

absl::StatusOr<json> RenderResultToJson(
    const v1::RenderResult& result,
    const std::vector<std::string>& class_names) {
  json terms = json::array();
  for (const v1::TermResult& t : result.terms()) {
    terms.push_back({{"term", t.term()},
                     {"weight", DoubleToJson(t.weight())},
                     {"final_value", DoubleToJson(t.final_value())}});
  }
  absl::StatusOr<std::vector<std::vector<float>>> logits =
      MatrixFromProto(result.logits());
  if (!logits.ok()) return logits.status();
  absl::StatusOr<std::vector<std::vector<float>>> probs =
      MatrixFromProto(result.probs());
  if (!probs.ok()) return probs.status();

  json top_class = json::array();
  json top_class_name = json::array();
  for (const std::vector<float>& row : *probs) {
    int64_t top = 0;
    for (size_t c = 1; c < row.size(); ++c) {
      if (row[c] > row[top]) top = static_cast<int64_t>(c);
    }
    top_class.push_back(top);
    top_class_name.push_back(top < static_cast<int64_t>(class_names.size())
                                 ? class_names[top]
                                 : std::to_string(top));
  }

  json layer_stats = json::array();
  for (const v1::LayerStats& s : result.layer_stats()) {
    absl::StatusOr<std::vector<std::vector<float>>> mean =
        MatrixFromProto(s.mean());
    if (!mean.ok()) return mean.status();
    absl::StatusOr<std::vector<std::vector<float>>> max =
        MatrixFromProto(s.max());
    if (!max.ok()) return max.status();
    layer_stats.push_back({{"layer", s.layer()},
                           {"mean", MatrixToJson(*mean)},
                           {"max", MatrixToJson(*max)}});
  }

  json out = {
      {"model", result.model()},
      {"model_version", result.model_version()},
      {"model_hash", result.model_hash()},
      {"objective", result.objective()},
      {"seed", result.seed()},
      {"steps", result.steps()},
      {"transforms", result.transforms()},
      {"linear_mode", result.linear_mode()},
      {"precision", result.precision()},
      {"parameterization", ParameterizationText(result.parameterization())},
      {"terms", std::move(terms)},
      // The quantity maximised: summed over the images.
      {"final_total", DoubleToJson(result.final_total())},
      {"logits", MatrixToJson(*logits)},
      {"probs", MatrixToJson(*probs)},
      {"top_class", std::move(top_class)},
      {"top_class_name", std::move(top_class_name)},
      {"layer_stats", std::move(layer_stats)},
      {"timings",
       {{"queue_seconds", result.timings().queue_seconds()},
        {"compute_seconds", result.timings().compute_seconds()}}},
  };
  // RenderRequest.trust: the exemplars without their PNGs (--out writes
  // them), and each picture's path similarity.
  if (result.has_exemplars()) {
    json examples = json::array();
    for (const v1::Exemplar& e : result.exemplars().examples()) {
      examples.push_back({{"index", e.index()},
                          {"value", DoubleToJson(e.value())},
                          {"label", e.label()}});
    }
    out["exemplars"] = {{"dataset", result.exemplars().dataset()},
                        {"unit", result.exemplars().unit()},
                        {"cached", result.exemplars().cached()},
                        {"examples", std::move(examples)}};
  }
  if (result.path_similarity_size() > 0) {
    json checks = json::array();
    for (const v1::PathSimilarity& p : result.path_similarity()) {
      json layers = json::array();
      for (const v1::LayerPathSimilarity& l : p.layers()) {
        layers.push_back(
            {{"layer", l.layer()},
             {"score", DoubleToJson(l.score())},
             {"similarity", DoubleToJson(l.similarity())},
             {"natural_similarity", DoubleToJson(l.natural_similarity())},
             {"random_similarity", DoubleToJson(l.random_similarity())}});
      }
      checks.push_back({{"score", DoubleToJson(p.score())},
                        {"threshold", DoubleToJson(p.threshold())},
                        {"reliable", p.reliable()},
                        {"layers", std::move(layers)}});
    }
    out["path_similarity"] = std::move(checks);
  }
  // The objective three ways, each named (ObjectiveFigures): per image on
  // the final images (Σ weight × final_value), per image at the last step
  // with transforms (what the progress line ended at), and summed over the
  // images (final_total).
  const ObjectiveFigures figures = ObjectiveFiguresOf(result);
  out["objective_values"] = {
      {"per_image", DoubleToJson(figures.per_image)},
      {"per_image_at_last_step",
       figures.has_last_step ? DoubleToJson(figures.last_step) : json()},
      {"summed_over_images", DoubleToJson(figures.summed)},
  };
  out["warnings"] = std::vector<std::string>(result.warnings().begin(),
                                             result.warnings().end());
  if (result.accentuation_size() > 0) {
    json accentuation = json::array();
    for (const v1::AccentuationOutcome& a : result.accentuation()) {
      accentuation.push_back({{"seed_value", DoubleToJson(a.seed_value())},
                              {"value", DoubleToJson(a.value())},
                              {"pixel_distance", DoubleToJson(a.pixel_distance())}});
    }
    out["accentuation"] = std::move(accentuation);
  }
  if (!result.maco_magnitude().empty()) {
    out["maco_magnitude"] = result.maco_magnitude();
    out["transparency_maps"] = result.transparency_png_size();
  }
  if (result.composite_size() > 0) {
    out["bands"] = {
        {"names", std::vector<std::string>(result.band_names().begin(),
                                           result.band_names().end())},
        {"composite", std::vector<int64_t>(result.composite().begin(),
                                           result.composite().end())},
        {"sheets", result.band_png_size()}};
  }
  if (result.has_images()) {
    out["image_shape"] = std::vector<int64_t>(result.images().shape().begin(),
                                              result.images().shape().end());
  }
  return out;
}

}  // namespace featviz::client
