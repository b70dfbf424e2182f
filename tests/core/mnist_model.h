// The committed MNIST classifier, loaded once per test binary: the core
// tests that only read it (render, batch, step graph, MaCo inversion,
// accentuation) share one copy.
#ifndef FEATVIZ_TESTS_CORE_MNIST_MODEL_H_
#define FEATVIZ_TESTS_CORE_MNIST_MODEL_H_

#include <gtest/gtest.h>

#include "absl/status/statusor.h"
#include "core/model.h"
#include "tests/core/test_paths.h"

namespace featviz::testing {

inline const core::Model& Mnist() {
  static const core::Model* model = [] {
    absl::StatusOr<core::ModelPtr> m = core::Model::Load(MnistModel());
    EXPECT_TRUE(m.ok()) << m.status();
    return m.ok() ? m->release() : nullptr;
  }();
  return *model;
}

}  // namespace featviz::testing

#endif  // FEATVIZ_TESTS_CORE_MNIST_MODEL_H_
