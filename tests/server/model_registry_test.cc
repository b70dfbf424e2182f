// The model repository in process: layout, versions, path confinement,
// load/unload/reload while models are in use, polling, and the memory an
// unload frees.
#include "server/engine/model_registry.h"

#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <map>
#include <thread>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "core/operator_policy.h"
#include "gtest/gtest.h"
#include "tests/server/model_repo.h"

namespace featviz::server {
namespace {

namespace fs = std::filesystem;
using ::featviz::testing::FileSha256;
using ::featviz::testing::MnistCard;
using ::featviz::testing::MnistFile;
using ::featviz::testing::ResidentBytes;
using ::featviz::testing::TempRepository;
using ::featviz::testing::TestModelFile;

ModelRegistryPtr MustCreate(const std::string& root) {
  absl::StatusOr<ModelRegistryPtr> registry =
      ModelRegistry::Create(root, {c10::Device(c10::kCPU)});
  EXPECT_TRUE(registry.ok()) << registry.status();
  return registry.ok() ? *std::move(registry) : nullptr;
}

TEST(VersionLess, NumbersCompareAsNumbersAndAreNewerThanText) {
  EXPECT_TRUE(VersionLess("2", "10"));
  EXPECT_FALSE(VersionLess("10", "2"));
  EXPECT_TRUE(VersionLess("9", "0010"));
  EXPECT_TRUE(VersionLess("beta", "1"));
  EXPECT_TRUE(VersionLess("alpha", "beta"));
  EXPECT_FALSE(VersionLess("3", "3"));
  EXPECT_NE(VersionLess("1", "01"), VersionLess("01", "1"));
}

TEST(ConfinedPath, RejectsPathsThatLeaveTheRepository) {
  TempRepository repo;
  repo.AddMnist("1");
  const fs::path root = fs::canonical(repo.root());
  fs::create_directory_symlink(repo.Outside(), repo.Path("escape"));
  fs::create_symlink(repo.Outside() + "/secret.pt", repo.Path("secret.pt"));

  for (const char* bad : {"/etc/passwd", "../etc/passwd", "mnist/../../x",
                          "mnist/1/../../../etc", "escape/1/model.pt",
                          "secret.pt", "escape", ""}) {
    const absl::StatusOr<fs::path> path = ConfinedPath(root, bad);
    EXPECT_EQ(path.status().code(), absl::StatusCode::kInvalidArgument)
        << "'" << bad << "': " << path.status();
  }
  EXPECT_EQ(ConfinedPath(root, "mnist/7").status().code(),
            absl::StatusCode::kNotFound);
  // A symlink that stays inside is fine.
  fs::create_directory_symlink(repo.Path("mnist/1"), repo.Path("mnist/latest"));
  const absl::StatusOr<fs::path> inside = ConfinedPath(root, "mnist/latest/model.pt");
  ASSERT_TRUE(inside.ok()) << inside.status();
  EXPECT_EQ(*inside, root / "mnist" / "1" / "model.pt");
}

TEST(ModelRegistry, ServesVersionedAndFlatModelsNamedByTheirDirectories) {
  TempRepository repo;
  repo.AddMnist("1");
  repo.AddMnist("2");
  repo.AddFlat("scripted", TestModelFile("scripted.pt"),
               TestModelFile("scripted.card.json"));
  ModelRegistryPtr registry = MustCreate(repo.root());
  ASSERT_NE(registry, nullptr);

  EXPECT_EQ(registry->size(), 3u);
  EXPECT_EQ(registry->Names(), (std::vector<std::string>{"mnist", "scripted"}));
  // The newest version by default; the directory names, not the card's.
  absl::StatusOr<SharedModel> newest = registry->Resolve("mnist");
  ASSERT_TRUE(newest.ok()) << newest.status();
  EXPECT_EQ((*newest)->card().name, "mnist");
  EXPECT_EQ((*newest)->card().version, "2");
  EXPECT_EQ((*newest)->content_hash(), FileSha256(MnistFile()));
  absl::StatusOr<SharedModel> one = registry->Resolve("mnist@1");
  ASSERT_TRUE(one.ok()) << one.status();
  EXPECT_EQ((*one)->card().version, "1");
  EXPECT_NE(one->get(), newest->get());

  absl::StatusOr<ModelSummary> described = registry->Describe("mnist@2");
  ASSERT_TRUE(described.ok());
  EXPECT_EQ(described->path, "mnist/2/model.pt");
  EXPECT_GT(described->memory_bytes, 0);

  const absl::Status missing = registry->Resolve("mnist@7").status();
  EXPECT_EQ(missing.code(), absl::StatusCode::kNotFound);
  EXPECT_NE(missing.message().find("versions are: 1, 2"), std::string::npos)
      << missing;
  EXPECT_EQ(registry->Resolve("nope").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(registry->Resolve("mnist@").status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(ModelRegistry, SkipsSymlinksThatEscapeTheRepository) {
  TempRepository repo;
  repo.AddMnist("1");
  fs::create_directory_symlink(repo.Outside(), repo.Path("escape"));
  fs::create_symlink(repo.Outside() + "/secret.pt", repo.Path("secret.pt"));
  ModelRegistryPtr registry = MustCreate(repo.root());
  ASSERT_NE(registry, nullptr);
  EXPECT_EQ(registry->Names(), (std::vector<std::string>{"mnist"}));
}

TEST(ModelRegistry, RefusesAndCountsModelsWhoseCodeLeavesTensorMath) {
  // tests/models/make_hostile_models.py: its forward reads a file.
  TempRepository repo;
  repo.AddMnist("1");
  repo.AddVersion("leaky", "1", TestModelFile("hostile_outputs.pt"),
                  TestModelFile("hostile_outputs.card.json"));
  ModelRegistryPtr registry = MustCreate(repo.root());
  ASSERT_NE(registry, nullptr);
  EXPECT_EQ(registry->Names(), (std::vector<std::string>{"mnist"}));
  EXPECT_EQ(registry->RefusedOperators(),
            (std::map<std::string, int64_t>{{"aten::from_file", 1}}));

  // The refusal comes back through Load (and Publish) with its operator.
  const absl::Status status = registry->Load("leaky/1").status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(core::RefusedOperator(status), "aten::from_file") << status;
  EXPECT_NE(status.message().find("leaky/1/model.pt: model leaky calls "
                                  "aten::from_file in forward ("),
            std::string::npos)
      << status;
  const fs::path staged = *registry->NewStagingDir();
  fs::copy_file(TestModelFile("hostile_namespace.pt"), staged / "model.pt");
  const absl::Status published =
      registry
          ->Publish("foreign", staged,
                    FileSha256(TestModelFile("hostile_namespace.pt")))
          .status();
  EXPECT_EQ(core::RefusedOperator(published), "_test::leaky_relu") << published;
  EXPECT_FALSE(fs::exists(repo.Path("foreign")));
  EXPECT_EQ(registry->RefusedOperators(),
            (std::map<std::string, int64_t>{{"aten::from_file", 2},
                                            {"_test::leaky_relu", 1}}));
  EXPECT_EQ(registry->Names(), (std::vector<std::string>{"mnist"}));
}

TEST(ModelRegistry, LoadRefusesTraversalAndServesANewVersion) {
  TempRepository repo;
  repo.AddMnist("1");
  fs::create_directory_symlink(repo.Outside(), repo.Path("escape"));
  ModelRegistryPtr registry = MustCreate(repo.root());
  ASSERT_NE(registry, nullptr);

  for (const std::string& bad : std::vector<std::string>{
           "/etc/passwd", "../../etc/passwd", "mnist/../../outside/1",
           repo.Outside() + "/1/model.pt", "escape/1", "escape/1/model.pt"}) {
    const absl::Status status = registry->Load(bad).status();
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument)
        << bad << ": " << status;
  }
  EXPECT_EQ(registry->Load("mnist").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(registry->Load("mnist/9").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(registry->Load("mnist/1").status().code(),
            absl::StatusCode::kAlreadyExists);

  repo.AddMnist("3");
  absl::StatusOr<ModelSummary> loaded = registry->Load("mnist/3/model.pt");
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->card.name, "mnist");
  EXPECT_EQ(loaded->card.version, "3");
  EXPECT_EQ(loaded->content_hash, FileSha256(MnistFile()));
  EXPECT_EQ((*registry->Resolve("mnist"))->card().version, "3");
  EXPECT_EQ(registry->Names(), (std::vector<std::string>{"mnist"}));
}

TEST(ModelRegistry, UnloadRefusesNewUsersAndWaitsForTheLastOne) {
  TempRepository repo;
  repo.AddMnist("1");
  repo.AddMnist("2");
  ModelRegistryPtr registry = MustCreate(repo.root());
  ASSERT_NE(registry, nullptr);
  const std::string hash = FileSha256(MnistFile());

  // A running job's hold on version 2.
  absl::StatusOr<SharedModel> held = registry->Acquire("mnist", "2", hash, 0);
  ASSERT_TRUE(held.ok()) << held.status();
  std::weak_ptr<const core::Model> watch = *held;

  std::atomic<bool> returned{false};
  absl::StatusOr<std::vector<ModelSummary>> unloaded;
  std::thread unload([&] {
    unloaded = registry->Unload("mnist", "2");
    returned = true;
  });
  // Out of service at once: a job accepted for it cannot start, a request
  // for it is refused, and the name means the remaining version.
  while (registry->Resolve("mnist@2").ok()) absl::SleepFor(absl::Milliseconds(5));
  const absl::Status refused = registry->Resolve("mnist@2").status();
  EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition) << refused;
  EXPECT_EQ(registry->Acquire("mnist", "2", hash, 0).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ((*registry->Resolve("mnist"))->card().version, "1");
  // The holder still works with its copy; Unload cannot have returned.
  EXPECT_EQ((*held)->card().version, "2");
  EXPECT_FALSE(returned.load());

  held->reset();
  unload.join();
  ASSERT_TRUE(unloaded.ok()) << unloaded.status();
  ASSERT_EQ(unloaded->size(), 1u);
  EXPECT_EQ((*unloaded)[0].card.version, "2");
  EXPECT_TRUE(watch.expired());
  // Gone, not draining any more.
  EXPECT_EQ(registry->Resolve("mnist@2").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(registry->Unload("mnist", "2").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(registry->Unload("other", "").status().code(),
            absl::StatusCode::kNotFound);
}

TEST(ModelRegistry, ReloadLoadsNewReplacesChangedAndUnloadsRemovedVersions) {
  TempRepository repo;
  repo.AddMnist("1");
  repo.AddMnist("2");
  repo.AddFlat("scripted", TestModelFile("scripted.pt"),
               TestModelFile("scripted.card.json"));
  ModelRegistryPtr registry = MustCreate(repo.root());
  ASSERT_NE(registry, nullptr);
  const std::string old_hash = FileSha256(TestModelFile("scripted.pt"));
  ASSERT_EQ((*registry->Resolve("scripted"))->content_hash(), old_hash);

  repo.AddMnist("3");
  fs::remove_all(repo.Path("mnist/1"));
  // Another file under the same name: a changed model.
  fs::remove(repo.Path("scripted.pt"));
  repo.AddFlat("scripted", TestModelFile("traced.pt"), "");

  absl::StatusOr<ModelRegistry::Changes> changes = registry->Reload("");
  ASSERT_TRUE(changes.ok()) << changes.status();
  EXPECT_TRUE(changes->failed.empty());
  std::vector<std::string> loaded, unloaded;
  for (const ModelSummary& m : changes->loaded) {
    loaded.push_back(m.card.name + "@" + m.card.version);
  }
  for (const ModelSummary& m : changes->unloaded) {
    unloaded.push_back(m.card.name + "@" + m.card.version);
  }
  std::sort(loaded.begin(), loaded.end());
  std::sort(unloaded.begin(), unloaded.end());
  EXPECT_EQ(loaded, (std::vector<std::string>{"mnist@3", "scripted@1"}));
  EXPECT_EQ(unloaded, (std::vector<std::string>{"mnist@1", "scripted@1"}));
  EXPECT_EQ((*registry->Resolve("scripted"))->content_hash(),
            FileSha256(TestModelFile("traced.pt")));
  EXPECT_EQ((*registry->Resolve("mnist"))->card().version, "3");
  EXPECT_FALSE(registry->Resolve("mnist@1").ok());

  // Nothing changed: nothing happens.
  changes = registry->Reload("");
  ASSERT_TRUE(changes.ok());
  EXPECT_TRUE(changes->loaded.empty());
  EXPECT_TRUE(changes->unloaded.empty());
}

TEST(ModelRegistry, PollingPicksUpANewVersionButNotAnUnloadedOne) {
  TempRepository repo;
  repo.AddMnist("1");
  repo.AddMnist("2");
  ModelRegistryPtr registry = MustCreate(repo.root());
  ASSERT_NE(registry, nullptr);
  ASSERT_TRUE(registry->Unload("mnist", "1").ok());
  registry->StartPolling(absl::Milliseconds(20));

  repo.AddMnist("3");
  // Bounded only so that a broken poller fails instead of hanging.
  const absl::Time give_up = absl::Now() + absl::Seconds(60);
  while (registry->size() < 2 && absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  registry->StopPolling();
  absl::StatusOr<SharedModel> newest = registry->Resolve("mnist");
  ASSERT_TRUE(newest.ok()) << newest.status();
  EXPECT_EQ((*newest)->card().version, "3");
  // Version 1 was unloaded by an operator: the poller leaves it so.
  EXPECT_FALSE(registry->Resolve("mnist@1").ok());
  EXPECT_EQ(registry->size(), 2u);
}

// At load the registry checks each precision's bits alone against batched
// (BatchVariance): a model that reads the batch's statistics is found, in
// every precision it runs in, and named; a residual network is not.
TEST(ModelRegistry, FindsModelsWhoseImagesDependOnTheirBatch) {
  TempRepository repo;
  for (const char* name : {"batch_mixing", "residual"}) {
    repo.AddVersion(name, "1", TestModelFile(absl::StrCat(name, ".pt")),
                    TestModelFile(absl::StrCat(name, ".card.json")));
  }
  ModelRegistryPtr registry = MustCreate(repo.root());
  ASSERT_NE(registry, nullptr);

  absl::StatusOr<std::shared_ptr<const ModelSummary>> mixing =
      registry->Summary("batch_mixing");
  ASSERT_TRUE(mixing.ok()) << mixing.status();
  ASSERT_TRUE((*mixing)->batch_variance.count(core::Precision::kFloat32));
  for (const auto& [precision, why] : (*mixing)->batch_variance) {
    EXPECT_NE(why.find("output '0' of an image differs alone and in a batch"),
              std::string::npos)
        << core::PrecisionName(precision) << ": " << why;
  }

  absl::StatusOr<std::shared_ptr<const ModelSummary>> residual =
      registry->Summary("residual");
  ASSERT_TRUE(residual.ok()) << residual.status();
  EXPECT_EQ((*residual)->batch_variance.at(core::Precision::kFloat32), "");
}

TEST(ModelRegistry, UnloadFreesTheModelsMemory) {
  TempRepository repo;
  repo.AddVersion("wide", "1", TestModelFile("wide.pt"),
                  TestModelFile("wide.card.json"));
  // Loaded once and unloaded first, so that what LibTorch sets up on first
  // use is not counted below.
  ModelRegistryPtr registry = MustCreate(repo.root());
  ASSERT_NE(registry, nullptr);
  ASSERT_TRUE(registry->Unload("wide", "").ok());

  const int64_t before = ResidentBytes();
  absl::StatusOr<ModelSummary> loaded = registry->Load("wide/1");
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  const int64_t model_bytes = loaded->memory_bytes;
  const int64_t after_load = ResidentBytes();
  ASSERT_TRUE(registry->Unload("wide", "1").ok());
  const int64_t after_unload = ResidentBytes();
  std::printf(
      "wide model: %.1f MiB of weights; resident %.1f MiB before load, %.1f "
      "MiB loaded, %.1f MiB after unload (freed %.1f MiB)\n",
      model_bytes / 1048576.0, before / 1048576.0, after_load / 1048576.0,
      after_unload / 1048576.0, (after_load - after_unload) / 1048576.0);
  EXPECT_GE(model_bytes, 64 << 20);
  EXPECT_GE(after_load - before, model_bytes * 9 / 10);
  EXPECT_GE(after_load - after_unload, model_bytes * 9 / 10);
}

}  // namespace
}  // namespace featviz::server
