// End to end against the real featviz-server (issue 14): researchers upload
// the models from the wild (tests/models/wild_models.py) with UploadModel and
// render on them; bad uploads are refused and leave nothing behind; requests
// ask for non-square, gray, and quoted-layer renders.
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "tests/server/model_repo.h"
#include "tests/server/server_process.h"
#include "tests/server/test_client.h"

namespace featviz::testing {
namespace {

namespace fs = std::filesystem;
using ::grpc::StatusCode;

constexpr char kUploaderToken[] = "uploader-0123456789-token";
constexpr char kUserToken[] = "user-0123456789-token-abc";
constexpr char kAdminToken[] = "admin-0123456789-token-abc";
constexpr char kStingyToken[] = "stingy-0123456789-token-ab";
// Under wide.pt (64 MiB of weights), over resnet18.pt (45 MB).
constexpr int64_t kMaxUploadBytes = 60'000'000;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream bytes;
  bytes << in.rdbuf();
  return bytes.str();
}

struct Upload {
  std::string token = kUploaderToken;
  std::string model_file;
  std::string card_json;  // Sent as is.
  std::string name;
  // Override what the header declares (empty / -1: the truth).
  std::string sha256;
  int64_t size_bytes = -1;
  int64_t chunk = 256 * 1024;
};

struct UploadOutcome {
  grpc::Status status;
  v1::UploadModelResponse response;
};

UploadOutcome Send(v1::Visualizer::Stub& stub, const Upload& upload) {
  const std::string bytes = ReadFile(upload.model_file);
  grpc::ClientContext context;
  context.set_deadline(After(300));
  if (!upload.token.empty()) {
    context.AddMetadata("authorization", absl::StrCat("Bearer ", upload.token));
  }
  UploadOutcome outcome;
  auto writer = stub.UploadModel(&context, &outcome.response);
  v1::UploadModelRequest request;
  auto* header = request.mutable_header();
  header->set_name(upload.name);
  header->set_size_bytes(upload.size_bytes >= 0
                             ? upload.size_bytes
                             : static_cast<int64_t>(bytes.size()));
  header->set_sha256(upload.sha256.empty() ? FileSha256(upload.model_file)
                                           : upload.sha256);
  header->set_card_json(upload.card_json);
  size_t offset = 0;
  bool first = true;
  while (first || offset < bytes.size()) {
    const size_t n = std::min<size_t>(upload.chunk, bytes.size() - offset);
    request.set_chunk(bytes.substr(offset, n));
    offset += n;
    if (!writer->Write(request)) break;
    request.clear_header();
    first = false;
  }
  writer->WritesDone();
  outcome.status = writer->Finish();
  return outcome;
}

std::string Card(const std::string& file) {
  return ReadFile(TestModelFile(absl::StrCat(file, ".card.json")));
}

// What the repository holds, relative paths of every file (hidden ones too).
std::set<std::string> RepositoryFiles(const std::string& root) {
  std::set<std::string> files;
  for (const auto& entry : fs::recursive_directory_iterator(root)) {
    files.insert(fs::relative(entry.path(), root).string());
  }
  return files;
}

class UploadTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    repo_ = new TempRepository();
    tokens_ = new std::string(absl::StrCat(repo_->root(), "_tokens.txt"));
    std::ofstream(*tokens_) << kUploaderToken << " lab uploader\n"
                            << kUserToken << " reader user\n"
                            << kAdminToken << " ops admin\n"
                            << kStingyToken
                            << " stingy uploader max_upload_bytes=30000\n";
    absl::StatusOr<std::unique_ptr<ServerProcess>> server = ServerProcess::Start(
        {"--model_dir=" + repo_->root(), "--tokens_file=" + *tokens_,
         absl::StrCat("--max_upload_bytes=", kMaxUploadBytes)});
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = server->release();
  }
  static void TearDownTestSuite() {
    delete server_;
    std::error_code ignored;
    fs::remove(*tokens_, ignored);
    delete tokens_;
    delete repo_;
  }
  void SetUp() override {
    ASSERT_NE(server_, nullptr);
    stub_ = server_->NewStub();
  }

  v1::RenderRequest Request(const std::string& model, const std::string& objective,
                            int steps) {
    v1::RenderRequest request;
    request.set_model(model);
    request.set_objective_text(objective);
    request.mutable_optimizer()->set_steps(steps);
    request.mutable_output()->set_png(true);
    return request;
  }
  RenderOutcome RenderAs(const v1::RenderRequest& request) {
    grpc::ClientContext context;
    context.set_deadline(After(300));
    context.AddMetadata("authorization", absl::StrCat("Bearer ", kUserToken));
    auto reader = stub_->Render(&context, request);
    return ReadAll(*reader);
  }
  v1::Model Get(const std::string& name) {
    grpc::ClientContext context;
    context.set_deadline(After(60));
    context.AddMetadata("authorization", absl::StrCat("Bearer ", kUserToken));
    v1::GetModelRequest request;
    request.set_name(name);
    v1::Model model;
    grpc::Status status = stub_->GetModel(&context, request, &model);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return model;
  }
  // Uploads `file` (with its card) as `name`; expects success.
  v1::Model MustUpload(const std::string& file, const std::string& name,
                       std::string card = "") {
    Upload upload;
    upload.model_file = TestModelFile(absl::StrCat(file, ".pt"));
    upload.card_json = card.empty() ? Card(file) : card;
    upload.name = name;
    UploadOutcome outcome = Send(*stub_, upload);
    EXPECT_TRUE(outcome.status.ok()) << file << ": " << outcome.status.error_message();
    return outcome.response.model();
  }

  // What GetServerStats says `client` has uploaded, in bytes.
  int64_t UploadedBytes(const std::string& client) {
    grpc::ClientContext context;
    context.set_deadline(After(30));
    context.AddMetadata("authorization", absl::StrCat("Bearer ", kUserToken));
    v1::ServerStats stats;
    grpc::Status status = stub_->GetServerStats(&context, {}, &stats);
    EXPECT_TRUE(status.ok()) << status.error_message();
    for (const v1::OwnerResultUsage& usage : stats.uploads()) {
      if (usage.owner() == client) return usage.bytes();
    }
    return 0;
  }

  static TempRepository* repo_;
  static std::string* tokens_;
  static ServerProcess* server_;
  std::unique_ptr<v1::Visualizer::Stub> stub_;
};
TempRepository* UploadTest::repo_ = nullptr;
std::string* UploadTest::tokens_ = nullptr;
ServerProcess* UploadTest::server_ = nullptr;

