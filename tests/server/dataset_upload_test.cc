// The lab's own data end to end (issue 24): clients upload datasets in every
// format to the real featviz-server (Circuits.UploadDataset), which serves
// top examples, circuits, MaCo spectra and reference images on them, picks a
// dataset for a request that names none only when exactly one fits the
// model, refuses every hostile upload precisely and leaves nothing behind,
// deletes a dataset for its owner or an admin only, and loads the uploads
// again after a restart.
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/image.h"
#include "core/mnist.h"
#include "core/npy.h"
#include "core/sha256.h"
#include "featviz/v1/circuits.grpc.pb.h"
#include "tests/server/model_repo.h"
#include "tests/server/server_process.h"
#include "tests/server/shared_server.h"
#include "tests/server/test_client.h"

namespace featviz::testing {
namespace {

namespace fs = std::filesystem;
using ::grpc::StatusCode;

constexpr char kLab[] = "lab-uploader-0123456789-token";
constexpr char kBob[] = "bob-uploader-0123456789-token";
constexpr char kReader[] = "reader-user-0123456789-token";
constexpr char kOps[] = "ops-admin-0123456789-token-x";
constexpr char kStingy[] = "stingy-uploader-0123456789-tok";
constexpr int64_t kMaxDatasetBytes = 8'000'000;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream bytes;
  bytes << in.rdbuf();
  return bytes.str();
}

std::string Npy(const at::Tensor& t) {
  absl::StatusOr<std::string> npy = core::EncodeNpy(t);
  EXPECT_TRUE(npy.ok()) << npy.status();
  return npy.ok() ? *npy : "";
}

std::string Npz(const std::map<std::string, at::Tensor>& arrays) {
  absl::StatusOr<std::string> npz = core::EncodeNpz(arrays);
  EXPECT_TRUE(npz.ok()) << npz.status();
  return npz.ok() ? *npz : "";
}

// The first `n` MNIST test digits as uint8 [n, 28, 28] and their labels.
struct Digits {
  at::Tensor images;
  at::Tensor labels;
};
Digits MnistDigits(int64_t n) {
  absl::StatusOr<core::LabelledImages> mnist =
      core::LoadMnistTestSet(FEATVIZ_MNIST_DIR);
  EXPECT_TRUE(mnist.ok()) << mnist.status();
  return {(mnist->images.narrow(0, 0, n).squeeze(1) * 255)
              .round()
              .to(at::kByte)
              .contiguous(),
          mnist->labels.narrow(0, 0, n).contiguous()};
}

// One UploadDataset call as a client might make it, honest or not.
struct Upload {
  std::string token = kLab;
  std::string name;
  v1::DatasetFormat format = v1::DATASET_FORMAT_NPY;
  std::string bytes;
  int64_t labels_bytes = 0;
  std::vector<std::string> class_names;
  // Overrides of what the header declares (empty / -1: the truth).
  std::string sha256;
  int64_t size_bytes = -1;
  std::string extra;  // Sent after `bytes` without being declared.
  bool header = true;
  size_t chunk = 64 * 1024;
};

struct Outcome {
  grpc::Status status;
  v1::Dataset dataset;
};

void Authorize(grpc::ClientContext& context, const std::string& token) {
  if (!token.empty()) {
    context.AddMetadata("authorization", absl::StrCat("Bearer ", token));
  }
}

Outcome Send(v1::Circuits::Stub& stub, const Upload& upload) {
  grpc::ClientContext context;
  context.set_deadline(After(240));
  Authorize(context, upload.token);
  Outcome outcome;
  auto writer = stub.UploadDataset(&context, &outcome.dataset);
  v1::UploadDatasetRequest request;
  if (upload.header) {
    auto* header = request.mutable_header();
    header->set_name(upload.name);
    header->set_format(upload.format);
    header->set_size_bytes(upload.size_bytes >= 0
                               ? upload.size_bytes
                               : static_cast<int64_t>(upload.bytes.size()));
    header->set_sha256(upload.sha256.empty() ? core::Sha256Hex(upload.bytes)
                                             : upload.sha256);
    header->set_labels_bytes(upload.labels_bytes);
    for (const std::string& c : upload.class_names) header->add_class_names(c);
  }
  const std::string all = upload.bytes + upload.extra;
  size_t offset = 0;
  bool first = true;
  while (first || offset < all.size()) {
    const size_t n = std::min(upload.chunk, all.size() - offset);
    request.set_chunk(all.substr(offset, n));
    offset += n;
    if (!writer->Write(request)) break;
    request.clear_header();
    first = false;
  }
  writer->WritesDone();
  outcome.status = writer->Finish();
  return outcome;
}

// Every file and directory under `root`, hidden ones too.
std::set<std::string> Tree(const std::string& root) {
  std::set<std::string> files;
  for (const auto& entry : fs::recursive_directory_iterator(root)) {
    files.insert(fs::relative(entry.path(), root).string());
  }
  return files;
}

class DatasetUploadTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    repo_ = new TempRepository();
    repo_->AddFlat("mnist_classifier", MnistFile(), MnistCard());
    repo_->AddFlat("scripted", TestModelFile("scripted.pt"),
                   TestModelFile("scripted.card.json"));
    repo_->AddFlat("known_weights", TestModelFile("known_weights.pt"),
                   TestModelFile("known_weights.card.json"));
    data_ = new std::string(absl::StrCat(repo_->root(), "_datasets"));
    fs::create_directories(*data_);
    // The operator's dataset: the MNIST test set, by a symlink.
    fs::create_directory_symlink(FEATVIZ_MNIST_DIR, *data_ + "/mnist");
    tokens_ = new std::string(absl::StrCat(repo_->root(), "_tokens.txt"));
    std::ofstream(*tokens_) << kLab << " lab uploader\n"
                            << kBob << " bob uploader\n"
                            << kReader << " reader user\n"
                            << kOps << " ops admin\n"
                            << kStingy << " stingy uploader max_upload_bytes=20000\n";
    server_ = Start().release();
  }
  static void TearDownTestSuite() {
    delete server_;
    std::error_code ignored;
    fs::remove_all(*data_, ignored);
    fs::remove(*tokens_, ignored);
    delete data_;
    delete tokens_;
    delete repo_;
  }
  static std::unique_ptr<ServerProcess> Start(
      std::vector<std::string> flags = {}) {
    std::vector<std::string> all = {
        "--model_dir=" + repo_->root(), "--dataset_dir=" + *data_,
        "--tokens_file=" + *tokens_,
        absl::StrCat("--max_dataset_bytes=", kMaxDatasetBytes),
        "--max_datasets_per_owner=6"};
    all.insert(all.end(), flags.begin(), flags.end());
    absl::StatusOr<std::unique_ptr<ServerProcess>> server = ServerProcess::Start(all);
    EXPECT_TRUE(server.ok()) << server.status();
    return server.ok() ? *std::move(server) : nullptr;
  }
  void SetUp() override {
    ASSERT_NE(server_, nullptr);
    circuits_ = v1::Circuits::NewStub(server_->channel());
    visualizer_ = server_->NewStub();
  }

  grpc::Status Top(const std::string& model, const std::string& layer,
                   const std::string& dataset, v1::TopExamplesResponse& response,
                   int top_n = 5) {
    v1::TopExamplesRequest request;
    request.set_model(model);
    request.set_layer(layer);
    request.set_dataset(dataset);
    request.set_top_n(top_n);
    grpc::ClientContext context;
    context.set_deadline(After(240));
    Authorize(context, kReader);
    return circuits_->TopExamples(&context, request, &response);
  }
  std::vector<v1::Dataset> List(v1::Circuits::Stub& stub) {
    grpc::ClientContext context;
    Authorize(context, kReader);
    v1::ListDatasetsResponse response;
    EXPECT_TRUE(stub.ListDatasets(&context, {}, &response).ok());
    return {response.datasets().begin(), response.datasets().end()};
  }
  grpc::Status Delete(const std::string& token, const std::string& name,
                      v1::DeleteDatasetResponse* response = nullptr) {
    grpc::ClientContext context;
    Authorize(context, token);
    v1::DeleteDatasetRequest request;
    request.set_name(name);
    v1::DeleteDatasetResponse ignored;
    return circuits_->DeleteDataset(&context, request,
                                    response != nullptr ? response : &ignored);
  }
  RenderOutcome Render(v1::RenderRequest request) {
    grpc::ClientContext context;
    context.set_deadline(After(240));
    Authorize(context, kReader);
    auto reader = visualizer_->Render(&context, request);
    return ReadAll(*reader);
  }

  // The uploads the tests share, sent unless this server hosts them: npy
  // [N, C, H, W] float32 ("colors", 3x16x16, unlabelled), npy [N, H, W]
  // uint8 ("gray_digits", 50 MNIST digits), npz with int32 labels and class
  // names ("labelled", 120 digits) and the gzip'd MNIST IDX files
  // ("idx_digits"). ctest runs each test in a process of its own.
  void EnsureUploaded() {
    std::set<std::string> hosted;
    for (const v1::Dataset& d : List(*circuits_)) hosted.insert(d.name());
    for (Upload& upload : StandardUploads()) {
      if (hosted.count(upload.name) > 0) continue;
      const Outcome outcome = Send(*circuits_, upload);
      ASSERT_TRUE(outcome.status.ok())
          << upload.name << ": " << outcome.status.error_message();
    }
  }
  static std::vector<Upload> StandardUploads() {
    std::vector<Upload> uploads(4);
    uploads[0].name = "colors";
    uploads[0].bytes = Npy(Colors());
    const Digits digits = MnistDigits(120);
    uploads[1].name = "gray_digits";
    uploads[1].bytes = Npy(digits.images.narrow(0, 0, 50).contiguous());
    uploads[2].name = "labelled";
    uploads[2].format = v1::DATASET_FORMAT_NPZ;
    uploads[2].bytes =
        Npz({{"images", digits.images}, {"labels", digits.labels.to(at::kInt)}});
    uploads[2].class_names = {"zero", "one", "two", "three", "four",
                              "five", "six", "seven", "eight", "nine"};
    const std::string images =
        ReadFile(FEATVIZ_MNIST_DIR "/t10k-images-idx3-ubyte.gz");
    const std::string labels =
        ReadFile(FEATVIZ_MNIST_DIR "/t10k-labels-idx1-ubyte.gz");
    uploads[3].name = "idx_digits";
    uploads[3].format = v1::DATASET_FORMAT_IDX;
    uploads[3].bytes = images + labels;
    uploads[3].labels_bytes = static_cast<int64_t>(labels.size());
    uploads[3].chunk = 1 << 20;
    return uploads;
  }
  // 12 random 3x16x16 images, the same in every process.
  static at::Tensor Colors() {
    at::manual_seed(24);
    return at::rand({12, 3, 16, 16});
  }

  // Every index below `size`, values best first.
  static void ExpectIndicesInto(const v1::TopExamplesResponse& top, int64_t size) {
    ASSERT_GT(top.units_size(), 0);
    for (const v1::UnitExamples& unit : top.units()) {
      ASSERT_GT(unit.indices_size(), 0);
      for (int i = 0; i < unit.indices_size(); ++i) {
        EXPECT_GE(unit.indices(i), 0);
        EXPECT_LT(unit.indices(i), size);
        if (i > 0) {
          EXPECT_GE(unit.values(i - 1), unit.values(i));
        }
      }
    }
  }

  static TempRepository* repo_;
  static std::string* data_;
  static std::string* tokens_;
  static ServerProcess* server_;
  std::unique_ptr<v1::Circuits::Stub> circuits_;
  std::unique_ptr<v1::Visualizer::Stub> visualizer_;
};
TempRepository* DatasetUploadTest::repo_ = nullptr;
std::string* DatasetUploadTest::data_ = nullptr;
std::string* DatasetUploadTest::tokens_ = nullptr;
ServerProcess* DatasetUploadTest::server_ = nullptr;

