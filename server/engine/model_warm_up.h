// What a model load does before its copy is marked ready: one forward and
// one backward pass of one image at the model's input size, the way a
// render runs them (gradients to the image, every output), so that the
// first render after a load or an upload does not pay for LibTorch's
// first-use work: the graph executor's plan, the kernels' setup (oneDNN on
// the CPU; cuDNN and cuBLAS handles, module loading on CUDA) and the
// allocator's first blocks.
#ifndef FEATVIZ_SERVER_ENGINE_MODEL_WARM_UP_H_
#define FEATVIZ_SERVER_ENGINE_MODEL_WARM_UP_H_

#include "absl/status/status.h"
#include "core/model.h"

namespace featviz::server {

// Runs the pass and waits for the device to finish it (a model none of
// whose outputs has a gradient gets the forward pass only). An error names
// the model; LibTorch's exceptions end here.
absl::Status WarmUp(const core::Model& model);

}  // namespace featviz::server

#endif  // FEATVIZ_SERVER_ENGINE_MODEL_WARM_UP_H_
