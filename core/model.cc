#include "core/model.h"

#include <torch/csrc/api/include/torch/jit.h>
#include <torch/csrc/jit/api/function_impl.h>
#include <torch/csrc/jit/ir/ir.h>
#include <torch/csrc/jit/passes/constant_propagation.h>
#include <torch/csrc/jit/passes/dead_code_elimination.h>
#include <torch/csrc/jit/passes/inliner.h>
#include <torch/csrc/jit/passes/remove_exceptions.h>
#include <torch/csrc/jit/runtime/graph_executor.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <filesystem>
#include <functional>
#include <optional>
#include <set>
#include <sstream>
#include <unordered_map>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "core/files.h"
#include "core/invariant_conv.h"
#include "core/invariant_linear.h"
#include "core/operator_policy.h"
#include "core/sha256.h"
#include "core/status_macros.h"
#include "core/torch_status.h"
#include "spdlog/spdlog.h"

namespace featviz::core {
namespace {

using torch::jit::Graph;
using torch::jit::Node;
using torch::jit::Value;

bool IsModule(const Value* v) {
  auto cls = v->type()->cast<c10::ClassType>();
  return cls && cls->is_module();
}

// Linear layers in the tapped graph (LinearMode, model.h). BLAS picks its
// kernels and blocking by the number of rows, so a plain addmm gives a row
// different low bits depending on how many other rows share the batch; that
// would make a job's images depend on which other jobs it was batched with.
//
// kRowwise: every row is one [1, K] x [K, N] product (a bmm over the weight
// expanded to one copy per row): invariant, but each row reads the whole
// weight again, and bmm materialises the expanded weight.
constexpr char kRowwiseLinear[] = R"JIT(
def featviz_linear(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    k = x.size(-1)
    rows = x.reshape([-1, 1, k])
    w = weight.t().unsqueeze(0).expand([rows.size(0), k, weight.size(0)])
    out_shape = x.size()[:-1]
    out_shape.append(weight.size(0))
    y = torch.bmm(rows, w).reshape(out_shape)
    if bias is not None:
        y = y + bias
    return y
)JIT";

// kBlocked: the rows are padded with zero rows to a multiple of
// kLinearBlockRows and multiplied block by block (a bmm over [blocks, R, K]
// and the weight expanded to [blocks, K, N], which ATen runs as one GEMM of
// the same [R, K] x [K, N] shape per block, forward and backward), so BLAS
// sees the same shape whatever the batch. Same shape is not enough: a row
// must also get the same bits at every position of its block. Measured with
// OpenBLAS 0.3 on AVX2 (Zen 3), 1 and 2 threads, for [K, N] of [9216, 128],
// [512, 64], [128, 10] and [100, 7]: blocks of 1, 2, 4 and 8 rows give every
// position the same bits (forward and input gradient), 16 rows do not on one
// thread (rows 6-15 differ from rows 0-5), 24 and 32 on neither; 8 rows is
// one row per lane of an AVX2 float vector. The bias is added elementwise
// afterwards.
constexpr char kBlockedLinearTemplate[] = R"JIT(
def featviz_linear(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    y = featviz_blocked(x, weight)
    if bias is not None:
        y = y + bias
    return y
)JIT";

// The blocked product itself (no bias), shared by kBlocked and kInvariant.
constexpr char kBlockedProduct[] = R"JIT(
def featviz_blocked(x: Tensor, weight: Tensor) -> Tensor:
    r = BLOCK_ROWS
    k = x.size(-1)
    m = weight.size(0)
    rows = x.reshape([-1, k])
    n = rows.size(0)
    pad = (r - n % r) % r
    if pad > 0:
        rows = torch.cat([rows, torch.zeros([pad, k], dtype=rows.dtype, device=rows.device)], 0)
    blocks = rows.reshape([-1, r, k])
    w = weight.t().unsqueeze(0).expand([blocks.size(0), k, m])
    y = torch.bmm(blocks, w).reshape([-1, m])
    if pad > 0:
        y = y.narrow(0, 0, n)
    out_shape = x.size()[:-1]
    out_shape.append(m)
    return y.reshape(out_shape)
)JIT";

// kInvariant: on the CPU, featviz::invariant_linear (core/invariant_linear.h:
// one fixed-order sum per output, so a row costs one row), in float32 also
// in bf16 jobs (the input cast up; measured 2.1x the bf16 blocked product
// for one image of the classic CNN, which casts the weight each step and
// pads to 8 rows, and as fast at 16); on CUDA the blocked product.
constexpr char kInvariantLinearTemplate[] = R"JIT(
def featviz_linear(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    if x.is_cuda or weight.dtype != FLOAT32:
        y = featviz_blocked(x, weight)
    else:
        y = featviz.invariant_linear(x.float(), weight)
    if bias is not None:
        y = y + bias
    return y
)JIT";

std::atomic<LinearMode> linear_mode{LinearMode::kInvariant};
std::atomic<ConvLayout> conv_layout{ConvLayout::kChannelsLast};

// The graph of `featviz_linear` in `source`, with the functions it calls
// inlined.
std::shared_ptr<Graph> CompileLinear(const std::string& source) {
  std::shared_ptr<torch::jit::CompilationUnit> unit =
      CompileWithInvariantLinear(source);
  std::shared_ptr<Graph> graph =
      torch::jit::toGraphFunction(unit->get_function("featviz_linear"))
          .graph()
          ->copy();
  torch::jit::Inline(*graph);
  return graph;
}

const torch::jit::Graph& LinearGraph(LinearMode mode) {
  static const std::string blocked_product = absl::StrReplaceAll(
      kBlockedProduct, {{"BLOCK_ROWS", absl::StrCat(kLinearBlockRows)}});
  static const std::shared_ptr<Graph> rowwise = CompileLinear(kRowwiseLinear);
  static const std::shared_ptr<Graph> blocked =
      CompileLinear(blocked_product + kBlockedLinearTemplate);
  static const std::shared_ptr<Graph> invariant = CompileLinear(
      blocked_product +
      absl::StrReplaceAll(
          kInvariantLinearTemplate,
          {{"FLOAT32", absl::StrCat(static_cast<int>(at::kFloat))}}));
  switch (mode) {
    case LinearMode::kRowwise:
      return *rowwise;
    case LinearMode::kInvariant:
      return *invariant;
    default:
      return *blocked;
  }
}

void RewriteLinears(torch::jit::Block* block, LinearMode mode) {
  if (mode == LinearMode::kPlain) return;
  for (auto it = block->nodes().begin(); it != block->nodes().end();) {
    Node* node = *it;
    ++it;
    for (torch::jit::Block* sub : node->blocks()) RewriteLinears(sub, mode);
    if (node->kind() != c10::aten::linear || node->inputs().size() != 3) {
      continue;
    }
    torch::jit::WithInsertPoint guard(node);
    Graph& graph = *node->owningGraph();
    std::vector<Value*> outputs = torch::jit::insertGraph(
        graph, const_cast<Graph&>(LinearGraph(mode)), node->inputs());
    node->output()->replaceAllUsesWith(outputs[0]);
    node->destroy();
  }
}

// Replaces every read of a module's `training` flag in `block` (and the
// blocks inside it) with the constant false: the modules of a Model are in
// eval mode and nothing sets them back (Model::Create).
void FoldEvalMode(torch::jit::Block* block, Graph& graph) {
  for (Node* node : block->nodes()) {
    for (torch::jit::Block* sub : node->blocks()) FoldEvalMode(sub, graph);
    if (node->kind() == c10::prim::GetAttr &&
        node->s(c10::attr::name) == "training" &&
        node->output()->type()->kind() == c10::TypeKind::BoolType) {
      torch::jit::WithInsertPoint guard(node);
      node->output()->replaceAllUsesWith(graph.insertConstant(false));
    }
  }
}

// The forward graph with the outputs of `wanted` submodules appended.
struct TapGraph {
  std::shared_ptr<Graph> graph;
  // Paths whose outputs the graph returns, in tuple order after the output:
  // each as a list of the tensors its calls returned in this forward pass,
  // in call order (empty when no call was reached; see TakeTap).
  std::vector<std::string> tapped;
  // Paths forward() never calls (after inlining every module on the way).
  std::vector<std::string> missing;
  // Paths that are called but return no tensor, with what they return.
  std::map<std::string, std::string> not_tensors;
  // Whether some tapped call sits inside control flow (if/loop): a forward
  // pass may then not reach it, and a fast path taken only without
  // gradients (nn.MultiheadAttention's, nn.TransformerEncoderLayer's) may
  // skip it, so such graphs run with gradients on (Model::RunTapFunction).
  bool conditional = false;
};

// The tensor a module's call gives a reader of the model, or nullptr: the
// output itself, or the first element of a tuple led by a tensor
// (nn.MultiheadAttention's (output, weights), an RNN's (output, state)),
// inserted at the graph's insert point.
Value* TappedTensor(Graph& graph, Value* value) {
  if (value->type()->kind() == c10::TypeKind::TensorType) return value;
  if (auto tuple = value->type()->cast<c10::TupleType>();
      tuple && !tuple->elements().empty() &&
      tuple->elements()[0]->kind() == c10::TypeKind::TensorType) {
    return graph
        .insertNode(graph.createTupleIndex(value, graph.insertConstant(0),
                                           tuple->elements()[0]))
        ->output();
  }
  return nullptr;
}

// Copies forward's graph and inlines the forward of every submodule that is
// a strict prefix of a wanted path (and the helper methods of the model and
// of those modules), wherever the call sits, until every wanted submodule's
// calls are in the graph. Each wanted path gets a list, made at the top of
// the graph, and each of its calls appends its tensor to that list where
// the call is (inside an if or a loop too); the graph returns (output,
// lists...) as one tuple. Appending where the call was inlined, rather than
// returning the value, keeps the tap correct when a child is inlined later:
// inlining replaces all *uses* of a value, and an append is a use.
//
// Without `with_output` the tuple's first element is None instead, and the
// nodes that only the output needed are removed (EliminateExceptions, then
// EliminateDeadCode, which keeps the appends to the returned lists and
// anything else with side effects): the pass ends at the deepest tap.
TapGraph BuildTapGraph(const torch::jit::Module& module,
                       const std::vector<std::string>& wanted_paths,
                       LinearMode linear_mode, bool with_output = true) {
  std::shared_ptr<Graph> graph = module.get_method("forward").graph()->copy();
  const std::set<std::string> wanted(wanted_paths.begin(), wanted_paths.end());
  auto is_strict_prefix_of_wanted = [&](const std::string& path) {
    const std::string prefix = path + ".";
    return std::any_of(wanted.begin(), wanted.end(), [&](const auto& w) {
      return absl::StartsWith(w, prefix);
    });
  };
  TapGraph result;
  std::map<std::string, Value*> lists;
  std::set<std::string> appended;
  Node* first = *graph->nodes().begin();
  for (const std::string& path : wanted) {
    Node* list = graph->createList(c10::TensorType::get(), {});
    list->insertBefore(first);
    lists[path] = list->output();
  }
  // Appends the tensor of `value`, a call of `path`, before `before`.
  auto append = [&](const std::string& path, Value* value, Node* before) {
    torch::jit::WithInsertPoint guard(before);
    Value* tensor = TappedTensor(*graph, value);
    if (tensor == nullptr) {
      result.not_tensors[path] = value->type()->str();
      return;
    }
    graph->insert(c10::aten::append, {lists.at(path), tensor});
    appended.insert(path);
    if (before->owningBlock() != graph->block()) result.conditional = true;
  };

  std::vector<std::pair<Node*, std::string>> calls;
  while (true) {
    std::unordered_map<const Value*, std::string> module_path;
    module_path[graph->inputs()[0]] = "";
    calls.clear();
    Node* to_inline = nullptr;
    std::string inline_path;
    std::string inline_method;
    std::function<bool(torch::jit::Block*)> scan =
        [&](torch::jit::Block* block) {
          for (Node* node : block->nodes()) {
            if (node->kind() == c10::prim::GetAttr) {
              auto it = module_path.find(node->input(0));
              if (it != module_path.end() && IsModule(node->output())) {
                const std::string name = node->s(c10::attr::name);
                module_path[node->output()] =
                    it->second.empty() ? name
                                       : absl::StrCat(it->second, ".", name);
              }
            } else if (node->kind() == c10::prim::CallMethod) {
              auto it = module_path.find(node->input(0));
              if (it != module_path.end()) {
                const std::string method = node->s(c10::attr::name);
                // Helper methods (torchvision's `forward` calls
                // `self._forward_impl(x)`) of the model or of a module on
                // the way to a wanted layer are inlined too, so that the
                // calls inside them are reached.
                const bool on_the_way = is_strict_prefix_of_wanted(it->second);
                if ((method == "forward" && on_the_way) ||
                    (method != "forward" &&
                     (it->second.empty() || on_the_way))) {
                  to_inline = node;
                  inline_path = it->second;
                  inline_method = method;
                  return true;
                }
                if (method == "forward" && wanted.count(it->second) &&
                    node->outputs().size() == 1) {
                  calls.emplace_back(node, it->second);
                }
              }
            }
            for (torch::jit::Block* sub : node->blocks()) {
              if (scan(sub)) return true;
            }
          }
          return false;
        };
    scan(graph->block());
    if (to_inline == nullptr) break;
    auto cls = to_inline->input(0)->type()->expect<c10::ClassType>();
    Node* after = to_inline->next();
    const bool tap_it = inline_method == "forward" &&
                        wanted.count(inline_path) &&
                        to_inline->outputs().size() == 1;
    // The callee's own graph, not its optimised one: optimisation inlines
    // the callee's children, and their calls are what the next scan taps.
    std::vector<Value*> outputs = torch::jit::inlineCallTo(
        to_inline, &torch::jit::toGraphFunction(cls->getMethod(inline_method)),
        /*use_graph=*/false);
    if (tap_it && outputs.size() == 1) append(inline_path, outputs[0], after);
  }
  for (const auto& [node, path] : calls)
    append(path, node->output(), node->next());

  std::vector<Value*> values;
  {
    torch::jit::WithInsertPoint guard(graph->return_node());
    values.push_back(with_output ? graph->outputs()[0]
                                 : graph->insertConstant(c10::IValue()));
  }
  for (const std::string& path : wanted) {
    if (!appended.count(path)) {
      if (!result.not_tensors.count(path)) result.missing.push_back(path);
      continue;
    }
    values.push_back(lists.at(path));
    result.tapped.push_back(path);
  }
  {
    torch::jit::WithInsertPoint guard(graph->return_node());
    Value* tuple = graph->insertNode(graph->createTuple(values))->output();
    while (!graph->outputs().empty()) graph->eraseOutput(0);
    graph->registerOutput(tuple);
  }
  // Everything left is inlined so that every linear layer is visible, then
  // linear layers and convolutions become batch-invariant (see LinearMode).
  torch::jit::Inline(*graph);
  RewriteLinears(graph->block(), linear_mode);
  if (linear_mode != LinearMode::kPlain) RewriteConvolutions(graph->block());
  if (!with_output) {
    // Two things past the taps would keep the rest of the network alive.
    // A module's `training` flag is read from the module, so a BatchNorm
    // counts as writing its running statistics (module state, hence live)
    // unless the flag is a constant: every module is in eval mode
    // (Model::Create), so each read of it is the constant false, and
    // constant propagation folds the training branches away. And input
    // checks (BatchNorm's "expected 4D input", a shape assertion before a
    // classifier) raise on a tensor's rank; they cannot fire here: the card
    // fixes the input's shape and the whole graph ran on it when the model
    // was loaded (and runs again for every result's statistics), so the
    // branches that raise are dropped (EliminateExceptions, the pass meant
    // for graphs whose shapes are known) before the dead code is.
    FoldEvalMode(graph->block(), *graph);
    torch::jit::ConstantPropagationImmutableTypes(graph);
    torch::jit::EliminateExceptions(graph);
    torch::jit::EliminateDeadCode(graph);
  }
  result.graph = std::move(graph);
  return result;
}

// The tensor a tapped path's list holds for one forward pass: its last call's
// (a module called twice is read at its last call). Empty: no call of it was
// reached.
std::optional<at::Tensor> TakeTap(const c10::IValue& list) {
  if (!list.isList()) return std::nullopt;
  const c10::List<c10::IValue> calls = list.toList();
  if (calls.empty()) return std::nullopt;
  const c10::IValue last = calls.get(calls.size() - 1);
  if (!last.isTensor()) return std::nullopt;
  return last.toTensor();
}

// Modules whose rank-3 output is channels first, [B, C, L]; every other
// rank-3 output is read as [B, tokens, features] (a linear layer, a norm, an
// attention block or an activation applied to a sequence of tokens).
bool ChannelsFirst1d(const std::string& kind) {
  static const std::set<std::string>* const kKinds = new std::set<std::string>{
      "Conv1d",    "ConvTranspose1d", "BatchNorm1d",       "InstanceNorm1d",
      "MaxPool1d", "AvgPool1d",       "AdaptiveAvgPool1d", "AdaptiveMaxPool1d",
      "LPPool1d",  "LazyConv1d"};
  return kKinds->count(kind) > 0;
}

// The patch grid among `tokens` tokens: the card's when its prefix and grid
// account for exactly these tokens; otherwise the fewest leading tokens (at
// most 8: class, distillation and register tokens) after which the rest
// form a grid of the input's aspect. Leaves the grid 0 x 0 when none fits.
void FindTokenGrid(const ModelCard& card, LayerInfo& info) {
  const int64_t t = info.tokens;
  if (card.token_prefix >= 0) {
    if (card.token_prefix + card.token_grid_h * card.token_grid_w == t) {
      info.token_prefix = card.token_prefix;
      info.grid_h = card.token_grid_h;
      info.grid_w = card.token_grid_w;
    } else {
      // Not a layer of the card's patch tokens (a token-mixing MLP's
      // hidden layer, a pooled sequence): no grid.
      info.token_prefix = std::min(card.token_prefix, t);
    }
    return;
  }
  for (int64_t prefix = 0; prefix <= std::min<int64_t>(8, t - 1); ++prefix) {
    const int64_t n = t - prefix;
    const double aspect =
        static_cast<double>(card.height) / static_cast<double>(card.width);
    const auto gh = static_cast<int64_t>(
        std::llround(std::sqrt(static_cast<double>(n) * aspect)));
    if (gh < 1 || n % gh != 0) continue;
    const int64_t gw = n / gh;
    if (std::abs(static_cast<double>(gh) / gw - aspect) > 0.01 * aspect) {
      continue;
    }
    info.token_prefix = prefix;
    info.grid_h = gh;
    info.grid_w = gw;
    return;
  }
}

// Sets `info`'s layout and channels from its shape and module kind.
void ClassifyLayout(const ModelCard& card, LayerInfo& info) {
  const std::vector<int64_t>& s = info.shape;
  info.channels = s.size() >= 2 ? s[1] : 0;
  if (s.size() <= 2) {
    info.layout = LayerLayout::kFlat;
  } else if (s.size() == 4) {
    info.layout = LayerLayout::kSpatial;
  } else if (s.size() == 3 && ChannelsFirst1d(info.kind)) {
    info.layout = LayerLayout::kSequence;
  } else if (s.size() == 3) {
    info.layout = LayerLayout::kTokens;
    info.tokens = s[1];
    info.channels = s[2];
    FindTokenGrid(card, info);
  } else {
    info.layout = LayerLayout::kOther;
  }
}

std::string ShortTypeName(const c10::TypePtr& type) {
  if (auto cls = type->cast<c10::ClassType>(); cls && cls->name()) {
    return cls->name()->name();
  }
  return type->str();
}

// Every tensor inside `value` with its output name (see OutputInfo): tuple
// and list elements by index, dict values by key, joined by '.'.
void FlattenOutputs(const c10::IValue& value, const std::string& name,
                    std::vector<std::pair<std::string, at::Tensor>>* out) {
  auto child = [&](const std::string& part) {
    return name.empty() ? part : absl::StrCat(name, ".", part);
  };
  if (value.isTensor()) {
    out->emplace_back(name.empty() ? "0" : name, value.toTensor());
  } else if (value.isTuple()) {
    const auto& elements = value.toTupleRef().elements();
    for (size_t i = 0; i < elements.size(); ++i) {
      FlattenOutputs(elements[i], child(absl::StrCat(i)), out);
    }
  } else if (value.isList()) {
    const c10::List<c10::IValue> list = value.toList();
    for (size_t i = 0; i < list.size(); ++i) {
      FlattenOutputs(list.get(i), child(absl::StrCat(i)), out);
    }
  } else if (value.isGenericDict()) {
    for (const auto& entry : value.toGenericDict()) {
      const c10::IValue& key = entry.key();
      std::string part;
      if (key.isString()) {
        part = key.toStringRef();
      } else if (key.isInt()) {
        part = absl::StrCat(key.toInt());
      } else {
        continue;
      }
      FlattenOutputs(entry.value(), child(part), out);
    }
  }
  // Anything else (None, numbers, strings) is not an output one can
  // visualise.
}

std::string OutputNames(const std::vector<OutputInfo>& outputs) {
  std::vector<std::string> names;
  for (const OutputInfo& o : outputs) names.push_back(o.name);
  return names.empty() ? "none" : absl::StrJoin(names, ", ");
}

// What forward() returns for a probe batch, against the card.
struct ProbedOutputs {
  std::vector<OutputInfo> outputs;
  std::string logits;  // Output name, "" for none.
  int64_t classes = 0;
  std::string no_classes_reason;
  // True when the card named classes but no "logits" output, and `logits`
  // is the one [batch, N] output whose N is the number of classes.
  bool logits_inferred = false;
};

// Among several outputs, the class output of a card that names classes but
// not "logits": the one batch-first [B, N] output with N == the card's class
// count. Nullptr when none fits (the caller says why there are no classes);
// InvalidArgument naming them when two or more fit, since a guess could pick
// the wrong head.
absl::StatusOr<const OutputInfo*> InferLogits(
    const std::vector<OutputInfo>& outputs, const ModelCard& card) {
  const int64_t classes = static_cast<int64_t>(card.classes.size());
  std::vector<const OutputInfo*> fits;
  for (const OutputInfo& o : outputs) {
    if (o.shape.size() == 2 && o.shape[1] == classes) fits.push_back(&o);
  }
  if (fits.size() <= 1) return fits.empty() ? nullptr : fits.front();
  std::vector<std::string> names;
  for (const OutputInfo* o : fits) {
    names.push_back(absl::StrCat("'", o->name, "'"));
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "model ", card.name, ": the card names ", classes,
      " classes but no \"logits\" output, and ", fits.size(), " outputs have ",
      classes, " columns (", absl::StrJoin(names, ", "),
      "); set \"logits\" in the card to the one that holds the class "
      "scores"));
}

