#include "core/operator_policy.h"

#include <caffe2/serialize/inline_container.h>
#include <caffe2/serialize/read_adapter_interface.h>
#include <torch/csrc/jit/api/compilation_unit.h>
#include <torch/csrc/jit/api/function_impl.h>
#include <torch/csrc/jit/frontend/source_range.h>
#include <torch/csrc/jit/ir/ir.h>
#include <torch/csrc/jit/serialization/import_read.h>
#include <torch/csrc/jit/serialization/import_source.h>
#include <torch/csrc/jit/serialization/pickle.h>
#include <torch/csrc/jit/serialization/source_range_serialization.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <tuple>
#include <unordered_set>
#include <utility>
#include <vector>

#include "absl/base/attributes.h"
#include "absl/base/const_init.h"
#include "absl/base/thread_annotations.h"
#include "absl/strings/ascii.h"
#include "absl/strings/cord.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "core/status_macros.h"
#include "core/torch_status.h"

namespace featviz::core {
namespace {

using torch::jit::Block;
using torch::jit::Graph;
using torch::jit::Node;
using torch::jit::Source;
using torch::jit::SourceRange;

// Where a refusal's operator travels beside the message (RefusedOperator).
constexpr char kRefusedOperatorUrl[] = "type.featviz.dev/refused-operator";

// Namespaces of LibTorch's tensor kernels and of TorchScript's own
// instructions (prim: constants, attributes, control flow, lists, calls).
constexpr absl::string_view kAllowedNamespaces[] = {
    "aten",        // ATen, the tensor library: what torch.* compiles to.
    "prim",        // The interpreter's instructions.
    "prims",       // torch._prims, primitive tensor operations.
    "quantized",   // Quantized tensor kernels (torch.ao.quantization).
    "_quantized",  // The same, older names.
};

// Operators allowed one by one outside those namespaces.
constexpr absl::string_view kAllowedOperators[] = {
    // torch.autograd.profiler.record_function: marks a range for a profiler
    // if one runs; nothing is read or written.
    "profiler::_record_function_enter",
    "profiler::_record_function_enter_new",
    "profiler::_record_function_exit",
    "profiler::_call_end_callbacks_on_jit_fut",
};

// TorchBind classes (C++ objects a model holds or makes) allowed: the
// packed weights of quantized layers. Their C++ __setstate__ runs while
// the model loads; they compute, and read nothing else.
constexpr absl::string_view kAllowedClassPrefixes[] = {
    "torch.classes.quantized.",
};

struct Refused {
  absl::string_view name;
  absl::string_view why;  // Follows "which".
};

// Refused inside the allowed namespaces: what reaches outside the tensors
// a model is given and holds (docs/models.md lists them with the reasons).
constexpr Refused kRefusedOperators[] = {
    {"aten::from_file", "reads files"},
    {"aten::save", "writes files"},
    {"prim::rpc_async", "calls other processes (torch.distributed.rpc)"},
    {"prim::rpc_sync", "calls other processes (torch.distributed.rpc)"},
    {"prim::rpc_remote", "calls other processes (torch.distributed.rpc)"},
    {"aten::to_here",
     "fetches values from other processes (torch.distributed.rpc)"},
    {"aten::local_value", "reads remote references (torch.distributed.rpc)"},
    {"aten::owner", "reads remote references (torch.distributed.rpc)"},
    {"aten::owner_name", "reads remote references (torch.distributed.rpc)"},
    {"aten::is_owner", "reads remote references (torch.distributed.rpc)"},
    {"aten::confirmed_by_owner",
     "reads remote references (torch.distributed.rpc)"},
    {"aten::dist_backward",
     "runs distributed autograd across processes (torch.distributed)"},
    {"prim::PythonOp", "calls into Python"},
    {"aten::manual_seed",
     "reseeds the random generator that every model and job in the process "
     "shares"},
    {"aten::_cufft_set_plan_cache_max_size",
     "changes the process's cuFFT plan cache, which every job's FFT images "
     "use"},
    {"aten::_cufft_clear_plan_cache",
     "empties the process's cuFFT plan cache, which every job's FFT images "
     "use"},
};

std::string AllowedNamespaces() {
  return absl::StrJoin(std::begin(kAllowedNamespaces),
                       std::end(kAllowedNamespaces), ", ");
}

bool IsIdentifier(absl::string_view s) {
  if (s.empty() || absl::ascii_isdigit(static_cast<unsigned char>(s[0]))) {
    return false;
  }
  return std::all_of(s.begin(), s.end(), [](char c) {
    return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '_';
  });
}

// A name as OperatorPolicy writes it: "ns::op" or "torch.classes.ns.Class".
bool IsPolicyName(absl::string_view name) {
  if (absl::ConsumePrefix(&name, "torch.classes.")) {
    const std::vector<absl::string_view> parts = absl::StrSplit(name, '.');
    return parts.size() == 2 && IsIdentifier(parts[0]) &&
           IsIdentifier(parts[1]);
  }
  const size_t colons = name.find("::");
  return colons != absl::string_view::npos &&
         IsIdentifier(name.substr(0, colons)) &&
         IsIdentifier(name.substr(colons + 2));
}

ABSL_CONST_INIT absl::Mutex policy_mu(absl::kConstInit);
// nullptr: the default policy (nothing beyond the built-in list).
OperatorPolicy* process_policy ABSL_GUARDED_BY(policy_mu) = nullptr;

// The class name a type spells for the policy ("torch.classes.ns.Class"),
// or "" when it is not a TorchBind class.
std::string TorchBindName(const c10::ClassType& cls) {
  if (!cls.name()) return "";
  absl::string_view name = cls.name()->qualifiedName();
  if (!absl::ConsumePrefix(&name, "__torch__.torch.classes.")) return "";
  return absl::StrCat("torch.classes.", name);
}

// "(model.py line 12)" for a node: the line of the Python source the model
// was scripted from when the archive kept it (its .debug_pkl), else the line
// of the archive's own code; "" when the node has neither.
std::string SourceLine(const Node& node) {
  SourceRange range = node.sourceRange();
  if (c10::optional<SourceRange> original =
          range.findSourceRangeThatGenerated()) {
    range = *original;
  }
  const auto file_line = range.file_line_col();
  if (!file_line.has_value()) return "";
  const std::string file =
      std::filesystem::path(std::get<0>(*file_line)).filename().string();
  return absl::StrCat(" (", file, " line ", std::get<1>(*file_line), ")");
}

// Walks compiled functions and stops at the first refused operator or class.
class Checker {
 public:
  // `module_paths`: class name -> path of a module of that class ("" for
  // the model itself), to say where a method is.
  Checker(const OperatorPolicy& policy, std::string model_name,
          std::map<std::string, std::string> module_paths)
      : policy_(policy),
        model_name_(std::move(model_name)),
        module_paths_(std::move(module_paths)) {}

