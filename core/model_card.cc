#include "core/model_card.h"

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "core/files.h"
#include "core/status_macros.h"

namespace featviz::core {
namespace {

using Json = nlohmann::json;

absl::Status FieldError(absl::string_view field, absl::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat("model card field '", field, "' ", what));
}

absl::Status ReadString(const Json& obj, const char* key, std::string* out) {
  if (!obj.contains(key)) return absl::OkStatus();
  const Json& v = obj.at(key);
  if (v.is_string()) {
    *out = v.get<std::string>();
  } else if (v.is_number()) {
    *out = v.dump();  // "version": 2 is common enough to accept.
  } else {
    return FieldError(key, "must be a string");
  }
  return absl::OkStatus();
}

absl::Status ReadPositive(const Json& obj, const char* key, int64_t* out) {
  if (!obj.contains(key)) return absl::OkStatus();
  const Json& v = obj.at(key);
  if (!v.is_number_integer() || v.get<int64_t>() <= 0 ||
      v.get<int64_t>() > 65536) {
    return FieldError(
        absl::StrCat("input.", key),
        absl::StrCat("must be an integer in [1, 65536], got ", v.dump()));
  }
  *out = v.get<int64_t>();
  return absl::OkStatus();
}

absl::Status ReadNumbers(const Json& obj, const char* key,
                         std::vector<double>* out) {
  if (!obj.contains(key)) return absl::OkStatus();
  const Json& v = obj.at(key);
  if (!v.is_array()) {
    return FieldError(absl::StrCat("input.", key), "must be a list of numbers");
  }
  out->clear();
  for (const Json& x : v) {
    if (!x.is_number()) {
      return FieldError(absl::StrCat("input.", key),
                        absl::StrCat("must hold numbers, got ", x.dump()));
    }
    out->push_back(x.get<double>());
  }
  return absl::OkStatus();
}

// One component of an output path: an index or a key without '.'.
absl::StatusOr<std::string> OutputComponent(const Json& v) {
  if (v.is_number_integer() && v.get<int64_t>() >= 0 &&
      v.get<int64_t>() <= 1000000) {
    return absl::StrCat(v.get<int64_t>());
  }
  if (v.is_string() && !v.get<std::string>().empty() &&
      v.get<std::string>().size() <= 256 &&
      v.get<std::string>().find('.') == std::string::npos) {
    return v.get<std::string>();
  }
  return FieldError("logits",
                    absl::StrCat("must be an output index in [0, 1000000], a "
                                 "key (1 to 256 characters, no '.'), a list "
                                 "of those, or null; got ",
                                 v.dump()));
}

absl::Status ReadLogitsAt(const Json& v, ModelCard* card) {
  if (v.is_null()) {
    card->logits_at = ModelCard::LogitsAt::kNone;
    return absl::OkStatus();
  }
  std::vector<std::string> parts;
  if (v.is_array()) {
    if (v.empty() || v.size() > 16) {
      return FieldError("logits", absl::StrCat("path must hold 1 to 16 "
                                               "components, got ",
                                               v.size()));
    }
    for (const Json& part : v) {
      absl::StatusOr<std::string> p = OutputComponent(part);
      if (!p.ok()) return p.status();
      parts.push_back(*p);
    }
  } else if (v.is_string() &&
             v.get<std::string>().find('.') != std::string::npos) {
    // "1.age": the dotted form the outputs are listed under.
    const std::vector<std::string> split =
        absl::StrSplit(v.get<std::string>(), '.');
    if (split.size() > 16) {
      return FieldError("logits", absl::StrCat("path must hold 1 to 16 "
                                               "components, got ",
                                               split.size()));
    }
    for (const std::string& part : split) {
      absl::StatusOr<std::string> p = OutputComponent(Json(part));
      if (!p.ok()) return p.status();
      parts.push_back(*p);
    }
  } else {
    absl::StatusOr<std::string> p = OutputComponent(v);
    if (!p.ok()) return p.status();
    parts.push_back(*p);
  }
  card->logits_at = ModelCard::LogitsAt::kOutput;
  card->logits_output = absl::StrJoin(parts, ".");
  return absl::OkStatus();
}

// "tokens": {"prefix": P, "grid": [GH, GW]}.
absl::Status ReadTokens(const Json& v, ModelCard* card) {
  if (!v.is_object()) {
    return FieldError("tokens",
                      "must be an object such as "
                      "{\"prefix\": 1, \"grid\": [14, 14]}");
  }
  for (const auto& [key, value] : v.items()) {
    if (key != "prefix" && key != "grid") {
      return FieldError("tokens",
                        absl::StrCat("has unknown key \"", key.substr(0, 64),
                                     "\"; keys are prefix, grid"));
    }
  }
  if (!v.contains("prefix") || !v.at("prefix").is_number_integer() ||
      v.at("prefix").get<int64_t>() < 0 ||
      v.at("prefix").get<int64_t>() > 1024) {
    return FieldError(
        "tokens.prefix",
        absl::StrCat("must be an integer in [0, 1024], got ",
                     v.contains("prefix") ? v.at("prefix").dump().substr(0, 64)
                                          : std::string("nothing")));
  }
  const Json* grid = v.contains("grid") ? &v.at("grid") : nullptr;
  if (grid == nullptr || !grid->is_array() || grid->size() != 2 ||
      !(*grid)[0].is_number_integer() || !(*grid)[1].is_number_integer() ||
      (*grid)[0].get<int64_t>() < 1 || (*grid)[0].get<int64_t>() > 4096 ||
      (*grid)[1].get<int64_t>() < 1 || (*grid)[1].get<int64_t>() > 4096) {
    return FieldError("tokens.grid",
                      absl::StrCat("must be [rows, columns], each an integer "
                                   "in [1, 4096], got ",
                                   grid ? grid->dump().substr(0, 64)
                                        : std::string("nothing")));
  }
  card->token_prefix = v.at("prefix").get<int64_t>();
  card->token_grid_h = (*grid)[0].get<int64_t>();
  card->token_grid_w = (*grid)[1].get<int64_t>();
  return absl::OkStatus();
}

// "bands": {"names": [...], "composite": [r, g, b]}; checked against the
// input's channel count by the caller.
absl::Status ReadBands(const Json& v, ModelCard* card) {
  if (!v.is_object()) {
    return FieldError("bands",
                      "must be an object such as {\"names\": [...], "
                      "\"composite\": [0, 1, 2]}");
  }
  for (const auto& [key, value] : v.items()) {
    if (key != "names" && key != "composite") {
      return FieldError("bands",
                        absl::StrCat("has unknown key \"", key.substr(0, 64),
                                     "\"; keys are names, composite"));
    }
  }
  if (v.contains("names")) {
    const Json& names = v.at("names");
    if (!names.is_array()) return FieldError("bands.names", "must be a list");
    for (const Json& name : names) {
      if (!name.is_string() || name.get<std::string>().empty() ||
          name.get<std::string>().size() > 64) {
        return FieldError("bands.names",
                          "must hold strings of 1 to 64 characters");
      }
      card->band_names.push_back(name.get<std::string>());
    }
  }
  if (v.contains("composite")) {
    const Json& composite = v.at("composite");
    if (!composite.is_array() ||
        (composite.size() != 1 && composite.size() != 3)) {
      return FieldError("bands.composite",
                        "must list 3 band indices (red, green, blue) or 1 "
                        "(gray)");
    }
    for (const Json& band : composite) {
      if (!band.is_number_integer() || band.get<int64_t>() < 0 ||
          band.get<int64_t>() >= card->channels) {
        return FieldError(
            "bands.composite",
            absl::StrCat("holds ", band.dump().substr(0, 64),
                         "; band indices must be integers in [0, ",
                         card->channels - 1, "] for ", card->channels,
                         " input channels"));
      }
      card->composite.push_back(band.get<int64_t>());
    }
  }
  return absl::OkStatus();
}

}  // namespace