// Runs forward on `input` (a batch of 2, so that batch-first outputs can be
// told from others) and matches its outputs with the card. Throws what
// forward throws; InvalidArgument when the card's "logits" does not fit.
absl::StatusOr<ProbedOutputs> ProbeOutputs(torch::jit::Module& module,
                                           const at::Tensor& input,
                                           const ModelCard& card) {
  const c10::IValue out = module.forward({input});
  std::vector<std::pair<std::string, at::Tensor>> flat;
  FlattenOutputs(out, "", &flat);
  ProbedOutputs probed;
  for (const auto& [name, t] : flat) {
    if (t.dim() < 1 || t.size(0) != input.size(0)) continue;
    OutputInfo info;
    info.name = name;
    info.shape = t.sizes().vec();
    info.shape[0] = 1;
    info.channels = t.dim() >= 2 ? t.size(1) : 0;
    probed.outputs.push_back(std::move(info));
  }
  const OutputInfo* logits = nullptr;
  switch (card.logits_at) {
    case ModelCard::LogitsAt::kNone:
      probed.no_classes_reason = "its card says \"logits\": null";
      break;
    case ModelCard::LogitsAt::kAuto:
      if (out.isTensor() && probed.outputs.size() == 1 &&
          probed.outputs[0].shape.size() == 2) {
        logits = &probed.outputs[0];
        break;
      }
      if (!out.isTensor() && !card.classes.empty()) {
        FEATVIZ_ASSIGN_OR_RETURN(logits, InferLogits(probed.outputs, card));
        probed.logits_inferred = logits != nullptr;
      }
      if (logits == nullptr) {
        probed.no_classes_reason =
            absl::StrCat("forward() returns ", out.type()->str(),
                         " and its card names no \"logits\" output (outputs: ",
                         OutputNames(probed.outputs), ")");
        if (!out.isTensor() && !card.classes.empty()) {
          absl::StrAppend(&probed.no_classes_reason, ", and none is [batch, ",
                          card.classes.size(), "]");
        }
      }
      break;
    case ModelCard::LogitsAt::kOutput:
      for (const OutputInfo& o : probed.outputs) {
        if (o.name == card.logits_output) logits = &o;
      }
      if (logits == nullptr) {
        return absl::InvalidArgumentError(absl::StrCat(
            "model ", card.name, ": the card's \"logits\" names output '",
            card.logits_output, "', but forward() returns ", out.type()->str(),
            " with the batch-first tensor outputs: ",
            OutputNames(probed.outputs)));
      }
      if (logits->shape.size() != 2) {
        return absl::InvalidArgumentError(absl::StrCat(
            "model ", card.name, ": the card's \"logits\" output '",
            card.logits_output, "' has shape ", c10::str(logits->shape),
            ", expected [batch, classes]"));
      }
      break;
  }
  if (logits != nullptr) {
    probed.logits = logits->name;
    probed.classes = logits->shape[1];
  }
  return probed;
}

}  // namespace