  absl::Status CheckUnit(const torch::jit::CompilationUnit& unit) {
    for (torch::jit::Function* fn : unit.get_functions()) {
      if (!fn->isGraphFunction()) continue;
      where_ = Where(unit, *fn);
      std::shared_ptr<Graph> graph = torch::jit::toGraphFunction(*fn).graph();
      for (const torch::jit::Value* input : graph->inputs()) {
        FEATVIZ_RETURN_IF_ERROR(CheckType(input->type(), nullptr));
      }
      FEATVIZ_RETURN_IF_ERROR(CheckBlock(*graph->block()));
    }
    return absl::OkStatus();
  }

  // A TorchBind class met in the pickles: its C++ __setstate__ runs while
  // the model loads.
  absl::Status CheckPickledClass(const c10::ClassType& cls) {
    where_ = "in its saved attributes (unpickled while the file loads)";
    return CheckClass(cls, nullptr);
  }

 private:
  absl::Status CheckBlock(const Block& block) {
    for (const Node* node : block.nodes()) {
      FEATVIZ_RETURN_IF_ERROR(CheckNode(*node));
    }
    return absl::OkStatus();
  }

  absl::Status CheckNode(const Node& node) {
    const std::string name = node.kind().toQualString();
    if (std::optional<std::string> why = RefusalReason(name, policy_)) {
      return Refuse("calls", name, *why, &node);
    }
    for (const torch::jit::Value* output : node.outputs()) {
      FEATVIZ_RETURN_IF_ERROR(CheckType(output->type(), &node));
    }
    for (const Block* block : node.blocks()) {
      for (const torch::jit::Value* input : block->inputs()) {
        FEATVIZ_RETURN_IF_ERROR(CheckType(input->type(), &node));
      }
      FEATVIZ_RETURN_IF_ERROR(CheckBlock(*block));
    }
    // prim::fork runs its work from a subgraph held as an attribute, as do
    // the fusion groups of an optimised graph.
    for (const c10::Symbol attribute : node.attributeNames()) {
      const torch::jit::AttributeKind kind = node.kindOf(attribute);
      if (kind == torch::jit::AttributeKind::g) {
        FEATVIZ_RETURN_IF_ERROR(CheckBlock(*node.g(attribute)->block()));
      } else if (kind == torch::jit::AttributeKind::gs) {
        for (const std::shared_ptr<Graph>& graph : node.gs(attribute)) {
          FEATVIZ_RETURN_IF_ERROR(CheckBlock(*graph->block()));
        }
      }
    }
    return absl::OkStatus();
  }

