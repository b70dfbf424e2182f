#include "core/model.h"

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <unordered_map>

#include <torch/csrc/api/include/torch/jit.h>
#include <torch/csrc/jit/api/function_impl.h>
#include <torch/csrc/jit/ir/ir.h>
#include <torch/csrc/jit/passes/inliner.h>
#include <torch/csrc/jit/runtime/graph_executor.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
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
    y = y.reshape(out_shape)
    if bias is not None:
        y = y + bias
    return y
)JIT";

std::atomic<LinearMode> linear_mode{LinearMode::kBlocked};

std::shared_ptr<Graph> CompileLinear(const std::string& source) {
  std::shared_ptr<torch::jit::CompilationUnit> unit =
      torch::jit::compile(source);
  return torch::jit::toGraphFunction(unit->get_function("featviz_linear"))
      .graph()
      ->copy();
}

const torch::jit::Graph& LinearGraph(LinearMode mode) {
  static const std::shared_ptr<Graph> rowwise = CompileLinear(kRowwiseLinear);
  static const std::shared_ptr<Graph> blocked = CompileLinear(absl::StrReplaceAll(
      kBlockedLinearTemplate,
      {{"BLOCK_ROWS", absl::StrCat(kLinearBlockRows)}}));
  return mode == LinearMode::kRowwise ? *rowwise : *blocked;
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

// The forward graph with the outputs of `wanted` submodules appended.
struct TapGraph {
  std::shared_ptr<Graph> graph;
  // Paths whose outputs the graph returns, in tuple order after the output.
  std::vector<std::string> tapped;
  // Paths that could not be tapped (not called at the top level of forward).
  std::vector<std::string> missing;
};

// Copies forward's graph and inlines the forward of every submodule that is
// a strict prefix of a wanted path, until every wanted submodule's call sits
// in the top-level block; then returns (output, taps...) as one tuple.
// Values found while inlining are parked as extra graph outputs, because
// inlining a child later replaces all *uses* of a value, and a graph output
// is a use: so the parked values stay correct.
TapGraph BuildTapGraph(const torch::jit::Module& module,
                       const std::vector<std::string>& wanted_paths,
                       LinearMode linear_mode) {
  std::shared_ptr<Graph> graph = module.get_method("forward").graph()->copy();
  const std::set<std::string> wanted(wanted_paths.begin(), wanted_paths.end());
  auto is_strict_prefix_of_wanted = [&](const std::string& path) {
    const std::string prefix = path + ".";
    return std::any_of(wanted.begin(), wanted.end(), [&](const auto& w) {
      return absl::StartsWith(w, prefix);
    });
  };
  std::map<std::string, size_t> parked;  // path -> graph output index

  std::map<std::string, Value*> found;
  while (true) {
    std::unordered_map<const Value*, std::string> module_path;
    module_path[graph->inputs()[0]] = "";
    found.clear();
    Node* to_inline = nullptr;
    std::string inline_path;
    std::string inline_method;
    for (Node* node : graph->nodes()) {
      if (node->kind() == c10::prim::GetAttr) {
        auto it = module_path.find(node->input(0));
        if (it != module_path.end() && IsModule(node->output())) {
          const std::string name = node->s(c10::attr::name);
          module_path[node->output()] =
              it->second.empty() ? name : absl::StrCat(it->second, ".", name);
        }
      } else if (node->kind() == c10::prim::CallMethod) {
        auto it = module_path.find(node->input(0));
        if (it == module_path.end()) continue;
        const std::string method = node->s(c10::attr::name);
        // Helper methods (torchvision's `forward` calls
        // `self._forward_impl(x)`) of the model or of a module on the way to
        // a wanted layer are inlined too, so that the calls inside them
        // reach the top level.
        const bool on_the_way = is_strict_prefix_of_wanted(it->second);
        if ((method == "forward" && on_the_way) ||
            (method != "forward" && (it->second.empty() || on_the_way))) {
          to_inline = node;
          inline_path = it->second;
          inline_method = method;
          break;
        }
        if (method == "forward" && wanted.count(it->second) &&
            node->outputs().size() == 1) {
          found[it->second] = node->output();  // Last call wins.
        }
      }
    }
    if (to_inline == nullptr) break;
    auto cls = to_inline->input(0)->type()->expect<c10::ClassType>();
    // The callee's own graph, not its optimised one: optimisation inlines
    // the callee's children, and their calls are what the next scan taps.
    std::vector<Value*> outputs = torch::jit::inlineCallTo(
        to_inline, &torch::jit::toGraphFunction(cls->getMethod(inline_method)),
        /*use_graph=*/false);
    if (inline_method == "forward" && wanted.count(inline_path) &&
        outputs.size() == 1) {
      parked[inline_path] = graph->registerOutput(outputs[0]);
    }
  }

  std::vector<Value*> values = {graph->outputs()[0]};
  TapGraph result;
  for (const std::string& path : wanted) {
    if (auto p = parked.find(path); p != parked.end()) {
      values.push_back(graph->outputs()[p->second]);
    } else if (auto f = found.find(path); f != found.end()) {
      values.push_back(f->second);
    } else {
      result.missing.push_back(path);
      continue;
    }
    result.tapped.push_back(path);
  }
  {
    torch::jit::WithInsertPoint guard(graph->return_node());
    Value* tuple = graph->insertNode(graph->createTuple(values))->output();
    while (!graph->outputs().empty()) graph->eraseOutput(0);
    graph->registerOutput(tuple);
  }
  // Everything left is inlined so that every linear layer is visible, then
  // linear layers become batch-invariant (see LinearMode).
  torch::jit::Inline(*graph);
  RewriteLinears(graph->block(), linear_mode);
  result.graph = std::move(graph);
  return result;
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
};

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
      } else {
        probed.no_classes_reason = absl::StrCat(
            "forward() returns ", out.type()->str(),
            " and its card names no \"logits\" output (outputs: ",
            OutputNames(probed.outputs), ")");
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

const char* LinearModeName(LinearMode mode) {
  switch (mode) {
    case LinearMode::kBlocked:
      return "blocked";
    case LinearMode::kRowwise:
      return "rowwise";
    case LinearMode::kPlain:
      return "plain";
  }
  return "blocked";
}

absl::StatusOr<LinearMode> ParseLinearMode(absl::string_view name) {
  if (name == "blocked") return LinearMode::kBlocked;
  if (name == "rowwise") return LinearMode::kRowwise;
  if (name == "plain") return LinearMode::kPlain;
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown linear mode '", name, "'; expected blocked, rowwise or plain"));
}

Taps Taps::Slice(int64_t start, int64_t length) const {
  Taps out;
  for (const auto& [path, t] : activations) {
    out.activations[path] = t.narrow(0, start, length);
  }
  for (const auto& [name, t] : outputs) {
    out.outputs[name] = t.narrow(0, start, length);
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
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read model ", path));
  std::stringstream bytes;
  bytes << in.rdbuf();
  const std::string content = bytes.str();

  torch::jit::Module module;
  try {
    std::istringstream stream(content);
    module = torch::jit::load(stream, device);
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, " is not a TorchScript model: ",
                     FirstLine(e.what())));
  }

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
      at::Tensor probe = at::zeros({2, s[0], s[1], s[2]},
                                   at::TensorOptions().device(device));
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
      model->outputs_ = std::move(probed->outputs);
      model->logits_output_ = std::move(probed->logits);
      model->no_classes_reason_ = std::move(probed->no_classes_reason);
      last = absl::OkStatus();
      break;
    } catch (const std::exception& e) {
      last = absl::InvalidArgumentError(absl::StrCat(
          "model ", c.name, " does not run on input [2, ", s[0], ", ", s[1],
          ", ", s[2], "]: ", FirstLine(e.what())));
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
  model->norm_scale_ =
      at::tensor(scale).view({1, c.channels, 1, 1}).to(device);
  model->norm_shift_ =
      at::tensor(shift).view({1, c.channels, 1, 1}).to(device);
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
  for (const auto& path : probe.missing) {
    spdlog::debug("model {}: layer {} is not tappable (not called at the top "
                  "level of forward)", card_.name, path);
    LayerInfo info;
    info.path = path;
    info.kind = kinds[path];
    info.tappable = false;
    info.untappable_reason =
        "forward() calls it only inside control flow (if/loop) or not at "
        "all, so its output cannot be tapped";
    layers_.push_back(std::move(info));
  }
  absl::StatusOr<Taps> taps;
  try {
    at::NoGradGuard no_grad;
    at::Tensor zeros = at::zeros({1, card_.channels, card_.height, card_.width},
                                 at::TensorOptions().device(device_));
    auto fn = std::make_shared<torch::jit::GraphFunction>(
        "featviz_catalogue", probe.graph, nullptr);
    torch::jit::Stack stack{module_._ivalue(), Normalise(zeros)};
    torch::jit::GraphOptimizerEnabledGuard plain(false);
    fn->run(stack);
    const auto& elements = stack.back().toTupleRef().elements();
    for (size_t i = 0; i < probe.tapped.size(); ++i) {
      const c10::IValue& v = elements[i + 1];
      LayerInfo info;
      info.path = probe.tapped[i];
      info.kind = kinds[info.path];
      if (!v.isTensor()) {
        info.tappable = false;
        info.untappable_reason = absl::StrCat(
            "its output is ", v.type()->str(), ", not a tensor");
        layers_.push_back(std::move(info));
        continue;
      }
      const at::Tensor& t = v.toTensor();
      info.shape = t.sizes().vec();
      info.channels = t.dim() >= 2 ? t.size(1) : 0;
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
  return absl::NotFoundError(absl::StrCat("unknown layer '", path, "' in model ",
                                          card_.name, "; layers are: ",
                                          absl::StrJoin(names, ", ")));
}

at::Tensor Model::Normalise(const at::Tensor& images) const {
  return images * norm_scale_ + norm_shift_;
}

absl::StatusOr<std::shared_ptr<torch::jit::GraphFunction>> Model::TapFunction(
    const std::vector<std::string>& layers) const {
  // BuildTapGraph returns taps in sorted order; the key is that order.
  // The linear mode is part of the key, so that changing it (benchmarks,
  // tests) builds new graphs.
  std::set<std::string> sorted(layers.begin(), layers.end());
  const LinearMode mode = GetLinearMode();
  const std::string key =
      absl::StrCat(LinearModeName(mode), "\n", absl::StrJoin(sorted, "\n"));
  absl::MutexLock lock(&mu_);
  if (auto it = tap_functions_.find(key); it != tap_functions_.end()) {
    return it->second;
  }
  for (const std::string& path : sorted) {
    FEATVIZ_RETURN_IF_ERROR(FindLayer(path).status());
  }
  TapGraph tap = BuildTapGraph(module_, {sorted.begin(), sorted.end()}, mode);
  if (!tap.missing.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "layer ", tap.missing.front(), " of model ", card_.name,
        " is not called at the top level of forward() and cannot be tapped"));
  }
  auto fn = std::make_shared<torch::jit::GraphFunction>("featviz_taps",
                                                        tap.graph, nullptr);
  tap_functions_[key] = fn;
  return fn;
}

