// The job engine's own vocabulary. JobManager, ResultStore, Scheduler and
// Worker keep and report their state in these plain C++ types; the gRPC edge
// (server/convert.h) turns them into featviz.v1 messages and back. Nothing
// here includes a protobuf header: a test or another front end can drive the
// engine without one.
#ifndef FEATVIZ_SERVER_ENGINE_ENGINE_TYPES_H_
#define FEATVIZ_SERVER_ENGINE_ENGINE_TYPES_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "core/bands.h"
#include "core/dataset.h"
#include "core/model.h"
#include "core/objective.h"
#include "core/render.h"
#include "core/status_macros.h"

namespace featviz::server {

struct ModelSummary;

// RenderRequest.trust after validation (docs/trust.md): what a render asks
// to be shown beside its pictures. Nothing of it is computed unless asked().
struct TrustPlan {
  // Dataset examples to return, in [0, kMaxTrustExemplars]; 0: none.
  int64_t exemplars = 0;
  // Check each picture's path through the network (PathSimilarity).
  bool path_similarity = false;
  // The dataset the request named ("" for the one that fits the model), and
  // the one RenderInputs::Resolve picked: null until then.
  std::string dataset_name;
  core::DatasetPtr dataset;
  // Each image's unit (TrustUnitsOf): a channel term (of a channel or
  // neuron term: its channel is the unit), or a logit or prob term (the
  // class). The exemplars are the first image's unit's.
  std::vector<core::Term> units;

