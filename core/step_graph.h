// A worker's stepper: StepTogether, or — on a CUDA device with
// StepOptions::cuda_graphs — the same step captured once as a CUDA graph and
// replayed while the batch keeps its composition.
//
// At batch 1 a small model is launch-bound: the GPU waits for the CPU to
// issue each of a few hundred small kernels. A replayed graph issues them
// all at once. What changes between steps must then live at fixed device
// addresses: each session's transform matrix, optimiser step number and
// term values sit in static buffers that are refreshed before each replay
// (device-to-device copies, no host synchronisation) and booked after it.
//
// The graph is specific to its sessions (their parameters' addresses) and
// their shapes: when a job joins or leaves the batch, the next step runs
// once eagerly on the static buffers (warm-up: the gradients exist and stay
// put), the step after is captured and replayed, and later steps replay.
// Objectives with direction() terms, which copy their vector from the host
// each step, run without a graph.
#ifndef FEATVIZ_CORE_STEP_GRAPH_H_
#define FEATVIZ_CORE_STEP_GRAPH_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "core/batch.h"
#include "core/device.h"
#include "core/model.h"
#include "core/render_session.h"

namespace featviz::core {

class BatchStepper {
 public:
  // For the sessions of `model`. With options.cuda_graphs on a CUDA device
  // of a CUDA build, steps are captured and replayed; otherwise Step() is
  // StepTogether(). `static_buffers_without_graph` runs the graph path's
  // static buffers eagerly with no capture: what tests on a machine without
  // CUDA can check of the graph path (batch invariance, the objective is
  // reached, when a recapture would happen).
  BatchStepper(const Model& model, StepOptions options,
               bool static_buffers_without_graph = false);
  ~BatchStepper();
  BatchStepper(const BatchStepper&) = delete;
  BatchStepper& operator=(const BatchStepper&) = delete;

  // One step of every session, as StepTogether (the same errors; on error
  // no session advanced and the graph, if any, is dropped).
  absl::Status Step(const std::vector<RenderSession*>& sessions);
  // StepTogether without a graph (for the groups of a batch split after
  // running out of memory): drops the graph.
  absl::Status StepWithoutGraph(const std::vector<RenderSession*>& sessions);

  // Whether steps go through the static buffers (graph mode).
  bool graph_mode() const { return graph_mode_; }
  // Graphs captured so far (with static_buffers_without_graph: the times a
  // graph would have been captured).
  int64_t captures() const { return captures_; }
  // Steps replayed from a captured graph.
  int64_t replays() const { return replays_; }
  // Drops the captured graph and its memory pool. Touches no session (the
  // graph's sessions may be gone).
  void Reset();

 private:
  struct Graph;  // The captured at::cuda::CUDAGraph (CUDA builds only).

  absl::Status StepEager(const std::vector<RenderSession*>& sessions);
  // Captures and then replays one step (CUDA only).
  absl::Status Capture(const std::vector<RenderSession*>& sessions);
  absl::Status Replay(const std::vector<RenderSession*>& sessions);

  const Model& model_;
  const StepOptions options_;
  StepCache cache_;
  const bool graph_mode_;
  [[maybe_unused]] const bool capture_;  // graph_mode_ and capturing (CUDA).

  // The sessions (by id, with their batch) the static state was set up for.
  std::vector<std::pair<uint64_t, int64_t>> key_;
  bool warmed_up_ = false;
  std::unique_ptr<Graph> graph_;
  int64_t captures_ = 0;
  int64_t replays_ = 0;
};

}  // namespace featviz::core

#endif  // FEATVIZ_CORE_STEP_GRAPH_H_