void SetLinearMode(LinearMode mode) { linear_mode.store(mode); }

LinearMode GetLinearMode() { return linear_mode.load(); }

void SetConvLayout(ConvLayout layout) { conv_layout.store(layout); }

ConvLayout GetConvLayout() { return conv_layout.load(); }

const char* ConvLayoutName(ConvLayout layout) {
  return layout == ConvLayout::kChannelsLast ? "channels_last" : "contiguous";
}

absl::StatusOr<ConvLayout> ParseConvLayout(absl::string_view name) {
  if (name == "channels_last") return ConvLayout::kChannelsLast;
  if (name == "contiguous") return ConvLayout::kContiguous;
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown convolution layout '", name,
      "'; expected channels_last or contiguous"));
}

const char* LinearModeName(LinearMode mode) {
  switch (mode) {
    case LinearMode::kBlocked:
      return "blocked";
    case LinearMode::kRowwise:
      return "rowwise";
    case LinearMode::kPlain:
      return "plain";
    case LinearMode::kInvariant:
      return "invariant";
  }
  return "blocked";
}

absl::StatusOr<LinearMode> ParseLinearMode(absl::string_view name) {
  if (name == "blocked") return LinearMode::kBlocked;
  if (name == "rowwise") return LinearMode::kRowwise;
  if (name == "plain") return LinearMode::kPlain;
  if (name == "invariant") return LinearMode::kInvariant;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown linear mode '", name,
                   "'; expected invariant, blocked, rowwise or plain"));
}

