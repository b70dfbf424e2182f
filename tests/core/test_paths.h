// Where the tests find their models and data (set by tests/CMakeLists.txt).
#ifndef FEATVIZ_TESTS_CORE_TEST_PATHS_H_
#define FEATVIZ_TESTS_CORE_TEST_PATHS_H_

#include <string>

namespace featviz::testing {

// A model built by tests/models/make_test_models.py.
inline std::string TestModel(const std::string& file) {
  return std::string(FEATVIZ_TEST_MODELS_DIR) + "/" + file;
}
// The committed MNIST classifier.
inline std::string MnistModel() {
  return std::string(FEATVIZ_MODELS_DIR) + "/mnist_classifier.pt";
}
inline std::string MnistDir() { return FEATVIZ_MNIST_DIR; }

}  // namespace featviz::testing

#endif  // FEATVIZ_TESTS_CORE_TEST_PATHS_H_
