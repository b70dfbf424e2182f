// The model registry both request fuzzers validate against: the bundled MNIST
// classifier, loaded once; aborts when it cannot be loaded (a fuzzer without
// its model would test nothing).
#ifndef FEATVIZ_TESTS_FUZZ_MNIST_REGISTRY_H_
#define FEATVIZ_TESTS_FUZZ_MNIST_REGISTRY_H_

#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include "core/model.h"
#include "server/engine/model_registry.h"

namespace featviz::fuzz {

// Loads FEATVIZ_MODELS_DIR/mnist_classifier.pt into a registry that lives
// for the rest of the process.
inline const server::ModelRegistry* LoadMnistRegistry() {
  absl::StatusOr<core::ModelPtr> model = core::Model::Load(
      std::string(FEATVIZ_MODELS_DIR) + "/mnist_classifier.pt");
  if (!model.ok()) {
    std::fprintf(stderr, "%s\n", model.status().ToString().c_str());
    std::abort();
  }
  std::vector<core::ModelPtr> models;
  models.push_back(*std::move(model));
  return server::ModelRegistry::FromModels(std::move(models))->release();
}

}  // namespace featviz::fuzz

#endif  // FEATVIZ_TESTS_FUZZ_MNIST_REGISTRY_H_
