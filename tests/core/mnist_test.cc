#include "core/mnist.h"

#include <cstdio>
#include <fstream>

#include <gtest/gtest.h>

#include "tests/core/test_paths.h"

namespace featviz::core {
namespace {

TEST(Mnist, ReadsTheRealTestSet) {
  absl::StatusOr<LabelledImages> mnist = LoadMnistTestSet(featviz::testing::MnistDir());
  ASSERT_TRUE(mnist.ok()) << mnist.status();
  EXPECT_EQ(mnist->images.sizes(), (std::vector<int64_t>{10000, 1, 28, 28}));
  EXPECT_EQ(mnist->labels.size(0), 10000);
  EXPECT_EQ(mnist->labels[0].item<int64_t>(), 7);  // The famous first digit.
  EXPECT_GE(mnist->images.min().item<double>(), 0.0);
  EXPECT_LE(mnist->images.max().item<double>(), 1.0);
  EXPECT_EQ(at::bincount(mnist->labels).size(0), 10);
}

TEST(Mnist, RejectsFilesThatAreNotIdx) {
  const std::string path = ::testing::TempDir() + "/bad-idx";
  std::ofstream(path) << "definitely not an idx file";
  EXPECT_EQ(ReadIdxImages(path).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ReadIdxLabels(path).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ReadIdxImages(path + "-missing").status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace featviz::core