struct Wild {
  const char* file;
  const char* channel;  // A channel objective.
  const char* cls;      // A class objective, or "" for none.
};

TEST_F(UploadTest, EveryWildModelUploadsListsItsLayersAndRenders) {
  for (const Wild& w : std::vector<Wild>{
           {"mobilenet_like", "channel(blocks.1.3, 5)", "prob(5)"},
           {"sequential", "channel('3', 2)", "prob(1)"},
           {"face_heads", "channel(trunk.3, 1) + output(0, 2)", "prob(1)"},
           {"dict_heads", "channel(encoder.0, 3) + output(mask, 0)", "prob(4)"},
           {"backbone", "channel(layer2.0, 7) + output(0, 3)", ""},
           {"wide_input", "conv2:4", "prob(1)"},
           {"log_softmax", "channel(conv, 2)", "prob(3)"},
           {"odd_names", "channel('features.block-2', 6)", "prob(2)"},
       }) {
    SCOPED_TRACE(w.file);
    const std::string name = absl::StrCat("up_", w.file);
    v1::Model model = MustUpload(w.file, name);
    EXPECT_EQ(model.name(), name);
    EXPECT_EQ(model.version(), "1");
    EXPECT_EQ(model.path(), absl::StrCat(name, "/1/model.pt"));
    EXPECT_EQ(model.content_hash(),
              FileSha256(TestModelFile(absl::StrCat(w.file, ".pt"))));
    EXPECT_TRUE(fs::exists(repo_->Path(absl::StrCat(name, "/1/model.pt"))));
    EXPECT_TRUE(fs::exists(repo_->Path(absl::StrCat(name, "/1/model.card.json"))));
    EXPECT_GT(Get(name).layers_size(), 0);

    RenderOutcome r = RenderAs(Request(name, w.channel, 12));
    ASSERT_TRUE(r.status.ok()) << w.channel << ": " << r.status.error_message();
    ASSERT_TRUE(r.result.has_value());
    // The server's default precision (bf16 on a CPU that computes it
    // natively) applies to the models that run in bf16; hardshrink has no
    // CPU bf16 backward in LibTorch 1.13, so that model runs in fp32.
    if (w.file == std::string("mobilenet_like")) {
      EXPECT_EQ(r.result->precision(), "fp32");
      v1::RenderRequest bf16 = Request(name, w.channel, 2);
      bf16.set_precision("bf16");
      const RenderOutcome refused = RenderAs(bf16);
      EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
      EXPECT_NE(refused.status.error_message().find(
                    "precision is \"bf16\", but model up_mobilenet_like "
                    "cannot run in bf16 on this server"),
                std::string::npos)
          << refused.status.error_message();
      EXPECT_NE(refused.status.error_message().find("hardshrink"),
                std::string::npos)
          << refused.status.error_message();
    }
    EXPECT_GT(r.result->terms(0).final_value(), r.result->terms(0).trace(0))
        << w.channel;
    EXPECT_GT(r.result->png_size(), 0);

    // The class's logit is maximised (prob(c)'s gradient is scaled by the
    // probability, tiny at the start); its probability is what must be high.
    const std::string cls = w.cls;
    const std::string logit =
        cls.empty() ? "logit(0)" : "logit" + cls.substr(cls.find('('));
    v1::RenderRequest classes = Request(name, logit, 128);
    classes.mutable_image()->set_batch(1);
    classes.set_seed(1);
    r = RenderAs(classes);
    if (w.cls[0] == '\0') {
      EXPECT_EQ(r.status.error_code(), StatusCode::INVALID_ARGUMENT);
      EXPECT_TRUE(absl::StrContains(r.status.error_message(), name))
          << r.status.error_message();
      EXPECT_TRUE(absl::StrContains(r.status.error_message(), "no class output"))
          << r.status.error_message();
      continue;
    }
    ASSERT_TRUE(r.status.ok()) << r.status.error_message();
    const int index = std::stoi(cls.substr(cls.find('(') + 1));
    const std::vector<float> probs = Floats(r.result->probs());
    ASSERT_GT(static_cast<int>(probs.size()), index) << w.cls;
    EXPECT_GE(probs[index], 0.9) << w.cls;
    EXPECT_EQ(std::max_element(probs.begin(), probs.end()) - probs.begin(), index)
        << w.cls;
  }
}