TEST_F(DatasetUploadTest, EachFormatUploadsAndServesTopExamplesCircuitsAndRenders) {
  std::vector<Upload> uploads = StandardUploads();
  // npy, [N, C, H, W] float32: the only dataset that fits the 3x16x16 model.
  Outcome outcome = Send(*circuits_, uploads[0]);
  ASSERT_TRUE(outcome.status.ok()) << outcome.status.error_message();
  EXPECT_EQ(outcome.dataset.name(), "colors");
  EXPECT_EQ(outcome.dataset.size(), 12);
  EXPECT_EQ(std::vector<int64_t>(outcome.dataset.image_shape().begin(),
                                 outcome.dataset.image_shape().end()),
            (std::vector<int64_t>{3, 16, 16}));
  EXPECT_EQ(outcome.dataset.owner(), "lab");
  EXPECT_TRUE(outcome.dataset.uploaded());
  EXPECT_EQ(outcome.dataset.source(), "npy");
  EXPECT_EQ(outcome.dataset.size_bytes(), 12 * 3 * 16 * 16 * 4 + 12 * 8);
  EXPECT_TRUE(fs::exists(*data_ + "/colors/images.npy"));
  // A request naming no dataset gets it: it alone fits the model.
  v1::TopExamplesResponse top;
  grpc::Status status = Top("scripted", "conv1", "", top, 3);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(top.dataset(), "colors");
  ExpectIndicesInto(top, 12);

  // npy, [N, H, W] uint8 gray digits.
  outcome = Send(*circuits_, uploads[1]);
  ASSERT_TRUE(outcome.status.ok()) << outcome.status.error_message();
  EXPECT_EQ(outcome.dataset.class_names_size(), 0);
  status = Top(kModel, "conv2", "gray_digits", top);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(top.dataset(), "gray_digits");
  ExpectIndicesInto(top, 50);

  // npz with int32 labels and class names.
  const Digits digits = MnistDigits(120);
  outcome = Send(*circuits_, uploads[2]);
  ASSERT_TRUE(outcome.status.ok()) << outcome.status.error_message();
  EXPECT_EQ(outcome.dataset.class_names(3), "three");
  EXPECT_EQ(outcome.dataset.source(), "npz");
  status = Top(kModel, "fc1", "labelled", top);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ExpectIndicesInto(top, 120);
  {
    v1::FindCircuitRequest request;
    request.set_model(kModel);
    request.set_layer("conv2");
    request.add_classes(3);
    request.set_dataset("labelled");
    request.set_examples_per_class(8);
    request.set_skip_renders(true);
    grpc::ClientContext context;
    Authorize(context, kReader);
    v1::FindCircuitResponse circuit;
    status = circuits_->FindCircuit(&context, request, &circuit);
    ASSERT_TRUE(status.ok()) << status.error_message();
    EXPECT_EQ(circuit.dataset(), "labelled");
    ASSERT_EQ(circuit.classes_size(), 1);
    const int64_t example = circuit.classes(0).example_index();
    ASSERT_LT(example, 120);
    EXPECT_EQ(digits.labels[example].item<int64_t>(), 3);
  }

  // IDX: the real gzip'd MNIST files, images then labels.
  outcome = Send(*circuits_, uploads[3]);
  ASSERT_TRUE(outcome.status.ok()) << outcome.status.error_message();
  EXPECT_EQ(outcome.dataset.size(), 10000);
  EXPECT_EQ(outcome.dataset.class_names_size(), 10);
  EXPECT_EQ(outcome.dataset.source(), "idx");
  {
    v1::ComputeActivationsRequest request;
    request.set_model(kModel);
    request.add_layers()->set_layer("conv2");
    request.mutable_input()->mutable_dataset()->set_dataset("idx_digits");
    request.mutable_input()->mutable_dataset()->add_indices(9999);
    grpc::ClientContext context;
    Authorize(context, kReader);
    v1::ComputeActivationsResponse response;
    status = circuits_->ComputeActivations(&context, request, &response);
    ASSERT_TRUE(status.ok()) << status.error_message();
    absl::StatusOr<core::LabelledImages> mnist =
        core::LoadMnistTestSet(FEATVIZ_MNIST_DIR);
    ASSERT_TRUE(mnist.ok());
    ASSERT_EQ(response.labels_size(), 1);
    EXPECT_EQ(response.labels(0), mnist->labels[9999].item<int64_t>());
  }

  // The listing: the operator's MNIST and the four uploads.
  std::map<std::string, v1::Dataset> listed;
  for (const v1::Dataset& d : List(*circuits_)) listed[d.name()] = d;
  ASSERT_EQ(listed.count("mnist"), 1u);
  EXPECT_FALSE(listed["mnist"].uploaded());
  EXPECT_EQ(listed["mnist"].owner(), "");
  EXPECT_EQ(listed["mnist"].size_bytes(), 10000 * 28 * 28 * 4 + 10000 * 8);
  for (const char* name : {"colors", "gray_digits", "labelled", "idx_digits"}) {
    ASSERT_EQ(listed.count(name), 1u) << name;
    EXPECT_TRUE(listed[name].uploaded()) << name;
    EXPECT_EQ(listed[name].owner(), "lab") << name;
  }

  // Four datasets fit the digit model: one must be named.
  status = Top(kModel, "conv2", "", top);
  ExpectError(status, StatusCode::INVALID_ARGUMENT,
              "4 hosted datasets fit model mnist_classifier's input [1, 28, 28]: "
              "gray_digits, idx_digits, labelled, mnist; name the one to use");

  // MaCo takes an uploaded dataset's spectrum by name, and will not guess.
  v1::RenderRequest maco = TextRequest("logit(3)", 4);
  maco.mutable_image()->set_parameterization(v1::PARAMETERIZATION_MACO);
  maco.mutable_image()->set_maco_dataset("gray_digits");
  RenderOutcome rendered = Render(maco);
  ASSERT_TRUE(rendered.status.ok()) << rendered.status.error_message();
  EXPECT_EQ(rendered.result->maco_magnitude(), "dataset gray_digits (50 images)");
  maco.mutable_image()->clear_maco_dataset();
  ExpectError(Render(maco).status, StatusCode::INVALID_ARGUMENT,
              "image.maco_dataset: 4 hosted datasets fit");
  // Reference images from an upload, by name.
  rendered = Render(TextRequest("inversion(conv2, dataset(labelled, 7))", 4));
  EXPECT_TRUE(rendered.status.ok()) << rendered.status.error_message();
  ExpectError(Render(TextRequest("inversion(conv2, dataset(7))", 4)).status,
              StatusCode::INVALID_ARGUMENT, "name the one to use");
}

