#include "server/engine/dataset_registry.h"

#include <algorithm>
#include <system_error>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/dataset_files.h"
#include "core/status_macros.h"
#include "server/engine/staging.h"
#include "spdlog/spdlog.h"

namespace featviz::server {
namespace fs = std::filesystem;

std::string ImageShape(const core::Dataset& dataset) {
  return absl::StrCat("[", dataset.images.size(1), ", ",
                      dataset.images.size(2), ", ", dataset.images.size(3),
                      "]");
}

absl::StatusOr<DatasetRegistryPtr> DatasetRegistry::Create(
    const std::string& dataset_dir, DatasetRegistryOptions options) {
  std::vector<core::DatasetPtr> datasets;
  options.upload_dir.clear();
  if (!dataset_dir.empty()) {
    FEATVIZ_ASSIGN_OR_RETURN(datasets, core::LoadDatasetDir(dataset_dir));
    if (core::HoldsOneDataset(dataset_dir)) {
      spdlog::warn(
          "--dataset_dir {} is itself one dataset: uploaded datasets are kept "
          "in memory only (point it at a directory of datasets to keep them)",
          dataset_dir);
    } else {
      options.upload_dir = dataset_dir;
    }
  } else {
    spdlog::info("no --dataset_dir: uploaded datasets are kept in memory only");
  }
  return std::make_unique<DatasetRegistry>(std::move(datasets),
                                           std::move(options));
}

DatasetRegistry::DatasetRegistry(std::vector<core::DatasetPtr> datasets,
                                 DatasetRegistryOptions options)
    : options_(std::move(options)) {
  std::sort(datasets.begin(), datasets.end(),
            [](const core::DatasetPtr& a, const core::DatasetPtr& b) {
              return a->name < b->name;
            });
  absl::MutexLock lock(&mu_);
  for (core::DatasetPtr& dataset : datasets) {
    const std::string name = dataset->name;
    const int64_t budget = options_.memory_bytes;
    if (budget > 0 && UsedBytes() + dataset->bytes() > budget) {
      spdlog::error(
          "dataset {} not hosted: it takes {} bytes in memory and the "
          "datasets before it {}, more than --dataset_memory_bytes {}",
          name, dataset->bytes(), UsedBytes(), budget);
      continue;
    }
    datasets_.emplace(name, std::move(dataset));
  }
}

int64_t DatasetRegistry::UsedBytes() const {
  int64_t used = 0;
  for (const auto& [name, dataset] : datasets_) used += dataset->bytes();
  for (const auto& [name, bytes] : publishing_) used += bytes;
  return used;
}

std::string DatasetRegistry::BySize() const {
  std::vector<const core::Dataset*> sorted;
  for (const auto& [name, dataset] : datasets_) sorted.push_back(dataset.get());
  std::sort(sorted.begin(), sorted.end(),
            [](const core::Dataset* a, const core::Dataset* b) {
              return a->bytes() > b->bytes();
            });
  std::vector<std::string> items;
  for (const core::Dataset* d : sorted) {
    items.push_back(absl::StrCat(d->name, " (", d->bytes(), " bytes)"));
  }
  return items.empty() ? "none" : absl::StrJoin(items, ", ");
}

DatasetMemory DatasetRegistry::Memory() const {
  DatasetMemory memory;
  memory.budget_bytes = options_.memory_bytes;
  absl::ReaderMutexLock lock(&mu_);
  memory.datasets = static_cast<int64_t>(datasets_.size());
  for (const auto& [name, dataset] : datasets_)
    memory.bytes += dataset->bytes();
  return memory;
}

std::string DatasetRegistry::HostedList() const {
  if (datasets_.empty()) return "no datasets are hosted";
  std::vector<std::string> items;
  for (const auto& [name, d] : datasets_) {
    items.push_back(absl::StrCat(name, " ", ImageShape(*d),
                                 d->labelled() ? "" : " unlabelled"));
  }
  return absl::StrCat("hosted: ", absl::StrJoin(items, ", "));
}

absl::StatusOr<core::DatasetPtr> DatasetRegistry::Find(
    absl::string_view name) const {
  absl::ReaderMutexLock lock(&mu_);
  auto it = datasets_.find(name);
  if (it != datasets_.end()) return it->second;
  return absl::NotFoundError(absl::StrCat("dataset '", name,
                                          "' is not hosted here; ",
                                          HostedList()));
}

std::vector<core::DatasetPtr> DatasetRegistry::List() const {
  absl::ReaderMutexLock lock(&mu_);
  std::vector<core::DatasetPtr> out;
  for (const auto& [name, dataset] : datasets_) out.push_back(dataset);
  return out;
}

size_t DatasetRegistry::size() const {
  absl::ReaderMutexLock lock(&mu_);
  return datasets_.size();
}

bool DatasetRegistry::Fits(const core::Dataset& dataset,
                           const DatasetNeed& need) const {
  if (need.labelled && !dataset.labelled()) return false;
  const int64_t channels = dataset.images.size(1);
  const bool channels_fit =
      channels == need.channels ||
      (need.gray_for_rgb && channels == 1 && need.channels == 3);
  return channels_fit && dataset.images.size(2) == need.height &&
         dataset.images.size(3) == need.width;
}

std::vector<core::DatasetPtr> DatasetRegistry::Fitting(
    const DatasetNeed& need) const {
  absl::ReaderMutexLock lock(&mu_);
  std::vector<core::DatasetPtr> out;
  for (const auto& [name, dataset] : datasets_) {
    if (Fits(*dataset, need)) out.push_back(dataset);
  }
  return out;
}

absl::StatusOr<core::DatasetPtr> DatasetRegistry::Pick(
    absl::string_view name, const DatasetNeed& need,
    absl::string_view field) const {
  if (!name.empty()) {
    absl::StatusOr<core::DatasetPtr> found = Find(name);
    if (!found.ok()) {
      return absl::NotFoundError(
          absl::StrCat(field, ": ", found.status().message()));
    }
    return found;
  }
  absl::ReaderMutexLock lock(&mu_);
  std::vector<std::string> fitting;
  core::DatasetPtr only;
  for (const auto& [n, dataset] : datasets_) {
    if (!Fits(*dataset, need)) continue;
    fitting.push_back(n);
    only = dataset;
  }
  const std::string input =
      absl::StrCat("model ", need.model, "'s input [", need.channels, ", ",
                   need.height, ", ", need.width, "]");
  if (fitting.size() == 1) return only;
  if (fitting.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        field, ": no hosted ", need.labelled ? "labelled " : "",
        "dataset fits ", input,
        need.gray_for_rgb ? " (or its gray version)" : "", "; ", HostedList(),
        ". Upload one (featviz dataset upload NAME FILE) or name one"));
  }
  return absl::InvalidArgumentError(absl::StrCat(
      field, ": ", fitting.size(), " hosted ",
      need.labelled ? "labelled " : "", "datasets fit ", input, ": ",
      absl::StrJoin(fitting, ", "), "; name the one to use"));
}