  bool asked() const { return exemplars > 0 || path_similarity; }
};

// Most exemplars a render may ask for (TrustSpec.exemplars).
inline constexpr int64_t kMaxTrustExemplars = 64;

// The unit of each of `batch` images under `objective` (TrustPlan::units):
// the first term of positive weight that reads the image (no batch= or its
// index) and is a neuron, channel, logit or prob term, as a channel term of
// the neuron's or channel's layer (its other fields cleared) or the logit or
// prob term. InvalidArgument naming the objective (and the image) when an
// image has none.
absl::StatusOr<std::vector<core::Term>> TrustUnitsOf(
    const core::Objective& objective, int64_t batch);

// A render request after validation, in core's terms (PlanRender's result).
struct RenderPlan {
  // What the request was validated against: the summary of the model it
  // names (ModelRegistry::Summary: card, layers, hash; no model is loaded to
  // plan a render). The pointer is valid only while the caller of
  // PlanRender holds `model_ref`; a job keeps the identity below and takes
  // its device's copy of the model from the registry when it starts
  // (loading it then, if need be).
  const ModelSummary* model = nullptr;
  std::shared_ptr<const ModelSummary> model_ref;
  std::string model_name;
  std::string model_version;
  std::string model_hash;  // SHA-256 hex of the model file.
  core::Objective objective;
  // Defaults filled in (steps, lr, sizes, progress_every); options.seed is
  // meaningful only when `seed` is set.
  core::RenderOptions options;
  // The hosted dataset MaCo's prior comes from: the one the request named
  // ("1/f" for none), or the one PlanRender picked for a request that left
  // the parameterisation open; empty for a MaCo render that leaves it to
  // RenderInputs (the one dataset that fits, else 1/f) and for FFT and pixel
  // renders.
  std::string maco_dataset;
  // The request's reference tensors (RenderRequest.references), decoded and
  // checked once by PlanRender; RenderInputs puts the ones the objective's
  // reference(k) terms name into options.references.
  std::vector<at::Tensor> reference_tensors;
  // RenderRequest.accentuate: the seed image. PlanRender has added the
  // keep-close term to `objective`; RenderInputs resolves the seed into
  // options.references, options.param.init_image (every image starts from
  // it) and options.accentuation_seed. Unset: an ordinary render.
  std::optional<core::ReferenceImage> accentuation;
  // The request's seed; unset when the server is to pick one.
  std::optional<uint64_t> seed;
  // What the result carries.
  bool tensor = false;
  bool png = false;
  bool preview_png = false;
  // How the images are shown (core::BandDisplayFor the model's card and the
  // stimuli's channels): which bands the PNGs composite, and whether each
  // image also gets a band sheet. Default: the images as they are.
  core::BandDisplay display;
  // How linear layers were computed (core::LinearModeName of the process's
  // mode when the request was accepted): results say it, and it is part of
  // the cache key.
  std::string linear_mode;
  // The steps' arithmetic: the request's precision or the server's default
  // (Limits::step.precision). Part of the cache key (CacheKey) and
  // of the batch key: jobs of different precisions never share a step.
  core::Precision precision = core::Precision::kFloat32;
  // RenderRequest.trust. Part of the cache key when asked.
  TrustPlan trust;
  // Scheduling, as requested: the owner ("" means the caller's address), the
  // priority (checked to be in [-10, 10]) and the queue timeout (unset when
  // the request leaves it to the server).
  std::string owner;
  int priority = 0;
  std::optional<absl::Duration> queue_timeout;
};

// Whether a device's copy of a served model version is in memory
// (server/engine/model_memory.h):
//   kUnloaded -> kLoading -> kLoaded -> (evicted) kUnloaded
//                        \-> kFailed (the next use loads it again)
enum class ModelState { kUnloaded, kLoading, kLoaded, kFailed };
// "unloaded", "loading", "loaded", "failed": for logs, metric labels and
// the CLI.
absl::string_view ModelStateName(ModelState state);

// One device's copy of a served model version, as its ModelMemory has it.
struct ModelCopy {
  std::string device;
  ModelState state = ModelState::kUnloaded;
  // What the copy takes in memory: its parameters and buffers once it has
  // been loaded, its file's size before. Counted against the device's
  // budget while kLoaded or kLoading.
  int64_t bytes = 0;
  int64_t users = 0;  // Leases held: running jobs, analyses.
  // When it was last acquired or let go; unset when never used.
  std::optional<absl::Time> last_used;
  std::string error;  // kFailed: why the last load failed.
};

// One device's model memory (ModelMemory::Stats).
struct ModelMemoryStats {
  std::string device;
  int64_t budget_bytes = 0;  // --model_memory_bytes; 0: none.
  // Bytes of the copies loaded or being loaded (and of retired copies
  // still held by their last users).
  int64_t used_bytes = 0;
  // Copies of served versions, by state.
  std::map<ModelState, int64_t> copies;
  // Copies of versions no longer served, still held by running jobs.
  int64_t retired = 0;
  int64_t waiting_loads = 0;  // Loads waiting for models in use to go idle.
  // Since start: loads (failed ones included), their seconds, and copies
  // unloaded to make room.
  int64_t loads = 0;
  int64_t load_failures = 0;
  double load_seconds = 0;
  int64_t evictions = 0;
};

// A hosted model version as the registry describes it: what clients see of
// it, taken from the loaded model (the first device's copy) when the version
// was registered and kept while it is served, loaded or not; and where each
// device's copy is now.
struct ModelSummary {
  core::ModelCard card;  // Name, version, input geometry, class names.
  std::string content_hash;
  std::vector<std::string> class_names;  // Every class, named (card or index).
  std::vector<core::LayerInfo> layers;
  std::vector<core::OutputInfo> outputs;
  std::string logits_output;  // "" without a class output.
  bool log_probs = false;     // The class output is log-probabilities.
  std::string no_classes_reason;  // Why there are no classes, if so.
  // Why the model cannot step in bf16 on its device (Bf16Problem); empty
  // when it can. A request that names no precision then runs in fp32 on a
  // bf16 server, and one that asks for bf16 is refused naming this.
  std::string bf16_problem;
  // Per precision the model runs in: why an image's bits depend on what
  // shares its batch (BatchVariance); absent or empty when they do not. A
  // job of such a precision runs in a batch of its own.
  std::map<core::Precision, std::string> batch_variance;
  std::string device;             // The first device.
  // Bytes of the model's parameters and buffers per device copy: what a
  // loaded copy is charged against --model_memory_bytes.
  int64_t memory_bytes = 0;
  // Bytes of every tappable layer's output and the model's outputs for one
  // image at its input size (float32): the activations a render keeps per
  // image for its backward pass are of this order. Not counted against the
  // budget (they belong to a worker's batch).
  int64_t activation_bytes = 0;
  std::string path;  // Model file relative to the repository ("" if none).
  // Each device's copy, in the server's device order (the registry's List
  // and Describe fill it; empty in the summary a render is planned from).
  std::vector<ModelCopy> copies;