std::vector<int64_t> ModelCard::CompositeBands() const {
  if (!composite.empty()) return composite;
  if (channels >= 3) return {0, 1, 2};
  return {0};
}

absl::StatusOr<ModelCard> ModelCard::Parse(absl::string_view text) {
  Json root = Json::parse(text.begin(), text.end(), nullptr,
                          /*allow_exceptions=*/false);
  if (root.is_discarded()) {
    return absl::InvalidArgumentError("model card is not valid JSON");
  }
  if (!root.is_object()) {
    return absl::InvalidArgumentError("model card must be a JSON object");
  }
  ModelCard card;
  absl::Status s;
  if (!(s = ReadString(root, "name", &card.name)).ok()) return s;
  if (!(s = ReadString(root, "version", &card.version)).ok()) return s;
  if (!(s = ReadString(root, "description", &card.description)).ok()) return s;
  if (root.contains("output")) {
    const Json& out = root.at("output");
    if (!out.is_string() || (out.get<std::string>() != "logits" &&
                             out.get<std::string>() != "log_probs")) {
      return FieldError(
          "output", absl::StrCat("must be \"logits\" or \"log_probs\", got ",
                                 out.dump()));
    }
    card.log_probs = out.get<std::string>() == "log_probs";
  }
  if (root.contains("logits")) {
    if (!(s = ReadLogitsAt(root.at("logits"), &card)).ok()) return s;
  }
  if (root.contains("input")) {
    const Json& in = root.at("input");
    if (!in.is_object()) return FieldError("input", "must be an object");
    if (!(s = ReadPositive(in, "channels", &card.channels)).ok()) return s;
    if (!(s = ReadPositive(in, "height", &card.height)).ok()) return s;
    if (!(s = ReadPositive(in, "width", &card.width)).ok()) return s;
    std::vector<double> range;
    if (!(s = ReadNumbers(in, "range", &range)).ok()) return s;
    if (in.contains("range")) {
      if (range.size() != 2 || !(range[0] < range[1])) {
        return FieldError("input.range", "must be [low, high] with low < high");
      }
      card.range_min = range[0];
      card.range_max = range[1];
    }
    if (!(s = ReadNumbers(in, "mean", &card.mean)).ok()) return s;
    if (!(s = ReadNumbers(in, "std", &card.std)).ok()) return s;
  }
  const size_t c = static_cast<size_t>(card.channels);
  if (!card.mean.empty() && card.mean.size() != c) {
    return FieldError(
        "input.mean",
        absl::StrCat("has ", card.mean.size(), " values for ", c, " channels"));
  }
  if (!card.std.empty() && card.std.size() != c) {
    return FieldError(
        "input.std",
        absl::StrCat("has ", card.std.size(), " values for ", c, " channels"));
  }
  for (double sd : card.std) {
    if (!(sd > 0)) return FieldError("input.std", "values must be > 0");
  }
  if (root.contains("classes")) {
    const Json& classes = root.at("classes");
    if (!classes.is_array()) return FieldError("classes", "must be a list");
    for (const Json& name : classes) {
      if (!name.is_string()) {
        return FieldError("classes", "must hold strings");
      }
      card.classes.push_back(name.get<std::string>());
    }
  }
  if (root.contains("tokens")) {
    if (!(s = ReadTokens(root.at("tokens"), &card)).ok()) return s;
  }
  if (root.contains("bands")) {
    if (!(s = ReadBands(root.at("bands"), &card)).ok()) return s;
    if (!card.band_names.empty() &&
        card.band_names.size() != static_cast<size_t>(card.channels)) {
      return FieldError(
          "bands.names",
          absl::StrCat("has ", card.band_names.size(), " names for ",
                       card.channels, " input channels"));
    }
  }
  return card;
}