Taps Taps::Slice(int64_t start, int64_t length) const {
  Taps out;
  for (const auto& [path, t] : activations) {
    out.activations[path] = t.narrow(0, start, length);
  }
  for (const auto& [name, t] : outputs) {
    out.outputs[name] = t.narrow(0, start, length);
  }
  out.token_layouts = token_layouts;
  for (const auto& [path, t] : token_activations) {
    out.token_activations[path] = t.narrow(0, start, length);
  }
  out.logits = logits.narrow(0, start, length);
  out.probs = probs.narrow(0, start, length);
  return out;
}

Model::Model(torch::jit::Module module, ModelCard card, c10::Device device)
    : module_(std::move(module)), card_(std::move(card)), device_(device) {}

absl::StatusOr<std::unique_ptr<Model>> Model::Load(const std::string& path,
                                                   const c10::Device& device) {
  return Load(path, device, "", "");
}

absl::StatusOr<std::unique_ptr<Model>> Model::Load(const std::string& path,
                                                   const c10::Device& device,
                                                   const std::string& name,
                                                   const std::string& version) {
  absl::StatusOr<std::string> read = ReadFile(path);
  if (!read.ok()) return Prefixed("model", read.status());
  const std::string content = *std::move(read);

  std::filesystem::path card_path(path);
  card_path.replace_extension(".card.json");
  ModelCard card;
  const bool card_found = std::filesystem::exists(card_path);
  if (card_found) {
    FEATVIZ_ASSIGN_OR_RETURN(card, ModelCard::Load(card_path.string()));
  }
  if (!name.empty()) card.name = name;
  if (!version.empty()) card.version = version;
  if (card.name.empty()) card.name = std::filesystem::path(path).stem();

  // torch::jit::load runs code (the __setstate__ of every object it
  // unpickles), so the archive's code is checked before it is loaded,
  // from the same bytes that are then loaded.
  if (absl::Status checked =
          CheckModelArchive(content, card.name, GetOperatorPolicy());
      !checked.ok()) {
    if (!RefusedOperator(checked).empty()) return checked;
    return absl::InvalidArgumentError(
        absl::StrCat(path, " is not a TorchScript model: ", checked.message()));
  }
  torch::jit::Module module;
  try {
    std::istringstream stream(content);
    module = torch::jit::load(stream, device);
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, " is not a TorchScript model: ", FirstLine(e.what())));
  }
  FEATVIZ_ASSIGN_OR_RETURN(auto model,
                           Create(std::move(module), card, device, card_found));
  model->content_hash_ = Sha256Hex(content);
  return model;
}