TEST_F(DatasetUploadTest, AModelNoDatasetFitsGetsAPreciseFailedPrecondition) {
  EnsureUploaded();
  v1::TopExamplesResponse top;
  const grpc::Status status = Top("known_weights", "conv", "", top);
  ExpectError(status, StatusCode::FAILED_PRECONDITION,
              "dataset: no hosted dataset fits model known_weights's input "
              "[1, 8, 8]");
  ExpectError(status, StatusCode::FAILED_PRECONDITION, "mnist [1, 28, 28]");
  ExpectError(status, StatusCode::FAILED_PRECONDITION, "colors [3, 16, 16] unlabelled");

  v1::FindCircuitRequest circuit;
  circuit.set_model("known_weights");
  circuit.set_layer("conv");
  circuit.set_skip_renders(true);
  grpc::ClientContext context;
  Authorize(context, kReader);
  v1::FindCircuitResponse found;
  ExpectError(circuits_->FindCircuit(&context, circuit, &found),
              StatusCode::FAILED_PRECONDITION,
              "no hosted labelled dataset fits model known_weights's input");

  v1::ComputeActivationsRequest acts;
  acts.set_model("known_weights");
  acts.add_layers()->set_layer("conv");
  acts.mutable_input()->mutable_dataset()->add_indices(0);
  grpc::ClientContext context2;
  Authorize(context2, kReader);
  v1::ComputeActivationsResponse maps;
  ExpectError(circuits_->ComputeActivations(&context2, acts, &maps),
              StatusCode::FAILED_PRECONDITION,
              "input.dataset.dataset: no hosted dataset fits model known_weights");
  // A named dataset of another shape is refused as before, naming both.
  ExpectError(Top("known_weights", "conv", "mnist", top),
              StatusCode::INVALID_ARGUMENT, "[B, 1, 8, 8]");
}

