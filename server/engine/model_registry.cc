#include "server/engine/model_registry.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <system_error>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "core/device.h"
#include "core/model_card.h"
#include "core/operator_policy.h"
#include "core/status_macros.h"
#include "core/torch_status.h"
#include "server/engine/engine_types.h"
#include "server/engine/model_warm_up.h"
#include "server/engine/names.h"
#include "server/engine/page_token.h"
#include "server/engine/staging.h"
#include "spdlog/spdlog.h"

namespace featviz::server {
namespace fs = std::filesystem;
namespace {

constexpr char kModelFile[] = "model.pt";
constexpr char kCardFile[] = "model.card.json";
constexpr char kFlatForms[] =
    "'<name>/<version>', '<name>/<version>/model.pt' or '<stem>.pt'";
bool AllDigits(absl::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), absl::ascii_isdigit);
}

std::string Key(absl::string_view name, absl::string_view version) {
  return absl::StrCat(name, "@", version);
}

// An operator learns at load which precisions' jobs run unbatched.
void LogBatchVariance(const ModelSummary& summary) {
  for (const auto& [precision, why] : summary.batch_variance) {
    if (why.empty()) continue;
    spdlog::warn(
        "model {}: in {} {}; its {} jobs run in batches of their own",
        Key(summary.card.name, summary.card.version),
        core::PrecisionName(precision), why, core::PrecisionName(precision));
  }
}

// `path` is `root` or inside it (both canonical).
bool Within(const fs::path& root, const fs::path& path) {
  auto [r, p] = std::mismatch(root.begin(), root.end(), path.begin(), path.end());
  return r == root.end();
}

// The lexical components of a relative path, without "." and empty ones.
std::vector<std::string> Parts(absl::string_view relative) {
  std::vector<std::string> parts;
  for (absl::string_view part : absl::StrSplit(relative, '/', absl::SkipEmpty())) {
    if (part != ".") parts.emplace_back(part);
  }
  return parts;
}

// A directory name that can be a model name or version: '@' separates them
// in requests, and hidden entries are an editor's or a copy's.
bool UsableName(absl::string_view name) {
  return !name.empty() && name.front() != '.' &&
         name.find('@') == absl::string_view::npos;
}

std::string ShortHash(const std::string& hash) { return hash.substr(0, 12); }

}  // namespace

bool VersionLess(absl::string_view a, absl::string_view b) {
  const bool a_number = AllDigits(a);
  const bool b_number = AllDigits(b);
  if (a_number != b_number) return b_number;  // Numbers are newer.
  if (!a_number) return a < b;
  // Compare as numbers of any length: without leading zeros, the shorter is
  // smaller; then digit by digit. Equal values fall back to the text so that
  // "1" and "01" stay distinct versions.
  absl::string_view x = a, y = b;
  while (x.size() > 1 && x.front() == '0') x.remove_prefix(1);
  while (y.size() > 1 && y.front() == '0') y.remove_prefix(1);
  if (x.size() != y.size()) return x.size() < y.size();
  if (x != y) return x < y;
  return a < b;
}

absl::StatusOr<fs::path> ConfinedPath(const fs::path& root,
                                      absl::string_view relative) {
  if (relative.empty()) {
    return absl::InvalidArgumentError(
        "path must name a model in the model repository, got ''");
  }
  if (relative.find('\0') != absl::string_view::npos) {
    return absl::InvalidArgumentError("path must not contain NUL bytes");
  }
  const fs::path path{std::string(relative)};
  if (relative.front() == '/' || path.is_absolute()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "path '", relative,
        "' is absolute; give it relative to the model repository"));
  }
  for (const fs::path& part : path) {
    if (part == "..") {
      return absl::InvalidArgumentError(absl::StrCat(
          "path '", relative, "' must not contain '..' components"));
    }
  }
  std::error_code error;
  const fs::path real = fs::canonical(root / path, error);
  if (error) {
    return absl::NotFoundError(absl::StrCat(
        "nothing at path '", relative, "' in the model repository"));
  }
  if (!Within(root, real)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "path '", relative,
        "' resolves outside the model repository (through a symlink)"));
  }
  return real;
}

// ------------------------------------------------------------ creation

ModelRegistry::ModelRegistry(std::vector<c10::Device> devices,
                             ModelRegistryOptions options)
    : devices_(std::move(devices)), options_(std::move(options)) {
  for (const c10::Device& device : devices_) {
    ModelMemory::Options memory;
    memory.device = device;
    memory.budget_bytes = std::max<int64_t>(options_.memory_bytes, 0);
    memory.wait = options_.load_wait;
    memory_.push_back(ModelMemory::Create(std::move(memory)));
  }
}

ModelRegistry::~ModelRegistry() { StopPolling(); }