absl::StatusOr<std::unique_ptr<Model>> Model::Create(torch::jit::Module module,
                                                     ModelCard card,
                                                     const c10::Device& device,
                                                     bool card_found) {
  if (card.name.empty()) card.name = "model";
  // Below, forward runs (the probe, the catalogue): a module that did not
  // come through Load's archive check is checked here first, and one that
  // did costs a walk over its graphs.
  FEATVIZ_RETURN_IF_ERROR(
      CheckModuleCode(module, card.name, GetOperatorPolicy()));
  std::unique_ptr<Model> model;
  try {
    // Cloned with autograd off: otherwise every copied weight is a non-leaf
    // with a CloneBackward node, set_requires_grad(false) does not take, and
    // each backward computes weight gradients and accumulates them into the
    // caller's module.
    torch::jit::Module copy;
    {
      at::NoGradGuard no_grad;
      copy = module.clone();
      copy.to(device);
    }
    copy.eval();
    for (at::Tensor p : copy.parameters()) p.set_requires_grad(false);
    if (!copy.find_method("forward")) {
      return absl::InvalidArgumentError(
          absl::StrCat("model ", card.name, " has no forward() method"));
    }
    model.reset(new Model(std::move(copy), std::move(card), device));
    if (device.is_cpu() && GetConvLayout() == ConvLayout::kChannelsLast) {
      model->channels_last_ = true;
      at::NoGradGuard no_grad;
      for (at::Tensor p : model->module_.parameters()) {
        if (p.dim() == 4) {
          p.set_data(p.contiguous(at::MemoryFormat::ChannelsLast));
        }
      }
    }
    for (const at::Tensor& p : model->module_.parameters()) {
      model->memory_bytes_ += static_cast<int64_t>(p.nbytes());
    }
    for (const at::Tensor& b : model->module_.buffers()) {
      model->memory_bytes_ += static_cast<int64_t>(b.nbytes());
    }
  } catch (const std::exception& e) {
    return TorchError(e, absl::StrCat("model ", card.name));
  }
  ModelCard& c = model->card_;

  // Without a card the input shape is a guess: the first convolution's
  // weight gives the channels; the side is tried from common sizes.
  std::vector<std::vector<int64_t>> shapes = {{c.channels, c.height, c.width}};
  if (!card_found) {
    int64_t channels = c.channels;
    for (const at::Tensor& p : model->module_.parameters()) {
      if (p.dim() == 4) {
        channels = p.size(1);
        break;
      }
    }
    for (int64_t side : {224, 28, 32, 64, 8, 16, 96, 128, 256, 299}) {
      shapes.push_back({channels, side, side});
    }
  }
  absl::Status last;
  for (const auto& s : shapes) {
    try {
      at::NoGradGuard no_grad;
      at::Tensor probe =
          at::zeros({2, s[0], s[1], s[2]}, at::TensorOptions().device(device));
      absl::StatusOr<ProbedOutputs> probed =
          ProbeOutputs(model->module_, probe, c);
      if (!probed.ok()) return probed.status();
      c.channels = s[0];
      c.height = s[1];
      c.width = s[2];
      if (probed->logits.empty() && !c.classes.empty()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "model ", c.name, ": the card names ", c.classes.size(),
            " classes but the model has no class output: ",
            probed->no_classes_reason));
      }
      if (!c.classes.empty() &&
          static_cast<int64_t>(c.classes.size()) != probed->classes) {
        return absl::InvalidArgumentError(absl::StrCat(
            "model ", c.name, ": the card names ", c.classes.size(),
            " classes but the model has ", probed->classes, " outputs"));
      }
      if (c.classes.empty()) {
        for (int64_t i = 0; i < probed->classes; ++i) {
          c.classes.push_back(absl::StrCat(i));
        }
      }
      if (probed->logits_inferred) {
        // The card left it to us: the operator should see which head was
        // taken, as ListModels shows it (logits_output).
        spdlog::info(
            "model {}: the card names {} classes and no \"logits\"; class "
            "output '{}' taken, the only [batch, {}] output",
            c.name, c.classes.size(), probed->logits, probed->classes);
      }
      model->outputs_ = std::move(probed->outputs);
      model->logits_output_ = std::move(probed->logits);
      model->no_classes_reason_ = std::move(probed->no_classes_reason);
      last = absl::OkStatus();
      break;
    } catch (const std::exception& e) {
      last = absl::InvalidArgumentError(
          absl::StrCat("model ", c.name, " does not run on input [2, ", s[0],
                       ", ", s[1], ", ", s[2], "]: ", FirstLine(e.what())));
    }
  }
  FEATVIZ_RETURN_IF_ERROR(last);

  std::vector<float> scale(c.channels), shift(c.channels);
  for (int64_t i = 0; i < c.channels; ++i) {
    const double mean = c.mean.empty() ? 0.0 : c.mean[i];
    const double sd = c.std.empty() ? 1.0 : c.std[i];
    scale[i] = static_cast<float>((c.range_max - c.range_min) / sd);
    shift[i] = static_cast<float>((c.range_min - mean) / sd);
  }
  model->norm_scale_ = at::tensor(scale).view({1, c.channels, 1, 1}).to(device);
  model->norm_shift_ = at::tensor(shift).view({1, c.channels, 1, 1}).to(device);
  FEATVIZ_RETURN_IF_ERROR(model->BuildCatalogue());
  return model;
}

