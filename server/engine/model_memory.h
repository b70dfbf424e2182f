// One device's memory for models, within a budget: which copies of the
// served model versions are in memory, loaded on first use and unloaded,
// least recently used first, when a load needs room and they are idle
// (the scheme of Ray Serve's model multiplexing; the admin RPCs above it,
// server/engine/model_registry.h, are Triton's explicit model control).
//
// Each copy is a slot with a state (ModelState):
//
//   kUnloaded --Acquire--> kLoading --load and warm-up--> kLoaded
//       ^                      \--error--> kFailed (the next Acquire retries)
//       \------------- evicted: idle, least recently used <-----/
//
// Acquire hands out a lease: a SharedModel whose last copy, when destroyed,
// gives the lease back. A copy with a lease is in use and is never evicted;
// a retired copy (its version unloaded or replaced) stays in memory, and
// counted, until its last lease is gone. So the bytes counted are always
// the bytes of every copy that exists, plus those being loaded.
//
// What a copy is charged: its model's memory_bytes() (parameters and
// buffers, on the device), once it has been loaded; before that, the
// estimate it was added with (the registry gives the file's size). The
// activations and gradients of renders are not the model's: they belong to
// the worker's batch (bounded by --max_batch_images) and are not counted.
//
// A load that needs room evicts idle copies, oldest use first, only when
// that makes enough room; otherwise it waits for leases to be given back,
// up to Options::wait, and then fails ResourceExhausted naming the budget
// and the copies in use. A copy larger than the whole budget is refused at
// once (ResourceExhausted). Thread-safe.
#ifndef FEATVIZ_SERVER_ENGINE_MODEL_MEMORY_H_
#define FEATVIZ_SERVER_ENGINE_MODEL_MEMORY_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "core/model.h"
#include "server/engine/engine_types.h"

namespace featviz::server {

// A model copy in use: while any copy of this pointer lives, its lease is
// held (ModelMemory) and the model stays in memory.
using SharedModel = std::shared_ptr<const core::Model>;

class ModelMemory : public std::enable_shared_from_this<ModelMemory> {
 public:
  struct Options {
    c10::Device device = c10::kCPU;
    // Bytes of copies the device may hold (--model_memory_bytes); 0: no
    // budget, nothing is ever evicted.
    int64_t budget_bytes = 0;
    // How long a load that needs room waits for copies in use to be let go
    // (--model_load_wait_seconds); zero fails at once.
    absl::Duration wait = absl::Seconds(30);
  };
  // Loads a copy (and warms it up) on the device; called without any lock
  // held, on the thread that called Acquire.
  using Loader = std::function<absl::StatusOr<core::ModelPtr>()>;
  using SlotId = uint64_t;

  static std::shared_ptr<ModelMemory> Create(Options options);

  ModelMemory(const ModelMemory&) = delete;
  ModelMemory& operator=(const ModelMemory&) = delete;

  const c10::Device& device() const { return options_.device; }
  int64_t budget_bytes() const { return options_.budget_bytes; }

  // A new slot, unloaded, for the copy `model` names ("name@version", for
  // messages); `estimate_bytes` is charged while it loads for the first
  // time.
  SlotId Add(std::string model, int64_t estimate_bytes);
  // A new slot holding `model`, already loaded; it has nothing to be loaded
  // again from, so it is never evicted.
  SlotId AddLoaded(std::string name, core::ModelPtr model);
  // What the slot will be charged on its next load (another device's copy
  // of the same file has measured it). Ignored for a loaded slot.
  void SetEstimate(SlotId id, int64_t bytes);

  // The slot's copy, loaded by `load` first when it is not in memory (see
  // the header comment). Aborted when the slot has been retired (before or
  // while it loaded); ResourceExhausted when the copy cannot fit (even
  // alone, or beside the copies in use after waiting); the loader's error
  // otherwise.
  absl::StatusOr<SharedModel> Acquire(SlotId id, const Loader& load);

  // Takes the slot out: Acquire refuses it from now on. Its copy is freed
  // now when idle, else when its last lease is given back (or its load
  // ends); the notification fires then (at once when it was not loaded).
  std::shared_ptr<absl::Notification> Retire(SlotId id);

  // The slot's state; kUnloaded for an unknown id.
  ModelCopy Copy(SlotId id) const;
  ModelMemoryStats Stats() const;

 private:
  struct Slot {
    std::string name;
    int64_t bytes = 0;  // Charged when loaded (exact once measured).
    bool measured = false;
    ModelState state = ModelState::kUnloaded;
    std::unique_ptr<const core::Model> model;  // While kLoaded.
    // Notified once the copy of the current (or last) load is freed.
    std::shared_ptr<absl::Notification> freed;
    int64_t leases = 0;
    std::optional<absl::Time> last_used;
    // The order of uses (acquire or let go) on this device: what "least
    // recently used" compares, so that a clock step cannot reorder it.
    uint64_t last_use = 0;
    std::string error;
    bool pinned = false;   // AddLoaded: never evicted.
    bool retired = false;  // Retire: refused; erased once freed.
  };
  // Gives a lease back when the last SharedModel of it is destroyed.
  class Lease {
   public:
    Lease(std::shared_ptr<ModelMemory> memory, SlotId id)
        : memory_(std::move(memory)), id_(id) {}
    ~Lease() { memory_->Release(id_); }
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;

   private:
    const std::shared_ptr<ModelMemory> memory_;
    const SlotId id_;
  };

  explicit ModelMemory(Options options);

  void Release(SlotId id) ABSL_LOCKS_EXCLUDED(mu_);
  SharedModel LeaseOf(SlotId id, Slot& slot) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Evicts idle copies, least recently used first, until `need` more bytes
  // fit, leaving `self` alone; evicts nothing and returns false when even
  // evicting every idle copy would not make room. True without a budget.
  bool MakeRoom(int64_t need, SlotId self) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Evict(Slot& slot, absl::string_view reason)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Ends a load that failed: the slot kFailed with `status`'s message (or
  // forgotten, when it was retired meanwhile). Returns `status`.
  absl::Status FailLoad(SlotId id, absl::Status status)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Frees a retired slot's copy and forgets the slot, once nothing holds it.
  void DropIfDone(SlotId id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // "a (3 users), b (1 user)": the copies in use, for messages.
  std::string InUse() const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  absl::Status TooBig(const Slot& slot) const;

  const Options options_;

  mutable absl::Mutex mu_;
  // Signalled whenever a lease is given back, a load ends or a slot retires:
  // what waiting Acquires wait for.
  absl::CondVar changed_;
  std::map<SlotId, Slot> slots_ ABSL_GUARDED_BY(mu_);
  SlotId next_id_ ABSL_GUARDED_BY(mu_) = 1;
  uint64_t uses_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t used_ ABSL_GUARDED_BY(mu_) = 0;  // Loaded and loading copies.
  int64_t waiting_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t loads_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t load_failures_ ABSL_GUARDED_BY(mu_) = 0;
  double load_seconds_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t evictions_ ABSL_GUARDED_BY(mu_) = 0;
};

using ModelMemoryPtr = std::shared_ptr<ModelMemory>;

}  // namespace featviz::server

#endif  // FEATVIZ_SERVER_ENGINE_MODEL_MEMORY_H_