TEST_F(DatasetUploadTest, HostileUploadsGetPreciseStatusesAndLeaveNothingBehind) {
  const std::set<std::string> before = Tree(*data_);
  const size_t listed_before = List(*circuits_).size();
  at::Tensor nan = at::rand({4, 1, 8, 8});
  nan[1][0][2][2] = std::numeric_limits<float>::quiet_NaN();
  at::Tensor high = at::rand({4, 1, 8, 8});
  high[2][0][0][0] = 2.0f;
  const std::string good = Npy(at::rand({4, 1, 8, 8}));
  auto base = [&](const std::string& name) {
    Upload u;
    u.name = name;
    u.bytes = good;
    return u;
  };
  struct Bad {
    const char* what;
    Upload upload;
    StatusCode code;
    std::string says;
  };
  std::vector<Bad> cases;
  for (const char* name : {"../escape", ".hidden", "a/b", ""}) {
    cases.push_back({"bad name", base(name), StatusCode::INVALID_ARGUMENT,
                     "UploadDataset: header.name '"});
  }
  cases.push_back({"long name", base(std::string(65, 'x')),
                   StatusCode::INVALID_ARGUMENT, "must be 1 to 64 of [A-Za-z0-9_-]"});
  {
    Upload u = base("fmt");
    u.format = v1::DATASET_FORMAT_UNSPECIFIED;
    cases.push_back({"no format", u, StatusCode::INVALID_ARGUMENT,
                     "header.format must be DATASET_FORMAT_NPY, DATASET_FORMAT_NPZ or "
                     "DATASET_FORMAT_IDX, got DATASET_FORMAT_UNSPECIFIED"});
    u.format = static_cast<v1::DatasetFormat>(42);
    cases.push_back({"unknown format", u, StatusCode::INVALID_ARGUMENT, "got 42"});
  }
  {
    Upload u = base("shape");
    u.bytes = Npy(at::rand({8, 8}));
    cases.push_back({"bad shape", u, StatusCode::INVALID_ARGUMENT,
                     "images: shape [8, 8] is not [N, H, W], [N, C, H, W] or [N, H, W, C]"});
    u.bytes = Npy(at::rand({2, 30, 30, 30}));
    cases.push_back({"no channel dimension", u, StatusCode::INVALID_ARGUMENT,
                     "has no channel count in 1..16"});
    u.bytes = Npy(at::zeros({4, 8, 8}, at::kLong));
    cases.push_back({"bad dtype", u, StatusCode::INVALID_ARGUMENT,
                     "images: dtype int64 is not an image type"});
    u.bytes = Npy(nan);
    cases.push_back({"NaN", u, StatusCode::INVALID_ARGUMENT,
                     "images: image 1 holds NaN or infinity"});
    u.bytes = Npy(high);
    cases.push_back({"out of range", u, StatusCode::INVALID_ARGUMENT,
                     "images: image 2 holds values from"});
    u.bytes = "this is no numpy file";
    cases.push_back({"not npy", u, StatusCode::INVALID_ARGUMENT, "not an .npy file"});
  }
  {
    Upload u = base("labels");
    u.format = v1::DATASET_FORMAT_NPZ;
    u.bytes = Npz({{"images", at::rand({4, 1, 8, 8})},
                   {"labels", at::tensor({0, 1, 2}, at::kLong)}});
    cases.push_back({"label count", u, StatusCode::INVALID_ARGUMENT,
                     "labels: 3 labels for 4 images"});
    u.bytes = Npz({{"images", at::rand({4, 1, 8, 8})},
                   {"labels", at::tensor({0, 1, 2, 3}, at::kLong)}});
    u.class_names = {"a", "b"};
    cases.push_back({"label out of range", u, StatusCode::INVALID_ARGUMENT,
                     "labels: label 2 of image 2 is out of range for the 2 class_names"});
    u.bytes = good.substr(0, 100);
    u.class_names.clear();
    cases.push_back({"corrupt npz", u, StatusCode::INVALID_ARGUMENT,
                     "the npz archive: not a ZIP archive"});
  }
  {
    Upload u = base("names");
    u.class_names = {"a", "b"};
    cases.push_back({"names without labels", u, StatusCode::INVALID_ARGUMENT,
                     "class_names: 2 names given, but the dataset has no labels"});
  }
  {
    Upload u = base("labelsbytes");
    u.labels_bytes = 10;
    cases.push_back({"labels_bytes on npy", u, StatusCode::INVALID_ARGUMENT,
                     "header.labels_bytes is 10, but only IDX uploads"});
  }
  {
    Upload u = base("cut");
    u.size_bytes = static_cast<int64_t>(good.size()) + 100;
    cases.push_back({"truncated stream", u, StatusCode::INVALID_ARGUMENT,
                     absl::StrCat("received ", good.size(),
                                  " bytes, but header.size_bytes says ",
                                  good.size() + 100)});
    u.size_bytes = -1;
    u.extra = "more";
    cases.push_back({"longer stream", u, StatusCode::INVALID_ARGUMENT,
                     "more bytes arrived than header.size_bytes"});
    u.extra.clear();
    u.sha256 = std::string(64, 'a');
    cases.push_back({"hash", u, StatusCode::INVALID_ARGUMENT,
                     "the SHA-256 of the received bytes is"});
    u.sha256 = "xyz";
    cases.push_back({"malformed hash", u, StatusCode::INVALID_ARGUMENT,
                     "header.sha256 must be 64 lowercase hex digits"});
  }
  {
    Upload u = base("huge");
    u.size_bytes = kMaxDatasetBytes + 1;
    cases.push_back({"oversize", u, StatusCode::RESOURCE_EXHAUSTED,
                     absl::StrCat("header.size_bytes ", kMaxDatasetBytes + 1,
                                  " is more than this server accepts "
                                  "(--max_dataset_bytes ",
                                  kMaxDatasetBytes, ")")});
    Upload q = base("quota");
    q.token = kStingy;
    q.bytes = Npy(at::rand({20, 1, 16, 16}));  // ~20 kB > 20000 quota
    cases.push_back({"over quota", q, StatusCode::RESOURCE_EXHAUSTED,
                     "client 'stingy' may upload 20000 bytes (max_upload_bytes)"});
  }
  {
    Upload u = base("role");
    u.token = kReader;
    cases.push_back({"wrong role", u, StatusCode::PERMISSION_DENIED,
                     "needs the uploader or admin role; client 'reader'"});
    u.token = "";
    cases.push_back({"no token", u, StatusCode::UNAUTHENTICATED, "token"});
  }
  cases.push_back({"duplicate of an operator's", base("mnist"),
                   StatusCode::ALREADY_EXISTS,
                   "a dataset named 'mnist' is already hosted"});
  {
    Upload u = base("headless");
    u.header = false;
    cases.push_back({"no header", u, StatusCode::INVALID_ARGUMENT,
                     "the first message must carry the header"});
  }
  for (const Bad& bad : cases) {
    const Outcome outcome = Send(*circuits_, bad.upload);
    ExpectError(outcome.status, bad.code, bad.says, bad.what);
  }
  EXPECT_EQ(Tree(*data_), before) << "a refused upload left files behind";
  EXPECT_EQ(List(*circuits_).size(), listed_before);

  // Refused uploads gave their bytes back: the stingy client's small
  // dataset fits its quota; a second one of the same name does not.
  Upload small = base("stingy_small");
  small.token = kStingy;
  Outcome outcome = Send(*circuits_, small);
  ASSERT_TRUE(outcome.status.ok()) << outcome.status.error_message();
  EXPECT_EQ(outcome.dataset.owner(), "stingy");
  small.token = kLab;
  ExpectError(Send(*circuits_, small).status, StatusCode::ALREADY_EXISTS,
              "'stingy_small' is already hosted");
  ASSERT_TRUE(Delete(kStingy, "stingy_small").ok());
}

