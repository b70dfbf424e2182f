// What the rest of featviz knows about one tappable layer of a model: the
// layer catalogue entry. Kept free of LibTorch so that objective parsing and
// validation do not need it.
#ifndef FEATVIZ_CORE_LAYER_INFO_H_
#define FEATVIZ_CORE_LAYER_INFO_H_

#include <cstdint>
#include <string>
#include <vector>

namespace featviz::core {

// How a layer's output is laid out, which says what its channels are.
enum class LayerLayout {
  kFlat,      // [B, N]: N units (a linear layer's output).
  kSpatial,   // [B, C, H, W]: C channels over an H x W map.
  kSequence,  // [B, C, L]: C channels over L positions (Conv1d, pooling 1d).
  kTokens,    // [B, T, D]: T tokens of D features; the channels are the D
              // features (a transformer's or an MLP-mixer's token layers).
  kOther,     // Any other rank; channels are dimension 1.
};
// "flat", "spatial", "sequence", "tokens" or "other".
const char* LayerLayoutName(LayerLayout layout);

// Which tokens of a token layer a channel, direction or layer term averages
// over (`tokens=` in the objective syntax).
enum class TokenSubset {
  kAll,      // every token
  kPrefix,   // the tokens before the patch grid (the class token, ...): "cls"
  kPatches,  // the patch grid's tokens: "patches"
};
const char* TokenSubsetName(TokenSubset subset);

struct LayerInfo {
  // Submodule path as TorchScript names it: "conv2", "features.3",
  // "layer1.0.conv1".
  std::string path;
  // The submodule's class name, e.g. "Conv2d", "Linear", "BasicBlock".
  std::string kind;
  // Output shape for a batch of one image, batch dimension included:
  // [1, C, H, W] for convolutional maps, [1, N] for fully connected layers.
  std::vector<int64_t> shape;
  // Channels or neurons: size of dimension 1, except for a token layer
  // ([B, T, D]), whose channels are its D features. 0 for rank < 2.
  int64_t channels = 0;
  // False for a submodule that the catalogue lists but no objective can read:
  // one forward() calls only inside control flow (if/loop), or whose output
  // is not a tensor; `untappable_reason` says which. Its shape is empty.
  bool tappable = true;
  std::string untappable_reason;
  LayerLayout layout = LayerLayout::kFlat;
  // kTokens: the token count T, how many tokens precede the patch grid
  // (from the card's "tokens", or inferred), and the grid (0 x 0 when the
  // tokens after the prefix form no grid that fits the input's aspect).
  int64_t tokens = 0;
  int64_t token_prefix = 0;
  int64_t grid_h = 0;
  int64_t grid_w = 0;
};

// One tensor among the outputs of a model's forward(): a lone tensor is
// output "0", a tuple's or list's elements "0", "1", ..., a dict's values
// their keys, nested ones joined by '.' ("1.age").
struct OutputInfo {
  std::string name;
  std::vector<int64_t> shape;  // For a batch of one image.
  int64_t channels = 0;        // Size of dimension 1; 0 for rank < 2.
};

// Everything objective validation needs about a model.
struct ModelShape {
  std::vector<LayerInfo> layers;
  int64_t num_classes = 0;
  std::vector<OutputInfo> outputs;
  // For messages: the model's name, and why it has no classes when
  // num_classes is 0 ("its card says \"logits\": null", ...).
  std::string model_name;
  std::string no_classes_reason;
};

}  // namespace featviz::core

#endif  // FEATVIZ_CORE_LAYER_INFO_H_
