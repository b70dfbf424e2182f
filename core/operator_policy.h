// What a model may call: the operators and TorchBind classes that a
// TorchScript model's code may use, checked before anything of the model
// runs (issue 25: an upload whose forward read /etc/passwd with
// torch.from_file and returned the bytes among its class scores).
//
// A TorchScript file is code that runs inside the server with the server's
// rights. The check is an allow-list: a model may call the operators of the
// namespaces that hold LibTorch's tensor kernels (aten, prim, prims,
// quantized, _quantized, and the profiler's range markers), except a few
// that are refused by name because they touch files, the network or state
// the whole process shares (aten::from_file, aten::save, torch.distributed's
// RPC, aten::manual_seed, ...), and the TorchBind classes of quantized
// weights. Anything else, a namespace LibTorch or a library added later, is
// refused until an operator allows it by name. docs/models.md lists it all
// with the reasons.
//
// Two checks, because torch::jit::load itself runs code: unpickling an
// object whose class defines __setstate__ calls it.
//   CheckModelArchive: the archive's bytes, before torch::jit::load. Its
//     code is compiled as torch::jit::load compiles it and its pickles are
//     read as torch::jit::load reads them, except that no __setstate__ runs;
//     then every compiled function is checked, __setstate__ included.
//   CheckModuleCode: a module already in memory (Model::Create checks it
//     before it runs forward), every function of its compilation unit.
// Every function is checked, not only those forward reaches: a method that
// forward never calls can still be called by other code in the file, and
// refusing a file for what it holds is simpler to reason about.
#ifndef FEATVIZ_CORE_OPERATOR_POLICY_H_
#define FEATVIZ_CORE_OPERATOR_POLICY_H_

#include <torch/script.h>

#include <optional>
#include <set>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace featviz::core {

struct OperatorPolicy {
  // Operators ("aten::from_file") and TorchBind classes
  // ("torch.classes.xnnpack.Conv2dOpContext") allowed beyond the built-in
  // list; a name here also allows one the list refuses by name. Default:
  // none (the server's --allow_operators, for a repository it trusts).
  std::set<std::string> also_allowed;
};

// The names of `list`, separated by commas (spaces around them ignored; ""
// is none). InvalidArgument naming an entry that is neither NAMESPACE::NAME
// nor torch.classes.NAMESPACE.CLASS.
absl::StatusOr<OperatorPolicy> ParseOperatorPolicy(absl::string_view list);

// The policy Model::Load and Model::Create check models against.
// Process-wide; the default allows only the built-in list. Set it before
// models are loaded (the server does, from --allow_operators). Thread-safe.
void SetOperatorPolicy(OperatorPolicy policy);
OperatorPolicy GetOperatorPolicy();

// Why a model may not use `name` (an operator "ns::op" or a class
// "torch.classes.ns.Class") under `policy`, as a clause that follows
// "which" ("reads files ..."); nullopt when it may.
std::optional<std::string> RefusalReason(absl::string_view name,
                                         const OperatorPolicy& policy);

// Checks the TorchScript archive `bytes` (a torch.jit.save file) for model
// `model_name` without running anything of it. InvalidArgument carrying
// the refused name (RefusedOperator) and saying where it is called: "model
// m calls aten::from_file in forward of submodule reader (m.py line 12),
// which reads files; ...". InvalidArgument without one for what
// torch::jit::load could not load either, or would load by another path
// that this check does not follow (not a ZIP archive, a mobile flatbuffer
// file, the model.json format of PyTorch 1.2 and older, code that does not
// compile).
absl::Status CheckModelArchive(absl::string_view bytes,
                               const std::string& model_name,
                               const OperatorPolicy& policy);

// Checks every function of `module`'s compilation unit (every method of
// every module and class in it, hooks and free functions included, with
// the blocks of if/loop and the subgraphs of fork). Errors as
// CheckModelArchive's refusals.
absl::Status CheckModuleCode(const torch::jit::Module& module,
                             const std::string& model_name,
                             const OperatorPolicy& policy);

// The operator or class a refusal by the checks above names; "" for any
// other status. Carried as a payload, so it survives a prefixed message
// (server::Prefixed keeps payloads).
std::string RefusedOperator(const absl::Status& status);

}  // namespace featviz::core

#endif  // FEATVIZ_CORE_OPERATOR_POLICY_H_