absl::Status Model::BuildCatalogue() {
  std::vector<std::string> paths;
  std::map<std::string, std::string> kinds;
  for (const auto& named : module_.named_modules()) {
    if (named.name.empty()) continue;
    paths.push_back(named.name);
    kinds[named.name] = ShortTypeName(named.value.type());
  }
  TapGraph probe = BuildTapGraph(module_, paths, GetLinearMode());
  auto untappable = [&](const std::string& path, std::string reason) {
    spdlog::debug("model {}: layer {} is not tappable: {}", card_.name, path,
                  reason);
    LayerInfo info;
    info.path = path;
    info.kind = kinds[path];
    info.tappable = false;
    info.untappable_reason = std::move(reason);
    layers_.push_back(std::move(info));
  };
  for (const auto& path : probe.missing) {
    untappable(path,
               "forward() never calls it (its parameters are used directly, "
               "or it is not called at all), so it has no output to tap");
  }
  for (const auto& [path, type] : probe.not_tensors) {
    untappable(path, absl::StrCat("its output is ", type, ", not a tensor"));
  }
  try {
    // With gradients on and an input that requires them, as in a render:
    // modules with a fast path for inference (nn.MultiheadAttention,
    // nn.TransformerEncoderLayer) then run the path whose submodules are
    // called, so that their shapes are seen.
    at::AutoGradMode grad(true);
    at::Tensor zeros = at::zeros({1, card_.channels, card_.height, card_.width},
                                 at::TensorOptions().device(device_))
                           .requires_grad_(true);
    auto fn = std::make_shared<torch::jit::GraphFunction>("featviz_catalogue",
                                                          probe.graph, nullptr);
    torch::jit::Stack stack{module_._ivalue(), Normalise(zeros)};
    torch::jit::GraphOptimizerEnabledGuard plain(false);
    fn->run(stack);
    const auto& elements = stack.back().toTupleRef().elements();
    for (size_t i = 0; i < probe.tapped.size(); ++i) {
      std::optional<at::Tensor> t = TakeTap(elements[i + 1]);
      if (!t.has_value()) {
        untappable(probe.tapped[i],
                   "forward() calls it only inside control flow (if/loop) "
                   "that a forward pass of the card's input shape does not "
                   "reach");
        continue;
      }
      LayerInfo info;
      info.path = probe.tapped[i];
      info.kind = kinds[info.path];
      info.shape = t->sizes().vec();
      ClassifyLayout(card_, info);
      layers_.push_back(std::move(info));
    }
  } catch (const std::exception& e) {
    return TorchError(e, absl::StrCat("model ", card_.name,
                                      ": building the layer catalogue"));
  }
  // named_modules() order is the order a reader of the model expects.
  std::map<std::string, size_t> order;
  for (size_t i = 0; i < paths.size(); ++i) order[paths[i]] = i;
  std::sort(layers_.begin(), layers_.end(), [&](const auto& a, const auto& b) {
    return order[a.path] < order[b.path];
  });
  return absl::OkStatus();
}