  // Layers, classes and outputs, for validating objectives (as
  // core::Model::shape()).
  core::ModelShape Shape() const;
  // As core::Model::IsTokenModel().
  bool IsTokenModel() const;
};

// `model` summarised; `path` as given.
ModelSummary Summarize(const core::Model& model, std::string path = "");

// Why `model` cannot run an optimisation step in bf16 autocast on its
// device, or "" when it can: one forward and backward of a zero image at the
// card's input size, from every output to the image. LibTorch 1.13 lacks
// some CPU bf16 kernels (hardshrink's backward, for one); a job would fail
// on them. The registry calls it once per loaded version.
std::string Bf16Problem(const core::Model& model);

// Whether an image gets the same bits alone and in a batch in `precision`,
// or why not: the outputs and input gradient of the second of three random
// images at the card's input size, alone and batched, compared bit for bit.
// featviz routes linear layers and convolutions to batch-invariant kernels
// (core/model.h); this catches what it does not know (a layer whose kernel
// ATen picks by batch size), so that such a model's jobs are never batched
// with others instead of being silently different. "" when they agree.
std::string BatchVariance(const core::Model& model, core::Precision precision);

// Fills `summary`'s bf16_problem and batch_variance (fp32, and bf16 when the
// model can step in it) for `model`. The registry calls it once per loaded
// version.
void CheckArithmetic(const core::Model& model, ModelSummary& summary);

// A job's life:
//   kQueued -> kRunning -> kSucceeded | kFailed | kCancelled
//   kQueued -> kExpired | kCancelled
enum class JobState { kQueued, kRunning, kSucceeded, kFailed, kCancelled, kExpired };

// True for the four states a job never leaves.
bool IsFinal(JobState state);
// "queued", "running", "succeeded", ...: for logs and metric labels.
absl::string_view JobStateName(JobState state);

// A float32 array on the host, C order.
struct HostArray {
  std::vector<int64_t> shape;
  std::vector<float> values;
};

// One objective term's outcome.
struct TermOutcome {
  std::string term;  // Canonical text.
  double weight = 0;
  double final_value = 0;    // On the untransformed final images.
  std::vector<float> trace;  // Its value at every step.
};

// Per-channel statistics of a layer the objective names.
struct LayerSummary {
  std::string layer;
  HostArray mean;
  HostArray max;
};

// One dataset example beside a render's pictures (TrustPlan::exemplars).
struct Exemplar {
  int64_t index = 0;  // In the dataset.
  float value = 0;    // The unit's value on it (spatial max, logit, prob).
  int64_t label = -1;
  std::string png;
  std::string activation_png;  // The unit's map over it; "" for flat units.
};

// The exemplars of a render's unit, highest value first.
struct ExemplarSet {
  std::string dataset;
  std::string unit;  // The unit as a term: "channel(conv2, 5)", "logit(7)".
  std::vector<Exemplar> examples;
  bool cached = false;  // The dataset pass was already cached.
};

// Path similarity at one layer (docs/trust.md, "Path similarity").
struct LayerPathScore {
  std::string layer;
  double score = 0;               // In [0, 1].
  double similarity = 0;          // Spearman, picture vs prototype.
  double natural_similarity = 0;  // Top examples vs the others' prototype.
  double random_similarity = 0;   // Random images vs the prototype.
  // natural - random is large enough for the layer to count in the score.
  bool informative = false;
};

// The reliability check of one picture.
struct PathScore {
  double score = 0;  // Mean of the informative layers' scores; 0 if none.
  double threshold = 0;
  bool reliable = false;  // score >= threshold.
  std::vector<LayerPathScore> layers;  // Model order.
};

// A succeeded job's result, everything on the host (images already encoded
// where the plan asked for PNGs). Shared, never changed once made.
struct JobResult {
  std::string model;
  std::string model_version;
  std::string model_hash;
  std::string objective;
  std::vector<TermOutcome> terms;
  double final_total = 0;
  std::optional<HostArray> images;  // [B, C, H, W] in [0, 1], when asked for.
  std::vector<std::string> png;     // One per image, when asked for.
  // Images with bands (RenderPlan::display): the composite the PNGs show,
  // every band's name, and with the PNGs one band sheet per image
  // (core::BandSheet). Empty otherwise.
  std::vector<int64_t> composite;
  std::vector<std::string> band_names;
  std::vector<std::string> band_png;
  HostArray logits;
  HostArray probs;
  std::vector<LayerSummary> layer_stats;
  // MaCo only (empty otherwise): the transparency map [B, C, H, W] when the
  // plan asked for tensors, one PNG per image of it (TransparencyPngs) when
  // it asked for PNGs, and where the fixed magnitude came from.
  std::optional<HostArray> transparency;
  std::vector<std::string> transparency_png;
  std::string maco_magnitude;
  // How the images were parameterised (the request's, or the server's pick).
  core::ParamKind parameterization = core::ParamKind::kFft;
  // core::RenderResult::warnings: what the user should know about it.
  std::vector<std::string> warnings;
  // core::RenderResult::accentuation: one per image when the request asked
  // for feature accentuation (RenderPlan::options.accentuation_seed).
  std::vector<core::AccentuationOutcome> accentuation;
  uint64_t seed = 0;
  int64_t steps = 0;
  std::string transforms;  // The transform set, as text.
  std::string linear_mode;  // RenderPlan::linear_mode.
  std::string precision;    // core::PrecisionName of RenderPlan::precision.
  // RenderPlan::trust: the unit's exemplars (when asked) and one path
  // similarity per image (when asked); empty otherwise.
  std::optional<ExemplarSet> exemplars;
  std::vector<PathScore> path_similarity;
  double queue_seconds = 0;
  double compute_seconds = 0;