absl::StatusOr<ModelRegistryPtr> ModelRegistry::Create(
    const std::string& root, std::vector<c10::Device> devices,
    ModelRegistryOptions options) {
  if (devices.empty()) {
    return absl::InvalidArgumentError("a model registry needs a device");
  }
  std::error_code error;
  if (!fs::is_directory(root, error)) {
    return absl::NotFoundError(
        absl::StrCat("model directory '", root, "' does not exist"));
  }
  if (options.memory_bytes < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("the model memory budget must be >= 0 (0: none), got ",
                     options.memory_bytes));
  }
  ModelRegistryPtr registry(
      new ModelRegistry(std::move(devices), std::move(options)));
  registry->root_ = fs::canonical(root, error);
  if (error) {
    return absl::NotFoundError(absl::StrCat("model directory '", root,
                                            "': ", error.message()));
  }
  {
    absl::MutexLock admin(&registry->admin_mu_);
    Retired retired;
    FEATVIZ_ASSIGN_OR_RETURN(const Changes changes,
                             registry->Sync("", false, &retired));
  }
  if (registry->size() == 0) {
    spdlog::warn("no models loaded from {}", root);
  }
  return registry;
}

absl::StatusOr<ModelRegistryPtr> ModelRegistry::FromModels(
    std::vector<core::ModelPtr> models) {
  const c10::Device device =
      models.empty() ? c10::Device(c10::kCPU) : models.front()->device();
  ModelRegistryPtr registry(new ModelRegistry({device}, {}));
  for (core::ModelPtr& model : models) {
    if (model->device() != device) {
      return absl::InvalidArgumentError(absl::StrCat(
          "model ", model->card().name, " is on ", model->device().str(),
          ", the others on ", device.str()));
    }
    auto entry = std::make_shared<Entry>();
    entry->name = model->card().name;
    entry->version = model->card().version;
    entry->content_hash = model->content_hash();
    ModelSummary summary = Summarize(*model);
    CheckArithmetic(*model, summary);
    LogBatchVariance(summary);
    entry->summary = std::make_shared<const ModelSummary>(std::move(summary));
    if (entry->name.empty()) {
      return absl::InvalidArgumentError("the model has no name");
    }
    absl::MutexLock lock(&registry->mu_);
    Versions& versions = registry->served_[entry->name];
    if (versions.count(entry->version) > 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("a model named '", entry->name, "' version '",
                       entry->version, "' is already hosted"));
    }
    // Nothing to load it again from: it stays in memory.
    entry->slots.push_back(registry->memory_.front()->AddLoaded(
        Key(entry->name, entry->version), std::move(model)));
    versions.emplace(entry->version, std::move(entry));
  }
  return registry;
}

// ------------------------------------------------------------- lookups

absl::Status ModelRegistry::NotServed(absl::string_view name) const {
  std::vector<std::string> names;
  for (const auto& [served, versions] : served_) {
    if (!versions.empty()) names.push_back(served);
  }
  return absl::NotFoundError(absl::StrCat(
      "model '", name, "' is not hosted here; ",
      names.empty() ? "no models are hosted"
                    : absl::StrCat("models are: ", absl::StrJoin(names, ", "))));
}

absl::StatusOr<SharedModel> ModelRegistry::Resolve(absl::string_view ref) const {
  FEATVIZ_ASSIGN_OR_RETURN(const EntryPtr entry, FindEntry(ref));
  absl::StatusOr<SharedModel> copy = AcquireCopy(*entry, 0);
  if (copy.status().code() == absl::StatusCode::kAborted) {
    return absl::FailedPreconditionError(
        absl::StrCat("model ", Key(entry->name, entry->version),
                     " is being unloaded; new jobs are refused"));
  }
  return copy;
}

absl::StatusOr<ModelSummary> ModelRegistry::Describe(
    absl::string_view ref) const {
  FEATVIZ_ASSIGN_OR_RETURN(const EntryPtr entry, FindEntry(ref));
  return Described(*entry);
}

absl::StatusOr<std::shared_ptr<const ModelSummary>> ModelRegistry::Summary(
    absl::string_view ref) const {
  FEATVIZ_ASSIGN_OR_RETURN(const EntryPtr entry, FindEntry(ref));
  return entry->summary;
}

ModelSummary ModelRegistry::Described(const Entry& entry) const {
  ModelSummary summary = *entry.summary;
  for (size_t d = 0; d < entry.slots.size(); ++d) {
    summary.copies.push_back(memory_[d]->Copy(entry.slots[d]));
  }
  return summary;
}

absl::StatusOr<SharedModel> ModelRegistry::AcquireCopy(const Entry& entry,
                                                       size_t device) const {
  return memory_[device]->Acquire(entry.slots[device], [&] {
    return LoadCopy(entry.path, entry.name, entry.version, entry.content_hash,
                    device);
  });
}

std::vector<ModelMemoryStats> ModelRegistry::MemoryStats() const {
  std::vector<ModelMemoryStats> stats;
  for (const ModelMemoryPtr& memory : memory_) stats.push_back(memory->Stats());
  return stats;
}

