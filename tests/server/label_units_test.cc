// Circuits.LabelUnits end to end (issue 29, automatic unit labels): the real
// featviz-server with the bundled MNIST classifier and the MNIST test set
// labels units by the classes of their top examples, agrees with
// TopExamples about which those are, ranks units by their share of a class,
// and refuses hostile values by name while it goes on serving.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/image.h"
#include "core/sha256.h"
#include "featviz/v1/circuits.grpc.pb.h"
#include "tests/server/server_process.h"
#include "tests/server/shared_server.h"
#include "tests/server/test_client.h"

namespace featviz::testing {
namespace {

using grpc::StatusCode;

class LabelUnitsTest : public SharedServerTest<LabelUnitsTest> {
 public:
  static std::vector<std::string> ServerFlags() { return MnistServerFlags(); }

 protected:
  grpc::Status Label(const v1::LabelUnitsRequest& request,
                     v1::LabelUnitsResponse& response) {
    grpc::ClientContext context;
    return circuits_->LabelUnits(&context, request, &response);
  }
};

v1::LabelUnitsRequest Request(const std::string& layer) {
  v1::LabelUnitsRequest request;
  request.set_model(kModel);
  request.set_layer(layer);
  return request;
}

TEST_F(LabelUnitsTest, LabelsEveryUnitByTheClassesOfItsTopHundred) {
  v1::LabelUnitsResponse response;
  grpc::Status status = Label(Request("fc1"), response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.model(), kModel);
  EXPECT_EQ(response.model_hash().size(), 64u);
  EXPECT_EQ(response.layer(), "fc1");
  EXPECT_EQ(response.dataset(), "mnist");
  EXPECT_EQ(response.top_n(), 100);
  ASSERT_EQ(response.units_size(), 64);
  int selective = 0;
  std::map<bool, int> with_attribution;
  for (int u = 0; u < response.units_size(); ++u) {
    const v1::UnitLabel& unit = response.units(u);
    EXPECT_EQ(unit.channel(), u);
    ASSERT_GE(unit.classes_size(), 1);
    double total = 0;
    int64_t count = 0;
    for (int c = 0; c < unit.classes_size(); ++c) {
      const v1::ClassShare& share = unit.classes(c);
      EXPECT_GT(share.count(), 0);
      EXPECT_DOUBLE_EQ(share.fraction(), share.count() / 100.0);
      EXPECT_EQ(share.class_name(), absl::StrCat(share.class_index()));
      if (c > 0) {
        EXPECT_LE(share.count(), unit.classes(c - 1).count());
      }
      total += share.fraction();
      count += share.count();
    }
    EXPECT_NEAR(total, 1.0, 1e-9);
    EXPECT_EQ(count, 100);
    EXPECT_GE(unit.selectivity(), 0.0);
    EXPECT_LE(unit.selectivity(), 1.0);
    const v1::ClassShare& top = unit.classes(0);
    const std::string said =
        absl::StrFormat("%ss: %d %% of its top 100", top.class_name(),
                        static_cast<int>(std::lround(100 * top.fraction())));
    // A unit that never fires past its ReLU feeds no class, and its label
    // says so.
    EXPECT_EQ(unit.label(), absl::StrCat(unit.attribution_size() > 0
                                             ? "fires on "
                                             : "never fires; closest on ",
                                         said));
    // A unit whose top examples are nearly all one digit is selective for
    // it: each digit is about a tenth of the test set.
    if (top.fraction() >= 0.9) {
      ++selective;
      EXPECT_GT(unit.selectivity(), 0.85) << unit.label();
    }
    // A unit spread over many digits is not.
    if (top.fraction() <= 0.2) {
      EXPECT_LT(unit.selectivity(), 0.13) << unit.label();
    }
    ASSERT_LE(unit.attribution_size(), 3);
    for (int a = 0; a < unit.attribution_size(); ++a) {
      EXPECT_GT(unit.attribution(a).score(), 0);
      if (a > 0) {
        EXPECT_LE(unit.attribution(a).score(), unit.attribution(a - 1).score());
      }
    }
    if (top.fraction() >= 0.9) ++with_attribution[unit.attribution_size() > 0];
  }
  // The trained classifier's hidden layer has units for single digits, and
  // the model uses them.
  EXPECT_GT(selective, 0);
  EXPECT_GT(with_attribution[true], 0);

  // The same pass again, from the cache.
  v1::LabelUnitsResponse again;
  status = Label(Request("fc1"), again);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_TRUE(again.cached());
  EXPECT_EQ(again.units(5).label(), response.units(5).label());
}

TEST_F(LabelUnitsTest, CountsTheLabelsTopExamplesReturns) {
  v1::LabelUnitsRequest request = Request("conv2");
  request.add_channels(3);
  request.add_channels(17);
  request.set_top_n(40);
  v1::LabelUnitsResponse labels;
  grpc::Status status = Label(request, labels);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_EQ(labels.units_size(), 2);
  EXPECT_EQ(labels.top_n(), 40);

  v1::TopExamplesRequest top_request;
  top_request.set_model(kModel);
  top_request.set_layer("conv2");
  top_request.add_channels(3);
  top_request.add_channels(17);
  top_request.set_top_n(40);
  grpc::ClientContext context;
  v1::TopExamplesResponse top;
  status = circuits_->TopExamples(&context, top_request, &top);
  ASSERT_TRUE(status.ok()) << status.error_message();
  for (int u = 0; u < 2; ++u) {
    std::map<int64_t, int64_t> counted;
    for (int64_t label : top.units(u).labels()) ++counted[label];
    std::map<int64_t, int64_t> labelled;
    for (const v1::ClassShare& share : labels.units(u).classes()) {
      labelled[share.class_index()] = share.count();
    }
    EXPECT_EQ(labelled, counted) << "channel " << top.units(u).channel();
  }
}

TEST_F(LabelUnitsTest, RanksUnitsByTheirShareOfAClass) {
  v1::LabelUnitsRequest request = Request("conv2");
  request.set_label(7);
  v1::LabelUnitsResponse sevens;
  grpc::Status status = Label(request, sevens);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_GT(sevens.units_size(), 3);
  EXPECT_LE(sevens.units_size(), 32);
  auto share_of_7 = [](const v1::UnitLabel& unit) {
    for (const v1::ClassShare& c : unit.classes()) {
      if (c.class_index() == 7) return c.fraction();
    }
    return 0.0;
  };
  for (int u = 0; u < sevens.units_size(); ++u) {
    EXPECT_GT(share_of_7(sevens.units(u)), 0) << "unit without 7s listed";
    if (u > 0) {
      EXPECT_LE(share_of_7(sevens.units(u)), share_of_7(sevens.units(u - 1)));
    }
  }
  request.set_limit(3);
  v1::LabelUnitsResponse first3;
  status = Label(request, first3);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_EQ(first3.units_size(), 3);
  for (int u = 0; u < 3; ++u) {
    EXPECT_EQ(first3.units(u).channel(), sevens.units(u).channel());
  }
}

TEST_F(LabelUnitsTest, HostileValuesGetNamedErrorsAndTheServerGoesOn) {
  struct Case {
    const char* what;
    v1::LabelUnitsRequest request;
    StatusCode code;
    std::string text;
  };
  std::vector<Case> cases;
  auto add = [&](const char* what, auto change, StatusCode code,
                 std::string text) {
    v1::LabelUnitsRequest request = Request("conv2");
    change(request);
    cases.push_back({what, request, code, std::move(text)});
  };
  add("top_n -1", [](auto& r) { r.set_top_n(-1); },
      StatusCode::INVALID_ARGUMENT, "top_n must be in [1, 100], got -1");
  add("top_n 2^31-1", [](auto& r) { r.set_top_n(2147483647); },
      StatusCode::INVALID_ARGUMENT, "top_n must be in [1, 100], got 2147483647");
  add("label -1", [](auto& r) { r.set_label(-1); }, StatusCode::OUT_OF_RANGE,
      "label: class -1 out of range for dataset mnist with 10 classes");
  add("label 10", [](auto& r) { r.set_label(10); }, StatusCode::OUT_OF_RANGE,
      "label: class 10 out of range");
  add("label 2^62", [](auto& r) { r.set_label(int64_t{1} << 62); },
      StatusCode::OUT_OF_RANGE, "label: class 4611686018427387904 out of range");
  add("limit -5",
      [](auto& r) {
        r.set_label(7);
        r.set_limit(-5);
      },
      StatusCode::INVALID_ARGUMENT, "limit must be >= 0 (0: every unit), got -5");
  add("unknown layer", [](auto& r) { r.set_layer("conv9"); },
      StatusCode::NOT_FOUND, "layer");
  add("no layer", [](auto& r) { r.set_layer(""); }, StatusCode::NOT_FOUND,
      "layer");
  add("channel 32",
      [](auto& r) {
        r.add_channels(0);
        r.add_channels(32);
      },
      StatusCode::OUT_OF_RANGE,
      "channels[1]: channel 32 out of range for layer conv2 with 32 channels");
  add("channel -1", [](auto& r) { r.add_channels(-1); },
      StatusCode::OUT_OF_RANGE, "channels[0]: channel -1 out of range");
  add("unknown dataset", [](auto& r) { r.set_dataset("cifar"); },
      StatusCode::NOT_FOUND, "dataset 'cifar' is not hosted here");
  add("unknown model", [](auto& r) { r.set_model("resnet"); },
      StatusCode::NOT_FOUND, "model");
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    v1::LabelUnitsResponse response;
    ExpectError(Label(c.request, response), c.code, c.text);
  }
  v1::LabelUnitsRequest fine = Request("conv2");
  fine.add_channels(1);
  v1::LabelUnitsResponse response;
  const grpc::Status status = Label(fine, response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.units_size(), 1);
}

TEST(LabelUnitsUnlabelled, ADatasetWithoutLabelsIsAFailedPrecondition) {
  // No --dataset_dir: the upload lives in memory only.
  absl::StatusOr<std::unique_ptr<ServerProcess>> server = ServerProcess::Start();
  ASSERT_TRUE(server.ok()) << server.status();
  auto circuits = v1::Circuits::NewStub((*server)->channel());
  absl::StatusOr<std::string> npy = core::EncodeNpy(at::rand({20, 1, 28, 28}));
  ASSERT_TRUE(npy.ok()) << npy.status();
  {
    grpc::ClientContext context;
    v1::Dataset uploaded;
    auto writer = circuits->UploadDataset(&context, &uploaded);
    v1::UploadDatasetRequest request;
    v1::UploadDatasetRequest::Header* header = request.mutable_header();
    header->set_name("scans");
    header->set_format(v1::DATASET_FORMAT_NPY);
    header->set_size_bytes(static_cast<int64_t>(npy->size()));
    header->set_sha256(core::Sha256Hex(*npy));
    request.set_chunk(*npy);
    ASSERT_TRUE(writer->Write(request));
    writer->WritesDone();
    const grpc::Status status = writer->Finish();
    ASSERT_TRUE(status.ok()) << status.error_message();
    EXPECT_TRUE(uploaded.class_names().empty());
  }
  v1::LabelUnitsRequest request = Request("conv2");
  request.set_dataset("scans");
  grpc::ClientContext named;
  v1::LabelUnitsResponse response;
  ExpectError(circuits->LabelUnits(&named, request, &response),
              StatusCode::FAILED_PRECONDITION, "dataset: scans has no labels");
  // Named by no one: no labelled dataset fits.
  request.clear_dataset();
  grpc::ClientContext unnamed;
  ExpectError(circuits->LabelUnits(&unnamed, request, &response),
              StatusCode::FAILED_PRECONDITION, "dataset");
}

}  // namespace
}  // namespace featviz::testing
