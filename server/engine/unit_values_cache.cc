#include "server/engine/unit_values_cache.h"

#include <algorithm>
#include <exception>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/analysis.h"
#include "core/status_macros.h"
#include "core/torch_status.h"

namespace featviz::server {

UnitValuesCache::UnitValuesCache(int64_t max_entries, int64_t max_bytes)
    : max_entries_(std::max<int64_t>(1, max_entries)),
      max_bytes_(max_bytes) {}

int64_t UnitValuesCache::size() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int64_t>(entries_.size());
}

int64_t UnitValuesCache::bytes() const {
  absl::MutexLock lock(&mu_);
  return bytes_;
}

absl::StatusOr<at::Tensor> UnitValuesCache::Get(
    const core::Model& model, const core::DatasetPtr& dataset,
    const std::string& layer, bool& cached) {
  return Get(
      model, dataset, layer,
      [&] { return ComputeUnitValues(model, dataset->images, layer); }, cached);
}

absl::StatusOr<at::Tensor> UnitValuesCache::Get(
    const core::Model& model, const core::DatasetPtr& dataset,
    const std::string& entry,
    const std::function<absl::StatusOr<at::Tensor>()>& compute, bool& cached) {
  const std::string key = absl::StrCat(
      model.content_hash().empty() ? model.card().name : model.content_hash(),
      "\n", dataset->name, "\n", entry);
  {
    absl::MutexLock lock(&mu_);
    for (auto it = entries_.begin(); it != entries_.end(); ++it) {
      if (it->key != key) continue;
      if (it->dataset.lock() != dataset) {
        // A dataset since deleted (or replaced).
        bytes_ -= static_cast<int64_t>(it->values.nbytes());
        entries_.erase(it);
        break;
      }
      entries_.splice(entries_.begin(), entries_, it);
      cached = true;
      return entries_.front().values;
    }
  }
  cached = false;
  // A pass over a dataset takes seconds: not under the lock. Two callers
  // missing the same key at once both compute it; the values are the same.
  FEATVIZ_ASSIGN_OR_RETURN(at::Tensor values, compute());
  absl::MutexLock lock(&mu_);
  // Another caller may have put it there meanwhile.
  for (auto it = entries_.begin(); it != entries_.end();) {
    if (it->key != key) {
      ++it;
      continue;
    }
    bytes_ -= static_cast<int64_t>(it->values.nbytes());
    it = entries_.erase(it);
  }
  entries_.push_front({key, dataset, values});
  bytes_ += static_cast<int64_t>(values.nbytes());
  while (entries_.size() > 1 &&
         (static_cast<int64_t>(entries_.size()) > max_entries_ ||
          bytes_ > max_bytes_)) {
    bytes_ -= static_cast<int64_t>(entries_.back().values.nbytes());
    entries_.pop_back();
  }
  return values;
}

absl::StatusOr<at::Tensor> ComputeUnitValues(const core::Model& model,
                                             const at::Tensor& images,
                                             const std::string& layer) {
  if (layer != kLogitsKey && layer != kProbsKey) {
    return core::UnitValues(model, images, layer);
  }
  FEATVIZ_RETURN_IF_ERROR(core::CheckImagesFit(model, images));
  constexpr int64_t kChunk = 512;
  std::vector<at::Tensor> parts;
  try {
    at::NoGradGuard no_grad;
    for (int64_t start = 0; start < images.size(0); start += kChunk) {
      const int64_t n = std::min(kChunk, images.size(0) - start);
      FEATVIZ_ASSIGN_OR_RETURN(
          core::Taps taps,
          model.Forward(images.narrow(0, start, n).to(model.device()), {}));
      const at::Tensor& out = layer == kLogitsKey ? taps.logits : taps.probs;
      parts.push_back(out.to(at::kCPU, at::kFloat));
    }
    return at::cat(parts);
  } catch (const std::exception& e) {
    return core::TorchError(
        e, absl::StrCat("class outputs of model ", model.card().name));
  }
}

}  // namespace featviz::server
