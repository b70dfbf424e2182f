#include "client/proto_convert.h"

#include <cstring>

#include <gtest/gtest.h>

namespace featviz::client {
namespace {

namespace v1 = featviz::v1;

TEST(TransformsFromText, ReadsPresets) {
  auto d = TransformsFromText(" default ");
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->preset(), v1::Transforms::PRESET_DEFAULT);
  EXPECT_EQ(d->list_size(), 0);
  auto n = TransformsFromText("none");
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(n->preset(), v1::Transforms::PRESET_NONE);
}

TEST(TransformsFromText, ReadsACustomListInOrder) {
  auto t = TransformsFromText("pad(2), jitter(1), scale(0.9, 1.1), rotate(-5, 5)");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->preset(), v1::Transforms::PRESET_CUSTOM);
  ASSERT_EQ(t->list_size(), 4);
  EXPECT_EQ(t->list(0).kind(), v1::Transform::KIND_PAD);
  EXPECT_EQ(t->list(0).pixels(), 2);
  EXPECT_EQ(t->list(1).kind(), v1::Transform::KIND_JITTER);
  EXPECT_EQ(t->list(1).pixels(), 1);
  EXPECT_EQ(t->list(2).kind(), v1::Transform::KIND_SCALE);
  ASSERT_EQ(t->list(2).values_size(), 2);
  EXPECT_DOUBLE_EQ(t->list(2).values(0), 0.9);
  EXPECT_EQ(t->list(3).kind(), v1::Transform::KIND_ROTATE);
  EXPECT_DOUBLE_EQ(t->list(3).values(0), -5);
}

TEST(TransformsFromText, RejectsUnknownTransforms) {
  auto t = TransformsFromText("spin(3)");
  EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(t.status().message().find("spin"), absl::string_view::npos)
      << t.status();
}

TEST(ParameterizationFromText, ReadsFftAndPixel) {
  EXPECT_EQ(*ParameterizationFromText("fft"), v1::PARAMETERIZATION_FFT);
  EXPECT_EQ(*ParameterizationFromText("PIXEL"), v1::PARAMETERIZATION_PIXEL);
  EXPECT_EQ(*ParameterizationFromText(""), v1::PARAMETERIZATION_UNSPECIFIED);
  EXPECT_FALSE(ParameterizationFromText("wavelet").ok());
}

v1::Tensor MakeTensor(std::vector<int64_t> shape, std::vector<float> values) {
  v1::Tensor t;
  for (int64_t d : shape) t.add_shape(d);
  t.set_dtype(v1::Tensor::DTYPE_FLOAT32);
  t.set_data(std::string(reinterpret_cast<const char*>(values.data()),
                         values.size() * sizeof(float)));
  return t;
}

TEST(TensorFromProto, KeepsShapeAndValues) {
  auto t = TensorFromProto(MakeTensor({2, 3}, {0, 1, 2, 3, 4, 5}));
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->sizes(), (std::vector<int64_t>{2, 3}));
  EXPECT_FLOAT_EQ(t->index({1, 2}).item<float>(), 5);
}

TEST(TensorFromProto, RejectsAByteCountThatDoesNotMatchTheShape) {
  auto t = TensorFromProto(MakeTensor({2, 3}, {0, 1, 2}));
  EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
  v1::Tensor untyped = MakeTensor({1}, {0});
  untyped.set_dtype(v1::Tensor::DTYPE_UNSPECIFIED);
  EXPECT_FALSE(TensorFromProto(untyped).ok());
}

TEST(MatrixFromProto, SplitsRows) {
  auto m = MatrixFromProto(MakeTensor({2, 2}, {1, 2, 3, 4}));
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(*m, (std::vector<std::vector<float>>{{1, 2}, {3, 4}}));
  EXPECT_FALSE(MatrixFromProto(MakeTensor({4}, {1, 2, 3, 4})).ok());
}

TEST(ModelStateName, NamesEveryStateAndADashForNone) {
  EXPECT_EQ(ModelStateName(v1::MODEL_STATE_LOADED), "loaded");
  EXPECT_EQ(ModelStateName(v1::MODEL_STATE_UNLOADED), "unloaded");
  EXPECT_EQ(ModelStateName(v1::MODEL_STATE_LOADING), "loading");
  EXPECT_EQ(ModelStateName(v1::MODEL_STATE_FAILED), "failed");
  EXPECT_EQ(ModelStateName(v1::MODEL_STATE_UNSPECIFIED), "-");
}

TEST(TimestampText, IsRfc3339InUtcAndAgoIsOneUnit) {
  google::protobuf::Timestamp time;
  time.set_seconds(1700000000);  // 2023-11-14T22:13:20Z
  time.set_nanos(5);
  EXPECT_EQ(TimestampText(time), "2023-11-14T22:13:20Z");
  time.set_nanos(0);
  const absl::Time then = absl::FromUnixSeconds(1700000000);
  EXPECT_EQ(AgoText(time, then + absl::Seconds(12)), "12s");
  EXPECT_EQ(AgoText(time, then + absl::Minutes(4) + absl::Seconds(59)), "4m");
  EXPECT_EQ(AgoText(time, then + absl::Hours(3)), "3h");
  EXPECT_EQ(AgoText(time, then + absl::Hours(50)), "2d");
  EXPECT_EQ(AgoText(time, then - absl::Seconds(3)), "0s");  // A clock behind.
}

}  // namespace
}  // namespace featviz::client
