#include "server/model_registry.h"

#include <algorithm>
#include <filesystem>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/status_macros.h"
#include "server/convert.h"
#include "spdlog/spdlog.h"

namespace featviz::server {

absl::StatusOr<ModelRegistryPtr> ModelRegistry::Create(
    const std::string& model_dir, const c10::Device& device) {
  namespace fs = std::filesystem;
  std::error_code error;
  if (!fs::is_directory(model_dir, error)) {
    return absl::NotFoundError(
        absl::StrCat("model directory '", model_dir, "' does not exist"));
  }
  std::vector<fs::path> files;
  for (const fs::directory_entry& entry :
       fs::directory_iterator(model_dir, error)) {
    if (entry.path().extension() == ".pt" && entry.is_regular_file(error)) {
      files.push_back(entry.path());
    }
  }
  if (error) {
    return absl::NotFoundError(absl::StrCat("cannot list model directory '",
                                            model_dir, "': ", error.message()));
  }
  // Sorted so that, of two files whose cards claim the same name, the same
  // one wins on every start.
  std::sort(files.begin(), files.end());

  ModelRegistryPtr registry(new ModelRegistry());
  for (const fs::path& file : files) {
    absl::StatusOr<core::ModelPtr> model = core::Model::Load(file.string(), device);
    if (!model.ok()) {
      spdlog::error("model {} not loaded: {}", file.string(),
                    model.status().ToString());
      continue;
    }
    const std::string name = (*model)->card().name;
    const absl::Status added = registry->Add(*std::move(model));
    if (!added.ok()) {
      spdlog::error("model {} not loaded: {}", file.string(), added.ToString());
      continue;
    }
    spdlog::info("model {} loaded from {} on {}", name, file.string(),
                 device.str());
  }
  if (registry->size() == 0) {
    spdlog::warn("no models loaded from {}", model_dir);
  }
  return registry;
}

absl::StatusOr<ModelRegistryPtr> ModelRegistry::FromModels(
    std::vector<core::ModelPtr> models) {
  ModelRegistryPtr registry(new ModelRegistry());
  for (core::ModelPtr& model : models) {
    FEATVIZ_RETURN_IF_ERROR(registry->Add(std::move(model)));
  }
  return registry;
}

absl::Status ModelRegistry::Add(core::ModelPtr model) {
  const std::string name = model->card().name;
  if (name.empty()) {
    return absl::InvalidArgumentError("the model has no name");
  }
  if (models_.count(name) > 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("a model named '", name, "' is already hosted"));
  }
  Entry entry;
  entry.proto = ModelToProto(*model);
  entry.model = std::move(model);
  models_.emplace(name, std::move(entry));
  return absl::OkStatus();
}

absl::Status ModelRegistry::NotHosted(absl::string_view name) const {
  const std::vector<std::string> names = Names();
  return absl::NotFoundError(absl::StrCat(
      "model '", name, "' is not hosted here; ",
      names.empty() ? "no models are hosted"
                    : absl::StrCat("models are: ", absl::StrJoin(names, ", "))));
}

absl::StatusOr<const core::Model*> ModelRegistry::Find(
    absl::string_view name) const {
  auto it = models_.find(name);
  if (it == models_.end()) return NotHosted(name);
  return it->second.model.get();
}

absl::StatusOr<const v1::Model*> ModelRegistry::FindProto(
    absl::string_view name) const {
  auto it = models_.find(name);
  if (it == models_.end()) return NotHosted(name);
  return &it->second.proto;
}

std::vector<std::string> ModelRegistry::Names() const {
  std::vector<std::string> names;
  for (const auto& [name, entry] : models_) names.push_back(name);
  return names;
}

std::vector<const v1::Model*> ModelRegistry::List() const {
  std::vector<const v1::Model*> list;
  for (const auto& [name, entry] : models_) list.push_back(&entry.proto);
  return list;
}

}  // namespace featviz::server