absl::StatusOr<ModelRegistry::EntryPtr> ModelRegistry::FindEntry(
    absl::string_view ref) const {
  absl::string_view name = ref;
  absl::string_view version;
  const size_t at = ref.rfind('@');
  if (at != absl::string_view::npos) {
    name = ref.substr(0, at);
    version = ref.substr(at + 1);
    if (version.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "model '", ref, "' names no version; write 'name' or 'name@version'"));
    }
  }
  absl::ReaderMutexLock lock(&mu_);
  auto it = served_.find(name);
  if (version.empty()) {
    if (it == served_.end() || it->second.empty()) return NotServed(name);
    return std::prev(it->second.end())->second;
  }
  if (it != served_.end()) {
    auto v = it->second.find(version);
    if (v != it->second.end()) return v->second;
  }
  if (draining_.count(Key(name, version)) > 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "model ", Key(name, version), " is being unloaded; new jobs are refused"));
  }
  if (it == served_.end() || it->second.empty()) return NotServed(name);
  std::vector<std::string> versions;
  for (const auto& [v, entry] : it->second) versions.push_back(v);
  return absl::NotFoundError(absl::StrCat("model '", name, "' has no version '",
                                          version, "'; versions are: ",
                                          absl::StrJoin(versions, ", ")));
}

absl::StatusOr<SharedModel> ModelRegistry::Acquire(
    const std::string& name, const std::string& version,
    const std::string& content_hash, size_t device) const {
  EntryPtr entry;
  {
    absl::ReaderMutexLock lock(&mu_);
    auto it = served_.find(name);
    if (it != served_.end()) {
      auto v = it->second.find(version);
      if (v != it->second.end() && v->second->content_hash == content_hash &&
          device < v->second->slots.size()) {
        entry = v->second;
      }
    }
  }
  if (entry != nullptr) {
    absl::StatusOr<SharedModel> copy = AcquireCopy(*entry, device);
    if (copy.status().code() != absl::StatusCode::kAborted) return copy;
  }
  return absl::FailedPreconditionError(absl::StrCat(
      "model ", Key(name, version), " (sha256 ", ShortHash(content_hash),
      ") was unloaded or replaced after the job was accepted; submit it again"));
}

std::vector<std::string> ModelRegistry::Names() const {
  absl::ReaderMutexLock lock(&mu_);
  std::vector<std::string> names;
  for (const auto& [name, versions] : served_) {
    if (!versions.empty()) names.push_back(name);
  }
  return names;
}

std::map<std::string, int64_t> ModelRegistry::RefusedOperators() const {
  absl::MutexLock lock(&refused_mu_);
  return refused_;
}

std::vector<ModelSummary> ModelRegistry::List() const {
  std::vector<EntryPtr> entries;
  {
    absl::ReaderMutexLock lock(&mu_);
    for (const auto& [name, versions] : served_) {
      for (const auto& [version, entry] : versions) entries.push_back(entry);
    }
  }
  std::vector<ModelSummary> list;
  list.reserve(entries.size());
  for (const EntryPtr& entry : entries) list.push_back(Described(*entry));
  return list;
}

absl::StatusOr<ModelPage> ModelRegistry::Page(const ModelQuery& query) const {
  // Pages run in name order: a token holds the last version listed,
  // "name@version".
  constexpr absl::string_view kPageList = "models";
  if (query.page_size < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "page_size must be >= 0 (0 means all), got ", query.page_size));
  }
  std::optional<std::pair<std::string, std::string>> after;
  if (!query.page_token.empty()) {
    FEATVIZ_ASSIGN_OR_RETURN(const std::string position,
                             PagePosition(kPageList, query.page_token));
    const size_t at = position.rfind('@');
    if (at == std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("page_token '", query.page_token.substr(0, 80),
                       "' is not a token this server issued for ", kPageList));
    }
    after.emplace(position.substr(0, at), position.substr(at + 1));
  }
  auto listed = [&](const ModelSummary& model) {
    if (!after.has_value()) return false;
    const std::string& name = model.card.name;
    if (name != after->first) return name < after->first;
    return !VersionLess(after->second, model.card.version);
  };
  ModelPage page;
  for (ModelSummary& model : List()) {
    if (listed(model)) continue;
    if (query.page_size > 0 &&
        static_cast<int32_t>(page.models.size()) == query.page_size) {
      const core::ModelCard& last = page.models.back().card;
      page.next_page_token =
          PageToken(kPageList, absl::StrCat(last.name, "@", last.version));
      break;
    }
    page.models.push_back(std::move(model));
  }
  return page;
}

size_t ModelRegistry::size() const {
  absl::ReaderMutexLock lock(&mu_);
  size_t n = 0;
  for (const auto& [name, versions] : served_) n += versions.size();
  return n;
}