absl::StatusOr<ModelCard> ModelCard::Load(const std::string& path) {
  FEATVIZ_ASSIGN_OR_RETURN(const std::string text, ReadFile(path));
  absl::StatusOr<ModelCard> card = Parse(text);
  if (!card.ok()) {
    return absl::Status(card.status().code(),
                        absl::StrCat(path, ": ", card.status().message()));
  }
  return card;
}

std::string ModelCard::ToJson() const {
  Json root;
  root["name"] = name;
  root["version"] = version;
  root["description"] = description;
  root["input"] = {{"channels", channels}, {"height", height},
                   {"width", width},       {"range", {range_min, range_max}},
                   {"mean", mean},         {"std", std}};
  root["output"] = log_probs ? "log_probs" : "logits";
  if (logits_at == LogitsAt::kNone) root["logits"] = nullptr;
  if (logits_at == LogitsAt::kOutput) root["logits"] = logits_output;
  root["classes"] = classes;
  if (token_prefix >= 0) {
    root["tokens"] = {{"prefix", token_prefix},
                      {"grid", {token_grid_h, token_grid_w}}};
  }
  if (!band_names.empty() || !composite.empty()) {
    root["bands"] = Json::object();
    if (!band_names.empty()) root["bands"]["names"] = band_names;
    if (!composite.empty()) root["bands"]["composite"] = composite;
  }
  return root.dump(2);
}

}  // namespace featviz::core
