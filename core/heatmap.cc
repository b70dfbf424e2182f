#include "core/heatmap.h"

#include <array>

namespace featviz::core {
namespace {

// Five samples of the inferno colour map at 0, 1/4, 1/2, 3/4 and 1.
constexpr std::array<std::array<float, 3>, 5> kStops = {{
    {0.001f, 0.000f, 0.014f},
    {0.341f, 0.062f, 0.429f},
    {0.735f, 0.216f, 0.330f},
    {0.978f, 0.557f, 0.035f},
    {0.988f, 1.000f, 0.645f},
}};

}  // namespace

at::Tensor Colourise(const at::Tensor& values) {
  at::NoGradGuard no_grad;
  const at::Tensor v = values.detach().to(at::kCPU, at::kFloat).clamp(0, 1);
  constexpr int64_t kLast = static_cast<int64_t>(kStops.size()) - 1;
  const at::Tensor position = v * static_cast<double>(kLast);
  const at::Tensor low = position.floor().clamp_max(static_cast<double>(kLast - 1));
  const at::Tensor frac = position - low;
  const at::Tensor index = low.to(at::kLong);
  std::vector<at::Tensor> channels;
  for (int c = 0; c < 3; ++c) {
    std::vector<float> stop(kStops.size());
    for (size_t i = 0; i < kStops.size(); ++i) stop[i] = kStops[i][c];
    const at::Tensor table = at::tensor(stop);
    const at::Tensor a = table.index_select(0, index.flatten()).view_as(v);
    const at::Tensor b = table.index_select(0, (index + 1).flatten()).view_as(v);
    channels.push_back(a + (b - a) * frac);
  }
  return at::stack(channels);
}

at::Tensor Overlay(const at::Tensor& image, const at::Tensor& map,
                   double scale) {
  at::NoGradGuard no_grad;
  const at::Tensor img = image.detach().to(at::kCPU, at::kFloat).clamp(0, 1);
  const int64_t h = img.size(1), w = img.size(2);
  const at::Tensor gray = img.mean(0, /*keepdim=*/true).expand({3, h, w});
  at::Tensor m = map.detach().to(at::kCPU, at::kFloat).clamp_min(0);
  if (scale <= 0) scale = m.max().item<double>();
  if (scale <= 0) scale = 1;
  m = at::upsample_bilinear2d(m.view({1, 1, m.size(0), m.size(1)}), {h, w},
                              /*align_corners=*/false)
          .view({h, w});
  const at::Tensor heat = Colourise(m / scale);
  return (0.35 * gray + 0.65 * heat).clamp(0, 1);
}

}  // namespace featviz::core