// ------------------------------------------------------------ the files

absl::StatusOr<ModelRegistry::Found> ModelRegistry::FlatFound(
    const std::string& relative) const {
  // Name and version from the card, as Model::Load will read them.
  Found found;
  found.path = relative;
  fs::path card = fs::path(relative).replace_extension(".card.json");
  core::ModelCard parsed;
  std::error_code error;
  if (fs::exists(root_ / card, error)) {
    FEATVIZ_ASSIGN_OR_RETURN(const fs::path real,
                             ConfinedPath(root_, card.string()));
    FEATVIZ_ASSIGN_OR_RETURN(parsed, core::ModelCard::Load(real.string()));
  }
  found.name = parsed.name.empty() ? fs::path(relative).stem().string()
                                   : parsed.name;
  found.version = parsed.version;
  if (!UsableName(found.name) || !UsableName(found.version)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "model name '", found.name, "' and version '", found.version,
        "' must be non-empty, without '@' and not start with '.'"));
  }
  return found;
}

std::vector<ModelRegistry::Found> ModelRegistry::Scan(
    const std::string& name) const {
  std::vector<Found> found;
  auto skip = [](const std::string& path, const absl::Status& why) {
    spdlog::error("model repository: skipping {}: {}", path,
                  std::string(why.message()));
  };
  std::error_code error;
  for (const fs::directory_entry& top : fs::directory_iterator(root_, error)) {
    const std::string top_name = top.path().filename().string();
    if (top_name.empty() || top_name.front() == '.') continue;
    absl::StatusOr<fs::path> real = ConfinedPath(root_, top_name);
    if (!real.ok()) {
      skip(top_name, real.status());
      continue;
    }
    if (fs::is_regular_file(*real, error)) {
      if (top.path().extension() != ".pt") continue;
      absl::StatusOr<Found> flat = FlatFound(top_name);
      if (!flat.ok()) {
        skip(top_name, flat.status());
        continue;
      }
      if (name.empty() || flat->name == name) found.push_back(*std::move(flat));
      continue;
    }
    if (!fs::is_directory(*real, error)) continue;
    if (!name.empty() && top_name != name) continue;
    if (!UsableName(top_name)) continue;
    for (const fs::directory_entry& sub : fs::directory_iterator(*real, error)) {
      const std::string version = sub.path().filename().string();
      if (!UsableName(version)) continue;
      const std::string path = absl::StrCat(top_name, "/", version, "/", kModelFile);
      std::error_code sub_error;
      if (!fs::exists(root_ / path, sub_error)) continue;
      absl::StatusOr<fs::path> file = ConfinedPath(root_, path);
      if (!file.ok()) {
        skip(path, file.status());
        continue;
      }
      found.push_back(Found{top_name, version, path});
    }
  }
  if (error) {
    spdlog::error("model repository {}: {}", root_.string(), error.message());
  }
  std::sort(found.begin(), found.end(),
            [](const Found& a, const Found& b) { return a.path < b.path; });
  return found;
}

absl::StatusOr<ModelRegistry::Found> ModelRegistry::FoundAt(
    const std::string& path) const {
  FEATVIZ_ASSIGN_OR_RETURN(const fs::path real, ConfinedPath(root_, path));
  const std::vector<std::string> parts = Parts(path);
  std::error_code error;
  const auto wrong_form = [&] {
    return absl::InvalidArgumentError(
        absl::StrCat("path '", path, "' must be ", kFlatForms));
  };
  if (fs::is_directory(real, error)) {
    if (parts.size() != 2) return wrong_form();
    const std::string file = absl::StrCat(parts[0], "/", parts[1], "/", kModelFile);
    FEATVIZ_RETURN_IF_ERROR(ConfinedPath(root_, file).status());
    if (!UsableName(parts[0]) || !UsableName(parts[1])) return wrong_form();
    return Found{parts[0], parts[1], file};
  }
  if (!fs::is_regular_file(real, error)) return wrong_form();
  if (parts.size() == 3 && parts[2] == kModelFile) {
    if (!UsableName(parts[0]) || !UsableName(parts[1])) return wrong_form();
    return Found{parts[0], parts[1], absl::StrJoin(parts, "/")};
  }
  if (parts.size() == 1 && absl::EndsWith(parts[0], ".pt")) {
    return FlatFound(parts[0]);
  }
  return wrong_form();
}

