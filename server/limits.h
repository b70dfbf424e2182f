// What one featviz server accepts: the bounds every RenderRequest is checked
// against and the size of the render worker pool and its queue. The defaults
// suit a lab server shared by a few researchers; featviz-server sets each
// from a flag of the same name.
#ifndef FEATVIZ_SERVER_LIMITS_H_
#define FEATVIZ_SERVER_LIMITS_H_

#include <cstdint>

namespace featviz::server {

struct Limits {
  // Largest image side (ImageSpec.size) in pixels. 512 covers ImageNet-size
  // models with room for a larger canvas than the model's input.
  int64_t max_image_side = 512;
  // Most optimisation steps one render may ask for (Optimizer.steps).
  int64_t max_steps = 10000;
  // Most images optimised together (ImageSpec.batch).
  int64_t max_batch = 64;
  // Largest gRPC message in either direction, in bytes (64 MiB). Applied to
  // receive and send; a larger request is refused by gRPC itself with
  // RESOURCE_EXHAUSTED, and a render whose result could not be sent is
  // refused up front.
  int64_t max_message_bytes = int64_t{64} << 20;
  // Renders running at once: the number of worker threads. Each render uses
  // LibTorch's intra-op threads as well, so keep this small.
  int max_concurrent_renders = 2;
  // Renders accepted but not yet started. One more is refused at once with
  // RESOURCE_EXHAUSTED rather than queued without bound.
  int max_queued_renders = 64;
  // Steps between progress events when OutputSpec.progress_every is 0.
  int64_t default_progress_every = 16;
};

}  // namespace featviz::server

#endif  // FEATVIZ_SERVER_LIMITS_H_
