// JSON forms of featviz.v1 messages for `featviz ... --json` (nlohmann-json).
// Hashes stay full length; floats print as the shortest text that reads back
// to the same float.
#ifndef FEATVIZ_CLIENT_JSON_H_
#define FEATVIZ_CLIENT_JSON_H_

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/status/statusor.h"
#include "featviz/v1/featviz.pb.h"
#include "google/protobuf/message.h"

namespace featviz::client {

// {"path", "kind", "output_shape": [...], "channels"}.
nlohmann::ordered_json LayerToJson(const featviz::v1::Layer& layer);

// {"name", "version", "content_hash", "description", "device", "input":
// {"channels", "height", "width", "range": [min, max], "mean", "std"},
// "class_names": [...], "layers": [...]}.
nlohmann::ordered_json ModelToJson(const featviz::v1::Model& model);

// A render's statistics: model, model_version, model_hash, objective, seed,
// steps, transforms, terms [{term, weight, final_value}], final_total,
// logits and probs ([batch][classes]), top_class per image (and
// top_class_name when `class_names` covers it), layer_stats [{layer, mean,
// max}] ([batch][channels]), timings. Images, PNGs and traces are left out.
// InvalidArgument when a tensor in the result is malformed.
absl::StatusOr<nlohmann::ordered_json> RenderResultToJson(
    const featviz::v1::RenderResult& result,
    const std::vector<std::string>& class_names = {});

// Any message as JSON with the .proto's field names, defaults included, so
// that a script finds every field it reads. Internal when protobuf cannot
// print it.
absl::StatusOr<nlohmann::ordered_json> MessageToJson(
    const google::protobuf::Message& message);

// The shortest decimal that reads back to `value` as a float, as a double
// (0.99f prints as 0.99, not 0.9900000095367432).
double ShortestFloat(float value);

}  // namespace featviz::client

#endif  // FEATVIZ_CLIENT_JSON_H_
