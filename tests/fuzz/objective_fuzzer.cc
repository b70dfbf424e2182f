// libFuzzer target: the objective text parser (core::Objective::Parse) on
// arbitrary bytes, then its promises: whatever parses prints back to a
// canonical text that parses to the same objective and prints the same,
// and validation against the MNIST classifier's layer catalogue answers
// with a status instead of crashing.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/strings/string_view.h"
#include "core/layer_info.h"
#include "core/objective.h"

namespace {

// The catalogue of models/mnist_classifier.pt, as Model::shape() reports it.
featviz::core::ModelShape MnistShape() {
  featviz::core::ModelShape shape;
  shape.layers = {{"conv1", "Conv2d", {1, 16, 24, 24}, 16},
                  {"conv2", "Conv2d", {1, 32, 8, 8}, 32},
                  {"fc1", "Linear", {1, 64}, 64},
                  {"fc2", "Linear", {1, 10}, 10}};
  shape.num_classes = 10;
  return shape;
}

void Fail(const char* what, const std::string& a, const std::string& b) {
  std::fprintf(stderr, "%s\n  first:  %s\n  second: %s\n", what, a.c_str(),
               b.c_str());
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const featviz::core::ModelShape* shape =
      new featviz::core::ModelShape(MnistShape());
  const absl::string_view text(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<featviz::core::Objective> parsed =
      featviz::core::Objective::Parse(text);
  if (!parsed.ok()) return 0;
  const std::string canonical = parsed->ToString();
  absl::StatusOr<featviz::core::Objective> again =
      featviz::core::Objective::Parse(canonical);
  if (!again.ok()) {
    Fail("canonical text does not parse", canonical,
         std::string(again.status().message()));
  }
  if (again->ToString() != canonical) {
    Fail("canonical text is not stable", canonical, again->ToString());
  }
  if (!(*again == *parsed)) {
    Fail("canonical text parses to another objective", canonical,
         again->ToString());
  }
  for (int64_t batch : {1, 4}) {
    (void)parsed->Validate(*shape, batch);
  }
  (void)parsed->Layers();
  return 0;
}