absl::StatusOr<core::ModelPtr> ModelRegistry::LoadCopy(
    const std::string& path, const std::string& name,
    const std::string& version, const std::string& content_hash,
    size_t device) const {
  if (path.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "model ", Key(name, version), " has no file to be loaded from"));
  }
  // Checked at every load: the file or its card may have changed.
  FEATVIZ_RETURN_IF_ERROR(ConfinedPath(root_, path).status());
  const fs::path card = fs::path(path).replace_extension(".card.json");
  std::error_code error;
  if (fs::exists(root_ / card, error) || fs::is_symlink(root_ / card, error)) {
    FEATVIZ_RETURN_IF_ERROR(
        Prefixed(absl::StrCat("card of ", path),
                 ConfinedPath(root_, card.string()).status()));
  }
  // Loaded from the path inside the root, so that the card beside it is the
  // one found (and checked) above.
  absl::StatusOr<core::ModelPtr> model = core::Model::Load(
      (root_ / path).string(), devices_[device], name, version);
  if (!model.ok()) {
    if (const std::string refused = core::RefusedOperator(model.status());
        !refused.empty()) {
      absl::MutexLock lock(&refused_mu_);
      ++refused_[refused];
    }
    return Prefixed(path, model.status());
  }
  if (!content_hash.empty() && (*model)->content_hash() != content_hash) {
    return absl::FailedPreconditionError(absl::StrCat(
        "model ", Key(name, version), ": ", path,
        " changed since it was registered (sha256 ", ShortHash(content_hash),
        ", now ", ShortHash((*model)->content_hash()),
        "); ReloadModel (or --model_poll_seconds) serves the new file"));
  }
  if (options_.on_warm_up)
    options_.on_warm_up(Key(name, version), devices_[device]);
  const absl::Time start = absl::Now();
  FEATVIZ_RETURN_IF_ERROR(Prefixed(path, WarmUp(**model)));
  spdlog::debug("model {} warmed up on {} in {:.3f}s", Key(name, version),
                devices_[device].str(),
                absl::ToDoubleSeconds(absl::Now() - start));
  return model;
}

absl::StatusOr<ModelRegistry::EntryPtr> ModelRegistry::LoadEntry(
    const Found& found) const {
  // Checked again at load time: the file or its card may have changed.
  FEATVIZ_ASSIGN_OR_RETURN(const fs::path real,
                           ConfinedPath(root_, found.path));
  std::error_code error;
  auto entry = std::make_shared<Entry>();
  entry->path = found.path;
  entry->file_size = fs::file_size(real, error);
  entry->file_time = fs::last_write_time(real, error);
  // Until a copy has been measured, a load is charged the file's size: a
  // TorchScript archive stores its tensors uncompressed.
  const std::string key = Key(found.name, found.version);
  for (const ModelMemoryPtr& memory : memory_) {
    entry->slots.push_back(
        memory->Add(key, static_cast<int64_t>(entry->file_size)));
  }
  // The first device's copy gives the summary; without a budget every
  // device's is loaded now, as they all stay loaded anyway.
  const size_t eager = options_.memory_bytes > 0 ? 1 : devices_.size();
  std::vector<SharedModel> copies;
  absl::Status failed;
  for (size_t d = 0; d < eager && failed.ok(); ++d) {
    const std::string hash =
        copies.empty() ? std::string() : copies.front()->content_hash();
    absl::StatusOr<SharedModel> copy =
        memory_[d]->Acquire(entry->slots[d], [&] {
          return LoadCopy(found.path, found.name, found.version, hash, d);
        });
    if (copy.ok()) {
      copies.push_back(*std::move(copy));
    } else {
      failed = copy.status();
    }
  }
  if (!failed.ok()) {
    copies.clear();
    for (size_t d = 0; d < memory_.size(); ++d)
      memory_[d]->Retire(entry->slots[d]);
    return failed;
  }
  const core::Model& first = *copies.front();
  entry->name = first.card().name;
  entry->version = first.card().version;
  entry->content_hash = first.content_hash();
  ModelSummary summary = Summarize(first, found.path);
  CheckArithmetic(first, summary);
  LogBatchVariance(summary);
  entry->summary = std::make_shared<const ModelSummary>(std::move(summary));
  for (size_t d = eager; d < memory_.size(); ++d) {
    memory_[d]->SetEstimate(entry->slots[d], first.memory_bytes());
  }
  // The copies stay loaded, idle, until the budget needs their room.
  return EntryPtr(std::move(entry));
}

// ---------------------------------------------------------------- admin

void ModelRegistry::Discard(const Entry& entry) const {
  for (size_t d = 0; d < entry.slots.size(); ++d) {
    memory_[d]->Retire(entry.slots[d]);
  }
}

ModelRegistry::EntryPtr ModelRegistry::Serve(EntryPtr entry) {
  absl::MutexLock lock(&mu_);
  EntryPtr& slot = served_[entry->name][entry->version];
  std::swap(slot, entry);
  return entry;
}