absl::Status DatasetRegistry::Reserve(const std::string& name,
                                      const std::string& owner) {
  absl::MutexLock lock(&mu_);
  if (datasets_.count(name) > 0) {
    return absl::AlreadyExistsError(absl::StrCat(
        "a dataset named '", name, "' is already hosted; delete it first or "
        "choose another name"));
  }
  if (reserved_.count(name) > 0) {
    return absl::AlreadyExistsError(absl::StrCat(
        "a dataset named '", name, "' is being uploaded right now"));
  }
  std::error_code error;
  if (persists_uploads() &&
      fs::exists(fs::path(options_.upload_dir) / name, error)) {
    return absl::AlreadyExistsError(absl::StrCat(
        "the dataset directory already holds '", name,
        "' (a dataset that did not load at start?); choose another name"));
  }
  const int64_t hosted =
      static_cast<int64_t>(datasets_.size() + reserved_.size());
  if (hosted >= options_.max_datasets) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the server hosts ", hosted, " datasets (uploads in flight included), "
        "its limit (--max_datasets ", options_.max_datasets,
        "); delete one first"));
  }
  int64_t owned = 0;
  for (const auto& [n, dataset] : datasets_) {
    owned += dataset->uploaded && dataset->owner == owner;
  }
  for (const auto& [n, who] : reserved_) owned += who == owner;
  if (owned >= options_.max_per_owner) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "client '", owner, "' has ", owned,
        " uploaded datasets (uploads in flight included), the limit "
        "(--max_datasets_per_owner ",
        options_.max_per_owner, "); delete one first"));
  }
  // Refused before any byte is taken when nothing more can fit; the exact
  // check is Publish's, once the upload is decoded.
  if (options_.memory_bytes > 0 && UsedBytes() >= options_.memory_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the hosted datasets take ", UsedBytes(),
        " bytes in memory, all of --dataset_memory_bytes ",
        options_.memory_bytes, " (", BySize(), "); delete one first"));
  }
  reserved_.emplace(name, owner);
  return absl::OkStatus();
}

void DatasetRegistry::Unreserve(const std::string& name) {
  absl::MutexLock lock(&mu_);
  reserved_.erase(name);
  publishing_.erase(name);
}

