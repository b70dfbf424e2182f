// The models a server hosts: every TorchScript file of a directory, loaded
// once at start and addressed by the name on its model card. The registry is
// immutable after Create(), so lookups need no lock and the models outlive
// every render that uses them.
#ifndef FEATVIZ_SERVER_MODEL_REGISTRY_H_
#define FEATVIZ_SERVER_MODEL_REGISTRY_H_

#include <map>
#include <memory>
#include <string>
#include <vector>

#include <torch/script.h>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/model.h"
#include "featviz/v1/featviz.pb.h"

namespace featviz::server {

class ModelRegistry;
using ModelRegistryPtr = std::unique_ptr<ModelRegistry>;

class ModelRegistry {
 public:
  // Loads every `*.pt` in `model_dir` (with its `<stem>.card.json`) onto
  // `device`. A model that fails to load, or whose name is already taken, is
  // logged and skipped. Errors: NotFound when the directory does not exist or
  // is not a directory. An empty registry is not an error.
  static absl::StatusOr<ModelRegistryPtr> Create(const std::string& model_dir,
                                                 const c10::Device& device);

  // Hosts already loaded models (for tests and tools). A duplicate name is
  // InvalidArgument.
  static absl::StatusOr<ModelRegistryPtr> FromModels(
      std::vector<core::ModelPtr> models);

  ModelRegistry(const ModelRegistry&) = delete;
  ModelRegistry& operator=(const ModelRegistry&) = delete;

  // The model named `name`; NotFound naming it and the hosted models.
  absl::StatusOr<const core::Model*> Find(absl::string_view name) const;
  // The same model as the API describes it.
  absl::StatusOr<const v1::Model*> FindProto(absl::string_view name) const;

  // Hosted model names, sorted.
  std::vector<std::string> Names() const;
  // The API description of every model, sorted by name.
  std::vector<const v1::Model*> List() const;
  size_t size() const { return models_.size(); }

 private:
  struct Entry {
    core::ModelPtr model;
    v1::Model proto;
  };

  ModelRegistry() = default;
  absl::Status Add(core::ModelPtr model);
  absl::Status NotHosted(absl::string_view name) const;

  // Sorted by name; written only by the factories.
  std::map<std::string, Entry, std::less<>> models_;
};

}  // namespace featviz::server

#endif  // FEATVIZ_SERVER_MODEL_REGISTRY_H_
