#include "client/label_commands.h"

#include <algorithm>
#include <utility>

#include <nlohmann/json.hpp>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "client/atlas_page.h"
#include "client/circuits_client.h"
#include "client/table.h"
#include "core/status_macros.h"

namespace featviz::client {

namespace v1 = featviz::v1;
using json = nlohmann::ordered_json;

namespace {

// "7 (0.121), 9 (0.0532), 4 (0.011)".
std::string AttributionText(const v1::UnitLabel& unit) {
  std::vector<std::string> parts;
  for (const v1::ClassAttribution& a : unit.attribution()) {
    parts.push_back(absl::StrFormat("%s (%.3g)", a.class_name(), a.score()));
  }
  return parts.empty() ? "-" : absl::StrJoin(parts, ", ");
}

double ShareOf(const v1::UnitLabel& unit, int64_t class_index) {
  for (const v1::ClassShare& c : unit.classes()) {
    if (c.class_index() == class_index) return c.fraction();
  }
  return 0;
}

std::string NameOf(const v1::UnitLabel& unit, int64_t class_index) {
  for (const v1::ClassShare& c : unit.classes()) {
    if (c.class_index() == class_index) return c.class_name();
  }
  return absl::StrCat(class_index);
}

json UnitJson(const v1::UnitLabel& unit) {
  json classes = json::array();
  for (const v1::ClassShare& c : unit.classes()) {
    classes.push_back({{"class_index", c.class_index()},
                       {"class_name", c.class_name()},
                       {"count", c.count()},
                       {"fraction", c.fraction()}});
  }
  json attribution = json::array();
  for (const v1::ClassAttribution& a : unit.attribution()) {
    attribution.push_back({{"class_index", a.class_index()},
                           {"class_name", a.class_name()},
                           {"score", a.score()}});
  }
  return {{"channel", unit.channel()},
          {"label", unit.label()},
          {"selectivity", unit.selectivity()},
          {"classes", std::move(classes)},
          {"attribution", std::move(attribution)}};
}

// A unit of one of the layers asked, for the --label ranking.
struct RankedUnit {
  std::string layer;
  v1::UnitLabel unit;
};

}  // namespace

std::vector<std::string> UnitLayers(const v1::Model& model) {
  std::vector<std::string> out;
  int last_logits_wide = -1;
  for (const AtlasLayer& entry : AtlasLayers(model, {})) {
    const v1::Layer& layer = entry.layer;
    if (!layer.tappable() || layer.channels() < 1) continue;
    if (!model.logits_output().empty() && layer.kind() == "Linear" &&
        layer.channels() == model.class_names_size()) {
      last_logits_wide = static_cast<int>(out.size());
    }
    out.push_back(layer.path());
  }
  // The logits are the model's last such layer; an earlier layer that
  // happens to be as wide stays.
  if (last_logits_wide >= 0 &&
      last_logits_wide == static_cast<int>(out.size()) - 1) {
    out.pop_back();
  }
  return out;
}

absl::Status RunUnits(VisualizerClient& client,
                      const UnitsCommandOptions& options, std::FILE* out) {
  CircuitsClient circuits(client);
  std::vector<std::string> layers;
  if (!options.layer.empty()) {
    layers.push_back(options.layer);
  } else {
    FEATVIZ_ASSIGN_OR_RETURN(const v1::Model model,
                             client.GetModel(options.model));
    layers = UnitLayers(model);
    if (layers.empty()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "model ", options.model,
          " has no convolution or linear layer with channels besides its "
          "logits; name one with --layer"));
    }
  }
  std::vector<v1::LabelUnitsResponse> responses;
  for (const std::string& layer : layers) {
    v1::LabelUnitsRequest request;
    request.set_model(options.model);
    request.set_layer(layer);
    request.set_dataset(options.dataset);
    request.set_top_n(static_cast<int32_t>(options.top_n));
    if (options.label.has_value()) {
      request.set_label(*options.label);
      request.set_limit(static_cast<int32_t>(options.limit));
    }
    absl::StatusOr<v1::LabelUnitsResponse> response =
        circuits.LabelUnits(request);
    // A layer the user did not name is said in the error.
    if (!response.ok() && options.layer.empty()) {
      return core::Prefixed(absl::StrCat("layer ", layer), response.status());
    }
    if (!response.ok()) return response.status();
    responses.push_back(*std::move(response));
  }
  const v1::LabelUnitsResponse& first = responses.front();

  // With --label: every layer's units for the class, one ranking.
  std::vector<RankedUnit> ranked;
  if (options.label.has_value()) {
    for (const v1::LabelUnitsResponse& r : responses) {
      for (const v1::UnitLabel& unit : r.units()) {
        ranked.push_back({r.layer(), unit});
      }
    }
    const int64_t wanted = *options.label;
    std::stable_sort(ranked.begin(), ranked.end(),
                     [&](const RankedUnit& a, const RankedUnit& b) {
                       return ShareOf(a.unit, wanted) > ShareOf(b.unit, wanted);
                     });
    if (options.limit > 0 &&
        static_cast<int64_t>(ranked.size()) > options.limit) {
      ranked.resize(options.limit);
    }
  }

  if (options.json) {
    json doc = {{"model", first.model()},
                {"model_version", first.model_version()},
                {"model_hash", first.model_hash()},
                {"dataset", first.dataset()},
                {"top_n", first.top_n()}};
    if (options.label.has_value()) {
      doc["label"] = *options.label;
      json units = json::array();
      for (const RankedUnit& r : ranked) {
        json unit = UnitJson(r.unit);
        unit["layer"] = r.layer;
        unit["share"] = ShareOf(r.unit, *options.label);
        units.push_back(std::move(unit));
      }
      doc["units"] = std::move(units);
    } else {
      json out_layers = json::array();
      for (const v1::LabelUnitsResponse& r : responses) {
        json units = json::array();
        for (const v1::UnitLabel& unit : r.units()) {
          units.push_back(UnitJson(unit));
        }
        out_layers.push_back({{"layer", r.layer()},
                              {"cached", r.cached()},
                              {"units", std::move(units)}});
      }
      doc["layers"] = std::move(out_layers);
    }
    Print(out, doc.dump() + "\n");
    return absl::OkStatus();
  }

  if (options.label.has_value()) {
    const int64_t wanted = *options.label;
    std::string name = absl::StrCat(wanted);
    if (!ranked.empty()) name = NameOf(ranked.front().unit, wanted);
    Print(out, absl::StrFormat(
                   "units most selective for %ss (%s on %s, top %d examples "
                   "per unit):\n",
                   name, first.model(), first.dataset(), first.top_n()));
    if (ranked.empty()) {
      Print(out, absl::StrFormat("no unit has a %s among its top examples\n",
                                 name));
      return absl::OkStatus();
    }
    std::vector<std::vector<std::string>> rows;
    for (const RankedUnit& r : ranked) {
      rows.push_back({r.layer, absl::StrCat(r.unit.channel()),
                      absl::StrFormat("%.0f %%", 100 * ShareOf(r.unit, wanted)),
                      r.unit.label(),
                      absl::StrFormat("%.2f", r.unit.selectivity()),
                      AttributionText(r.unit)});
    }
    Print(out, FormatTable({"layer", "channel", "share", "label",
                            "selectivity", "attribution"},
                           rows));
    return absl::OkStatus();
  }

  for (size_t l = 0; l < responses.size(); ++l) {
    const v1::LabelUnitsResponse& r = responses[l];
    if (l > 0) Print(out, "\n");
    Print(out, absl::StrFormat("%s of %s on %s (top %d examples per unit):\n",
                               r.layer(), r.model(), r.dataset(), r.top_n()));
    std::vector<std::vector<std::string>> rows;
    for (const v1::UnitLabel& unit : r.units()) {
      rows.push_back({absl::StrCat(unit.channel()), unit.label(),
                      absl::StrFormat("%.2f", unit.selectivity()),
                      AttributionText(unit)});
    }
    Print(out, FormatTable({"channel", "label", "selectivity", "attribution"},
                           rows));
  }
  return absl::OkStatus();
}

}  // namespace featviz::client