TEST_F(UploadTest, ResNet18UploadsWithItsCardAndRendersAt64Pixels) {
  // The card's 224 px is slow on a CPU; ResNet runs at any size, so the
  // upload brings a card that says 64 (the render test's choice).
  std::string card = Card("resnet18");
  const std::string from = "\"height\": 224";
  card.replace(card.find(from), from.size(), "\"height\": 64");
  const std::string width = "\"width\": 224";
  card.replace(card.find(width), width.size(), "\"width\": 64");
  v1::Model model = MustUpload("resnet18", "resnet18", card);
  EXPECT_EQ(model.class_names_size(), 1000);
  EXPECT_EQ(model.input().height(), 64);
  EXPECT_EQ(model.input().mean(0), 0.485);
  RenderOutcome r = RenderAs(Request("resnet18", "channel(layer3.0.conv1, 9)", 8));
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_GT(r.result->terms(0).final_value(), r.result->terms(0).trace(0));

  // A class of its thousand, as wild_models_test.cc reaches it in process.
  v1::RenderRequest classes = Request("resnet18", "logit(7)", 256);
  classes.mutable_image()->set_batch(1);
  classes.set_seed(1);
  r = RenderAs(classes);
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  const std::vector<float> probs = Floats(r.result->probs());
  ASSERT_EQ(probs.size(), 1000u);
  EXPECT_GE(probs[7], 0.9);
  EXPECT_EQ(std::max_element(probs.begin(), probs.end()) - probs.begin(), 7);
}