TEST_F(DatasetUploadTest, OnlyTheOwnerOrAnAdminDeletesAnUploadedDataset) {
  Upload upload;
  upload.name = "temporary";
  upload.bytes = Npy(at::rand({3, 2, 8, 8}));
  ASSERT_TRUE(Send(*circuits_, upload).status.ok());
  ASSERT_TRUE(fs::exists(*data_ + "/temporary"));

  ExpectError(Delete(kBob, "temporary"), StatusCode::PERMISSION_DENIED,
              "dataset 'temporary' belongs to 'lab'; only its owner or an admin");
  ExpectError(Delete(kReader, "temporary"), StatusCode::PERMISSION_DENIED,
              "needs the uploader or admin role");
  ExpectError(Delete(kOps, "mnist"), StatusCode::FAILED_PRECONDITION,
              "dataset 'mnist' is the operator's (from --dataset_dir)");
  ExpectError(Delete(kLab, "nothing_here"), StatusCode::NOT_FOUND,
              "DeleteDataset: dataset 'nothing_here' is not hosted here");
  ExpectError(Delete(kLab, ""), StatusCode::INVALID_ARGUMENT, "name must name");

  v1::DeleteDatasetResponse removed;
  grpc::Status status = Delete(kLab, "temporary", &removed);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(removed.dataset().name(), "temporary");
  EXPECT_FALSE(fs::exists(*data_ + "/temporary"));
  for (const v1::Dataset& d : List(*circuits_)) EXPECT_NE(d.name(), "temporary");
  v1::TopExamplesResponse top;
  ExpectError(Top(kModel, "conv2", "temporary", top), StatusCode::NOT_FOUND,
              "dataset 'temporary' is not hosted here");

  // An admin may delete anyone's; the name is free again afterwards.
  ASSERT_TRUE(Send(*circuits_, upload).status.ok());
  status = Delete(kOps, "temporary");
  EXPECT_TRUE(status.ok()) << status.error_message();
  EXPECT_FALSE(fs::exists(*data_ + "/temporary"));
}

