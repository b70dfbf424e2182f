// The model repository a server serves, with versions that an operator
// loads, unloads and reloads while the server runs, held in each device's
// memory within a budget.
//
// Layout of the repository root (--model_dir); both kinds may be mixed:
//
//   <root>/<name>/<version>/model.pt          a versioned model, with its
//   <root>/<name>/<version>/model.card.json   card beside it; the directory
//                                             names are its name and version
//   <root>/<stem>.pt, <root>/<stem>.card.json a flat model: name and version
//                                             from the card (stem, "1")
//
// Every path is confined to the root: no absolute paths, no "..", and no
// symlink that resolves outside it (checked on the resolved path).
//
// A request names "name" (the newest served version) or "name@version".
// Versions that are all digits compare as numbers and are newer than any
// other version; other versions compare as text.
//
// Served and in memory are two things. A version is served from the moment
// it is registered (at start, Load, Publish, Reload, polling) until Unload
// or a Reload that finds its file gone or changed; registering loads it
// once on the first device, which gives its summary (card, layers, hash,
// bytes), kept for as long as it is served. In memory, each device copy is
// a slot of that device's ModelMemory (server/engine/model_memory.h): without a
// budget (memory_bytes 0) every copy is loaded at registration and stays
// loaded, as before budgets; with one, copies are loaded on first use
// (Resolve, Acquire), warmed up (server/engine/model_warm_up.h) before they are
// ready, and the least recently used idle ones are unloaded when a load
// needs room. Describe, List and the summary a render is planned from never
// load anything.
//
// Lifetime: each copy handed out is a lease (a SharedModel). Jobs hold
// theirs while they run (Acquire), so a copy in use is never evicted, and
// Unload takes the model out of service at once (new jobs are refused;
// queued jobs fail when a worker picks them up) and then waits until the
// last running job lets go, when its memory is freed.
#ifndef FEATVIZ_SERVER_ENGINE_MODEL_REGISTRY_H_
#define FEATVIZ_SERVER_ENGINE_MODEL_REGISTRY_H_

#include <torch/script.h>

#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "core/model.h"
#include "server/engine/engine_types.h"
#include "server/engine/model_memory.h"

namespace featviz::server {

class ModelRegistry;
using ModelRegistryPtr = std::unique_ptr<ModelRegistry>;

struct ModelRegistryOptions {
  // Bytes of models each device may hold (--model_memory_bytes); 0: no
  // budget, every model loaded on every device when registered and kept.
  int64_t memory_bytes = 0;
  // How long a load that needs room waits for models in use to be let go
  // before it fails ResourceExhausted (--model_load_wait_seconds).
  absl::Duration load_wait = absl::Seconds(30);
  // Testing: called on the loading thread when a copy has been read and is
  // about to be warmed up, with "name@version" and the device.
  std::function<void(const std::string& model, const c10::Device& device)>
      on_warm_up;
};

// True when version `a` is older than `b` (see the header comment).
bool VersionLess(absl::string_view a, absl::string_view b);

// The canonical path of `relative` inside the canonical directory `root`.
// InvalidArgument naming the path when it is empty, absolute, has a ".."
// component, or resolves (through symlinks) outside `root`; NotFound when
// nothing is there.
absl::StatusOr<std::filesystem::path> ConfinedPath(
    const std::filesystem::path& root, absl::string_view relative);

class ModelRegistry {
 public:
  // Serves every model of the repository at `root` on each of `devices`. A
  // model that fails to load, or whose name and version are taken, is logged
  // and skipped. NotFound when `root` is not a directory; InvalidArgument for
  // no devices. An empty repository is not an error.
  // See ModelRegistryOptions for the budget; a model that does not fit in
  // it even alone is logged and skipped like one that fails to load.
  static absl::StatusOr<ModelRegistryPtr> Create(
      const std::string& root, std::vector<c10::Device> devices,
      ModelRegistryOptions options = {});

  // Serves already loaded models on their (common) device, with no
  // repository behind them: Load and Reload fail (for tests and tools).
  // InvalidArgument for a duplicate name and version, or models on
  // different devices.
  static absl::StatusOr<ModelRegistryPtr> FromModels(
      std::vector<core::ModelPtr> models);

  // Stops polling.
  ~ModelRegistry();

  ModelRegistry(const ModelRegistry&) = delete;
  ModelRegistry& operator=(const ModelRegistry&) = delete;

  const std::vector<c10::Device>& devices() const { return devices_; }

