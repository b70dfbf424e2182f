// Datasets from uploaded bytes and back to disk (core/dataset_files.h), on
// the real MNIST test set and on arrays made here.
#include "core/dataset_files.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/image.h"
#include "core/mnist.h"
#include "core/npy.h"
#include "tests/core/test_paths.h"

namespace featviz::core {
namespace {

namespace fs = std::filesystem;

constexpr int64_t kMax = int64_t{1} << 30;

std::string Encoded(const at::Tensor& t) {
  absl::StatusOr<std::string> npy = EncodeNpy(t);
  EXPECT_TRUE(npy.ok()) << npy.status();
  return npy.ok() ? *npy : "";
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream bytes;
  bytes << in.rdbuf();
  return bytes.str();
}

absl::StatusOr<DatasetPtr> FromNpy(const at::Tensor& images,
                                   std::vector<std::string> classes = {}) {
  const std::string bytes = Encoded(images);
  DatasetUpload upload;
  upload.format = DatasetFormat::kNpy;
  upload.images = bytes;
  upload.class_names = std::move(classes);
  return DecodeDataset(upload, "set", "lab", kMax);
}

absl::StatusOr<DatasetPtr> FromNpz(const std::map<std::string, at::Tensor>& arrays,
                                   std::vector<std::string> classes = {}) {
  absl::StatusOr<std::string> npz = EncodeNpz(arrays);
  EXPECT_TRUE(npz.ok()) << npz.status();
  DatasetUpload upload;
  upload.format = DatasetFormat::kNpz;
  upload.images = *npz;
  upload.class_names = std::move(classes);
  return DecodeDataset(upload, "set", "lab", kMax);
}

std::string TempDir(const std::string& name) {
  const std::string dir =
      absl::StrCat(::testing::TempDir(), "featviz_dataset_files_", getpid(), "_", name);
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

TEST(DecodeDataset, GrayUint8IsDividedBy255) {
  const at::Tensor u8 = at::arange(2 * 3 * 4, at::kByte).view({2, 3, 4});
  absl::StatusOr<DatasetPtr> d = FromNpy(u8);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ((*d)->images.sizes(), (std::vector<int64_t>{2, 1, 3, 4}));
  EXPECT_FLOAT_EQ((*d)->images[1][0][2][3].item<float>(), 23 / 255.0f);
  EXPECT_EQ((*d)->source, "npy");
  EXPECT_EQ((*d)->owner, "lab");
  EXPECT_TRUE((*d)->uploaded);
  EXPECT_FALSE((*d)->labelled());
  EXPECT_EQ((*d)->labels[0].item<int64_t>(), -1);
}

TEST(DecodeDataset, ChannelsFirstOrLastAndTheSmallerWinsWhenBothCouldBe) {
  const at::Tensor nchw = at::rand({2, 3, 32, 32});
  absl::StatusOr<DatasetPtr> first = FromNpy(nchw);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_TRUE(at::equal((*first)->images, nchw));

  // [N, 32, 32, 3]: only the last size is a channel count.
  absl::StatusOr<DatasetPtr> last = FromNpy(nchw.permute({0, 2, 3, 1}).contiguous());
  ASSERT_TRUE(last.ok()) << last.status();
  EXPECT_TRUE(at::equal((*last)->images, nchw));

  // [N, 16, 16, 3]: both could be; 3 < 16 is the channel count.
  const at::Tensor small = at::rand({2, 3, 16, 16});
  absl::StatusOr<DatasetPtr> both = FromNpy(small.permute({0, 2, 3, 1}).contiguous());
  ASSERT_TRUE(both.ok()) << both.status();
  EXPECT_TRUE(at::equal((*both)->images, small));
  // [N, 4, 8, 4]: a tie is channels first.
  absl::StatusOr<DatasetPtr> tie = FromNpy(at::rand({1, 4, 8, 4}));
  ASSERT_TRUE(tie.ok()) << tie.status();
  EXPECT_EQ((*tie)->images.sizes(), (std::vector<int64_t>{1, 4, 8, 4}));
}

TEST(DecodeDataset, NpzWithLabelsAndClassNames) {
  const at::Tensor images = at::randint(0, 256, {5, 1, 6, 6}, at::kByte);
  absl::StatusOr<DatasetPtr> named =
      FromNpz({{"images", images}, {"labels", at::tensor({0, 2, 1, 2, 0}, at::kInt)}},
              {"cat", "dog", "eel"});
  ASSERT_TRUE(named.ok()) << named.status();
  EXPECT_EQ((*named)->class_names, (std::vector<std::string>{"cat", "dog", "eel"}));
  EXPECT_EQ((*named)->IndicesOfClass(2), (std::vector<int64_t>{1, 3}));
  EXPECT_EQ((*named)->source, "npz");

  // Without names the classes are numbered up to the largest label.
  absl::StatusOr<DatasetPtr> numbered =
      FromNpz({{"images", images}, {"labels", at::tensor({0, 4, 1, 2, 0}, at::kByte)}});
  ASSERT_TRUE(numbered.ok()) << numbered.status();
  EXPECT_EQ((*numbered)->class_names.size(), 5u);
  EXPECT_EQ((*numbered)->labels.scalar_type(), at::kLong);
}

TEST(DecodeDataset, IdxFromBytesMatchesTheMnistLoader) {
  const std::string images = ReadAll(testing::MnistDir() + "/t10k-images-idx3-ubyte.gz");
  const std::string labels = ReadAll(testing::MnistDir() + "/t10k-labels-idx1-ubyte.gz");
  DatasetUpload upload;
  upload.format = DatasetFormat::kIdx;
  upload.images = images;
  upload.labels = labels;
  absl::StatusOr<DatasetPtr> d = DecodeDataset(upload, "digits", "lab", kMax);
  ASSERT_TRUE(d.ok()) << d.status();
  absl::StatusOr<LabelledImages> mnist = LoadMnistTestSet(testing::MnistDir());
  ASSERT_TRUE(mnist.ok()) << mnist.status();
  EXPECT_TRUE(at::equal((*d)->images, mnist->images));
  EXPECT_TRUE(at::equal((*d)->labels, mnist->labels));
  EXPECT_EQ((*d)->class_names.size(), 10u);
  EXPECT_EQ((*d)->source, "idx");
}

TEST(DecodeDataset, RefusesEveryBadUploadNamingTheFieldAndValue) {
  const at::Tensor good = at::rand({3, 1, 4, 4});
  at::Tensor nan = good.clone();
  nan[2][0][1][1] = std::numeric_limits<float>::quiet_NaN();
  at::Tensor high = good.clone();
  high[1][0][0][0] = 1.5f;
  struct Case {
    const char* what;
    absl::StatusOr<DatasetPtr> result;
    const char* says;
  };
  const std::vector<Case> cases = {
      {"int64 images", FromNpy(at::zeros({2, 4, 4}, at::kLong)),
       "images: dtype int64 is not an image type"},
      {"float64 images", FromNpy(at::zeros({2, 4, 4}, at::kDouble)),
       "images: dtype float64"},
      {"2-D", FromNpy(at::zeros({4, 4})), "images: shape [4, 4] is not [N, H, W]"},
      {"no channel", FromNpy(at::zeros({2, 20, 20, 20})),
       "images: shape [2, 20, 20, 20] has no channel count in 1..16"},
      {"empty", FromNpy(at::zeros({0, 4, 4})), "holds no images"},
      {"too wide", FromNpy(at::zeros({1, 1, 5000}, at::kByte)),
       "each side must be 1 to 4096"},
      {"NaN", FromNpy(nan), "images: image 2 holds NaN or infinity"},
      {"above 1", FromNpy(high), "images: image 1 holds values from"},
      {"labels count",
       FromNpz({{"images", good}, {"labels", at::tensor({0, 1}, at::kLong)}}),
       "labels: 2 labels for 3 images"},
      {"negative label",
       FromNpz({{"images", good}, {"labels", at::tensor({0, -1, 1}, at::kLong)}}),
       "labels: label -1 of image 1 is negative"},
      {"label beyond names",
       FromNpz({{"images", good}, {"labels", at::tensor({0, 1, 2}, at::kLong)}},
               {"a", "b"}),
       "labels: label 2 of image 2 is out of range for the 2 class_names"},
      {"float labels",
       FromNpz({{"images", good}, {"labels", at::zeros({3})}}),
       "labels: dtype float32 is not a label type"},
      {"2-D labels",
       FromNpz({{"images", good}, {"labels", at::zeros({3, 1}, at::kLong)}}),
       "labels: shape [3, 1] must be [N]"},
      {"names without labels", FromNpy(good, {"a"}),
       "class_names: 1 names given, but the dataset has no labels"},
      {"empty class name",
       FromNpz({{"images", good}, {"labels", at::zeros({3}, at::kLong)}}, {""}),
       "class_names[0]"},
      {"npz without images", FromNpz({{"pixels", good}}),
       "the npz archive holds 'pixels.npy'"},
      {"npz of labels only", FromNpz({{"labels", at::zeros({3}, at::kLong)}}),
       "the npz archive holds no images.npy (it holds: labels.npy)"},
  };
  for (const Case& c : cases) {
    ASSERT_FALSE(c.result.ok()) << c.what;
    EXPECT_EQ(c.result.status().code(), absl::StatusCode::kInvalidArgument) << c.what;
    EXPECT_TRUE(absl::StrContains(c.result.status().message(), c.says))
        << c.what << ": " << c.result.status().message();
  }

  DatasetUpload npy_with_labels;
  npy_with_labels.format = DatasetFormat::kNpy;
  const std::string bytes = Encoded(good);
  npy_with_labels.images = bytes;
  npy_with_labels.labels = "labels";
  EXPECT_TRUE(absl::StrContains(
      DecodeDataset(npy_with_labels, "x", "lab", kMax).status().message(),
      "an npy upload holds images only"));
  DatasetUpload idx;
  idx.format = DatasetFormat::kIdx;
  idx.images = bytes;  // An .npy is no IDX3 file.
  EXPECT_TRUE(absl::StrContains(DecodeDataset(idx, "x", "lab", kMax).status().message(),
                                "images (IDX3) is not an IDX3 image file"));
}

TEST(DatasetDir, WrittenDatasetsReadBackBitForBitWithTheirOwner) {
  const std::string root = TempDir("roundtrip");
  // uint8-valued pixels are kept as uint8, others as float32.
  for (bool exact : {true, false}) {
    const at::Tensor images =
        exact ? at::randint(0, 256, {4, 3, 5, 5}, at::kByte).to(at::kFloat) / 255.0
              : at::rand({4, 3, 5, 5});
    absl::StatusOr<DatasetPtr> d = FromNpz(
        {{"images", images}, {"labels", at::tensor({1, 0, 1, 1}, at::kLong)}},
        {"no", "yes"});
    ASSERT_TRUE(d.ok()) << d.status();
    const std::string dir = absl::StrCat(root, "/", exact ? "bytes" : "floats");
    fs::create_directories(dir);
    ASSERT_TRUE(WriteDatasetDir(**d, dir).ok());
    EXPECT_TRUE(IsArrayDatasetDir(dir));
    absl::StatusOr<at::Tensor> stored = DecodeNpy(ReadAll(dir + "/images.npy"));
    ASSERT_TRUE(stored.ok());
    EXPECT_EQ(stored->scalar_type(), exact ? at::kByte : at::kFloat);

    absl::StatusOr<DatasetPtr> back = LoadDataset(dir, "again");
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ((*back)->name, "again");
    EXPECT_TRUE(at::equal((*back)->images, (*d)->images));
    EXPECT_TRUE(at::equal((*back)->labels, (*d)->labels));
    EXPECT_EQ((*back)->class_names, (*d)->class_names);
    EXPECT_EQ((*back)->owner, "lab");
    EXPECT_TRUE((*back)->uploaded);
    EXPECT_EQ((*back)->source, "npz");
  }
  // Hidden folders (uploads staging) are not datasets.
  fs::create_directories(root + "/.uploads/123");
  absl::StatusOr<std::vector<DatasetPtr>> all = LoadDatasetDir(root);
  ASSERT_TRUE(all.ok()) << all.status();
  ASSERT_EQ(all->size(), 2u);
  EXPECT_EQ((*all)[0]->name, "bytes");
  EXPECT_FALSE(HoldsOneDataset(root));
  EXPECT_TRUE(HoldsOneDataset(testing::MnistDir()));
  fs::remove_all(root);
}

TEST(DatasetDir, AnOperatorsArraysNeedNoMetadataAndAreCheckedAsUploads) {
  const std::string root = TempDir("operator");
  std::ofstream(root + "/images.npy", std::ios::binary)
      << Encoded(at::randint(0, 256, {3, 8, 8}, at::kByte));
  absl::StatusOr<DatasetPtr> d = LoadDataset(root, "scans");
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_FALSE((*d)->uploaded);
  EXPECT_TRUE((*d)->owner.empty());
  EXPECT_EQ((*d)->source, "npy");
  EXPECT_EQ((*d)->images.sizes(), (std::vector<int64_t>{3, 1, 8, 8}));

  std::ofstream(root + "/labels.npy", std::ios::binary)
      << Encoded(at::tensor({0, 1}, at::kLong));
  absl::StatusOr<DatasetPtr> bad = LoadDataset(root, "scans");
  ASSERT_FALSE(bad.ok());
  EXPECT_TRUE(absl::StrContains(bad.status().message(), "labels: 2 labels for 3 images"))
      << bad.status().message();
  fs::remove_all(root);
}

}  // namespace
}  // namespace featviz::core