ModelShape Model::shape() const {
  ModelShape shape;
  shape.layers = layers_;
  shape.num_classes =
      logits_output_.empty() ? 0 : static_cast<int64_t>(card_.classes.size());
  shape.outputs = outputs_;
  shape.model_name = card_.name;
  shape.no_classes_reason = no_classes_reason_;
  return shape;
}

at::Tensor Model::ToModelChannels(const at::Tensor& images) const {
  if (images.dim() == 4 && images.size(1) == 1 && card_.channels == 3) {
    return images.expand({-1, 3, -1, -1});
  }
  return images;
}

absl::StatusOr<LayerInfo> Model::FindLayer(const std::string& path) const {
  for (const LayerInfo& layer : layers_) {
    if (layer.path != path) continue;
    if (!layer.tappable) {
      return absl::InvalidArgumentError(
          absl::StrCat("layer ", path, " of model ", card_.name,
                       " cannot be tapped: ", layer.untappable_reason));
    }
    return layer;
  }
  std::vector<std::string> names;
  for (const LayerInfo& layer : layers_) names.push_back(layer.path);
  return absl::NotFoundError(
      absl::StrCat("unknown layer '", path, "' in model ", card_.name,
                   "; layers are: ", absl::StrJoin(names, ", ")));
}

const LayerInfo* Model::Layer(const std::string& path) const {
  for (const LayerInfo& layer : layers_) {
    if (layer.path == path) return &layer;
  }
  return nullptr;
}

bool Model::IsTokenModel() const {
  return std::any_of(layers_.begin(), layers_.end(), [](const LayerInfo& l) {
    return l.tappable && l.layout == LayerLayout::kTokens;
  });
}

bool Model::IsTokenLayer(const std::string& path) const {
  const LayerInfo* layer = Layer(path);
  return layer != nullptr && layer->layout == LayerLayout::kTokens;
}

at::Tensor ActivationMaps(const LayerInfo& layer, const at::Tensor& a) {
  if (a.dim() <= 2 || a.dim() == 4) return a;
  if (layer.layout == LayerLayout::kTokens && layer.grid_h > 0 &&
      a.dim() == 3 &&
      a.size(2) == layer.token_prefix + layer.grid_h * layer.grid_w) {
    return a.narrow(2, layer.token_prefix, layer.grid_h * layer.grid_w)
        .reshape({a.size(0), a.size(1), layer.grid_h, layer.grid_w});
  }
  return a.flatten(2).unsqueeze(2);
}