  // The heap it takes, object included: every string, array and PNG at its
  // allocated size, as glibc's malloc counts it (server/engine/heap_bytes.h). What
  // the result store budgets (plus its own bookkeeping per result).
  int64_t bytes() const;
};
using JobResultPtr = std::shared_ptr<const JobResult>;

// `result` (of a session that ran `plan`) on the host, with the outputs the
// plan asked for. Errors: a LibTorch failure copying or encoding.
absl::StatusOr<JobResult> MakeJobResult(const core::RenderResult& result,
                                        const RenderPlan& plan,
                                        double queue_seconds,
                                        double compute_seconds);

// One PNG per image of a transparency map ([B, C, H, W], >= 0): channels
// summed, divided by the image's maximum, in inferno colours (bright where
// the picture mattered most to the objective).
absl::StatusOr<std::vector<std::string>> TransparencyPngs(
    const at::Tensor& transparency);

// One progress event of a running job.
struct JobProgress {
  int64_t step = 0;
  int64_t total_steps = 0;
  std::vector<double> term_values;
  std::string preview_png;  // A PNG grid of the current images, when asked.
};

// `event` as a JobProgress; `preview_png` attaches its images as a PNG grid
// (the event must carry images then), of their `composite` bands when that
// is not empty (RenderPlan::display).
absl::StatusOr<JobProgress> MakeJobProgress(
    const core::ProgressEvent& event, int64_t total_steps, bool preview_png,
    const std::vector<int64_t>& composite = {});

// A job as it is at one moment.
struct JobSnapshot {
  std::string id;
  std::string owner;
  int priority = 0;
  JobState state = JobState::kQueued;
  std::string model;
  std::string model_version;
  std::string model_hash;
  std::string objective;  // Canonical text.
  int64_t steps_done = 0;
  int64_t total_steps = 0;
  absl::Time create_time;
  std::optional<absl::Time> start_time;  // Once a worker took it.
  std::optional<absl::Time> end_time;    // Once it is final.
  absl::Status status;                   // A failed, cancelled or expired job's.
  bool cached = false;  // Answered from the result cache.
  std::string device;   // Where it ran ("" if it never did).
};

// Which jobs a listing wants: newest first, filtered, paged.
struct JobQuery {
  std::string owner;               // "" for every owner.
  std::optional<JobState> state;   // Unset for every state.
  int32_t page_size = 0;           // 0: the default (100); at most 1000.
  std::string page_token;          // A previous page's next_page_token.
};

struct JobPage {
  std::vector<JobSnapshot> jobs;
  std::string next_page_token;  // "" on the last page.
};

// A page of served model versions (ModelRegistry::Page), in name order,
// then version (oldest first).
struct ModelQuery {
  int32_t page_size = 0;   // 0: every version.
  std::string page_token;  // A previous page's next_page_token.
};

struct ModelPage {
  std::vector<ModelSummary> models;
  std::string next_page_token;  // "" on the last page.
};

// One worker's figures.
struct DeviceStats {
  std::string device;
  int64_t running_jobs = 0;
  // Images of the running jobs over the batch cap, averaged over the window.
  double batch_occupancy = 0;
  double steps_per_second = 0;        // Over the last minute.
  double image_steps_per_second = 0;  // Likewise.
  int64_t steps_total = 0;            // Since start.
};

// The server's figures: queue, cache, results, job counters and devices.
struct EngineStats {
  // Priority -> jobs queued, highest priority first.
  std::map<int, int64_t, std::greater<int>> queue_depth;
  int64_t queued_jobs = 0;
  int64_t running_jobs = 0;
  int64_t cache_hits = 0;
  int64_t cache_misses = 0;
  int64_t results_stored = 0;
  // Heap they take, bookkeeping included (also that of remembering why
  // results left, at most about 3 MiB, which the budget does not bound).
  int64_t result_bytes = 0;
  int64_t result_max_bytes = 0;        // The store's budget.
  int64_t result_owner_max_bytes = 0;  // One owner's share of it.
  // Results removed since start: expired, evicted (budget), owner_share,
  // forgotten (with their job record).
  std::map<std::string, int64_t> results_removed;
  // The owners holding the most result bytes, most first.
  struct OwnerUsage {
    std::string owner;
    int64_t results = 0;
    int64_t bytes = 0;
  };
  std::vector<OwnerUsage> result_owners;
  // Bytes each client has uploaded since start (models and datasets, what
  // its max_upload_bytes quota counts), most first.
  std::vector<OwnerUsage> uploads;
  int64_t job_records = 0;       // Job records kept (all states).
  int64_t job_record_bytes = 0;  // Their heap, approximately.
  int64_t max_job_records = 0;
  int64_t job_records_forgotten = 0;
  // The process's heap as glibc's malloc counts it (mallinfo2): bytes in
  // use by allocations, and bytes it holds from the system (in use or free
  // for reuse); their difference is what fragmentation costs.
  int64_t heap_in_use_bytes = 0;
  int64_t heap_held_bytes = 0;
  int64_t jobs_submitted = 0;
  int64_t jobs_succeeded = 0;
  int64_t jobs_failed = 0;
  int64_t jobs_cancelled = 0;
  int64_t jobs_expired = 0;
  std::vector<DeviceStats> devices;
  // Each device's model memory, in the server's device order.
  std::vector<ModelMemoryStats> model_memory;
  // The hosted datasets: how many, the bytes of their images in memory, and
  // --dataset_memory_bytes (0: none).
  int64_t datasets = 0;
  int64_t dataset_bytes = 0;
  int64_t dataset_budget_bytes = 0;
};

// The result cache's key of a complete plan (PlanRender's, its inputs
// resolved): the model's content hash, the SHA-256 of everything in the plan
// that shapes the result (model version, objective, parameterisation and
// its prior's bytes, start and reference images' bytes, sizes, transforms,
// optimiser, output, precision, band display), the seed and the linear
// mode. Who asked, the priority and the queue timeout are not part of it.
// Only plans with a seed are reproducible, so only they have a key ("").
std::string CacheKey(const RenderPlan& plan);

// core::Prefixed: `status` with `prefix` and ": " in front, payloads kept.
using core::Prefixed;

}  // namespace featviz::server

#endif  // FEATVIZ_SERVER_ENGINE_ENGINE_TYPES_H_
