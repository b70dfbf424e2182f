// What one featviz server accepts: the bounds every RenderRequest is checked
// against, and the sizes of the job engine (queue, batch, records, results).
// The defaults suit a lab server shared by a few researchers; featviz-server
// sets each from a flag of the same name.
#ifndef FEATVIZ_SERVER_LIMITS_H_
#define FEATVIZ_SERVER_LIMITS_H_

#include <cstdint>

#include "core/device.h"

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
  // Steps between progress events when OutputSpec.progress_every is 0.
  int64_t default_progress_every = 16;

  // Jobs accepted but not yet running, in all. One more is refused at once
  // with RESOURCE_EXHAUSTED rather than queued without bound.
  int64_t max_queued_jobs = 4096;
  // The same bound for one owner, so that one user cannot fill the queue.
  int64_t max_queued_per_owner = 1024;
  // Longest a job may wait in the queue before it ends EXPIRED; a request's
  // queue_timeout_seconds may shorten it but not extend it.
  double default_queue_timeout_seconds = 600;
  // Most images one worker steps together (the sum of its running jobs'
  // batches). A job larger than this still runs, alone.
  int64_t max_batch_images = 256;
  // Job records kept; beyond this the oldest finished ones are forgotten,
  // with their results. A finished record takes about 1 KiB (stats'
  // job_record_bytes says how much they take).
  int64_t max_job_records = 100000;
  // How long a finished job's result is kept.
  double result_ttl_seconds = 3600;
  // Most bytes of results kept (512 MiB), counted as the heap they take;
  // when full, the oldest result of the owner holding the most goes first.
  int64_t result_store_bytes = int64_t{512} << 20;
  // The most of result_store_bytes one owner's results may take, in (0, 1].
  double result_owner_share = 0.5;
  // Largest model file UploadModel accepts, in bytes (1 GiB).
  int64_t max_upload_bytes = int64_t{1} << 30;
  // Largest dataset UploadDataset accepts, in bytes (256 MiB); its images
  // take up to four times this in memory (float32 pixels).
  int64_t max_dataset_bytes = int64_t{256} << 20;
  // Datasets hosted in all, the operator's and uploads in flight included.
  int64_t max_datasets = 64;
  // Uploaded datasets one owner may have.
  int64_t max_datasets_per_owner = 8;
  // Bytes of models each device may hold (parameters and buffers of the
  // copies loaded); 0: no budget, every model stays loaded on every device.
  // With one, models are loaded on first use and the least recently used
  // idle ones unloaded to make room (server/engine/model_memory.h).
  int64_t model_memory_bytes = 0;
  // How long a model load waits for models in use to be let go when the
  // budget is full of them, before the job (or upload, or analysis) fails
  // RESOURCE_EXHAUSTED.
  double model_load_wait_seconds = 30;
  // Bytes the hosted datasets may take in memory, all together; 0: no
  // budget.
  int64_t dataset_memory_bytes = 0;
  // How the workers run their steps: --precision, --cuda_graphs and the
  // test-only --fault_oom_above_images.
  core::StepOptions step;
};

}  // namespace featviz::server

#endif  // FEATVIZ_SERVER_LIMITS_H_