at::Tensor Model::Normalise(const at::Tensor& images) const {
  at::Tensor out = images * norm_scale_ + norm_shift_;
  if (channels_last_ && out.dim() == 4) {
    out = out.contiguous(at::MemoryFormat::ChannelsLast);
  }
  return out;
}

absl::StatusOr<Model::TapFunctionEntry> Model::TapFunction(
    const std::vector<std::string>& layers, ForwardOutputs outputs) const {
  // BuildTapGraph returns taps in sorted order; the key is that order.
  // The linear mode is part of the key, so that changing it (benchmarks,
  // tests) builds new graphs.
  std::set<std::string> sorted(layers.begin(), layers.end());
  const LinearMode mode = GetLinearMode();
  const bool with_output = outputs == ForwardOutputs::kAll;
  const std::string key =
      absl::StrCat(LinearModeName(mode), with_output ? "" : " taps only", "\n",
                   absl::StrJoin(sorted, "\n"));
  absl::MutexLock lock(&mu_);
  if (auto it = tap_functions_.find(key); it != tap_functions_.end()) {
    return it->second;
  }
  for (const std::string& path : sorted) {
    FEATVIZ_RETURN_IF_ERROR(FindLayer(path).status());
  }
  TapGraph tap = BuildTapGraph(module_, {sorted.begin(), sorted.end()}, mode,
                               with_output);
  if (!tap.missing.empty() || !tap.not_tensors.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("layer ",
                     tap.missing.empty() ? tap.not_tensors.begin()->first
                                         : tap.missing.front(),
                     " of model ", card_.name, " cannot be tapped"));
  }
  TapFunctionEntry entry;
  entry.fn = std::make_shared<torch::jit::GraphFunction>("featviz_taps",
                                                         tap.graph, nullptr);
  entry.conditional = tap.conditional;
  tap_functions_[key] = entry;
  return entry;
}

absl::StatusOr<Taps> Model::Forward(const at::Tensor& gray_or_colour,
                                    const std::vector<std::string>& layers,
                                    ForwardOutputs outputs) const {
  const at::Tensor images = ToModelChannels(gray_or_colour);
  if (images.dim() != 4 || images.size(1) != card_.channels ||
      images.size(2) != card_.height || images.size(3) != card_.width) {
    return absl::InvalidArgumentError(
        absl::StrCat("model ", card_.name, " takes images of shape [B, ",
                     card_.channels, ", ", card_.height, ", ", card_.width,
                     "], got ", c10::str(images.sizes())));
  }
  FEATVIZ_ASSIGN_OR_RETURN(TapFunctionEntry tapped,
                           TapFunction(layers, outputs));
  std::set<std::string> sorted(layers.begin(), layers.end());
  try {
    // A tap inside control flow may sit on a path that modules skip when
    // nothing needs gradients (nn.MultiheadAttention's and
    // nn.TransformerEncoderLayer's fused inference path): run such a graph
    // as a render does, with gradients on and an input that requires them.
    // Both paths compute the same function.
    const bool needs_grad_path =
        tapped.conditional &&
        !(at::GradMode::is_enabled() && images.requires_grad());
    at::AutoGradMode grad(at::GradMode::is_enabled() || needs_grad_path);
    const at::Tensor input =
        needs_grad_path ? images.detach().requires_grad_(true) : images;
    torch::jit::Stack stack{module_._ivalue(), Normalise(input)};
    // The plain interpreter: autograd records every op, and the graph is not
    // re-optimised between calls, so the same inputs give the same bits.
    torch::jit::GraphOptimizerEnabledGuard plain(false);
    tapped.fn->run(stack);
    const auto& elements = stack.back().toTupleRef().elements();
    Taps taps;
    std::vector<std::pair<std::string, at::Tensor>> flat;
    FlattenOutputs(elements[0], "", &flat);
    for (auto& [name, t] : flat) {
      for (const OutputInfo& o : outputs_) {
        if (o.name == name) taps.outputs[name] = std::move(t);
      }
    }
    if (logits_output_.empty() || outputs == ForwardOutputs::kTapsOnly) {
      taps.logits = at::zeros({images.size(0), 0}, images.options());
    } else {
      auto it = taps.outputs.find(logits_output_);
      if (it == taps.outputs.end()) {
        return absl::InvalidArgumentError(
            absl::StrCat("model ", card_.name,
                         ": forward() did not return its logits "
                         "output '",
                         logits_output_, "' this time"));
      }
      taps.logits = it->second;
    }
    size_t i = 1;
    for (const std::string& path : sorted) {
      std::optional<at::Tensor> v = TakeTap(elements[i++]);
      if (!v.has_value()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "layer ", path, " of model ", card_.name,
            " was not reached by this forward pass: forward() calls it "
            "only inside control flow (if/loop) that this input did not "
            "take"));
      }
      // Token layers are handed on channels first, [B, D, T], so that every
      // objective and analysis reads dimension 1 as the channels.
      const LayerInfo* info = Layer(path);
      if (info != nullptr && info->layout == LayerLayout::kTokens) {
        taps.activations[path] = v->transpose(1, 2);
        taps.token_activations[path] = *v;
        taps.token_layouts[path] = {info->token_prefix, info->grid_h,
                                    info->grid_w};
      } else {
        taps.activations[path] = *v;
      }
    }
    taps.probs =
        card_.log_probs ? taps.logits.exp() : at::softmax(taps.logits, 1);
    return taps;
  } catch (const std::exception& e) {
    return TorchError(e, absl::StrCat("model ", card_.name, ": forward"));
  }
}

}  // namespace featviz::core