TEST_F(DatasetUploadTest, UploadsAreServedAgainAfterARestart) {
  EnsureUploaded();
  Upload gone;
  gone.name = "temporary";
  gone.bytes = Npy(at::rand({3, 1, 8, 8}));
  ASSERT_TRUE(Send(*circuits_, gone).status.ok());
  ASSERT_TRUE(Delete(kLab, "temporary").ok());
  v1::TopExamplesResponse before;
  grpc::Status status = Top("scripted", "conv2", "colors", before);
  ASSERT_TRUE(status.ok()) << status.error_message();

  // A second server on the same directories, as after a restart.
  std::unique_ptr<ServerProcess> restarted = Start();
  ASSERT_NE(restarted, nullptr);
  auto circuits = v1::Circuits::NewStub(restarted->channel());
  std::map<std::string, v1::Dataset> listed;
  for (const v1::Dataset& d : List(*circuits)) listed[d.name()] = d;
  for (const char* name : {"colors", "gray_digits", "labelled", "idx_digits"}) {
    ASSERT_EQ(listed.count(name), 1u) << name;
    EXPECT_TRUE(listed[name].uploaded());
    EXPECT_EQ(listed[name].owner(), "lab");
  }
  EXPECT_EQ(listed.count("temporary"), 0u) << "a deleted dataset came back";
  EXPECT_EQ(listed["labelled"].class_names(9), "nine");
  EXPECT_EQ(listed["labelled"].source(), "npz");
  EXPECT_EQ(listed["colors"].size_bytes(), 12 * 3 * 16 * 16 * 4 + 12 * 8);

  v1::TopExamplesRequest request;
  request.set_model("scripted");
  request.set_layer("conv2");
  request.set_top_n(5);
  grpc::ClientContext context;
  Authorize(context, kReader);
  v1::TopExamplesResponse after;
  status = circuits->TopExamples(&context, request, &after);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(after.dataset(), "colors");
  ASSERT_EQ(after.units_size(), before.units_size());
  for (int u = 0; u < after.units_size(); ++u) {
    EXPECT_EQ(std::vector<int64_t>(after.units(u).indices().begin(),
                                   after.units(u).indices().end()),
              std::vector<int64_t>(before.units(u).indices().begin(),
                                   before.units(u).indices().end()));
  }
}

