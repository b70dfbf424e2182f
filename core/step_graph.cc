#include "core/step_graph.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/job_state.h"
#include "core/param_pack.h"
#include "core/status_macros.h"
#include "core/torch_status.h"

#ifdef FEATVIZ_WITH_CUDA
#include <ATen/autocast_mode.h>
#include <ATen/cuda/CUDAGraph.h>
#endif

namespace featviz::core {

struct BatchStepper::Graph {
#ifdef FEATVIZ_WITH_CUDA
  at::cuda::CUDAGraph graph;
#endif
};

namespace {

// Sessions whose steps read something a captured graph would freeze: a
// direction() vector copied from the host, MaCo's transparency map (the
// images' gradient, accumulated after the step), reference activations.
bool HasDirection(const RenderSession& s) {
  if (s.options().param.kind == ParamKind::kMaco) return true;
  for (const WeightedTerm& wt : s.objective().terms()) {
    if (wt.term.kind == TermKind::kDirection || wt.term.UsesReference()) {
      return true;
    }
  }
  return false;
}

// A captured step updates each job's own leaf with its own moments and
// writes its own trace: the job leaves its pack, and gets the buffers that
// the graph reads and writes.
void EnterStaticMode(JobState& job, const c10::Device& device) {
  if (job.statics.on) return;
  LeavePack(job);
  FlushSharedTrace(job);
  const at::TensorOptions on_device =
      at::TensorOptions().device(device).dtype(at::kFloat);
  StaticBuffers statics;
  statics.on = true;
  if (job.schedule.defined()) statics.theta = at::empty({1, 2, 3}, on_device);
  statics.step = at::zeros({}, on_device);
  statics.terms = at::zeros({job.trace.size(1)}, on_device);
  job.statics = std::move(statics);
}

// Before the (captured) step: this step's transform and update number.
void LoadStaticStep(JobState& job) {
  if (job.statics.theta.defined()) {
    job.statics.theta.copy_(job.schedule.narrow(0, job.step, 1));
  }
  job.statics.step.fill_(static_cast<double>(job.step + 1));
}

// After it: the term values into the trace, and the step is done.
void CommitStaticStep(JobState& job) {
  job.trace[job.step].copy_(job.statics.terms);
  ++job.step;
}

void DropStaticBuffers(const std::vector<RenderSession*>& sessions) {
  for (RenderSession* s : sessions) LeaveStaticMode(s->state());
}

}  // namespace

BatchStepper::BatchStepper(const Model& model, StepOptions options,
                           bool static_buffers_without_graph)
    : model_(model),
      options_(options),
      graph_mode_(static_buffers_without_graph ||
                  (options.cuda_graphs && BuiltWithCuda() &&
                   model.device().is_cuda())),
      capture_(!static_buffers_without_graph && graph_mode_) {}

BatchStepper::~BatchStepper() = default;

void BatchStepper::Reset() {
  graph_.reset();
  key_.clear();
  warmed_up_ = false;
}

absl::Status BatchStepper::StepWithoutGraph(
    const std::vector<RenderSession*>& sessions) {
  Reset();
  DropStaticBuffers(sessions);
  return StepTogether(model_, sessions, options_, &cache_);
}

absl::Status BatchStepper::StepEager(
    const std::vector<RenderSession*>& sessions) {
  for (RenderSession* s : sessions) LoadStaticStep(s->state());
  FEATVIZ_RETURN_IF_ERROR(StepTogether(model_, sessions, options_, &cache_));
  for (RenderSession* s : sessions) CommitStaticStep(s->state());
  return absl::OkStatus();
}

absl::Status BatchStepper::Step(const std::vector<RenderSession*>& sessions) {
  bool eager_only = !graph_mode_ || options_.fail_above_images > 0;
  for (const RenderSession* s : sessions) {
    eager_only = eager_only || HasDirection(*s);
  }
  if (eager_only) return StepWithoutGraph(sessions);
  std::vector<std::pair<uint64_t, int64_t>> key;
  key.reserve(sessions.size());
  for (const RenderSession* s : sessions) {
    key.emplace_back(s->state().id, s->batch());
  }
  if (key != key_) {
    // A job joined or left: the graph no longer fits. Sessions that stay
    // keep their static buffers.
    Reset();
    try {
      for (RenderSession* s : sessions) {
        EnterStaticMode(s->state(), model_.device());
      }
    } catch (const std::exception& e) {
      DropStaticBuffers(sessions);
      return TorchError(e, "setting up the graph's buffers");
    }
    key_ = std::move(key);
  }
  absl::Status status;
  if (!warmed_up_) {
    status = StepEager(sessions);
    warmed_up_ = status.ok();
  } else if (graph_ == nullptr) {
    status = Capture(sessions);
  } else {
    status = Replay(sessions);
  }
  if (!status.ok()) {
    Reset();
    DropStaticBuffers(sessions);
  }
  return status;
}

#ifdef FEATVIZ_WITH_CUDA

absl::Status BatchStepper::Capture(const std::vector<RenderSession*>& sessions) {
  ++captures_;
  if (!capture_) {
    graph_ = std::make_unique<Graph>();
    return StepEager(sessions);
  }
  for (RenderSession* s : sessions) LoadStaticStep(s->state());
  auto graph = std::make_unique<Graph>();
  // Autocast's cast cache would hold tensors of the capture's memory pool
  // past the capture (torch.cuda.graphs says: cache_enabled=False).
  const bool cache = at::autocast::is_autocast_cache_enabled();
  at::autocast::set_autocast_cache_enabled(false);
  absl::Status captured;
  try {
    // Capture needs a stream other than the legacy default one: the
    // worker's (WorkerStream) is.
    graph->graph.capture_begin();
    captured = StepTogether(model_, sessions, options_, &cache_);
    try {
      graph->graph.capture_end();
    } catch (const std::exception& e) {
      if (captured.ok()) captured = TorchError(e, "ending the capture");
    }
  } catch (const std::exception& e) {
    captured = TorchError(e, absl::StrCat("capturing the step of ",
                                          sessions.size(), " renders"));
  }
  at::autocast::set_autocast_cache_enabled(cache);
  FEATVIZ_RETURN_IF_ERROR(captured);
  graph_ = std::move(graph);
  // Capturing recorded the step without running it.
  try {
    graph_->graph.replay();
  } catch (const std::exception& e) {
    return TorchError(e, "replaying the captured step");
  }
  ++replays_;
  for (RenderSession* s : sessions) CommitStaticStep(s->state());
  return absl::OkStatus();
}

absl::Status BatchStepper::Replay(const std::vector<RenderSession*>& sessions) {
  if (!capture_) return StepEager(sessions);
  for (RenderSession* s : sessions) {
    if (s->done()) {
      return absl::FailedPreconditionError("a finished session was stepped");
    }
  }
  try {
    for (RenderSession* s : sessions) LoadStaticStep(s->state());
    graph_->graph.replay();
  } catch (const std::exception& e) {
    return TorchError(e, absl::StrCat("replaying the step of ",
                                      sessions.size(), " renders"));
  }
  ++replays_;
  for (RenderSession* s : sessions) CommitStaticStep(s->state());
  return absl::OkStatus();
}

#else  // !FEATVIZ_WITH_CUDA

// Without CUDA only the static buffers' eager path exists: a "capture"
// marks where a graph would be captured, and the step runs eagerly.
absl::Status BatchStepper::Capture(const std::vector<RenderSession*>& sessions) {
  ++captures_;
  graph_ = std::make_unique<Graph>();
  return StepEager(sessions);
}

absl::Status BatchStepper::Replay(const std::vector<RenderSession*>& sessions) {
  return StepEager(sessions);
}

#endif  // FEATVIZ_WITH_CUDA

}  // namespace featviz::core