// Sending the same file and card again answers with the version that has
// them instead of a copy of it, and the bytes do not count against the
// quota; a changed card (or file) is the next version.
TEST_F(UploadTest, AnIdenticalUploadAnswersWithTheServedVersion) {
  const int64_t used_before = UploadedBytes("lab");
  const std::string file = TestModelFile("sequential.pt");
  const int64_t size = static_cast<int64_t>(fs::file_size(file));
  const v1::Model first = MustUpload("sequential", "seq_versions");
  EXPECT_EQ(first.version(), "1");
  EXPECT_EQ(UploadedBytes("lab"), used_before + size);

  Upload again;
  again.model_file = file;
  again.name = "seq_versions";
  // The same card, written differently: it is the card that is compared,
  // not its bytes.
  again.card_json = Card("sequential") + "\n\n";
  UploadOutcome outcome = Send(*stub_, again);
  ASSERT_TRUE(outcome.status.ok()) << outcome.status.error_message();
  EXPECT_TRUE(outcome.response.already_present());
  EXPECT_EQ(outcome.response.model().version(), "1");
  EXPECT_EQ(outcome.response.model().path(), "seq_versions/1/model.pt");
  EXPECT_EQ(outcome.response.model().content_hash(), FileSha256(file));
  EXPECT_FALSE(fs::exists(repo_->Path("seq_versions/2")));
  EXPECT_EQ(UploadedBytes("lab"), used_before + size);
  EXPECT_EQ(Get("seq_versions").version(), "1");

  // Another card (a description) makes the same file the next version ...
  std::string card = Card("sequential");
  ASSERT_NE(card.find("Untrained"), std::string::npos) << card;
  card.replace(card.find("Untrained"), 9, "Retrained");
  again.card_json = card;
  outcome = Send(*stub_, again);
  ASSERT_TRUE(outcome.status.ok()) << outcome.status.error_message();
  EXPECT_FALSE(outcome.response.already_present());
  EXPECT_EQ(outcome.response.model().version(), "2");
  EXPECT_EQ(outcome.response.model().path(), "seq_versions/2/model.pt");
  RenderOutcome r = RenderAs(Request("seq_versions@2", "channel(0, 1)", 4));
  EXPECT_TRUE(r.status.ok()) << r.status.error_message();
  // ... which its next identical upload then finds.
  outcome = Send(*stub_, again);
  ASSERT_TRUE(outcome.status.ok()) << outcome.status.error_message();
  EXPECT_TRUE(outcome.response.already_present());
  EXPECT_EQ(outcome.response.model().version(), "2");

  // Files without a card: the first upload is new, the same again is not.
  again.card_json.clear();
  again.model_file = TestModelFile("tuple_output.pt");
  outcome = Send(*stub_, again);
  ASSERT_TRUE(outcome.status.ok()) << outcome.status.error_message();
  EXPECT_FALSE(outcome.response.already_present());
  EXPECT_EQ(outcome.response.model().version(), "3");
  outcome = Send(*stub_, again);
  ASSERT_TRUE(outcome.status.ok()) << outcome.status.error_message();
  EXPECT_TRUE(outcome.response.already_present());
  EXPECT_EQ(outcome.response.model().version(), "3");
}