ModelRegistry::Retired ModelRegistry::TakeOut(
    const std::vector<EntryPtr>& entries) {
  Retired retired;
  {
    absl::MutexLock lock(&mu_);
    for (const EntryPtr& entry : entries) {
      auto it = served_.find(entry->name);
      if (it != served_.end()) {
        auto v = it->second.find(entry->version);
        if (v != it->second.end() && v->second == entry) it->second.erase(v);
        if (it->second.empty()) served_.erase(it);
      }
      const std::string key = Key(entry->name, entry->version);
      ++draining_[key];
      retired.keys.push_back(key);
    }
  }
  // Out of service first, so that no new user finds them; then each copy
  // is freed as soon as its last user lets go.
  for (const EntryPtr& entry : entries) {
    for (size_t d = 0; d < entry->slots.size(); ++d) {
      retired.freed.push_back(memory_[d]->Retire(entry->slots[d]));
    }
  }
  return retired;
}

void ModelRegistry::WaitReleased(Retired retired) {
  // Idle copies were freed when retired; running jobs hold the others and
  // let go when they end.
  for (const std::shared_ptr<absl::Notification>& freed : retired.freed) {
    freed->WaitForNotification();
  }
  absl::MutexLock lock(&mu_);
  for (const std::string& key : retired.keys) {
    auto it = draining_.find(key);
    if (it != draining_.end() && --it->second == 0) draining_.erase(it);
  }
}

absl::StatusOr<ModelSummary> ModelRegistry::Load(const std::string& path) {
  if (root_.empty()) {
    return absl::FailedPreconditionError("this server has no model repository");
  }
  absl::MutexLock admin(&admin_mu_);
  FEATVIZ_ASSIGN_OR_RETURN(const Found found, FoundAt(path));
  auto served = [&](const std::string& name,
                    const std::string& version) -> absl::Status {
    absl::ReaderMutexLock lock(&mu_);
    auto it = served_.find(name);
    if (it == served_.end()) return absl::OkStatus();
    auto v = it->second.find(version);
    if (v == it->second.end()) return absl::OkStatus();
    return absl::AlreadyExistsError(absl::StrCat(
        "model ", Key(name, version), " is already served (from ",
        v->second->path, ", sha256 ", ShortHash(v->second->content_hash),
        "); ReloadModel picks up a changed file"));
  };
  FEATVIZ_RETURN_IF_ERROR(served(found.name, found.version));
  FEATVIZ_ASSIGN_OR_RETURN(EntryPtr entry, LoadEntry(found));
  if (absl::Status free = served(entry->name, entry->version); !free.ok()) {
    Discard(*entry);
    return free;
  }
  held_out_.erase(Key(entry->name, entry->version));
  spdlog::info("model {} loaded from {} (sha256 {}, {} bytes per device)",
               Key(entry->name, entry->version), entry->path,
               ShortHash(entry->content_hash), entry->summary->memory_bytes);
  ModelSummary summary = Described(*entry);
  Serve(std::move(entry));
  return summary;
}

absl::StatusOr<fs::path> ModelRegistry::NewStagingDir() const {
  if (root_.empty()) {
    return absl::FailedPreconditionError("this server has no model repository");
  }
  return server::NewStagingDir(root_);
}

namespace {

// The card at `path` as the model's load would read it, in one canonical
// text; "" when there is none. Cards that do not parse never compare equal.
std::string CanonicalCard(const fs::path& path) {
  std::error_code ignored;
  if (!fs::exists(path, ignored)) return "";
  absl::StatusOr<core::ModelCard> card = core::ModelCard::Load(path.string());
  return card.ok() ? card->ToJson()
                   : absl::StrCat("unreadable ", path.string());
}

}  // namespace

std::optional<ModelSummary> ModelRegistry::ServedWithContent(
    const std::string& name, const std::string& sha256,
    const fs::path& card) const {
  std::vector<EntryPtr> same_file;
  {
    absl::ReaderMutexLock lock(&mu_);
    auto it = served_.find(name);
    if (it == served_.end()) return std::nullopt;
    // Newest first: the answer is the version a request for `name` gets.
    for (auto v = it->second.rbegin(); v != it->second.rend(); ++v) {
      if (v->second->content_hash == sha256 && !v->second->path.empty()) {
        same_file.push_back(v->second);
      }
    }
  }
  if (same_file.empty()) return std::nullopt;
  const std::string wanted = CanonicalCard(card);
  for (const EntryPtr& entry : same_file) {
    const fs::path served_card =
        (root_ / entry->path).replace_extension(".card.json");
    if (CanonicalCard(served_card) == wanted) return Described(*entry);
  }
  return std::nullopt;
}