absl::StatusOr<fs::path> DatasetRegistry::NewStagingDir() const {
  if (persists_uploads()) return server::NewStagingDir(options_.upload_dir);
  std::error_code error;
  const fs::path temp = fs::temp_directory_path(error);
  if (error) {
    return absl::InternalError(absl::StrCat(
        "no temporary directory to stage an upload in: ", error.message()));
  }
  return server::NewStagingDir(temp / "featviz-datasets");
}

absl::StatusOr<core::DatasetPtr> DatasetRegistry::Publish(
    core::DatasetPtr dataset, const fs::path& staged) {
  const std::string& name = dataset->name;
  {
    absl::MutexLock lock(&mu_);
    if (reserved_.count(name) == 0) {
      return absl::InternalError(
          absl::StrCat("dataset '", name, "' was not reserved"));
    }
    const int64_t budget = options_.memory_bytes;
    publishing_.erase(name);
    if (budget > 0 && UsedBytes() + dataset->bytes() > budget) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "dataset '", name, "' needs ", dataset->bytes(),
          " bytes in memory but --dataset_memory_bytes is ", budget,
          ", of which ", UsedBytes(), " are taken (", BySize(),
          publishing_.empty() ? "" : ", and uploads being published",
          "); delete one first"));
    }
    // Counted from now on, while its files are written outside the lock.
    publishing_[name] = dataset->bytes();
  }
  if (persists_uploads()) {
    // Written and renamed outside the lock: the name is ours.
    std::error_code error;
    for (const fs::directory_entry& entry : fs::directory_iterator(staged, error)) {
      fs::remove_all(entry.path(), error);
    }
    FEATVIZ_RETURN_IF_ERROR(core::WriteDatasetDir(*dataset, staged.string()));
    const fs::path target = fs::path(options_.upload_dir) / name;
    fs::rename(staged, target, error);
    if (error) {
      return absl::InternalError(absl::StrCat("cannot publish dataset '", name,
                                              "' as ", target.string(), ": ",
                                              error.message()));
    }
    // The staging parent is shared: it goes only when empty.
    fs::remove(staged.parent_path(), error);
  }
  absl::MutexLock lock(&mu_);
  reserved_.erase(name);
  publishing_.erase(name);
  datasets_[name] = dataset;
  spdlog::info("dataset {} uploaded by {}: {} images {} ({}, {} bytes{})",
               name, dataset->owner, dataset->size(), ImageShape(*dataset),
               dataset->source, dataset->bytes(),
               persists_uploads()
                   ? absl::StrCat(", kept in ", options_.upload_dir, "/", name)
                   : std::string(", in memory only"));
  return dataset;
}

absl::StatusOr<core::DatasetPtr> DatasetRegistry::Remove(
    absl::string_view name, absl::string_view caller, bool admin) {
  core::DatasetPtr removed;
  {
    absl::MutexLock lock(&mu_);
    auto it = datasets_.find(name);
    if (it == datasets_.end()) {
      return absl::NotFoundError(absl::StrCat(
          "dataset '", name, "' is not hosted here; ", HostedList()));
    }
    const core::Dataset& dataset = *it->second;
    if (!dataset.uploaded) {
      return absl::FailedPreconditionError(absl::StrCat(
          "dataset '", name, "' is the operator's (from --dataset_dir), not "
          "uploaded; it cannot be deleted through the API"));
    }
    if (!admin && dataset.owner != caller) {
      return absl::PermissionDeniedError(absl::StrCat(
          "dataset '", name, "' belongs to '", dataset.owner, "'; only its "
          "owner or an admin may delete it, not '", caller, "'"));
    }
    removed = it->second;
    datasets_.erase(it);
    if (persists_uploads()) {
      // Held until its files are gone (outside the lock), so that an
      // upload of the same name cannot race their removal.
      reserved_.emplace(std::string(name), removed->owner);
    }
  }
  if (persists_uploads()) {
    std::error_code error;
    const fs::path dir = fs::path(options_.upload_dir) / std::string(name);
    absl::StatusOr<fs::path> trash = NewStagingDir();
    if (trash.ok()) {
      fs::rename(dir, *trash / "deleted", error);
      RemoveStagingDir(*trash);
    }
    fs::remove_all(dir, error);
    if (error) {
      spdlog::error("dataset {}: cannot remove {}: {}", std::string(name),
                    dir.string(), error.message());
    }
    Unreserve(std::string(name));
  }
  spdlog::info("dataset {} deleted by {}", std::string(name),
               std::string(caller));
  return removed;
}

}  // namespace featviz::server
