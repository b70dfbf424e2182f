// Heatmaps for people: a perceptual colour map (dark purple through red and
// orange to pale yellow, like matplotlib's "inferno") and activation or
// attribution maps blended over the image they were computed on.
#ifndef FEATVIZ_CORE_HEATMAP_H_
#define FEATVIZ_CORE_HEATMAP_H_

#include <torch/script.h>

namespace featviz::core {

// RGB of `values` (any shape S, clamped to [0, 1]) as a [3, S...] tensor.
at::Tensor Colourise(const at::Tensor& values);

// `image` ([C, H, W], C = 1 or 3, in [0, 1]) dimmed to gray, with `map`
// ([h, w], any size; values <= 0 show nothing) resized to H x W, divided by
// `scale` (the value shown brightest; the map's max when <= 0) and colourised
// over it. Returns [3, H, W] in [0, 1].
at::Tensor Overlay(const at::Tensor& image, const at::Tensor& map,
                   double scale = 0);

}  // namespace featviz::core

#endif  // FEATVIZ_CORE_HEATMAP_H_