  // The first device's copy of the model `ref` names ("name" or
  // "name@version"), loaded first if it is not in memory (so this may take
  // a load's time, or wait for room: see ModelMemory::Acquire). NotFound
  // naming the model and the served ones, or the version and the served
  // versions; FailedPrecondition for a version that is being unloaded;
  // ResourceExhausted when it cannot fit in the budget.
  absl::StatusOr<SharedModel> Resolve(absl::string_view ref) const;
  // Device `device`'s copy of exactly this version and content, for a job
  // about to run, loaded first if need be (as Resolve). FailedPrecondition
  // when it was unloaded or replaced since the job was accepted, or when its
  // file no longer has that content.
  absl::StatusOr<SharedModel> Acquire(const std::string& name,
                                      const std::string& version,
                                      const std::string& content_hash,
                                      size_t device) const;
  // The model `ref` names, described, with where each device's copy is
  // (ModelSummary::copies). Loads nothing. Errors as Resolve's lookup.
  absl::StatusOr<ModelSummary> Describe(absl::string_view ref) const;
  // What a render is planned and validated against: the summary kept since
  // the version was registered (no copies filled in). Loads nothing.
  absl::StatusOr<std::shared_ptr<const ModelSummary>> Summary(
      absl::string_view ref) const;

  // Served model names, sorted, each once.
  std::vector<std::string> Names() const;
  // Every served version, sorted by name, then version (oldest first), with
  // its copies' states.
  std::vector<ModelSummary> List() const;
  // One page of List(). InvalidArgument naming the field for a negative
  // page_size or a page_token this registry did not give.
  absl::StatusOr<ModelPage> Page(const ModelQuery& query) const;
  // Served versions.
  size_t size() const;
  // Each device's model memory: budget, bytes held, copies by state, loads
  // and evictions. Index: device.
  std::vector<ModelMemoryStats> MemoryStats() const;
  // Model loads refused because the model's code uses an operator or class
  // that core's OperatorPolicy refuses (core::RefusedOperator), by its name,
  // since the registry was made: uploads, scans, loads and polls alike (a
  // refused file found again by each poll counts each time).
  std::map<std::string, int64_t> RefusedOperators() const;

  // ------------------------------------------------------------- admin
  // Load, Unload and Reload run one at a time.

  // Registers the model at `path` (relative to the root: "<name>/<version>",
  // "<name>/<version>/model.pt" or "<stem>.pt") and serves it: loaded on
  // the first device (on every device without a budget). Errors: see
  // ConfinedPath; InvalidArgument for a path that is not one of those forms
  // or a file that is not a model; AlreadyExists when that name and version
  // is served; ResourceExhausted when it cannot fit in the budget (even
  // alone, or beside the models in use); FailedPrecondition without a
  // repository.
  absl::StatusOr<ModelSummary> Load(const std::string& path);

  // A fresh, empty directory under the root where an upload stages its files
  // (`<root>/.uploads/<unique>`; scans skip names starting with '.').
  // FailedPrecondition without a repository.
  absl::StatusOr<std::filesystem::path> NewStagingDir() const;

  // What Publish did.
  struct Published {
    ModelSummary model;  // The version now served.
    // True when a served version of the name already held the same file and
    // card: nothing new was published, and `model` is that version.
    bool already_present = false;
  };
  // Publishes a staged upload whose model.pt has the SHA-256 `sha256`
  // (lowercase hex, as the upload checked it): renames `staged` (holding
  // model.pt and maybe model.card.json) atomically to `<root>/<name>/<N>`,
  // N one more than the largest numeric version of `name` on disk or served
  // (1 for a new name), and loads it as Load does. When a served version of
  // `name` has the same hash and the same card (both absent, or equal once
  // parsed), `staged` is removed instead and that version is the answer, so
  // sending a file twice does not make a second version of it. On any error
  // nothing of it stays in the repository: `staged` and the published
  // directory are removed. InvalidArgument for a name outside
  // [A-Za-z0-9_-]{1,64} or a file that is not a model that runs;
  // ResourceExhausted as Load.
  absl::StatusOr<Published> Publish(const std::string& name,
                                    const std::filesystem::path& staged,
                                    const std::string& sha256);

  // Stops serving `name` (the version `version`, or all when empty) and
  // returns once no running job holds it any more. NotFound when nothing
  // matches.
  absl::StatusOr<std::vector<ModelSummary>> Unload(
      const std::string& name, const std::string& version);

  struct Changes {
    std::vector<ModelSummary> loaded;
    std::vector<ModelSummary> unloaded;
    std::vector<std::string> failed;  // "path: why".
  };
  // Brings the served versions of `name` (all models when empty) in line
  // with the repository: loads new versions, replaces changed files, unloads
  // versions whose file is gone. Versions unloaded by Unload are loaded
  // again. FailedPrecondition without a repository.
  absl::StatusOr<Changes> Reload(const std::string& name);

  // Every `every`, does what Reload("") does, except that versions unloaded
  // by Unload stay unloaded until Load or Reload. Logs what changed.
  void StartPolling(absl::Duration every);
  void StopPolling();