absl::StatusOr<Taps> Model::Forward(
    const at::Tensor& gray_or_colour,
    const std::vector<std::string>& layers) const {
  const at::Tensor images = ToModelChannels(gray_or_colour);
  if (images.dim() != 4 || images.size(1) != card_.channels ||
      images.size(2) != card_.height || images.size(3) != card_.width) {
    return absl::InvalidArgumentError(absl::StrCat(
        "model ", card_.name, " takes images of shape [B, ", card_.channels,
        ", ", card_.height, ", ", card_.width, "], got ",
        c10::str(images.sizes())));
  }
  FEATVIZ_ASSIGN_OR_RETURN(auto fn, TapFunction(layers));
  std::set<std::string> sorted(layers.begin(), layers.end());
  try {
    torch::jit::Stack stack{module_._ivalue(), Normalise(images)};
    // The plain interpreter: autograd records every op, and the graph is not
    // re-optimised between calls, so the same inputs give the same bits.
    torch::jit::GraphOptimizerEnabledGuard plain(false);
    fn->run(stack);
    const auto& elements = stack.back().toTupleRef().elements();
    Taps taps;
    std::vector<std::pair<std::string, at::Tensor>> flat;
    FlattenOutputs(elements[0], "", &flat);
    for (auto& [name, t] : flat) {
      for (const OutputInfo& o : outputs_) {
        if (o.name == name) taps.outputs[name] = std::move(t);
      }
    }
    if (logits_output_.empty()) {
      taps.logits = at::zeros({images.size(0), 0}, images.options());
    } else {
      auto it = taps.outputs.find(logits_output_);
      if (it == taps.outputs.end()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "model ", card_.name, ": forward() did not return its logits "
            "output '", logits_output_, "' this time"));
      }
      taps.logits = it->second;
    }
    size_t i = 1;
    for (const std::string& path : sorted) {
      const c10::IValue& v = elements[i++];
      if (!v.isTensor()) {
        return absl::InvalidArgumentError(
            absl::StrCat("layer ", path, " of model ", card_.name,
                         " outputs ", v.type()->str(), ", not a tensor"));
      }
      taps.activations[path] = v.toTensor();
    }
    taps.probs = card_.log_probs ? taps.logits.exp()
                                 : at::softmax(taps.logits, 1);
    return taps;
  } catch (const std::exception& e) {
    return TorchError(e, absl::StrCat("model ", card_.name, ": forward"));
  }
}

}  // namespace featviz::core
