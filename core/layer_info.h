// What the rest of featviz knows about one tappable layer of a model: the
// layer catalogue entry. Kept free of LibTorch so that objective parsing and
// validation do not need it.
#ifndef FEATVIZ_CORE_LAYER_INFO_H_
#define FEATVIZ_CORE_LAYER_INFO_H_

#include <cstdint>
#include <string>
#include <vector>

namespace featviz::core {

struct LayerInfo {
  // Submodule path as TorchScript names it: "conv2", "features.3",
  // "layer1.0.conv1".
  std::string path;
  // The submodule's class name, e.g. "Conv2d", "Linear", "BasicBlock".
  std::string kind;
  // Output shape for a batch of one image, batch dimension included:
  // [1, C, H, W] for convolutional maps, [1, N] for fully connected layers.
  std::vector<int64_t> shape;
  // Size of dimension 1 (channels or neurons); 0 when the output has rank < 2.
  int64_t channels = 0;
};

// Everything objective validation needs about a model.
struct ModelShape {
  std::vector<LayerInfo> layers;
  int64_t num_classes = 0;
};

}  // namespace featviz::core

#endif  // FEATVIZ_CORE_LAYER_INFO_H_
