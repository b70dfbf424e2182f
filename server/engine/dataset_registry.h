// The datasets a server hosts, changing while it serves: the operator's
// (--dataset_dir, loaded at start) and those clients upload
// (Circuits.UploadDataset). Uploads are written to `<dataset_dir>/<name>/`
// (core/dataset_files.h's on-disk form, staged under `.uploads/` and
// renamed into place) so that the next start loads them again; a server
// without a dataset directory of its own (none, or one that is itself a
// dataset) keeps them in memory only.
//
// Readers take a DatasetPtr and hold it while they use it: removing a
// dataset that an analysis or a render still reads is safe, the last holder
// frees it. Requests that name no dataset get one through Pick, which
// chooses only among datasets whose images fit the model's input.
// Thread-safe.
#ifndef FEATVIZ_SERVER_ENGINE_DATASET_REGISTRY_H_
#define FEATVIZ_SERVER_ENGINE_DATASET_REGISTRY_H_

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "core/dataset.h"
#include "core/model_card.h"

namespace featviz::server {

struct DatasetRegistryOptions {
  // Where uploads are kept (a directory of datasets); empty: in memory only.
  std::string upload_dir;
  // Datasets hosted in all, the operator's and uploads in flight included
  // (--max_datasets).
  int64_t max_datasets = 64;
  // Uploaded datasets one owner may have, in flight included
  // (--max_datasets_per_owner).
  int64_t max_per_owner = 8;
  // Bytes the hosted datasets' images and labels may take in memory, the
  // operator's and uploads together (--dataset_memory_bytes); 0: no budget.
  // A dataset that would go past it is refused (ResourceExhausted naming
  // the budget): an upload when it is published, an operator's at start
  // (logged and left out, in name order). Nothing is evicted: an uploaded
  // dataset is its owner's until they delete it.
  int64_t memory_bytes = 0;
};

// The datasets' share of memory (DatasetRegistry::Memory).
struct DatasetMemory {
  int64_t datasets = 0;
  int64_t bytes = 0;         // Of the hosted datasets' images and labels.
  int64_t budget_bytes = 0;  // DatasetRegistryOptions::memory_bytes.
};

// What a request needs of a dataset it does not name: images of the
// model's input shape [channels, height, width].
struct DatasetNeed {
  std::string model;  // For messages.
  int64_t channels = 0;
  int64_t height = 0;
  int64_t width = 0;
  // A one-channel dataset also fits a three-channel input (reference images,
  // which the renderer repeats over the channels).
  bool gray_for_rgb = false;
  // Only datasets with labels (FindCircuit).
  bool labelled = false;
};

// What a model of `card` needs of a dataset: its input's size, with
// `channels` channels (the model's own, or 1 for the gray stimuli of an RGB
// model).
inline DatasetNeed NeedOf(const core::ModelCard& card, int64_t channels) {
  DatasetNeed need;
  need.model = card.name;
  need.channels = channels;
  need.height = card.height;
  need.width = card.width;
  return need;
}

class DatasetRegistry;
using DatasetRegistryPtr = std::unique_ptr<DatasetRegistry>;

class DatasetRegistry {
 public:
  // The datasets of `dataset_dir` (empty: none), with uploads kept there
  // unless it is itself one dataset (then, and without a directory, in
  // memory only). NotFound when the directory does not exist.
  static absl::StatusOr<DatasetRegistryPtr> Create(
      const std::string& dataset_dir, DatasetRegistryOptions options = {});

  // Hosts `datasets` (the operator's) with `options` as given.
  explicit DatasetRegistry(std::vector<core::DatasetPtr> datasets = {},
                           DatasetRegistryOptions options = {});

  DatasetRegistry(const DatasetRegistry&) = delete;
  DatasetRegistry& operator=(const DatasetRegistry&) = delete;

  // The dataset `name`; NotFound naming it and the hosted ones.
  absl::StatusOr<core::DatasetPtr> Find(absl::string_view name) const;
  // Every hosted dataset, sorted by name.
  std::vector<core::DatasetPtr> List() const;
  size_t size() const;
  DatasetMemory Memory() const;

  // The dataset a request uses: the one `name` names (as Find; its shape is
  // the caller's to check), or, when `name` is empty, the only hosted one
  // that fits `need`. FailedPrecondition when none fits, naming the model's
  // input shape and every hosted dataset's; InvalidArgument when several
  // do, listing them. Errors start with "<field>: ".
  absl::StatusOr<core::DatasetPtr> Pick(absl::string_view name,
                                        const DatasetNeed& need,
                                        absl::string_view field) const;
  // Every hosted dataset that fits `need`, sorted by name.
  std::vector<core::DatasetPtr> Fitting(const DatasetNeed& need) const;

  // --- uploads: Reserve, then Publish or Unreserve.

  // Holds `name` for an upload by `owner`. AlreadyExists when a dataset (or
  // an upload in flight, or a directory in the dataset directory) has the
  // name; ResourceExhausted when the server hosts max_datasets, `owner` has
  // max_per_owner, or the hosted datasets already fill memory_bytes.
  absl::Status Reserve(const std::string& name, const std::string& owner);
  // Gives a reserved name back (a failed upload).
  void Unreserve(const std::string& name);
  // A fresh directory to stage an upload in: under the dataset directory
  // (so publishing is a rename), else under the system's temporary
  // directory.
  absl::StatusOr<std::filesystem::path> NewStagingDir() const;
  // Hosts `dataset` under its reserved name: written into `staged` (whose
  // other files are removed) and renamed to `<dataset_dir>/<name>` when
  // uploads are kept on disk. ResourceExhausted, naming the budget, when
  // its bytes would take the hosted datasets (and the uploads being
  // published) past memory_bytes. The name stays reserved on error, and
  // `staged` is the caller's to remove.
  absl::StatusOr<core::DatasetPtr> Publish(core::DatasetPtr dataset,
                                           const std::filesystem::path& staged);

  // Removes the uploaded dataset `name` (and its directory) for `caller`,
  // who must be its owner or `admin`. NotFound for an unknown name;
  // FailedPrecondition for an operator's dataset; PermissionDenied for
  // someone else's. Returns the dataset removed.
  absl::StatusOr<core::DatasetPtr> Remove(absl::string_view name,
                                          absl::string_view caller, bool admin);

  // True when uploads survive a restart (they are written to disk).
  bool persists_uploads() const { return !options_.upload_dir.empty(); }

 private:
  std::string HostedList() const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // Bytes of the hosted datasets and of the uploads being published.
  int64_t UsedBytes() const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // "a (N bytes), b (M bytes)": the hosted datasets by size, largest first.
  std::string BySize() const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  bool Fits(const core::Dataset& dataset, const DatasetNeed& need) const;

  const DatasetRegistryOptions options_;
  mutable absl::Mutex mu_;
  std::map<std::string, core::DatasetPtr, std::less<>> datasets_
      ABSL_GUARDED_BY(mu_);
  // Names held by uploads in flight -> their owner.
  std::map<std::string, std::string, std::less<>> reserved_
      ABSL_GUARDED_BY(mu_);
  // Uploads being published (checked against the budget, being written)
  // -> their bytes.
  std::map<std::string, int64_t, std::less<>> publishing_ ABSL_GUARDED_BY(mu_);
};

// "[C, H, W]" of a dataset's images.
std::string ImageShape(const core::Dataset& dataset);

}  // namespace featviz::server

#endif  // FEATVIZ_SERVER_ENGINE_DATASET_REGISTRY_H_