  // TorchBind objects are C++ code reached through values: made by
  // prim::CreateObject, read by prim::GetAttr, their methods called by
  // prim::CallMethod. Every value's type is looked through (with the
  // attributes of classes), so each way in is seen.
  absl::Status CheckType(const c10::TypePtr& type, const Node* node) {
    if (!seen_types_.insert(type.get()).second) return absl::OkStatus();
    if (const auto cls = type->cast<c10::ClassType>()) {
      FEATVIZ_RETURN_IF_ERROR(CheckClass(*cls, node));
    }
    for (const c10::TypePtr& contained : type->containedTypes()) {
      FEATVIZ_RETURN_IF_ERROR(CheckType(contained, node));
    }
    return absl::OkStatus();
  }

  absl::Status CheckClass(const c10::ClassType& cls, const Node* node) {
    const std::string name = TorchBindName(cls);
    if (name.empty()) return absl::OkStatus();
    if (std::optional<std::string> why = RefusalReason(name, policy_)) {
      return Refuse("uses", name, *why, node);
    }
    return absl::OkStatus();
  }

  absl::Status Refuse(absl::string_view verb, const std::string& name,
                      const std::string& why, const Node* node) {
    absl::Status status = absl::InvalidArgumentError(absl::StrCat(
        "model ", model_name_, " ", verb, " ", name, " ", where_,
        node != nullptr ? SourceLine(*node) : "", ", which ", why,
        "; models may only compute on tensors (see docs/models.md)"));
    status.SetPayload(kRefusedOperatorUrl, absl::Cord(name));
    return status;
  }

  // "in forward", "in read of submodule reader", "in __setstate__ of
  // submodule cache", "in m of class __torch__.C", "in function
  // __torch__.f".
  std::string Where(const torch::jit::CompilationUnit& unit,
                    const torch::jit::Function& fn) const {
    const c10::QualifiedName& qualname = fn.qualname();
    const std::string& method = qualname.name();
    const c10::ClassTypePtr cls =
        qualname.prefix().empty() ? nullptr : unit.get_class(qualname.prefix());
    if (cls == nullptr) {
      return absl::StrCat("in function ", qualname.qualifiedName());
    }
    if (auto it = module_paths_.find(qualname.prefix());
        it != module_paths_.end()) {
      if (it->second.empty()) return absl::StrCat("in ", method);
      return absl::StrCat("in ", method, " of submodule ", it->second);
    }
    return absl::StrCat("in ", method, " of class ", qualname.prefix());
  }

  const OperatorPolicy& policy_;
  const std::string model_name_;
  const std::map<std::string, std::string> module_paths_;
  std::string where_;
  std::unordered_set<const c10::Type*> seen_types_;
};

// The archive's bytes, as PyTorchStreamReader reads them (no copy).
class BytesReadAdapter final : public caffe2::serialize::ReadAdapterInterface {
 public:
  explicit BytesReadAdapter(absl::string_view bytes) : bytes_(bytes) {}
  size_t size() const override { return bytes_.size(); }
  size_t read(uint64_t pos, void* buf, size_t n,
              const char* /*what*/) const override {
    if (pos >= bytes_.size()) return 0;
    n = std::min<size_t>(n, bytes_.size() - pos);
    std::memcpy(buf, bytes_.data() + pos, n);
    return n;
  }

