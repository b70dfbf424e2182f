// The result store's budget holds only if what it counts is what results
// really take: thousands of results shaped like real ones (encoded PNGs,
// images, traces, statistics, cache keys) are stored, and the allocator's
// own count of the heap they took (glibc's mallinfo2) is compared with the
// store's figure. Not in the engine tests: ThreadSanitizer replaces malloc,
// and mallinfo2 then counts nothing.
#include <malloc.h>

#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/time.h"
#include "core/render.h"
#include "server/engine/engine_types.h"
#include "server/engine/result_store.h"

namespace featviz::server {
namespace {

// A render's result as a worker hands it over: `batch` images of
// `channels` x `side` x `side` after `steps` steps of a `terms`-term
// objective, with statistics of one `width`-channel layer.
core::RenderResult FakeRender(int64_t batch, int64_t channels, int64_t side,
                              int64_t steps, int terms, int64_t width,
                              uint64_t seed) {
  at::manual_seed(static_cast<int64_t>(seed));
  core::RenderResult r;
  r.objective = "channel(conv2, 5) - 0.01 * tv()";
  for (int t = 0; t < terms; ++t) {
    r.terms.push_back(absl::StrCat("channel(conv2, ", t, ")"));
    r.weights.push_back(1.0);
    r.final_values.push_back(0.5);
  }
  // Smooth pictures compress like real ones, noise would not.
  const at::Tensor ramp = at::linspace(0, 1, side).view({1, 1, 1, side});
  r.images = (ramp.expand({batch, channels, side, side}) +
              0.05 * at::rand({batch, channels, side, side}))
                 .clamp(0, 1)
                 .contiguous();
  r.trace = at::rand({steps, terms});
  r.logits = at::randn({batch, 10});
  r.probs = at::softmax(r.logits, 1);
  r.layer_stats.push_back(
      core::LayerStats{"conv2", at::rand({batch, width}), at::rand({batch, width})});
  r.seed = seed;
  r.steps = steps;
  r.transforms = "pad(4) jitter(8) scale(0.95..1.05) rotate(-5..5) jitter(4)";
  return r;
}

TEST(ResultMemory, TheStoresFigureIsWithinAFifthOfWhatItsResultsTake) {
  // Four kinds of results, as the server sees them: MNIST pictures with and
  // without the tensor, an RGB batch, a long joint objective.
  struct Kind {
    int64_t batch, channels, side, steps;
    int terms;
    int64_t width;
    bool tensor, png;
  };
  const std::vector<Kind> kinds = {{1, 1, 28, 24, 1, 64, false, true},
                                   {4, 1, 28, 128, 2, 64, true, true},
                                   {2, 3, 64, 256, 3, 128, true, true},
                                   {1, 3, 32, 512, 1, 10, true, false}};
  std::vector<core::RenderResult> renders;
  for (size_t k = 0; k < kinds.size(); ++k) {
    const Kind& kind = kinds[k];
    renders.push_back(FakeRender(kind.batch, kind.channels, kind.side,
                                 kind.steps, kind.terms, kind.width, k));
  }
  RenderPlan plan;
  plan.model_name = "mnist_classifier";
  plan.model_version = "1";
  plan.model_hash = std::string(64, 'a');
  plan.linear_mode = "blocked";

  ResultStoreOptions options;
  options.max_bytes = int64_t{1} << 40;  // Nothing evicted.
  ResultStore store(options);
  constexpr int kResults = 3000;
  const absl::Time now = absl::Now();

  const size_t before = mallinfo2().uordblks;
  for (int i = 0; i < kResults; ++i) {
    const size_t k = static_cast<size_t>(i) % kinds.size();
    plan.tensor = kinds[k].tensor;
    plan.png = kinds[k].png;
    absl::StatusOr<JobResult> result =
        MakeJobResult(renders[k], plan, 0.1, 0.2);
    ASSERT_TRUE(result.ok()) << result.status();
    auto stored = std::make_shared<const JobResult>(*std::move(result));
    const std::string id = absl::StrCat(1000000 + i, "@10.0.0.7:50051");
    const int64_t bytes = stored->bytes();
    store.Put(id, absl::StrCat("user-", i % 7), std::move(stored), bytes, now);
    store.Remember(absl::StrFormat("%064d", i), id);
  }
  const size_t after = mallinfo2().uordblks;

  const double real = static_cast<double>(after) - static_cast<double>(before);
  const double counted = static_cast<double>(store.bytes());
  std::printf("%d results: the store counts %.0f bytes, the heap grew %.0f "
              "(%.1f KiB a result; counted/real %.3f)\n",
              kResults, counted, real, real / kResults / 1024, counted / real);
  EXPECT_NEAR(counted / real, 1.0, 0.2);
}

TEST(ResultMemory, CountsTheExemplarsAndPathSimilarityOfATrustedRender) {
  // A render with 16 exemplars (an MNIST image and its RGB overlay each)
  // and a path similarity per image over four layers.
  const core::RenderResult render = FakeRender(4, 1, 28, 64, 1, 64, 9);
  RenderPlan plan;
  plan.model_name = "mnist_classifier";
  plan.png = true;
  std::vector<std::shared_ptr<const JobResult>> kept;
  constexpr int kResults = 2000;
  int64_t counted = 0;
  const size_t before = mallinfo2().uordblks;
  for (int i = 0; i < kResults; ++i) {
    absl::StatusOr<JobResult> result = MakeJobResult(render, plan, 0.1, 0.2);
    ASSERT_TRUE(result.ok()) << result.status();
    ExemplarSet& set = result->exemplars.emplace();
    set.dataset = "mnist";
    set.unit = "channel(conv2, 5)";
    for (int e = 0; e < 16; ++e) {
      Exemplar& x = set.examples.emplace_back();
      x.index = e;
      x.png = std::string(300 + e, 'p');
      x.activation_png = std::string(1100 + e, 'a');
    }
    set.examples.shrink_to_fit();
    for (int b = 0; b < 4; ++b) {
      PathScore& score = result->path_similarity.emplace_back();
      for (const char* layer : {"conv1", "conv2", "fc1", "features.block3.conv"}) {
        score.layers.push_back(LayerPathScore{layer, 0.5, 0.5, 0.7, 0.1, true});
      }
    }
    auto stored = std::make_shared<const JobResult>(*std::move(result));
    counted += stored->bytes();
    kept.push_back(std::move(stored));
  }
  const size_t after = mallinfo2().uordblks;
  const double real = static_cast<double>(after) - static_cast<double>(before);
  std::printf("%d trusted results: counted %lld bytes, the heap grew %.0f "
              "(counted/real %.3f)\n",
              kResults, static_cast<long long>(counted), real,
              static_cast<double>(counted) / real);
  EXPECT_NEAR(static_cast<double>(counted) / real, 1.0, 0.2);
}

}  // namespace
}  // namespace featviz::server
