// libFuzzer target: arbitrary bytes as a featviz.v1.RenderRequest through the
// validation the server runs on every Render and SubmitJob (PlanRender, with
// the real MNIST classifier hosted), then the result cache's canonical form.
// A request either becomes a plan or gets a status; nothing may crash, and
// a plan's numbers must lie within the server's limits.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <google/protobuf/stubs/logging.h>

#include "core/model.h"
#include "featviz/v1/featviz.pb.h"
#include "server/convert.h"
#include "server/limits.h"
#include "server/engine/model_registry.h"
#include "tests/fuzz/mnist_registry.h"
#include "spdlog/spdlog.h"

namespace {

const featviz::server::ModelRegistry* registry = nullptr;
featviz::server::Limits limits;

void Check(bool ok, const char* what) {
  if (ok) return;
  std::fprintf(stderr, "plan breaks its promise: %s\n", what);
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  // Invalid UTF-8 in string fields is logged by the parser for every input.
  google::protobuf::SetLogHandler(nullptr);
  spdlog::set_level(spdlog::level::warn);
  registry = featviz::fuzz::LoadMnistRegistry();
  // The server's defaults, except smaller images so that init images and
  // result bounds stay cheap to check.
  limits.max_image_side = 64;
  limits.max_batch = 8;
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  featviz::v1::RenderRequest request;
  if (!request.ParseFromArray(data, static_cast<int>(size))) return 0;
  absl::StatusOr<featviz::server::RenderPlan> plan =
      featviz::server::PlanRender(request, *registry, limits);
  if (!plan.ok()) {
    Check(!plan.status().message().empty(), "an error without a message");
    return 0;
  }
  const auto& param = plan->options.param;
  Check(param.batch >= 1 && param.batch <= limits.max_batch, "batch");
  Check(param.height >= 1 && param.height <= limits.max_image_side, "height");
  Check(param.width >= 1 && param.width <= limits.max_image_side, "width");
  Check(plan->options.steps >= 1 && plan->options.steps <= limits.max_steps,
        "steps");
  Check(plan->options.lr > 0, "lr");
  Check(plan->priority >= featviz::server::kMinPriority &&
            plan->priority <= featviz::server::kMaxPriority,
        "priority");
  Check(!plan->objective.terms().empty(), "objective");
  // Every accepted plan has a cache key once it has a seed (the server
  // draws one when the request gives none).
  featviz::server::RenderPlan seeded = *std::move(plan);
  if (!seeded.seed.has_value()) seeded.seed = 0;
  Check(!featviz::server::CacheKey(seeded).empty(), "a seeded plan's cache key");
  return 0;
}