TEST_F(UploadTest, TheNameComesFromTheCardWhenNotGiven) {
  v1::Model model = MustUpload("wide_input", "");
  EXPECT_EQ(model.name(), "wide_input");
}

TEST_F(UploadTest, TheCatalogueShowsOutputsClassesAndUntappableLayers) {
  MustUpload("face_heads", "cat_face");
  v1::Model face = Get("cat_face");
  ASSERT_EQ(face.outputs_size(), 3);
  EXPECT_EQ(face.outputs(1).name(), "1");
  EXPECT_EQ(face.logits_output(), "1");
  EXPECT_EQ(face.class_names_size(), 2);
  MustUpload("odd_names", "cat_odd");
  v1::Model odd = Get("cat_odd");
  bool saw_rarely = false;
  for (const v1::Layer& layer : odd.layers()) {
    if (layer.path() != "rarely") {
      EXPECT_TRUE(layer.tappable()) << layer.path();
      continue;
    }
    saw_rarely = true;
    EXPECT_FALSE(layer.tappable());
    EXPECT_TRUE(absl::StrContains(layer.untappable_reason(), "control flow"));
  }
  EXPECT_TRUE(saw_rarely);
  MustUpload("log_softmax", "cat_logsm");
  EXPECT_TRUE(Get("cat_logsm").log_probs());
  // A tuple whose card names 3 classes but no "logits": the one [batch, 3]
  // output is taken, and the catalogue says which.
  MustUpload("tuple_output", "cat_tuple");
  const v1::Model tuple = Get("cat_tuple");
  EXPECT_EQ(tuple.logits_output(), "0");
  EXPECT_EQ(tuple.class_names_size(), 3);
  RenderOutcome r = RenderAs(Request("cat_tuple", "logit(2)", 4));
  EXPECT_TRUE(r.status.ok()) << r.status.error_message();
  // Two outputs that wide: refused, naming them.
  Upload twin;
  twin.model_file = TestModelFile("twin_heads.pt");
  twin.card_json = Card("twin_heads");
  twin.name = "cat_twin";
  const UploadOutcome refused = Send(*stub_, twin);
  EXPECT_EQ(refused.status.error_code(), StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(absl::StrContains(refused.status.error_message(),
                                "2 outputs have 3 columns ('0', '1')"))
      << refused.status.error_message();
}

// Each refused upload leaves the repository as it was.
TEST_F(UploadTest, BadUploadsAreRefusedAndLeaveNothingBehind) {
  const std::set<std::string> before = RepositoryFiles(repo_->root());
  struct Bad {
    const char* what;
    Upload upload;
    StatusCode code;
    const char* says;
  };
  std::vector<Bad> cases;
  auto base = [](const std::string& file) {
    Upload u;
    u.model_file = TestModelFile(file);
    u.name = "bad";
    return u;
  };
  {
    Upload u = base("wide.pt");  // 64 MiB > --max_upload_bytes
    cases.push_back({"too large", u, StatusCode::RESOURCE_EXHAUSTED,
                     "--max_upload_bytes"});
  }
  {
    Upload u = base("sequential.pt");
    u.sha256 = std::string(64, 'a');
    cases.push_back({"hash mismatch", u, StatusCode::INVALID_ARGUMENT, "SHA-256"});
  }
  {
    Upload u = base("sequential.pt");
    u.sha256 = "not-a-hash";
    cases.push_back({"malformed hash", u, StatusCode::INVALID_ARGUMENT, "header.sha256"});
  }
  for (const char* file : {"corrupt.pt", "not_torchscript.pt"}) {
    Upload u = base(file);
    cases.push_back({file, u, StatusCode::INVALID_ARGUMENT, "not a TorchScript model"});
  }
  {
    Upload u = base("sequential.pt");
    u.token = kUserToken;
    cases.push_back({"no role", u, StatusCode::PERMISSION_DENIED, "uploader"});
  }
  {
    Upload u = base("sequential.pt");
    u.token = "";
    cases.push_back({"no token", u, StatusCode::UNAUTHENTICATED, "token"});
  }
  {
    Upload u = base("mobilenet_like.pt");  // 87 kB > 30 kB quota
    u.token = kStingyToken;
    cases.push_back({"over quota", u, StatusCode::RESOURCE_EXHAUSTED,
                     "max_upload_bytes"});
  }
  {
    Upload u = base("sequential.pt");
    u.size_bytes = 1'000'000;
    cases.push_back({"cut short", u, StatusCode::INVALID_ARGUMENT, "header.size_bytes"});
  }
  {
    Upload u = base("sequential.pt");
    u.name = "../escape";
    cases.push_back({"bad name", u, StatusCode::INVALID_ARGUMENT, "[A-Za-z0-9_-]"});
  }
  {
    Upload u = base("face_heads.pt");
    u.card_json = R"({"logits": "age", "classes": ["a", "b"]})";
    cases.push_back({"card names a missing output", u, StatusCode::INVALID_ARGUMENT,
                     "'age'"});
  }
  {
    Upload u = base("sequential.pt");
    u.card_json = "{not json";
    cases.push_back({"broken card", u, StatusCode::INVALID_ARGUMENT, "card_json"});
  }
  for (const Bad& bad : cases) {
    UploadOutcome outcome = Send(*stub_, bad.upload);
    EXPECT_EQ(outcome.status.error_code(), bad.code)
        << bad.what << ": " << outcome.status.error_message();
    EXPECT_TRUE(absl::StrContains(outcome.status.error_message(), bad.says))
        << bad.what << ": " << outcome.status.error_message();
  }
  EXPECT_EQ(RepositoryFiles(repo_->root()), before);
  // Refused uploads give their bytes back: the stingy client can still send
  // a model that fits its quota.
  Upload fits = base("sequential.pt");
  fits.token = kStingyToken;
  fits.name = "stingy_seq";
  UploadOutcome outcome = Send(*stub_, fits);
  EXPECT_TRUE(outcome.status.ok()) << outcome.status.error_message();
  // An admin may upload too.
  fits.token = kAdminToken;
  fits.name = "admin_seq";
  outcome = Send(*stub_, fits);
  EXPECT_TRUE(outcome.status.ok()) << outcome.status.error_message();
}

// Issue 25: an upload whose forward returns a file's bytes among its logits
// (the server's tokens file, its TLS key) is refused naming the operator,
// and so is one whose __setstate__ reads a file, before it runs; nothing of
// them stays, and the server goes on taking uploads and rendering.
TEST_F(UploadTest,
       AModelThatReadsAFileIsRefusedNamingTheOperatorAndTheServerServesOn) {
  // What the hostile models read, written here: a model that ran would
  // hand back these bytes.
  std::ofstream(TestModelFile("hostile_secret.bin"), std::ios::binary)
      << "root:x:0";
  const std::set<std::string> before = RepositoryFiles(repo_->root());
  struct Hostile {
    const char* file;
    const char* says;
  };
  for (const Hostile& h : std::vector<Hostile>{
           {"hostile_outputs",
            "calls aten::from_file in forward (make_hostile_models.py line "},
           {"hostile_setstate",
            "calls aten::from_file in __setstate__ of submodule cache "
            "(make_hostile_models.py line "}}) {
    SCOPED_TRACE(h.file);
    Upload upload;
    upload.model_file = TestModelFile(absl::StrCat(h.file, ".pt"));
    upload.card_json = Card(h.file);
    upload.name = "leaky";
    const UploadOutcome outcome = Send(*stub_, upload);
    EXPECT_EQ(outcome.status.error_code(), StatusCode::INVALID_ARGUMENT)
        << outcome.status.error_message();
    EXPECT_TRUE(absl::StrContains(outcome.status.error_message(), h.says))
        << outcome.status.error_message();
    EXPECT_TRUE(absl::StrContains(outcome.status.error_message(),
                                  "models may only compute on tensors"))
        << outcome.status.error_message();
    EXPECT_FALSE(absl::StrContains(outcome.status.error_message(), "root:x:0"));
  }
  EXPECT_EQ(RepositoryFiles(repo_->root()), before);
  {
    grpc::ClientContext context;
    context.set_deadline(After(60));
    context.AddMetadata("authorization", absl::StrCat("Bearer ", kUserToken));
    v1::GetModelRequest request;
    request.set_name("leaky");
    v1::Model model;
    EXPECT_EQ(stub_->GetModel(&context, request, &model).error_code(),
              StatusCode::NOT_FOUND);
  }
  // The server serves on: the next upload loads and renders.
  MustUpload("sequential", "after_refusal");
  const RenderOutcome r =
      RenderAs(Request("after_refusal", "channel('3', 2)", 4));
  EXPECT_TRUE(r.status.ok()) << r.status.error_message();
}

// ------------------------------------------------------------ geometry

TEST_F(UploadTest, RendersNonSquareGrayAndRefusesWhatDoesNotFit) {
  MustUpload("wide_input", "geo_wide");
  MustUpload("sequential", "geo_gray");

  v1::RenderRequest wide = Request("geo_wide", "channel(conv2, 1)", 4);
  wide.mutable_image()->set_height(20);
  wide.mutable_image()->set_width(36);
  wide.mutable_output()->set_tensor(true);
  RenderOutcome r = RenderAs(wide);
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(std::vector<int64_t>(r.result->images().shape().begin(),
                                 r.result->images().shape().end()),
            (std::vector<int64_t>{1, 3, 20, 36}));

  v1::RenderRequest native = Request("geo_wide", "channel(conv2, 1)", 2);
  native.mutable_output()->set_tensor(true);
  r = RenderAs(native);
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.result->images().shape(2), 24);
  EXPECT_EQ(r.result->images().shape(3), 40);

  v1::RenderRequest gray = Request("geo_wide", "prob(1)", 8);
  gray.mutable_image()->set_color(v1::ImageSpec::COLOR_GRAY);
  gray.mutable_output()->set_tensor(true);
  r = RenderAs(gray);
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.result->images().shape(1), 1);

  struct Bad {
    v1::RenderRequest request;
    const char* says;
  };
  std::vector<Bad> bad;
  bad.push_back({Request("geo_gray", "channel(0, 1)", 2), "COLOR_RGB"});
  bad.back().request.mutable_image()->set_color(v1::ImageSpec::COLOR_RGB);
  bad.push_back({Request("geo_wide", "channel(conv2, 1)", 2), "image.size"});
  bad.back().request.mutable_image()->set_size(16);
  bad.back().request.mutable_image()->set_height(16);
  bad.push_back({Request("geo_wide", "channel(conv2, 1)", 2), "image.height"});
  bad.back().request.mutable_image()->set_height(513);
  bad.push_back({Request("geo_wide", "channel(conv2, 1)", 2), "image.width"});
  bad.back().request.mutable_image()->set_width(int64_t{1} << 62);
  bad.push_back({Request("geo_wide", "channel(conv2, 1)", 2), "image.width"});
  bad.back().request.mutable_image()->set_width(-1);
  for (const Bad& b : bad) {
    r = RenderAs(b.request);
    EXPECT_EQ(r.status.error_code(), StatusCode::INVALID_ARGUMENT) << b.says;
    EXPECT_TRUE(absl::StrContains(r.status.error_message(), b.says))
        << r.status.error_message();
  }
}

}  // namespace
}  // namespace featviz::testing
