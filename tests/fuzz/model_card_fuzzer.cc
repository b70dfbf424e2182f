// libFuzzer target: the model-card parser (core::ModelCard::Parse) on
// arbitrary bytes. Whatever parses must print (ToJson) to a card that parses
// again to the same printed card; everything else must be a status.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/strings/string_view.h"
#include "core/model_card.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view json(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<featviz::core::ModelCard> card =
      featviz::core::ModelCard::Parse(json);
  if (!card.ok()) return 0;
  const std::string printed = card->ToJson();
  absl::StatusOr<featviz::core::ModelCard> again =
      featviz::core::ModelCard::Parse(printed);
  if (!again.ok()) {
    std::fprintf(stderr, "printed card does not parse: %s\n%s\n",
                 std::string(again.status().message()).c_str(), printed.c_str());
    std::abort();
  }
  if (again->ToJson() != printed) {
    std::fprintf(stderr, "printed card is not stable:\n%s\n%s\n",
                 printed.c_str(), again->ToJson().c_str());
    std::abort();
  }
  return 0;
}