TEST(DatasetUploadMemoryOnly, WithoutADatasetDirUploadsLiveInMemory) {
  absl::StatusOr<std::unique_ptr<ServerProcess>> server = ServerProcess::Start();
  ASSERT_TRUE(server.ok()) << server.status();
  auto circuits = v1::Circuits::NewStub((*server)->channel());
  Upload upload;
  upload.token = "";  // An open server: everyone is an admin.
  upload.name = "scratch";
  upload.format = v1::DATASET_FORMAT_NPZ;
  const Digits digits = MnistDigits(40);
  upload.bytes = Npz({{"images", digits.images}, {"labels", digits.labels}});
  const Outcome outcome = Send(*circuits, upload);
  ASSERT_TRUE(outcome.status.ok()) << outcome.status.error_message();
  EXPECT_EQ(outcome.dataset.owner(), "ipv4:127.0.0.1");
  // The one dataset: requests need not name it.
  v1::TopExamplesRequest request;
  request.set_model(kModel);
  request.set_layer("conv2");
  request.add_channels(4);
  grpc::ClientContext context;
  v1::TopExamplesResponse top;
  const grpc::Status status = circuits->TopExamples(&context, request, &top);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(top.dataset(), "scratch");
  ASSERT_EQ(top.units_size(), 1);
  for (int64_t i : top.units(0).indices()) EXPECT_LT(i, 40);
}

}  // namespace
}  // namespace featviz::testing