absl::StatusOr<ModelRegistry::Published> ModelRegistry::Publish(
    const std::string& name, const fs::path& staged,
    const std::string& sha256) {
  std::error_code ignored;
  auto discard = [&](const absl::Status& status) {
    fs::remove_all(staged, ignored);
    return status;
  };
  if (root_.empty()) {
    return discard(
        absl::FailedPreconditionError("this server has no model repository"));
  }
  if (absl::Status valid = CheckName("model name", name); !valid.ok()) {
    return discard(valid);
  }
  absl::MutexLock admin(&admin_mu_);
  if (std::optional<ModelSummary> present =
          ServedWithContent(name, sha256, staged / kCardFile);
      present.has_value()) {
    fs::remove_all(staged, ignored);
    spdlog::info(
        "model {} upload: the same file (sha256 {}) and card are "
        "already served as version {}; nothing published",
        name, ShortHash(sha256), present->card.version);
    return Published{*std::move(present), true};
  }
  const fs::path model_dir = root_ / name;
  if (fs::exists(model_dir, ignored)) {
    // Refuses a name that is a file or a symlink out of the repository.
    absl::StatusOr<fs::path> real = ConfinedPath(root_, name);
    if (!real.ok() || !fs::is_directory(*real, ignored) ||
        fs::is_symlink(model_dir, ignored)) {
      return discard(absl::InvalidArgumentError(absl::StrCat(
          "model name '", name,
          "' is taken in the repository by something that is not a model "
          "directory")));
    }
  }
  int64_t newest = 0;
  auto consider = [&](absl::string_view version) {
    int64_t v = 0;
    if (AllDigits(version) && version.size() < 18 &&
        absl::SimpleAtoi(version, &v)) {
      newest = std::max(newest, v);
    }
  };
  for (const fs::directory_entry& sub :
       fs::directory_iterator(model_dir, ignored)) {
    consider(sub.path().filename().string());
  }
  {
    absl::ReaderMutexLock lock(&mu_);
    if (auto it = served_.find(name); it != served_.end()) {
      for (const auto& [version, entry] : it->second) consider(version);
    }
  }
  const std::string version = absl::StrCat(newest + 1);
  const bool made_dir = !fs::exists(model_dir, ignored);
  std::error_code error;
  fs::create_directories(model_dir, error);
  const fs::path target = model_dir / version;
  if (!error) fs::rename(staged, target, error);
  if (error) {
    if (made_dir) fs::remove(model_dir, ignored);
    return discard(absl::InternalError(
        absl::StrCat("cannot publish the upload as ", name, "/", version,
                     ": ", error.message())));
  }
  const Found found{name, version, absl::StrCat(name, "/", version, "/", kModelFile)};
  absl::StatusOr<EntryPtr> entry = LoadEntry(found);
  if (!entry.ok()) {
    fs::remove_all(target, ignored);
    if (made_dir) fs::remove(model_dir, ignored);
    return entry.status();
  }
  held_out_.erase(Key(name, version));
  spdlog::info("model {} uploaded to {} (sha256 {}, {} bytes per device)",
               Key(name, version), (*entry)->path,
               ShortHash((*entry)->content_hash),
               (*entry)->summary->memory_bytes);
  Published published{Described(**entry), false};
  Serve(*std::move(entry));
  return published;
}

absl::StatusOr<std::vector<ModelSummary>> ModelRegistry::Unload(
    const std::string& name, const std::string& version) {
  std::vector<ModelSummary> unloaded;
  Retired retired;
  {
    absl::MutexLock admin(&admin_mu_);
    std::vector<EntryPtr> entries;
    {
      absl::ReaderMutexLock lock(&mu_);
      auto it = served_.find(name);
      if (it == served_.end() || it->second.empty()) return NotServed(name);
      for (const auto& [v, entry] : it->second) {
        if (version.empty() || v == version) entries.push_back(entry);
      }
      if (entries.empty()) {
        std::vector<std::string> versions;
        for (const auto& [v, entry] : it->second) versions.push_back(v);
        return absl::NotFoundError(absl::StrCat(
            "model '", name, "' has no version '", version,
            "'; versions are: ", absl::StrJoin(versions, ", ")));
      }
    }
    for (const EntryPtr& entry : entries) {
      held_out_.insert(Key(entry->name, entry->version));
      unloaded.push_back(Described(*entry));
    }
    retired = TakeOut(entries);
  }
  for (const std::string& key : retired.keys) {
    spdlog::info("model {} unloading: refusing new jobs, waiting for running "
                 "ones", key);
  }
  const absl::Time start = absl::Now();
  std::vector<std::string> keys = retired.keys;
  WaitReleased(std::move(retired));
  // The allocator's cache keeps freed device memory; hand it back (CUDA).
  for (const c10::Device& device : devices_) core::ReleaseCachedMemory(device);
  for (const std::string& key : keys) {
    spdlog::info("model {} unloaded after {:.3f}s", key,
                 absl::ToDoubleSeconds(absl::Now() - start));
  }
  return unloaded;
}

absl::StatusOr<ModelRegistry::Changes> ModelRegistry::Reload(
    const std::string& name) {
  if (root_.empty()) {
    return absl::FailedPreconditionError("this server has no model repository");
  }
  Changes changes;
  Retired retired;
  {
    absl::MutexLock admin(&admin_mu_);
    FEATVIZ_ASSIGN_OR_RETURN(changes, Sync(name, false, &retired));
  }
  WaitReleased(std::move(retired));
  return changes;
}