 private:
  absl::string_view bytes_;
};

// The lines of the Python source that generated an archive's code, read
// from the code file's .debug_pkl as torch::jit::load reads it (whose own
// reader LibTorch does not export). The pickle is a tuple of records
// (offset in the code file, ((text, file, first line), start, end), tag),
// sorted by offset; the newer format puts "FORMAT_WITH_STRING_TABLE" and a
// table of strings first, and then names text pieces and the file by their
// index in the table. Unreadable: no lines (the archive's are reported).
class DebugRanges final : public torch::jit::SourceRangeUnpickler {
 public:
  explicit DebugRanges(std::string pickle) : pickle_(std::move(pickle)) {}

  c10::optional<SourceRange> findSourceRangeThatGenerated(
      const SourceRange& range) override {
    if (!parsed_) {
      parsed_ = true;
      try {
        Parse();
      } catch (const std::exception&) {
        records_.clear();
      }
    }
    auto it = std::upper_bound(records_.begin(), records_.end(), range.start(),
                               [](size_t offset, const auto& record) {
                                 return offset < record.first;
                               });
    if (it == records_.begin()) return c10::nullopt;
    return std::prev(it)->second;
  }

 private:
  void Parse() {
    const c10::IValue value =
        torch::jit::unpickle(pickle_.data(), pickle_.size());
    const auto& top = value.toTupleRef().elements();
    std::vector<std::string> table;
    std::vector<c10::IValue> records(top.begin(), top.end());
    if (top.size() == 3 && top[0].isString() &&
        top[0].toStringRef() == "FORMAT_WITH_STRING_TABLE") {
      for (const c10::IValue& s : top[1].toTupleRef().elements()) {
        table.push_back(s.toStringRef());
      }
      const auto& rest = top[2].toTupleRef().elements();
      records.assign(rest.begin(), rest.end());
    }
    auto text_of = [&](const c10::IValue& v) -> std::string {
      if (v.isString()) return v.toStringRef();
      std::string text;
      for (const c10::IValue& i : v.toListRef()) text += table.at(i.toInt());
      return text;
    };
    std::map<const void*, std::shared_ptr<Source>> sources;
    for (const c10::IValue& record : records) {
      const auto& fields = record.toTupleRef().elements();
      const auto& range = fields.at(1).toTupleRef().elements();
      const c10::IValue& source_value = range.at(0);
      std::shared_ptr<Source>& source = sources[source_value.toTuple().get()];
      if (source == nullptr) {
        const auto& s = source_value.toTupleRef().elements();
        c10::optional<std::string> file;
        if (s.at(1).isString()) file = s.at(1).toStringRef();
        if (s.at(1).isInt()) file = table.at(s.at(1).toInt());
        source = std::make_shared<Source>(text_of(s.at(0)), file,
                                          static_cast<size_t>(s.at(2).toInt()));
      }
      records_.emplace_back(
          static_cast<size_t>(fields.at(0).toInt()),
          SourceRange(source, static_cast<size_t>(range.at(1).toInt()),
                      static_cast<size_t>(range.at(2).toInt())));
    }
  }

