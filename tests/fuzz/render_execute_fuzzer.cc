// libFuzzer target: a RenderRequest is validated as the server validates it
// (PlanRender, the real MNIST classifier hosted) and, when accepted, RUN as
// a worker runs it: a core::RenderSession stepped together with a second,
// fixed session (StepTogether, the worker's cross-job batch), its progress
// events made (MakeJobProgress, with preview PNGs when asked), then
// Finish, MakeJobResult and ResultToProto. Only a few steps run, so each input costs
// milliseconds.
//
// What must hold: nothing crashes or throws (an exception escaping here
// would escape a worker thread and end the server), no sanitizer report,
// and a request that validation accepted never fails INTERNAL while it runs
// (a value validation let through that the arithmetic cannot take).
// Running out of memory (RESOURCE_EXHAUSTED) is allowed.
//
// Input: the request as binary protobuf, or as text format when the first
// byte is '#' (a comment line in text format), which keeps hand-written seeds
// readable: tests/fuzz/corpus/render_execute/*.txtpb.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include <ATen/Parallel.h>
#include <google/protobuf/stubs/logging.h>
#include <google/protobuf/text_format.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/batch.h"
#include "core/model.h"
#include "core/objective.h"
#include "core/render.h"
#include "featviz/v1/featviz.pb.h"
#include "server/convert.h"
#include "server/limits.h"
#include "server/engine/model_registry.h"
#include "tests/fuzz/mnist_registry.h"
#include "spdlog/spdlog.h"

namespace {

// Steps run per accepted request; a request asking for fewer runs them all.
constexpr int64_t kMaxSteps = 3;

const featviz::server::ModelRegistry* registry = nullptr;
featviz::server::Limits limits;

[[noreturn]] void Fail(const std::string& what, const absl::Status& status) {
  std::fprintf(stderr, "accepted request failed: %s: %s\n", what.c_str(),
               status.ToString().c_str());
  std::abort();
}

// A failure of an accepted request is fine when it is about capacity;
// INTERNAL (an exception turned into a status) or any other code is not.
void CheckRun(const std::string& what, const absl::Status& status) {
  if (status.ok() || status.code() == absl::StatusCode::kResourceExhausted) {
    return;
  }
  Fail(what, status);
}

// The job the request shares its batch with: a plain channel objective.
std::unique_ptr<featviz::core::RenderSession> Companion(
    const featviz::core::Model& model, int64_t steps) {
  absl::StatusOr<featviz::core::Objective> objective =
      featviz::core::Objective::Parse("channel(conv2, 3) - 0.01 * tv()");
  if (!objective.ok()) {
    std::fprintf(stderr, "companion objective: %s\n",
                 objective.status().ToString().c_str());
    std::abort();
  }
  featviz::core::RenderOptions options;
  options.steps = steps;
  options.seed = 7;
  absl::StatusOr<std::unique_ptr<featviz::core::RenderSession>> session =
      featviz::core::RenderSession::Create(model, *objective, options);
  if (!session.ok()) {
    std::fprintf(stderr, "companion session: %s\n",
                 session.status().ToString().c_str());
    std::abort();
  }
  return *std::move(session);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  google::protobuf::SetLogHandler(nullptr);
  spdlog::set_level(spdlog::level::off);
  // One intra-op thread: executions are small and stay reproducible.
  at::set_num_threads(1);
  registry = featviz::fuzz::LoadMnistRegistry();
  // The server's limits except for the size of the work: images up to 32
  // pixels (MNIST's are 28) and two of them, so that a step takes
  // milliseconds. Steps keep the server's bound; only kMaxSteps of them run.
  limits.max_image_side = 32;
  limits.max_batch = 2;
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  featviz::v1::RenderRequest request;
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  const bool parsed =
      size > 0 && data[0] == '#'
          ? google::protobuf::TextFormat::ParseFromString(bytes, &request)
          : request.ParseFromString(bytes);
  if (!parsed) return 0;

  absl::StatusOr<featviz::server::RenderPlan> plan =
      featviz::server::PlanRender(request, *registry, limits);
  if (!plan.ok()) return 0;
  // Planned against the summary; rendered, as a worker does, on the model.
  absl::StatusOr<featviz::server::SharedModel> held =
      registry->Resolve(request.model());
  if (!held.ok()) return 0;
  const featviz::core::Model& model = **held;
  featviz::core::RenderOptions options = plan->options;
  options.steps = std::min(options.steps, kMaxSteps);
  // As the worker runs it: the seed is the request's or one the server drew.
  options.seed = plan->seed.value_or(1);

  absl::StatusOr<std::unique_ptr<featviz::core::RenderSession>> session =
      featviz::core::RenderSession::Create(model, plan->objective, options);
  CheckRun("RenderSession::Create", session.status());
  if (!session.ok()) return 0;
  std::unique_ptr<featviz::core::RenderSession> companion =
      Companion(model, options.steps);

  const int64_t every = options.progress_every;
  while (!(*session)->done()) {
    std::vector<featviz::core::RenderSession*> sessions = {session->get()};
    if (!companion->done()) sessions.push_back(companion.get());
    const absl::Status stepped =
        featviz::core::StepTogether(model, sessions, limits.step);
    CheckRun("StepTogether", stepped);
    if (!stepped.ok()) return 0;
    const int64_t done = (*session)->steps_done();
    if (every > 0 && (done % every == 0 || (*session)->done())) {
      absl::StatusOr<featviz::server::JobProgress> progress =
          featviz::server::MakeJobProgress(
              (*session)->Progress(options.progress_images), options.steps,
              plan->preview_png);
      CheckRun("MakeJobProgress", progress.status());
      if (!progress.ok()) return 0;
    }
  }
  absl::StatusOr<featviz::core::RenderResult> result = (*session)->Finish();
  CheckRun("Finish", result.status());
  if (!result.ok()) return 0;
  absl::StatusOr<featviz::server::JobResult> host =
      featviz::server::MakeJobResult(*result, *plan, 0.0, 0.0);
  CheckRun("MakeJobResult", host.status());
  if (host.ok()) featviz::server::ResultToProto(*host);
  return 0;
}