 private:
  // One served version: its identity, its summary, and a slot per device
  // in that device's ModelMemory. Never changed once served.
  struct Entry {
    std::string name;
    std::string version;
    std::string path;  // Model file, relative to the root ("" if none).
    std::string content_hash;
    // Size and modification time of the file when loaded, to notice edits
    // without hashing the file on every poll.
    uintmax_t file_size = 0;
    std::filesystem::file_time_type file_time;
    std::vector<ModelMemory::SlotId> slots;       // Index: device.
    std::shared_ptr<const ModelSummary> summary;  // Of the first load.
  };
  using EntryPtr = std::shared_ptr<const Entry>;
  struct VersionOrder {
    using is_transparent = void;
    bool operator()(absl::string_view a, absl::string_view b) const {
      return VersionLess(a, b);
    }
  };
  using Versions = std::map<std::string, EntryPtr, VersionOrder>;
  // A model file found in the repository.
  struct Found {
    std::string name;
    std::string version;  // Empty for a flat model: the card's.
    std::string path;     // Relative to the root.
  };

  // Device copies taken out of service, to wait for.
  struct Retired {
    std::vector<std::shared_ptr<absl::Notification>> freed;
    std::vector<std::string> keys;  // name@version, counted in draining_.
  };

  ModelRegistry(std::vector<c10::Device> devices, ModelRegistryOptions options);

  absl::StatusOr<EntryPtr> FindEntry(absl::string_view ref) const;
  // Registers the model file `found`: a slot per device, the first device's
  // copy loaded (every device's without a budget) for its summary.
  absl::StatusOr<EntryPtr> LoadEntry(const Found& found) const;
  // Reads one copy of `path` onto device `device` and warms it up; with a
  // `content_hash`, FailedPrecondition unless the file still has it.
  absl::StatusOr<core::ModelPtr> LoadCopy(const std::string& path,
                                          const std::string& name,
                                          const std::string& version,
                                          const std::string& content_hash,
                                          size_t device) const;
  // Entry `entry`'s copy on `device`, loaded if need be.
  absl::StatusOr<SharedModel> AcquireCopy(const Entry& entry,
                                          size_t device) const;
  // Frees the copies of `entry`, registered but never served.
  void Discard(const Entry& entry) const;
  // `entry`'s summary with its copies' states filled in.
  ModelSummary Described(const Entry& entry) const;
  // The newest served version of `name` whose file has the SHA-256 `sha256`
  // and whose card reads as the one at `card` (none when `card` does not
  // exist); nullopt when there is none.
  std::optional<ModelSummary> ServedWithContent(
      const std::string& name, const std::string& sha256,
      const std::filesystem::path& card) const ABSL_LOCKS_EXCLUDED(mu_);
  // The models of the repository (of `name` only, when not empty), sorted
  // by path. Escaping symlinks and unusable entries are logged and skipped.
  std::vector<Found> Scan(const std::string& name) const;
  // The Found for a request's path; see Load.
  absl::StatusOr<Found> FoundAt(const std::string& path) const;
  // A flat model file: name and version from its card.
  absl::StatusOr<Found> FlatFound(const std::string& relative) const;
  // Serves `entry`; returns the entry it replaces (null if none).
  EntryPtr Serve(EntryPtr entry) ABSL_LOCKS_EXCLUDED(mu_);
  // Takes `entries` out of service: Resolve and Acquire refuse them.
  Retired TakeOut(const std::vector<EntryPtr>& entries) ABSL_LOCKS_EXCLUDED(mu_);
  // Waits until no job holds a copy of `retired` any more (memory freed).
  void WaitReleased(Retired retired) ABSL_LOCKS_EXCLUDED(mu_, admin_mu_);
  // Reload's work; `poll` leaves versions held out by Unload alone. What it
  // takes out of service goes to `retired`, for waiting without admin_mu_.
  absl::StatusOr<Changes> Sync(const std::string& name, bool poll,
                               Retired* retired)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(admin_mu_);
  absl::Status NotServed(absl::string_view name) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  void PollLoop(absl::Duration every);

  const std::vector<c10::Device> devices_;
  const ModelRegistryOptions options_;
  // Each device's model memory. Index: device.
  std::vector<ModelMemoryPtr> memory_;
  std::filesystem::path root_;  // Canonical; empty without a repository.

  absl::Mutex admin_mu_ ABSL_ACQUIRED_BEFORE(mu_);
  // name@version unloaded by Unload: polling leaves them alone.
  std::set<std::string> held_out_ ABSL_GUARDED_BY(admin_mu_);

  mutable absl::Mutex mu_;
  std::map<std::string, Versions, std::less<>> served_ ABSL_GUARDED_BY(mu_);
  // name@version of versions being unloaded, with the count of unloads.
  std::map<std::string, int, std::less<>> draining_ ABSL_GUARDED_BY(mu_);

  // Counted by LoadEntry, which is const: the count is not the registry's
  // state, only what it has seen.
  mutable absl::Mutex refused_mu_;
  mutable std::map<std::string, int64_t> refused_ ABSL_GUARDED_BY(refused_mu_);

  absl::Mutex poll_mu_;
  bool poll_stop_ ABSL_GUARDED_BY(poll_mu_) = false;
  std::thread poll_thread_;
};

}  // namespace featviz::server

#endif  // FEATVIZ_SERVER_ENGINE_MODEL_REGISTRY_H_