  const std::string pickle_;
  bool parsed_ = false;
  std::vector<std::pair<size_t, SourceRange>> records_;
};

// Module paths of the modules among the objects read from data.pkl: class
// name -> the first path a module of that class has ("" for the model).
void CollectModulePaths(const c10::ivalue::Object& object,
                        const std::string& path,
                        std::unordered_set<const void*>* seen,
                        std::map<std::string, std::string>* paths) {
  // A crafted pickle may refer back to an object already read.
  if (!seen->insert(&object).second) return;
  const c10::ClassTypePtr type = object.type();
  if (!type->is_module() || !type->name()) return;
  paths->emplace(type->name()->qualifiedName(), path);
  for (size_t i = 0; i < type->numAttributes() && i < object.slots().size();
       ++i) {
    const c10::IValue& slot = object.getSlot(i);
    if (!slot.isObject()) continue;
    const std::string& name = type->getAttributeName(i);
    CollectModulePaths(slot.toObjectRef(),
                       path.empty() ? name : absl::StrCat(path, ".", name),
                       seen, paths);
  }
}

}  // namespace

absl::StatusOr<OperatorPolicy> ParseOperatorPolicy(absl::string_view list) {
  OperatorPolicy policy;
  for (absl::string_view entry : absl::StrSplit(list, ',')) {
    entry = absl::StripAsciiWhitespace(entry);
    if (entry.empty()) continue;
    if (!IsPolicyName(entry)) {
      return absl::InvalidArgumentError(
          absl::StrCat("operator '", entry,
                       "' must be written NAMESPACE::NAME (aten::from_file) or "
                       "torch.classes.NAMESPACE.CLASS"));
    }
    policy.also_allowed.insert(std::string(entry));
  }
  return policy;
}

void SetOperatorPolicy(OperatorPolicy policy) {
  absl::MutexLock lock(&policy_mu);
  delete process_policy;
  process_policy = new OperatorPolicy(std::move(policy));
}

OperatorPolicy GetOperatorPolicy() {
  absl::MutexLock lock(&policy_mu);
  return process_policy == nullptr ? OperatorPolicy{} : *process_policy;
}

std::optional<std::string> RefusalReason(absl::string_view name,
                                         const OperatorPolicy& policy) {
  if (policy.also_allowed.count(std::string(name)) > 0) return std::nullopt;
  for (const Refused& refused : kRefusedOperators) {
    if (refused.name == name) return std::string(refused.why);
  }
  if (absl::StartsWith(name, "torch.classes.")) {
    for (absl::string_view prefix : kAllowedClassPrefixes) {
      if (absl::StartsWith(name, prefix)) return std::nullopt;
    }
    return absl::StrCat(
        "is C++ code of the server outside the classes of quantized weights "
        "(",
        absl::StrJoin(std::begin(kAllowedClassPrefixes),
                      std::end(kAllowedClassPrefixes), ", "),
        "*)");
  }
  const absl::string_view ns = name.substr(0, name.find("::"));
  for (absl::string_view allowed : kAllowedNamespaces) {
    if (ns == allowed) return std::nullopt;
  }
  for (absl::string_view allowed : kAllowedOperators) {
    if (name == allowed) return std::nullopt;
  }
  return absl::StrCat("is outside the namespaces of tensor computation (",
                      AllowedNamespaces(), ")");
}

absl::Status CheckModelArchive(absl::string_view bytes,
                               const std::string& model_name,
                               const OperatorPolicy& policy) {
  // torch::jit::load picks its reader by the first bytes (getFileFormat in
  // torch/csrc/jit/mobile/file_format.h): "PTMF" at offset 4 is a mobile
  // flatbuffer file, read (and its __setstate__ run) by a path this check
  // does not follow; only ZIP archives pass.
  if (bytes.size() >= 8 && bytes.substr(4, 4) == "PTMF") {
    return absl::InvalidArgumentError(
        "a mobile (flatbuffer) model, which featviz does not load");
  }
  if (bytes.size() < 8 ||
      bytes.substr(0, 4) != absl::string_view("PK\x03\x04", 4)) {
    return absl::InvalidArgumentError(
        "not a ZIP archive (torch.jit.save writes one)");
  }
  try {
    auto reader = std::make_shared<caffe2::serialize::PyTorchStreamReader>(
        std::make_shared<BytesReadAdapter>(bytes));
    if (reader->hasRecord("model.json")) {
      return absl::InvalidArgumentError(
          "saved in the model.json format of PyTorch 1.2 and older, which "
          "featviz does not load; save it again with a newer "
          "torch.jit.save");
    }
    for (const char* record : {"constants.pkl", "data.pkl"}) {
      if (!reader->hasRecord(record)) {
        return absl::InvalidArgumentError(
            absl::StrCat("the archive has no ", record,
                         " (torch.save writes weights; a model is saved with "
                         "torch.jit.save)"));
      }
    }
    // Compiled as torch::jit::load compiles it: the same source, found the
    // same way, in a compilation unit of its own.
    auto unit = std::make_shared<torch::jit::CompilationUnit>();
    std::vector<c10::IValue> constants;
    torch::jit::SourceImporter importer(
        unit, &constants,
        [&reader](const std::string& qualifier) -> std::shared_ptr<Source> {
          const std::string path = absl::StrCat(
              "code/", absl::StrReplaceAll(qualifier, {{".", "/"}}), ".py");
          if (!reader->hasRecord(path)) return nullptr;
          auto [text, size] = reader->getRecord(path);
          std::shared_ptr<torch::jit::SourceRangeUnpickler> ranges;
          if (reader->hasRecord(path + ".debug_pkl")) {
            auto [pickle, pickle_size] = reader->getRecord(path + ".debug_pkl");
            ranges = std::make_shared<DebugRanges>(std::string(
                static_cast<const char*>(pickle.get()), pickle_size));
          }
          return std::make_shared<Source>(
              std::string(static_cast<const char*>(text.get()), size), path, 1,
              ranges);
        },
        reader->version());
    std::vector<c10::ClassTypePtr> pickled_classes;
    auto resolve = [&](const c10::QualifiedName& name) {
      c10::TypePtr type = importer.loadType(name);
      if (auto cls = type->cast<c10::ClassType>())
        pickled_classes.push_back(cls);
      return c10::StrongTypePtr(unit, std::move(type));
    };
    // The pickles are read as torch::jit::load reads them, except here: an
    // object whose class has __setstate__ (TorchScript or TorchBind) gets
    // no state instead of having it run, and the others get their
    // attributes by name.
    auto inert = [](const c10::StrongTypePtr& type, c10::IValue state) {
      const auto cls = type.type_->expect<c10::ClassType>();
      auto object = c10::ivalue::Object::create(type, cls->numAttributes());
      if (cls->findMethod("__setstate__") == nullptr && state.isGenericDict()) {
        const c10::Dict<c10::IValue, c10::IValue> dict = state.toGenericDict();
        for (size_t i = 0; i < cls->numAttributes(); ++i) {
          auto it = dict.find(cls->getAttributeName(i));
          if (it != dict.end()) object->setSlot(i, it->value());
        }
      }
      return object;
    };
    // Weights are read onto the CPU whatever device they were saved from.
    const c10::IValue constants_tuple = torch::jit::readArchiveAndTensors(
        "constants", "", "", resolve, inert, c10::Device(c10::kCPU), *reader);
    for (const c10::IValue& constant :
         constants_tuple.toTupleRef().elements()) {
      constants.push_back(constant);
    }
    const c10::IValue data = torch::jit::readArchiveAndTensors(
        "data", "", "", resolve, inert, c10::Device(c10::kCPU), *reader);
    std::map<std::string, std::string> module_paths;
    if (data.isObject()) {
      std::unordered_set<const void*> seen;
      CollectModulePaths(data.toObjectRef(), "", &seen, &module_paths);
    }
    Checker checker(policy, model_name, std::move(module_paths));
    for (const c10::ClassTypePtr& cls : pickled_classes) {
      FEATVIZ_RETURN_IF_ERROR(checker.CheckPickledClass(*cls));
    }
    return checker.CheckUnit(*unit);
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(FirstLine(e.what()));
  }
}

absl::Status CheckModuleCode(const torch::jit::Module& module,
                             const std::string& model_name,
                             const OperatorPolicy& policy) {
  try {
    std::map<std::string, std::string> module_paths;
    for (const auto& named : module.named_modules()) {
      if (auto name = named.value.type()->name()) {
        module_paths.emplace(name->qualifiedName(), named.name);
      }
    }
    Checker checker(policy, model_name, std::move(module_paths));
    return checker.CheckUnit(*module._ivalue()->compilation_unit());
  } catch (const std::exception& e) {
    return TorchError(
        e, absl::StrCat("model ", model_name, ": checking its code"));
  }
}

std::string RefusedOperator(const absl::Status& status) {
  const auto name = status.GetPayload(kRefusedOperatorUrl);
  return name.has_value() ? std::string(*name) : "";
}

}  // namespace featviz::core
