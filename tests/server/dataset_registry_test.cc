// The DatasetRegistry in process: which dataset a request that names none
// gets (only one of the model's shape), uploads reserved, published to disk
// and loaded again, deleted by their owner only, and readers that outlive a
// deletion.
#include "server/engine/dataset_registry.h"

#include <unistd.h>

#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/dataset.h"
#include "server/engine/staging.h"

namespace featviz::server {
namespace {

namespace fs = std::filesystem;

core::DatasetPtr Made(const std::string& name, int64_t c, int64_t h, int64_t w,
                      bool labelled = true, const std::string& owner = "") {
  auto d = std::make_shared<core::Dataset>();
  d->name = name;
  d->source = "npy";
  d->images = at::rand({4, c, h, w});
  d->labels = labelled ? at::tensor({0, 1, 0, 1}, at::kLong)
                       : at::full({4}, -1, at::kLong);
  if (labelled) d->class_names = {"a", "b"};
  d->owner = owner;
  d->uploaded = !owner.empty();
  return d;
}

DatasetNeed Need(int64_t c, int64_t h, int64_t w) {
  DatasetNeed need;
  need.model = "m";
  need.channels = c;
  need.height = h;
  need.width = w;
  return need;
}

std::string TempDir(const std::string& name) {
  const std::string dir = absl::StrCat(::testing::TempDir(), "featviz_registry_",
                                       getpid(), "_", name);
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

TEST(DatasetRegistry, ARequestWithoutANameGetsOnlyTheOneThatFits) {
  DatasetRegistry registry({Made("mnist", 1, 28, 28), Made("cifar", 3, 32, 32),
                            Made("faces", 3, 48, 48, /*labelled=*/false)});
  absl::StatusOr<core::DatasetPtr> gray = registry.Pick("", Need(1, 28, 28), "dataset");
  ASSERT_TRUE(gray.ok()) << gray.status();
  EXPECT_EQ((*gray)->name, "mnist");
  EXPECT_EQ((*registry.Pick("", Need(3, 48, 48), "dataset"))->name, "faces");

  // No dataset of the model's shape: never another one.
  absl::StatusOr<core::DatasetPtr> none = registry.Pick("", Need(3, 64, 64), "dataset");
  EXPECT_EQ(none.status().code(), absl::StatusCode::kFailedPrecondition);
  for (const char* says : {"dataset: no hosted dataset fits model m's input [3, 64, 64]",
                           "cifar [3, 32, 32]", "faces [3, 48, 48] unlabelled",
                           "mnist [1, 28, 28]"}) {
    EXPECT_TRUE(absl::StrContains(none.status().message(), says))
        << none.status().message() << " should say " << says;
  }
  // Labelled only: faces fits the shape but has no labels.
  DatasetNeed labelled = Need(3, 48, 48);
  labelled.labelled = true;
  EXPECT_TRUE(absl::StrContains(registry.Pick("", labelled, "dataset").status().message(),
                                "no hosted labelled dataset fits"));
  // A gray dataset fits an RGB input only where asked (reference images).
  DatasetNeed rgb = Need(3, 28, 28);
  EXPECT_EQ(registry.Pick("", rgb, "x").status().code(),
            absl::StatusCode::kFailedPrecondition);
  rgb.gray_for_rgb = true;
  EXPECT_EQ((*registry.Pick("", rgb, "x"))->name, "mnist");

  // Named: that one, whatever its shape (the caller checks it).
  EXPECT_EQ((*registry.Pick("cifar", Need(1, 28, 28), "dataset"))->name, "cifar");
  absl::StatusOr<core::DatasetPtr> unknown = registry.Pick("imagenet", Need(1, 28, 28),
                                                           "dataset");
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(absl::StartsWith(unknown.status().message(),
                               "dataset: dataset 'imagenet' is not hosted here"));
}

TEST(DatasetRegistry, SeveralFittingDatasetsMustBeNamed) {
  DatasetRegistry registry({Made("mnist", 1, 28, 28), Made("digits", 1, 28, 28)});
  absl::StatusOr<core::DatasetPtr> two = registry.Pick("", Need(1, 28, 28), "dataset");
  EXPECT_EQ(two.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(two.status().message(),
                                "2 hosted datasets fit model m's input [1, 28, 28]: "
                                "digits, mnist; name the one to use"))
      << two.status().message();
  EXPECT_EQ(registry.Fitting(Need(1, 28, 28)).size(), 2u);
}

TEST(DatasetRegistry, UploadsArePersistedAndLoadedAgain) {
  const std::string dir = TempDir("persist");
  {
    absl::StatusOr<DatasetRegistryPtr> registry = DatasetRegistry::Create(dir);
    ASSERT_TRUE(registry.ok()) << registry.status();
    EXPECT_TRUE((*registry)->persists_uploads());
    ASSERT_TRUE((*registry)->Reserve("faces", "lab").ok());
    absl::StatusOr<fs::path> staged = (*registry)->NewStagingDir();
    ASSERT_TRUE(staged.ok()) << staged.status();
    EXPECT_TRUE(absl::StartsWith(staged->string(), dir + "/.uploads/"));
    absl::StatusOr<core::DatasetPtr> published =
        (*registry)->Publish(Made("faces", 3, 8, 8, true, "lab"), *staged);
    ASSERT_TRUE(published.ok()) << published.status();
    EXPECT_TRUE(fs::exists(dir + "/faces/images.npy"));
    EXPECT_FALSE(fs::exists(dir + "/.uploads")) << "staging left behind";
  }
  absl::StatusOr<DatasetRegistryPtr> again = DatasetRegistry::Create(dir);
  ASSERT_TRUE(again.ok()) << again.status();
  absl::StatusOr<core::DatasetPtr> faces = (*again)->Find("faces");
  ASSERT_TRUE(faces.ok()) << faces.status();
  EXPECT_EQ((*faces)->owner, "lab");
  EXPECT_TRUE((*faces)->uploaded);
  EXPECT_EQ((*faces)->class_names, (std::vector<std::string>{"a", "b"}));
  fs::remove_all(dir);

  // A dataset directory that is itself a dataset keeps uploads in memory.
  absl::StatusOr<DatasetRegistryPtr> mnist = DatasetRegistry::Create(FEATVIZ_MNIST_DIR);
  ASSERT_TRUE(mnist.ok()) << mnist.status();
  EXPECT_FALSE((*mnist)->persists_uploads());
  absl::StatusOr<fs::path> temp = (*mnist)->NewStagingDir();
  ASSERT_TRUE(temp.ok());
  EXPECT_FALSE(absl::StartsWith(temp->string(), FEATVIZ_MNIST_DIR));
  fs::remove_all(*temp);
}

TEST(DatasetRegistry, ReservationsRefuseTakenNamesAndCountLimits) {
  DatasetRegistryOptions options;
  options.max_datasets = 4;
  options.max_per_owner = 2;
  DatasetRegistry registry({Made("mnist", 1, 28, 28)}, options);
  EXPECT_EQ(registry.Reserve("mnist", "lab").code(), absl::StatusCode::kAlreadyExists);
  ASSERT_TRUE(registry.Reserve("a", "lab").ok());
  EXPECT_EQ(registry.Reserve("a", "ops").code(), absl::StatusCode::kAlreadyExists);
  ASSERT_TRUE(registry.Reserve("b", "lab").ok());
  const absl::Status third = registry.Reserve("c", "lab");
  EXPECT_EQ(third.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(absl::StrContains(third.message(), "--max_datasets_per_owner 2"))
      << third.message();
  ASSERT_TRUE(registry.Reserve("c", "ops").ok());
  const absl::Status full = registry.Reserve("d", "ops");
  EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(absl::StrContains(full.message(), "--max_datasets 4")) << full.message();
  registry.Unreserve("a");
  EXPECT_TRUE(registry.Reserve("a", "lab").ok());
}

TEST(DatasetRegistry, OnlyTheOwnerOrAnAdminDeletesAndReadersKeepTheirCopy) {
  const std::string dir = TempDir("remove");
  absl::StatusOr<DatasetRegistryPtr> made = DatasetRegistry::Create(dir);
  ASSERT_TRUE(made.ok());
  DatasetRegistry& registry = **made;
  for (const char* name : {"mine", "theirs"}) {
    ASSERT_TRUE(registry.Reserve(name, "lab").ok());
    absl::StatusOr<fs::path> staged = registry.NewStagingDir();
    ASSERT_TRUE(staged.ok());
    ASSERT_TRUE(registry.Publish(Made(name, 1, 8, 8, true, "lab"), *staged).ok());
  }
  DatasetRegistry builtin({Made("mnist", 1, 28, 28)});
  const absl::Status operators = builtin.Remove("mnist", "ops", true).status();
  EXPECT_EQ(operators.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(operators.message(), "cannot be deleted through the API"));
  EXPECT_EQ(registry.Remove("nope", "lab", false).status().code(),
            absl::StatusCode::kNotFound);
  const absl::Status stranger = registry.Remove("mine", "eve", false).status();
  EXPECT_EQ(stranger.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_TRUE(absl::StrContains(stranger.message(), "belongs to 'lab'"));

  // An analysis still reading it keeps its copy.
  absl::StatusOr<core::DatasetPtr> held = registry.Find("mine");
  ASSERT_TRUE(held.ok());
  ASSERT_TRUE(registry.Remove("mine", "lab", false).ok());
  EXPECT_EQ(registry.Find("mine").status().code(), absl::StatusCode::kNotFound);
  EXPECT_FALSE(fs::exists(dir + "/mine"));
  EXPECT_EQ((*held)->images.size(0), 4);
  EXPECT_EQ(at::sum((*held)->images).item<float>() > 0, true);
  ASSERT_TRUE(registry.Remove("theirs", "ops", /*admin=*/true).ok());
  EXPECT_EQ(registry.size(), 0u);
  EXPECT_TRUE(fs::is_empty(dir)) << "files left behind";
  // The name is free again.
  EXPECT_TRUE(registry.Reserve("mine", "lab").ok());
  fs::remove_all(dir);
}

TEST(DatasetRegistry, ReadersAndWritersAtOnce) {
  DatasetRegistry registry({Made("mnist", 1, 28, 28)});
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&registry, t] {
      for (int i = 0; i < 50; ++i) {
        const std::string name = absl::StrCat("set", t, "_", i);
        if (!registry.Reserve(name, absl::StrCat("owner", t)).ok()) continue;
        absl::StatusOr<fs::path> staged = registry.NewStagingDir();
        ASSERT_TRUE(staged.ok());
        ASSERT_TRUE(registry
                        .Publish(Made(name, 1, 4, 4, true, absl::StrCat("owner", t)),
                                 *staged)
                        .ok());
        RemoveStagingDir(*staged);
        EXPECT_TRUE(registry.Find(name).ok());
        EXPECT_FALSE(registry.List().empty());
        ASSERT_TRUE(registry.Remove(name, absl::StrCat("owner", t), false).ok());
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(registry.size(), 1u);
}

TEST(DatasetRegistry, AMemoryBudgetRefusesWhatWouldGoPastItNamingIt) {
  // Each made dataset: 4 float images of 1x8x8 and 4 int64 labels.
  const int64_t one = Made("x", 1, 8, 8)->bytes();
  DatasetRegistryOptions options;
  options.memory_bytes = 2 * one;  // Two fit, exactly.
  // The operator's, in name order: the third is left out at start.
  DatasetRegistry registry(
      {Made("c", 1, 8, 8), Made("a", 1, 8, 8), Made("b", 1, 8, 8)}, options);
  EXPECT_EQ(registry.size(), 2u);
  EXPECT_TRUE(registry.Find("a").ok());
  EXPECT_TRUE(registry.Find("b").ok());
  EXPECT_FALSE(registry.Find("c").ok());
  DatasetMemory memory = registry.Memory();
  EXPECT_EQ(memory.datasets, 2);
  EXPECT_EQ(memory.bytes, 2 * one);
  EXPECT_EQ(memory.budget_bytes, options.memory_bytes);

  // Full: an upload is refused before it sends a byte...
  const absl::Status full = registry.Reserve("up", "lab");
  EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted) << full;
  EXPECT_TRUE(absl::StrContains(
      full.message(),
      absl::StrCat("all of --dataset_memory_bytes ", options.memory_bytes)))
      << full;

  // ...and with room for a small one, a large one is refused when
  // published, naming the budget; the small one then fits.
  options.memory_bytes = 2 * one + one / 2;
  DatasetRegistry roomy({Made("a", 1, 8, 8)}, options);
  ASSERT_TRUE(roomy.Reserve("big", "lab").ok());
  absl::StatusOr<fs::path> staged = roomy.NewStagingDir();
  ASSERT_TRUE(staged.ok());
  const absl::Status big =
      roomy.Publish(Made("big", 1, 16, 16, true, "lab"), *staged).status();
  EXPECT_EQ(big.code(), absl::StatusCode::kResourceExhausted) << big;
  EXPECT_TRUE(absl::StrContains(
      big.message(),
      absl::StrCat("but --dataset_memory_bytes is ", options.memory_bytes)))
      << big;
  EXPECT_TRUE(absl::StrContains(big.message(), "a (")) << big;
  roomy.Unreserve("big");
  ASSERT_TRUE(roomy.Reserve("small", "lab").ok());
  ASSERT_TRUE(roomy.Publish(Made("small", 1, 8, 8, true, "lab"), *staged).ok());
  RemoveStagingDir(*staged);
  EXPECT_EQ(roomy.Memory().bytes, 2 * one);
  // Deleting one makes room again.
  ASSERT_TRUE(roomy.Remove("small", "lab", false).ok());
  EXPECT_EQ(roomy.Memory().bytes, one);
}

}  // namespace
}  // namespace featviz::server
