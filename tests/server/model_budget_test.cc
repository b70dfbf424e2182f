// The model registry within a memory budget, in process: models loaded on
// first use and warmed up before they are ready, the least recently used
// idle one unloaded to make room, a model in use never unloaded (a load then
// waits for it, or fails when it may not wait), a model larger than the
// budget refused, and unloads and reloads counted while running jobs still
// hold their copy.
#include <atomic>
#include <filesystem>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "server/engine/model_registry.h"
#include "tests/server/model_repo.h"

namespace featviz::server {
namespace {

namespace fs = std::filesystem;
using ::featviz::testing::FileSha256;
using ::featviz::testing::MnistCard;
using ::featviz::testing::MnistFile;
using ::featviz::testing::TempRepository;
using ::featviz::testing::TestModelFile;

// Long enough never to run out in a test that waits for an event instead.
constexpr absl::Duration kForever = absl::Minutes(10);

// What one MNIST copy is charged at most: its file's size before its first
// load, its parameters and buffers after.
int64_t MnistUnit() {
  absl::StatusOr<core::ModelPtr> model = core::Model::Load(MnistFile());
  EXPECT_TRUE(model.ok()) << model.status();
  const int64_t file = static_cast<int64_t>(fs::file_size(MnistFile()));
  return model.ok() ? std::max(file, (*model)->memory_bytes()) : file;
}

ModelRegistryPtr MustCreate(const TempRepository& repo,
                            ModelRegistryOptions options) {
  absl::StatusOr<ModelRegistryPtr> registry = ModelRegistry::Create(
      repo.root(), {c10::Device(c10::kCPU)}, std::move(options));
  EXPECT_TRUE(registry.ok()) << registry.status();
  return registry.ok() ? *std::move(registry) : nullptr;
}

// name -> state of its (only) copy.
std::map<std::string, ModelState> States(const ModelRegistry& registry) {
  std::map<std::string, ModelState> states;
  for (const ModelSummary& m : registry.List()) {
    states[m.card.name] = m.copies.at(0).state;
  }
  return states;
}

int64_t Used(const ModelRegistry& registry) {
  return registry.MemoryStats().at(0).used_bytes;
}

// Polls `done` (a state of the registry, never a duration); bounded only so
// that a broken registry fails the test instead of hanging it.
template <typename Done>
bool Eventually(Done done) {
  const absl::Time give_up = absl::Now() + absl::Seconds(120);
  while (!done()) {
    if (absl::Now() > give_up) return false;
    absl::SleepFor(absl::Milliseconds(2));
  }
  return true;
}

TEST(ModelBudget, TheLeastRecentlyUsedIdleModelIsUnloadedToMakeRoom) {
  TempRepository repo;
  for (const char* name : {"a", "b", "c"}) {
    repo.AddVersion(name, "1", MnistFile(), MnistCard());
  }
  const int64_t unit = MnistUnit();
  ModelRegistryOptions options;
  options.memory_bytes = 2 * unit + unit / 2;  // Two fit, not three.
  ModelRegistryPtr registry = MustCreate(repo, options);
  ASSERT_NE(registry, nullptr);

  // Registered in path order, each loaded once: a made room for c.
  EXPECT_EQ(registry->size(), 3u);
  EXPECT_EQ(States(*registry),
            (std::map<std::string, ModelState>{{"a", ModelState::kUnloaded},
                                               {"b", ModelState::kLoaded},
                                               {"c", ModelState::kLoaded}}));
  EXPECT_LE(Used(*registry), options.memory_bytes);

  // b used after c: loading a again unloads c, not b.
  ASSERT_TRUE(registry->Resolve("b").ok());
  ASSERT_TRUE(registry->Resolve("a").ok());
  EXPECT_EQ(States(*registry),
            (std::map<std::string, ModelState>{{"a", ModelState::kLoaded},
                                               {"b", ModelState::kLoaded},
                                               {"c", ModelState::kUnloaded}}));
  EXPECT_LE(Used(*registry), options.memory_bytes);
  // Then c unloads b, the least recently used now.
  ASSERT_TRUE(registry->Resolve("c").ok());
  EXPECT_EQ(States(*registry),
            (std::map<std::string, ModelState>{{"a", ModelState::kLoaded},
                                               {"b", ModelState::kUnloaded},
                                               {"c", ModelState::kLoaded}}));
  const ModelMemoryStats stats = registry->MemoryStats().at(0);
  EXPECT_EQ(stats.evictions, 3);
  EXPECT_EQ(stats.loads, 5);  // Three registrations, then a and c again.
  EXPECT_EQ(stats.load_failures, 0);
  EXPECT_EQ(stats.copies.at(ModelState::kLoaded), 2);
  EXPECT_EQ(stats.copies.at(ModelState::kUnloaded), 1);
  EXPECT_LE(stats.used_bytes, options.memory_bytes);
}

TEST(ModelBudget, DescribeAndListLoadNothingAndKeepTheCatalogue) {
  TempRepository repo;
  repo.AddVersion("a", "1", MnistFile(), MnistCard());
  repo.AddVersion("b", "1", MnistFile(), MnistCard());
  const int64_t unit = MnistUnit();
  ModelRegistryOptions options;
  options.memory_bytes = unit + unit / 2;
  ModelRegistryPtr registry = MustCreate(repo, options);
  ASSERT_NE(registry, nullptr);
  const int64_t loads = registry->MemoryStats().at(0).loads;

  absl::StatusOr<ModelSummary> a = registry->Describe("a");
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_EQ(a->copies.size(), 1u);
  EXPECT_EQ(a->copies[0].state, ModelState::kUnloaded);
  EXPECT_EQ(a->copies[0].device, "cpu");
  EXPECT_EQ(a->copies[0].users, 0);
  EXPECT_TRUE(a->copies[0].last_used.has_value());  // Its registration.
  EXPECT_EQ(a->layers.size(), 4u);
  EXPECT_EQ(a->class_names.size(), 10u);
  EXPECT_GT(a->memory_bytes, 0);
  EXPECT_EQ(a->copies[0].bytes, a->memory_bytes);
  EXPECT_GT(a->activation_bytes, 0);
  absl::StatusOr<std::shared_ptr<const ModelSummary>> planned =
      registry->Summary("a");
  ASSERT_TRUE(planned.ok()) << planned.status();
  EXPECT_EQ((*planned)->Shape().num_classes, 10);
  EXPECT_TRUE((*planned)->copies.empty());
  EXPECT_EQ(registry->List().size(), 2u);
  EXPECT_EQ(registry->MemoryStats().at(0).loads, loads);
  EXPECT_EQ(States(*registry).at("a"), ModelState::kUnloaded);
}

TEST(ModelBudget, AModelInUseIsNeverUnloadedAndALoadWithoutWaitFails) {
  TempRepository repo;
  repo.AddVersion("a", "1", MnistFile(), MnistCard());
  repo.AddVersion("b", "1", MnistFile(), MnistCard());
  const int64_t unit = MnistUnit();
  ModelRegistryOptions options;
  options.memory_bytes = unit + unit / 2;  // One at a time.
  options.load_wait = absl::ZeroDuration();
  ModelRegistryPtr registry = MustCreate(repo, options);
  ASSERT_NE(registry, nullptr);
  ASSERT_EQ(States(*registry).at("b"), ModelState::kLoaded);

  // A running job's hold on b.
  absl::StatusOr<SharedModel> held = registry->Resolve("b");
  ASSERT_TRUE(held.ok()) << held.status();
  EXPECT_EQ(registry->Describe("b")->copies[0].users, 1);
  const absl::Status refused = registry->Resolve("a").status();
  EXPECT_EQ(refused.code(), absl::StatusCode::kResourceExhausted) << refused;
  EXPECT_TRUE(absl::StrContains(
      refused.message(),
      absl::StrCat("of --model_memory_bytes ", options.memory_bytes)))
      << refused;
  EXPECT_TRUE(absl::StrContains(refused.message(), "b@1 (")) << refused;
  EXPECT_EQ(States(*registry).at("b"), ModelState::kLoaded);
  EXPECT_EQ(States(*registry).at("a"), ModelState::kUnloaded);
  // The holder still works with its copy.
  EXPECT_EQ((*held)->card().name, "b");

  held->reset();
  ASSERT_TRUE(registry->Resolve("a").ok());
  EXPECT_EQ(States(*registry).at("a"), ModelState::kLoaded);
  EXPECT_EQ(States(*registry).at("b"), ModelState::kUnloaded);
  EXPECT_LE(Used(*registry), options.memory_bytes);
}

TEST(ModelBudget, ALoadWaitsUntilTheModelInUseIsLetGo) {
  TempRepository repo;
  repo.AddVersion("a", "1", MnistFile(), MnistCard());
  repo.AddVersion("b", "1", MnistFile(), MnistCard());
  const int64_t unit = MnistUnit();
  ModelRegistryOptions options;
  options.memory_bytes = unit + unit / 2;
  options.load_wait = kForever;
  ModelRegistryPtr registry = MustCreate(repo, options);
  ASSERT_NE(registry, nullptr);

  absl::StatusOr<SharedModel> held = registry->Resolve("b");
  ASSERT_TRUE(held.ok()) << held.status();
  absl::StatusOr<SharedModel> loaded;
  std::atomic<bool> returned{false};
  std::thread load([&] {
    loaded = registry->Resolve("a");
    returned = true;
  });
  ASSERT_TRUE(Eventually(
      [&] { return registry->MemoryStats().at(0).waiting_loads == 1; }));
  // Waiting, not loading: b stays, a is not in memory, nothing over budget.
  EXPECT_FALSE(returned.load());
  EXPECT_EQ(States(*registry).at("a"), ModelState::kUnloaded);
  EXPECT_EQ(States(*registry).at("b"), ModelState::kLoaded);
  EXPECT_LE(Used(*registry), options.memory_bytes);

  held->reset();
  load.join();
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ((*loaded)->card().name, "a");
  EXPECT_EQ(States(*registry).at("b"), ModelState::kUnloaded);
  EXPECT_EQ(registry->MemoryStats().at(0).waiting_loads, 0);
}

TEST(ModelBudget, AModelLargerThanTheBudgetIsRefusedNamingIt) {
  TempRepository repo;
  repo.AddVersion("a", "1", MnistFile(), MnistCard());
  const int64_t unit = MnistUnit();
  ModelRegistryOptions options;
  options.memory_bytes = unit / 2;
  ModelRegistryPtr registry = MustCreate(repo, options);
  ASSERT_NE(registry, nullptr);
  // Logged and left out at start, like a model that fails to load.
  EXPECT_EQ(registry->size(), 0u);

  const absl::Status loaded = registry->Load("a/1").status();
  EXPECT_EQ(loaded.code(), absl::StatusCode::kResourceExhausted) << loaded;
  EXPECT_TRUE(
      absl::StrContains(loaded.message(), absl::StrCat("model a@1 needs ")))
      << loaded;
  EXPECT_TRUE(absl::StrContains(
      loaded.message(),
      absl::StrCat(
          "bytes on cpu (its file's size) but --model_memory_bytes is ",
          options.memory_bytes)))
      << loaded;

  // An upload is refused the same way and leaves nothing behind.
  absl::StatusOr<fs::path> staged = registry->NewStagingDir();
  ASSERT_TRUE(staged.ok()) << staged.status();
  fs::copy_file(MnistFile(), *staged / "model.pt");
  fs::copy_file(MnistCard(), *staged / "model.card.json");
  const absl::Status published =
      registry->Publish("big", *staged, FileSha256(MnistFile())).status();
  EXPECT_EQ(published.code(), absl::StatusCode::kResourceExhausted)
      << published;
  EXPECT_TRUE(absl::StrContains(
      published.message(),
      absl::StrCat("--model_memory_bytes is ", options.memory_bytes)))
      << published;
  EXPECT_FALSE(fs::exists(repo.Path("big")));
  EXPECT_FALSE(fs::exists(*staged));
  EXPECT_EQ(registry->size(), 0u);
  EXPECT_EQ(Used(*registry), 0);
}

TEST(ModelBudget, EachLoadIsWarmedUpBeforeItIsReady) {
  TempRepository repo;
  repo.AddVersion("a", "1", MnistFile(), MnistCard());
  repo.AddVersion("b", "1", MnistFile(), MnistCard());
  const int64_t unit = MnistUnit();
  std::atomic<const ModelRegistry*> watched{nullptr};
  absl::Mutex mu;
  std::vector<std::string> warmed;
  std::vector<ModelState> seen;  // The copy's state during its warm-up.
  ModelRegistryOptions options;
  options.memory_bytes = unit + unit / 2;
  options.on_warm_up = [&](const std::string& model, const c10::Device&) {
    std::optional<ModelState> state;
    if (const ModelRegistry* registry = watched.load(); registry != nullptr) {
      absl::StatusOr<ModelSummary> described = registry->Describe(model);
      if (described.ok()) state = described->copies.at(0).state;
    }
    absl::MutexLock lock(&mu);
    warmed.push_back(model);
    if (state.has_value()) seen.push_back(*state);
  };
  ModelRegistryPtr registry = MustCreate(repo, options);
  ASSERT_NE(registry, nullptr);
  {
    absl::MutexLock lock(&mu);
    EXPECT_EQ(warmed, (std::vector<std::string>{"a@1", "b@1"}));
  }
  watched = registry.get();

  absl::StatusOr<SharedModel> a = registry->Resolve("a");
  ASSERT_TRUE(a.ok()) << a.status();
  // Ready only after the warm-up: during it the copy said kLoading.
  absl::MutexLock lock(&mu);
  EXPECT_EQ(warmed, (std::vector<std::string>{"a@1", "b@1", "a@1"}));
  EXPECT_EQ(seen, (std::vector<ModelState>{ModelState::kLoading}));
  EXPECT_EQ(registry->Describe("a")->copies[0].state, ModelState::kLoaded);
}

TEST(ModelBudget, UnloadedVersionsHeldByJobsStayCountedUntilLetGo) {
  TempRepository repo;
  repo.AddVersion("a", "1", MnistFile(), MnistCard());
  repo.AddVersion("b", "1", MnistFile(), MnistCard());
  const int64_t unit = MnistUnit();
  ModelRegistryOptions options;
  options.memory_bytes = 2 * unit + unit / 2;  // Two fit.
  options.load_wait = absl::ZeroDuration();
  ModelRegistryPtr registry = MustCreate(repo, options);
  ASSERT_NE(registry, nullptr);

  absl::StatusOr<SharedModel> held = registry->Resolve("a");
  ASSERT_TRUE(held.ok()) << held.status();
  std::weak_ptr<const core::Model> watch = *held;
  std::atomic<bool> returned{false};
  std::thread unload([&] {
    EXPECT_TRUE(registry->Unload("a", "").ok());
    returned = true;
  });
  ASSERT_TRUE(Eventually([&] { return !registry->Resolve("a").ok(); }));
  // Out of service, still in memory for its job: counted, not listed.
  EXPECT_EQ(registry->MemoryStats().at(0).retired, 1);
  EXPECT_EQ(States(*registry),
            (std::map<std::string, ModelState>{{"b", ModelState::kLoaded}}));
  const int64_t with_a = Used(*registry);

  // c needs room: b is idle and goes; a's copy is in use and stays.
  repo.AddVersion("c", "1", MnistFile(), MnistCard());
  absl::StatusOr<ModelSummary> c = registry->Load("c/1");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(States(*registry),
            (std::map<std::string, ModelState>{{"b", ModelState::kUnloaded},
                                               {"c", ModelState::kLoaded}}));
  EXPECT_EQ(Used(*registry), with_a);
  EXPECT_LE(Used(*registry), options.memory_bytes);
  EXPECT_FALSE(returned.load());

  held->reset();
  unload.join();
  EXPECT_TRUE(watch.expired());
  EXPECT_EQ(registry->MemoryStats().at(0).retired, 0);
  EXPECT_EQ(Used(*registry), registry->Describe("c")->memory_bytes);

  // A file gone from the repository: Reload takes its version out, loaded
  // or not, and its bytes with it.
  fs::remove_all(repo.Path("c"));
  absl::StatusOr<ModelRegistry::Changes> changes = registry->Reload("c");
  ASSERT_TRUE(changes.ok()) << changes.status();
  ASSERT_EQ(changes->unloaded.size(), 1u);
  EXPECT_EQ(changes->unloaded[0].card.name, "c");
  EXPECT_EQ(Used(*registry), 0);
  EXPECT_EQ(States(*registry),
            (std::map<std::string, ModelState>{{"b", ModelState::kUnloaded}}));
}

TEST(ModelBudget, AnUnloadedModelWhoseFileChangedIsNotLoadedBehindReloads) {
  TempRepository repo;
  repo.AddVersion("a", "1", MnistFile(), MnistCard());
  repo.AddVersion("b", "1", MnistFile(), MnistCard());
  const int64_t unit = MnistUnit();
  ModelRegistryOptions options;
  options.memory_bytes = unit + unit / 2;
  ModelRegistryPtr registry = MustCreate(repo, options);
  ASSERT_NE(registry, nullptr);
  ASSERT_EQ(States(*registry).at("a"), ModelState::kUnloaded);
  const std::string hash = registry->Describe("a")->content_hash;

  // Another file where a's was: a job accepted for the old content must not
  // get the new one.
  fs::remove(repo.Path("a/1/model.pt"));
  fs::copy_file(TestModelFile("scripted.pt"), repo.Path("a/1/model.pt"));
  fs::remove(repo.Path("a/1/model.card.json"));
  fs::copy_file(TestModelFile("scripted.card.json"),
                repo.Path("a/1/model.card.json"));
  const absl::Status stale = registry->Acquire("a", "1", hash, 0).status();
  EXPECT_EQ(stale.code(), absl::StatusCode::kFailedPrecondition) << stale;
  EXPECT_TRUE(absl::StrContains(stale.message(),
                                "changed since it was "
                                "registered"))
      << stale;
  EXPECT_EQ(States(*registry).at("a"), ModelState::kFailed);
  EXPECT_EQ(registry->MemoryStats().at(0).load_failures, 1);

  // Reload serves the new file.
  absl::StatusOr<ModelRegistry::Changes> changes = registry->Reload("a");
  ASSERT_TRUE(changes.ok()) << changes.status();
  EXPECT_TRUE(changes->failed.empty());
  absl::StatusOr<SharedModel> fresh = registry->Resolve("a");
  ASSERT_TRUE(fresh.ok()) << fresh.status();
  EXPECT_NE((*fresh)->content_hash(), hash);
  EXPECT_LE(Used(*registry), options.memory_bytes);
}

TEST(ModelBudget, WithoutABudgetEveryModelStaysLoaded) {
  TempRepository repo;
  for (const char* name : {"a", "b", "c"}) {
    repo.AddVersion(name, "1", MnistFile(), MnistCard());
  }
  ModelRegistryPtr registry = MustCreate(repo, {});
  ASSERT_NE(registry, nullptr);
  EXPECT_EQ(States(*registry),
            (std::map<std::string, ModelState>{{"a", ModelState::kLoaded},
                                               {"b", ModelState::kLoaded},
                                               {"c", ModelState::kLoaded}}));
  const ModelMemoryStats stats = registry->MemoryStats().at(0);
  EXPECT_EQ(stats.budget_bytes, 0);
  EXPECT_EQ(stats.evictions, 0);
  EXPECT_EQ(stats.used_bytes, 3 * registry->Describe("a")->memory_bytes);
}

}  // namespace
}  // namespace featviz::server