absl::StatusOr<ModelRegistry::Changes> ModelRegistry::Sync(
    const std::string& name, bool poll, Retired* retired) {
  Changes changes;
  const std::vector<Found> found = Scan(name);
  std::map<std::string, EntryPtr> current;
  {
    absl::ReaderMutexLock lock(&mu_);
    for (const auto& [served, versions] : served_) {
      if (!name.empty() && served != name) continue;
      for (const auto& [version, entry] : versions) {
        current.emplace(Key(served, version), entry);
      }
    }
  }
  std::vector<EntryPtr> out;
  std::set<std::string> seen;
  auto load = [&](const Found& f) -> EntryPtr {
    absl::StatusOr<EntryPtr> entry = LoadEntry(f);
    if (!entry.ok()) {
      spdlog::error("model {} not loaded: {}", f.path,
                    std::string(entry.status().message()));
      changes.failed.push_back(std::string(entry.status().message()));
      return nullptr;
    }
    spdlog::info("model {} loaded from {} (sha256 {}, {} bytes per device)",
                 Key((*entry)->name, (*entry)->version), f.path,
                 ShortHash((*entry)->content_hash),
                 (*entry)->summary->memory_bytes);
    return *std::move(entry);
  };
  for (const Found& f : found) {
    const std::string key = Key(f.name, f.version);
    if (!seen.insert(key).second) {
      changes.failed.push_back(absl::StrCat(
          f.path, ": model ", key, " is already served from another file"));
      spdlog::error("model {} not loaded: {} comes from an earlier file",
                    f.path, key);
      continue;
    }
    if (poll && held_out_.count(key) > 0) continue;
    if (!poll) held_out_.erase(key);
    auto it = current.find(key);
    if (it != current.end() && it->second->path != f.path) {
      changes.failed.push_back(absl::StrCat(f.path, ": model ", key,
                                            " is already served from ",
                                            it->second->path));
      continue;
    }
    if (it != current.end()) {
      std::error_code error;
      const fs::path file = root_ / f.path;
      if (fs::file_size(file, error) == it->second->file_size &&
          fs::last_write_time(file, error) == it->second->file_time) {
        continue;
      }
      EntryPtr fresh = load(f);
      if (fresh == nullptr) continue;  // The old copy keeps serving.
      changes.loaded.push_back(Described(*fresh));
      EntryPtr old = Serve(std::move(fresh));
      if (old != nullptr) {
        changes.unloaded.push_back(*old->summary);
        out.push_back(std::move(old));
      }
      continue;
    }
    EntryPtr fresh = load(f);
    if (fresh == nullptr) continue;
    if (Key(fresh->name, fresh->version) != key) {
      // A flat card changed between the scan and the load.
      Discard(*fresh);
      changes.failed.push_back(
          absl::StrCat(f.path, ": its card changed while loading"));
      continue;
    }
    changes.loaded.push_back(Described(*fresh));
    Serve(std::move(fresh));
  }
  for (const auto& [key, entry] : current) {
    if (seen.count(key) > 0 || entry->path.empty()) continue;
    spdlog::info("model {}: {} is gone from the repository", key, entry->path);
    changes.unloaded.push_back(Described(*entry));
    out.push_back(entry);
  }
  *retired = TakeOut(out);
  return changes;
}

// -------------------------------------------------------------- polling

void ModelRegistry::StartPolling(absl::Duration every) {
  if (root_.empty() || poll_thread_.joinable()) return;
  poll_thread_ = std::thread([this, every] { PollLoop(every); });
}

void ModelRegistry::StopPolling() {
  {
    absl::MutexLock lock(&poll_mu_);
    poll_stop_ = true;
  }
  if (poll_thread_.joinable()) poll_thread_.join();
}

void ModelRegistry::PollLoop(absl::Duration every) {
  absl::MutexLock lock(&poll_mu_);
  while (!poll_mu_.AwaitWithTimeout(absl::Condition(&poll_stop_), every)) {
    poll_mu_.Unlock();
    Retired retired;
    absl::StatusOr<Changes> changes;
    {
      absl::MutexLock admin(&admin_mu_);
      const absl::Status polled =
          core::CatchAtBoundary("model poll", [&]() -> absl::Status {
            // Held by the caller; says so to the thread-safety analysis,
            // which does not follow locks into lambdas.
            admin_mu_.AssertHeld();
            changes = Sync("", true, &retired);
            return changes.status();
          });
      if (!polled.ok()) {
        spdlog::error("model poll failed: {}", polled.ToString());
      }
    }
    WaitReleased(std::move(retired));
    if (changes.ok() && (!changes->loaded.empty() || !changes->unloaded.empty())) {
      spdlog::info("model poll: {} versions loaded, {} unloaded",
                   changes->loaded.size(), changes->unloaded.size());
    }
    poll_mu_.Lock();
  }
}

}  // namespace featviz::server
