// The values of a layer's units (or a model's class outputs) over a hosted
// dataset: one pass over every image, kept for the next request about the
// same (model, dataset, layer). Dataset examples beside a render
// (TrustSpec.exemplars), its path similarity and the TopExamples analysis
// read them; other per-(model, dataset) passes are kept beside them. Bounded (least recently used entries go first) and
// thread-safe: workers and the analysis thread share one.
#ifndef FEATVIZ_SERVER_ENGINE_UNIT_VALUES_CACHE_H_
#define FEATVIZ_SERVER_ENGINE_UNIT_VALUES_CACHE_H_

#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <string>

#include <ATen/ATen.h>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "core/dataset.h"
#include "core/model.h"

namespace featviz::server {

// The key of the class outputs' entry (logits as the model returns them,
// [N, classes]) and of their softmax, beside the layers' paths.
inline constexpr char kLogitsKey[] = "<logits>";
inline constexpr char kProbsKey[] = "<probs>";

class UnitValuesCache {
 public:
  // Keeps at most `max_entries` (>= 1; less is taken as 1) [N, K] tensors
  // of at most `max_bytes` in all (the newest is kept even when it alone is
  // larger: its caller holds it anyway).
  explicit UnitValuesCache(int64_t max_entries = 32,
                           int64_t max_bytes = int64_t{256} << 20);

  UnitValuesCache(const UnitValuesCache&) = delete;
  UnitValuesCache& operator=(const UnitValuesCache&) = delete;

  // The values of `layer` (a layer path: core::UnitValues, the spatial max
  // per channel; kLogitsKey or kProbsKey: the class outputs) of `model` on
  // every image of `dataset`, on the CPU: from the cache, or computed (the
  // lock is not held while they are) and kept. `cached` says which. An
  // entry is `model`'s content hash (its card's name when it has none), the
  // dataset's name and `layer`; one whose dataset has been freed or
  // replaced under its name (another object) is computed again.
  absl::StatusOr<at::Tensor> Get(const core::Model& model,
                                 const core::DatasetPtr& dataset,
                                 const std::string& layer, bool& cached);

  // The same for any other per-(model, dataset) pass (the circuits
  // service's class attributions, path similarity's random baseline):
  // `entry` names it beside the layers' paths, and `compute` makes it on a
  // miss, without the lock held.
  absl::StatusOr<at::Tensor> Get(
      const core::Model& model, const core::DatasetPtr& dataset,
      const std::string& entry,
      const std::function<absl::StatusOr<at::Tensor>()>& compute,
      bool& cached);

  // Entries held, and their bytes.
  int64_t size() const;
  int64_t bytes() const;

 private:
  struct Entry {
    std::string key;
    std::weak_ptr<const core::Dataset> dataset;
    at::Tensor values;
  };

  const int64_t max_entries_;
  const int64_t max_bytes_;
  mutable absl::Mutex mu_;
  std::list<Entry> entries_ ABSL_GUARDED_BY(mu_);  // Most recent first.
  int64_t bytes_ ABSL_GUARDED_BY(mu_) = 0;
};

// The [N, K] values `Get` keeps, computed without the cache.
absl::StatusOr<at::Tensor> ComputeUnitValues(const core::Model& model,
                                             const at::Tensor& images,
                                             const std::string& layer);

}  // namespace featviz::server

#endif  // FEATVIZ_SERVER_ENGINE_UNIT_VALUES_CACHE_H_
