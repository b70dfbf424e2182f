#include "server/engine/model_memory.h"

#include <algorithm>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "core/device.h"
#include "core/torch_status.h"
#include "spdlog/spdlog.h"

namespace featviz::server {
namespace {

// A slot's notification may have fired already (an evicted or failed copy
// that is then retired): it fires once.
void NotifyOnce(absl::Notification& freed) {
  if (!freed.HasBeenNotified()) freed.Notify();
}

}  // namespace

ModelMemory::ModelMemory(Options options) : options_(std::move(options)) {}

std::shared_ptr<ModelMemory> ModelMemory::Create(Options options) {
  return std::shared_ptr<ModelMemory>(new ModelMemory(std::move(options)));
}

ModelMemory::SlotId ModelMemory::Add(std::string model,
                                     int64_t estimate_bytes) {
  absl::MutexLock lock(&mu_);
  const SlotId id = next_id_++;
  Slot& slot = slots_[id];
  slot.name = std::move(model);
  slot.bytes = std::max<int64_t>(estimate_bytes, 0);
  return id;
}

ModelMemory::SlotId ModelMemory::AddLoaded(std::string name,
                                           core::ModelPtr model) {
  absl::MutexLock lock(&mu_);
  const SlotId id = next_id_++;
  Slot& slot = slots_[id];
  slot.name = std::move(name);
  slot.bytes = model->memory_bytes();
  slot.measured = true;
  slot.state = ModelState::kLoaded;
  slot.model = std::move(model);
  slot.freed = std::make_shared<absl::Notification>();
  slot.pinned = true;
  used_ += slot.bytes;
  return id;
}

void ModelMemory::SetEstimate(SlotId id, int64_t bytes) {
  absl::MutexLock lock(&mu_);
  auto it = slots_.find(id);
  if (it == slots_.end() || it->second.state == ModelState::kLoaded ||
      it->second.state == ModelState::kLoading) {
    return;
  }
  it->second.bytes = bytes;
  it->second.measured = true;
}

absl::Status ModelMemory::TooBig(const Slot& slot) const {
  return absl::ResourceExhaustedError(absl::StrCat(
      "model ", slot.name, " needs ", slot.bytes, " bytes on ",
      options_.device.str(), slot.measured ? "" : " (its file's size)",
      " but --model_memory_bytes is ", options_.budget_bytes));
}

std::string ModelMemory::InUse() const {
  std::vector<std::string> held;
  for (const auto& [id, slot] : slots_) {
    if (slot.leases > 0 || slot.state == ModelState::kLoading) {
      held.push_back(absl::StrCat(
          slot.name, " (", slot.bytes, " bytes, ",
          slot.state == ModelState::kLoading
              ? std::string("loading")
              : absl::StrCat(slot.leases,
                             slot.leases == 1 ? " user" : " users"),
          ")"));
    }
  }
  return held.empty() ? "none" : absl::StrJoin(held, ", ");
}

void ModelMemory::Evict(Slot& slot, absl::string_view reason) {
  spdlog::info("model {} unloaded from {} ({}: {} bytes, idle since {})",
               slot.name, options_.device.str(), std::string(reason),
               slot.bytes,
               slot.last_used.has_value()
                   ? absl::FormatTime("%H:%M:%E3S", *slot.last_used,
                                      absl::LocalTimeZone())
                   : std::string("never used"));
  // Freed here, under the lock, so that no load can start in the room it
  // leaves before the memory is really given back.
  slot.model.reset();
  slot.state = ModelState::kUnloaded;
  used_ -= slot.bytes;
  ++evictions_;
  if (slot.freed != nullptr) NotifyOnce(*slot.freed);
}

bool ModelMemory::MakeRoom(int64_t need, SlotId self) {
  const int64_t budget = options_.budget_bytes;
  if (budget <= 0 || used_ + need <= budget) return true;
  std::vector<Slot*> idle;
  int64_t evictable = 0;
  for (auto& [id, slot] : slots_) {
    if (id == self || slot.state != ModelState::kLoaded || slot.leases > 0 ||
        slot.pinned) {
      continue;
    }
    idle.push_back(&slot);
    evictable += slot.bytes;
  }
  if (used_ - evictable + need > budget) return false;
  // Never used (0) sorts first.
  std::sort(idle.begin(), idle.end(), [](const Slot* a, const Slot* b) {
    return a->last_use < b->last_use;
  });
  for (Slot* slot : idle) {
    if (used_ + need <= budget) break;
    Evict(*slot, "least recently used, to make room");
  }
  return true;
}

SharedModel ModelMemory::LeaseOf(SlotId id, Slot& slot) {
  ++slot.leases;
  slot.last_used = absl::Now();
  slot.last_use = ++uses_;
  auto lease = std::make_shared<Lease>(shared_from_this(), id);
  // The aliasing constructor: the pointer is the model, the ownership the
  // lease, so that copies of it hold the lease and the last one gives it
  // back.
  return SharedModel(std::move(lease), slot.model.get());
}

absl::StatusOr<SharedModel> ModelMemory::Acquire(SlotId id,
                                                 const Loader& load) {
  const absl::Time deadline = absl::Now() + options_.wait;
  bool evicted = false;
  int64_t reserved = 0;
  {
    absl::MutexLock lock(&mu_);
    const int64_t evictions_before = evictions_;
    for (;;) {
      auto it = slots_.find(id);
      if (it == slots_.end() || it->second.retired) {
        return absl::AbortedError(absl::StrCat("the copy on ",
                                               options_.device.str(),
                                               " was unloaded or replaced"));
      }
      Slot& slot = it->second;
      if (slot.state == ModelState::kLoaded) return LeaseOf(id, slot);
      if (slot.state == ModelState::kLoading) {
        // Another thread loads it: its outcome is this one's too (a failure
        // leaves the slot kFailed, which this thread then tries again).
        changed_.Wait(&mu_);
        continue;
      }
      const int64_t budget = options_.budget_bytes;
      if (budget > 0 && slot.bytes > budget) {
        slot.state = ModelState::kFailed;
        slot.error = std::string(TooBig(slot).message());
        return TooBig(slot);
      }
      if (MakeRoom(slot.bytes, id)) {
        evicted = evictions_ != evictions_before;
        slot.state = ModelState::kLoading;
        slot.error.clear();
        slot.freed = std::make_shared<absl::Notification>();
        reserved = slot.bytes;
        used_ += reserved;
        break;
      }
      ++waiting_;
      const bool timed_out = changed_.WaitWithDeadline(&mu_, deadline);
      --waiting_;
      if (timed_out && !MakeRoom(slot.bytes, id)) {
        return absl::ResourceExhaustedError(absl::StrCat(
            "model ", slot.name, " needs ", slot.bytes, " bytes on ",
            options_.device.str(), ", but ", used_, " of --model_memory_bytes ",
            budget, " are held by models in use: ", InUse(), "; waited ",
            absl::FormatDuration(options_.wait)));
      }
    }
  }
  // Evicted copies gave their memory to the allocator's cache; the load
  // that follows reuses it, and on CUDA the cache goes back to the device
  // so that other processes see the budget kept too.
  if (evicted) core::ReleaseCachedMemory(options_.device);

  const absl::Time start = absl::Now();
  absl::StatusOr<core::ModelPtr> model;
  const absl::Status caught =
      core::CatchAtBoundary("loading a model", [&]() -> absl::Status {
        model = load();
        return model.status();
      });
  if (!caught.ok()) model = caught;
  const double seconds = absl::ToDoubleSeconds(absl::Now() - start);

  absl::MutexLock lock(&mu_);
  ++loads_;
  load_seconds_ += seconds;
  changed_.SignalAll();
  Slot& slot = slots_.at(id);  // A loading slot is never erased.
  used_ -= reserved;
  if (!model.ok()) return FailLoad(id, model.status());
  // Measured, then checked; freed under the lock, before its slot says so,
  // on any failure below.
  core::ModelPtr loaded = *std::move(model);
  if (slot.retired) {
    loaded.reset();
    return FailLoad(id, absl::AbortedError(absl::StrCat(
                            "the copy on ", options_.device.str(),
                            " was unloaded or replaced while it loaded")));
  }
  slot.bytes = loaded->memory_bytes();
  slot.measured = true;
  const int64_t budget = options_.budget_bytes;
  if (budget > 0 && slot.bytes > budget) {
    loaded.reset();
    return FailLoad(id, TooBig(slot));
  }
  // The estimate may have been short: the measured bytes must fit too.
  if (!MakeRoom(slot.bytes, id)) {
    loaded.reset();
    return FailLoad(
        id, absl::ResourceExhaustedError(absl::StrCat(
                "model ", slot.name, " measured ", slot.bytes, " bytes on ",
                options_.device.str(), " once loaded, more than its estimate ",
                reserved, "; the rest of --model_memory_bytes ", budget,
                " is held by models in use: ", InUse())));
  }
  used_ += slot.bytes;
  slot.model = std::move(loaded);
  slot.state = ModelState::kLoaded;
  spdlog::info(
      "model {} loaded on {} in {:.3f}s ({} bytes; {} bytes of {} "
      "held on the device)",
      slot.name, options_.device.str(), seconds, slot.bytes, used_,
      budget > 0 ? absl::StrCat(budget) : std::string("no budget"));
  return LeaseOf(id, slot);
}

absl::Status ModelMemory::FailLoad(SlotId id, absl::Status status) {
  Slot& slot = slots_.at(id);
  ++load_failures_;
  slot.state = ModelState::kFailed;
  slot.error = std::string(status.message());
  NotifyOnce(*slot.freed);
  spdlog::error("model {} not loaded on {}: {}", slot.name,
                options_.device.str(), slot.error);
  if (slot.retired) slots_.erase(id);
  return status;
}

void ModelMemory::DropIfDone(SlotId id) {
  auto it = slots_.find(id);
  if (it == slots_.end()) return;
  Slot& slot = it->second;
  if (!slot.retired || slot.leases > 0 || slot.state == ModelState::kLoading) {
    return;
  }
  if (slot.state == ModelState::kLoaded) {
    slot.model.reset();
    used_ -= slot.bytes;
  }
  if (slot.freed != nullptr) NotifyOnce(*slot.freed);
  slots_.erase(it);
}

void ModelMemory::Release(SlotId id) {
  absl::MutexLock lock(&mu_);
  auto it = slots_.find(id);
  if (it == slots_.end()) return;
  --it->second.leases;
  it->second.last_used = absl::Now();
  it->second.last_use = ++uses_;
  DropIfDone(id);
  changed_.SignalAll();
}

std::shared_ptr<absl::Notification> ModelMemory::Retire(SlotId id) {
  absl::MutexLock lock(&mu_);
  auto it = slots_.find(id);
  std::shared_ptr<absl::Notification> freed;
  if (it != slots_.end()) {
    it->second.retired = true;
    freed = it->second.freed;
  }
  if (freed == nullptr) {
    freed = std::make_shared<absl::Notification>();
    freed->Notify();
  }
  DropIfDone(id);
  changed_.SignalAll();
  return freed;
}

ModelCopy ModelMemory::Copy(SlotId id) const {
  ModelCopy copy;
  copy.device = options_.device.str();
  absl::ReaderMutexLock lock(&mu_);
  auto it = slots_.find(id);
  if (it == slots_.end()) return copy;
  const Slot& slot = it->second;
  copy.state = slot.state;
  copy.bytes = slot.bytes;
  copy.users = slot.leases;
  copy.last_used = slot.last_used;
  copy.error = slot.error;
  return copy;
}

ModelMemoryStats ModelMemory::Stats() const {
  ModelMemoryStats stats;
  stats.device = options_.device.str();
  stats.budget_bytes = options_.budget_bytes;
  absl::ReaderMutexLock lock(&mu_);
  stats.used_bytes = used_;
  for (const auto& [id, slot] : slots_) {
    if (slot.retired) {
      // Still in memory for its last users, no longer served.
      if (slot.state == ModelState::kLoaded) ++stats.retired;
      continue;
    }
    ++stats.copies[slot.state];
  }
  stats.waiting_loads = waiting_;
  stats.loads = loads_;
  stats.load_failures = load_failures_;
  stats.load_seconds = load_seconds_;
  stats.evictions = evictions_;
  return stats;
}

}  // namespace featviz::server
