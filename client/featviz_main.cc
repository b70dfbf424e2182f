// featviz: the command-line client of a featviz server, one command per RPC
// family (see kCommands below and `featviz --help`).
//
//   featviz models
//   featviz render mnist_classifier 'prob(3)' --steps 256      # render.png
//   featviz top mnist_classifier --layer conv2 --channels 5 --json
//   featviz units mnist_classifier --label 7
//   featviz submit mnist_classifier 'logit(7)'  &&  featviz watch ID
//
// --server is any gRPC target; one naming several replicas
// (dns:///featviz.lab.svc:8980) is balanced round-robin.
//
// Exit codes, the same for every command: 0 success; 1 an error from the
// server (a job that failed included), an unreachable server, or a file that
// could not be written; 2 a usage error.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/flags/commandlineflag.h"
#include "absl/flags/flag.h"
#include "absl/flags/reflection.h"
#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/time.h"
#include "client/bench.h"
#include "client/circuits_commands.h"
#include "client/commands.h"
#include "client/dataset_commands.h"
#include "client/label_commands.h"
#include "client/multi_render.h"
#include "client/progress_bar.h"
#include "client/rpc_commands.h"
#include "client/unit_template.h"
#include "client/upload.h"
#include "client/visualizer_client.h"
#include "core/status_macros.h"

ABSL_FLAG(std::string, server, "",
          "Server address host:port, or a gRPC target naming several "
          "replicas (dns:///host:port, balanced round-robin); default "
          "$FEATVIZ_SERVER, else 127.0.0.1:8980");
ABSL_FLAG(double, timeout, 0,
          "Deadline in seconds; 0: none for render, 30 s for models/layers");
ABSL_FLAG(std::string, token_file, "",
          "File whose first line is the bearer token; default $FEATVIZ_TOKEN");
ABSL_FLAG(std::string, tls_ca, "",
          "PEM CA bundle to verify the server with: connect over TLS");
ABSL_FLAG(std::string, tls_cert, "",
          "PEM client certificate for mTLS (with --tls_key)");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls_cert");
ABSL_FLAG(bool, json, false, "Print JSON on stdout instead of text");
ABSL_FLAG(int64_t, steps, 0, "Optimisation steps; 0: the server's (256)");
ABSL_FLAG(int64_t, size, 0, "Image side in pixels; 0: the model's input size");
ABSL_FLAG(std::string, parameterization, "",
          "Parameterisation: fft, pixel or maco; empty: the server's choice "
          "(MaCo for a gray model on a server hosting exactly one dataset that "
          "fits it, else fft) (old name --param)");
ABSL_FLAG(std::string, maco_dataset, "",
          "MaCo: the hosted dataset whose spectrum magnitude the images keep "
          "('1/f' for the default); empty: the server's choice");
ABSL_FLAG(int64_t, exemplars, 0,
          "Dataset examples of the objective's unit to show beside the "
          "pictures (0 to 64; with --out, written to x.exemplars.png)");
ABSL_FLAG(bool, path_similarity, false,
          "Check each picture's path through the network against the "
          "natural images that drive its unit (docs/trust.md)");
ABSL_FLAG(std::string, trust_dataset, "",
          "The hosted dataset --exemplars and --path_similarity use; empty: "
          "the one that fits the model");
ABSL_FLAG(std::vector<std::string>, reference, {},
          "Comma-separated PNG files sent as reference images: reference(k) "
          "in the objective is the k-th (inversion, caricature)");
ABSL_FLAG(std::string, accentuate, "",
          "Feature accentuation: start from this real image and raise the "
          "objective's unit while staying close to it: dataset:IDX, "
          "dataset:NAME:IDX, or a float32 .npy of [C, H, W] in [0, 1]");
ABSL_FLAG(std::string, accentuate_layer, "",
          "With --accentuate: keep the picture close to the seed in this "
          "layer's activations instead of its pixels");
ABSL_FLAG(double, accentuate_weight, 0,
          "With --accentuate: weight of the keep-close term; 0: the server's "
          "default (docs/trust.md)");
ABSL_FLAG(std::string, transparency, "",
          "MaCo: grid PNG of the transparency maps");
ABSL_FLAG(int64_t, height, 0,
          "Image height in pixels (non-square images, with --width); 0: the "
          "model's");
ABSL_FLAG(int64_t, width, 0, "Image width in pixels; 0: the model's");
ABSL_FLAG(bool, gray, false,
          "Render one-channel gray stimuli for a three-channel model");
ABSL_FLAG(std::string, card, "",
          "upload: the model card JSON; default MODEL's stem + .card.json "
          "when it exists");
ABSL_FLAG(std::string, name, "",
          "upload: the model's name on the server; default the card's, else "
          "the file's stem");
ABSL_FLAG(int64_t, batch, 1, "Images rendered together");
ABSL_FLAG(std::string, units, "",
          "render: the units that '*' in the objective stands for, one image "
          "each in one batched request: all, 0-15, 3,5,9; empty: all");
ABSL_FLAG(int64_t, seed, -1,
          "Random seed; -1: the server picks (and reports) one (circuits, "
          "atlas: 0)");
ABSL_FLAG(double, lr, 0, "Adam learning rate; 0: the server's (0.05; MaCo 0.5)");
ABSL_FLAG(std::string, precision, "",
          "arithmetic of the steps: fp32, bf16 (convolutions and matrix "
          "products in bfloat16), tf32 (CUDA servers started with --precision "
          "tf32); empty: the server's default");
ABSL_FLAG(double, decay_power, 0,
          "FFT spectrum decay power; 0: the server's (1.0) (old name --decay)");
ABSL_FLAG(std::string, transforms, "default",
          "default, none, or a list like 'pad(2), jitter(1), scale(0.9, 1.1), "
          "rotate(-5, 5)'");
ABSL_FLAG(int64_t, progress_every, 0,
          "Progress event every N steps; 0: the server's (16)");
ABSL_FLAG(std::string, out, "render.png",
          "render, watch: labelled grid PNG of all images (--out= for none; "
          "x.bands.png beside it for models with bands); compare: the sheet "
          "(default compare.png)");
ABSL_FLAG(std::string, out_dir, "",
          "circuits, atlas, activations, attribute, top: the folder to write "
          "into");
ABSL_FLAG(std::string, npy, "", ".npy file of the float images [B, C, H, W]");
ABSL_FLAG(std::string, png_dir, "", "Directory for one PNG per image, image_<b>.png");
ABSL_FLAG(std::string, preview_dir, "",
          "Directory for a preview PNG per progress event, step_<NNNNN>.png "
          "(old name --previews)");
ABSL_FLAG(std::string, labels, "",
          "Comma-separated grid labels, one per image; default: top class and "
          "probability");
ABSL_FLAG(int64_t, scale, 0, "Grid magnification; 0: cells of at least 112 px");
ABSL_FLAG(int64_t, columns, 0, "Grid columns; 0: one row up to 10 images");
ABSL_FLAG(int64_t, clients, 8, "bench: client threads");
ABSL_FLAG(int64_t, jobs, 4, "bench: renders each client sends in turn");
ABSL_FLAG(std::string, model, "mnist_classifier", "bench: the hosted model");
ABSL_FLAG(std::string, objectives, "channel(conv2, {i%32})|logit({i%10})",
          "bench: '|'-separated objective templates; {i} is the job's index, "
          "{i%K} its index mod K");
ABSL_FLAG(int64_t, seed_base, 0,
          "bench: job g's seed is seed_base + g (a server's result cache "
          "answers seeds it has seen)");
ABSL_FLAG(bool, sequential, false,
          "bench: the same jobs one after another from one thread");

ABSL_FLAG(std::string, layer, "",
          "circuits: the layer whose channels detect; units: the layer to "
          "label (every conv and linear layer but the logits when empty)");
ABSL_FLAG(int64_t, top_k, 0,
          "circuits: detector channels per class (3); attribute: channels "
          "printed (10) (old name --top)");
ABSL_FLAG(int64_t, top_n, 0,
          "top, atlas, units: dataset examples per unit (top 9, atlas 8, "
          "units 100)");
ABSL_FLAG(int64_t, limit, 0,
          "units --label: at most this many units; 0: every unit");
ABSL_FLAG(int64_t, examples_per_class, 0,
          "circuits: images of each class to score on (64)");
ABSL_FLAG(std::string, dataset, "",
          "circuits, atlas, top, units, activations, attribute: a dataset the "
          "server "
          "hosts; default: the one whose images fit the model (the server "
          "refuses to guess between several)");
ABSL_FLAG(int64_t, examples, 0,
          "deprecated: circuits --examples_per_class, atlas --top_n");
ABSL_FLAG(std::string, classes, "",
          "circuits: comma-separated class indices (all when empty); "
          "dataset upload: comma-separated class names");
ABSL_FLAG(std::string, layers, "", "atlas: comma-separated layers; all conv and linear when empty");
ABSL_FLAG(std::string, channels, "",
          "activations, top: comma-separated channels; all when empty");
ABSL_FLAG(std::string, indices, "",
          "activations, attribute: comma-separated dataset indices");
ABSL_FLAG(int64_t, start, 0, "activations, attribute: first dataset image");
ABSL_FLAG(int64_t, count, 0,
          "activations, attribute: dataset images from --start (1)");
ABSL_FLAG(int64_t, label, -1,
          "activations, attribute: only images of this class; -1: any; units: "
          "the units most selective for this class");
ABSL_FLAG(std::string, owner, "",
          "submit: the job's owner (fair share); jobs: only this owner's");
ABSL_FLAG(int32_t, priority, 0, "submit: priority in [-10, 10]");
ABSL_FLAG(std::string, state, "",
          "jobs: only jobs in this state (queued, running, succeeded, "
          "failed, cancelled, expired)");
ABSL_FLAG(std::string, version, "", "unload: one version; all when empty");

namespace featviz::client {
namespace {

constexpr char kUsage[] = R"(usage: featviz [--server ADDR] [--timeout S] COMMAND ...

models and rendering:
  models                          the hosted models
  layers MODEL                    a model's layer catalogue
  render MODEL 'OBJECTIVE'        render a feature visualisation (render.png)
  render MODEL 'channel(L, *)' [--units all|0-15|3,5,9]
                                  every listed unit of layer L in one batched
                                  request, one sheet labelled by unit
  compare MODEL_A MODEL_B 'OBJECTIVE'
                                  the same objective, seed and options on two
                                  models (or versions name@1 name@2): one
                                  sheet with a row each, a table of values
  bench                           load-test the server with many renders
jobs:
  submit MODEL 'OBJECTIVE'        queue a render as a job; prints its id
  watch ID                        follow a job to its end; writes like render
  job ID                          a job's state (asked of the replica its id names)
  cancel ID                       cancel a job; answers once it has ended
  jobs [--owner O] [--state S]    the jobs the server knows, newest first
  stats                           queue, worker, cache and job figures
circuits:
  datasets                        the datasets the server hosts (size, shape,
                                  classes, who uploaded it, bytes)
  dataset upload NAME PATH [--classes a,b,...]
                                  send a dataset (the uploader role): an .npy
                                  or .npz file, an IDX3 file (labels beside
                                  it), or a folder of PNGs, one subfolder per
                                  class (packed as .npz)
  dataset rm NAME                 delete a dataset you uploaded (admins: any
                                  uploaded one)
  activations MODEL --layer L     a layer's activations on dataset images
  attribute MODEL 'TARGET' --layer L
                                  L's channels ranked by contribution to TARGET
  top MODEL --layer L             the dataset images that excite each unit most
  units MODEL [--label K]         automatic unit labels: the classes of each
                                  unit's top examples ("fires on 7s: 82 % of
                                  its top 100"), its selectivity, the classes
                                  it feeds; --label K: the units most
                                  selective for K
  circuits MODEL --layer L --out_dir DIR
                                  per class: its visualisation, its top-k
                                  detector channels in L with their
                                  visualisations and activation maps
  atlas MODEL --out_dir DIR       a static site with every conv channel and
                                  linear neuron: pictures, dataset examples,
                                  statistics, loss curves
admin (the admin role; upload also the uploader role):
  upload MODEL.pt [--card CARD.json] [--name NAME]
                                  send a TorchScript model to the server; it
                                  is served as the next version of NAME
  load PATH                       serve a model of the server's repository
  unload NAME [--version V]       stop serving it (waits for its running jobs)
  reload [NAME]                   bring served models in line with the repository

Every command takes --json: exactly one JSON document on stdout.

global options:
  --server ADDR     host:port (default $FEATVIZ_SERVER, else 127.0.0.1:8980), or
                    dns:///host:port to balance round-robin over every address
  --timeout S       deadline in seconds (0: none for render, watch and admin
                    calls, 30 s otherwise)
  --token_file F    bearer token: F's first line (default $FEATVIZ_TOKEN)
  --tls_ca F        connect over TLS, verifying the server against PEM CAs F
  --tls_cert F --tls_key K   client certificate and key (mTLS)

render and submit options (watch takes the output ones):
  --steps N  --size N | --height N --width N  --gray
  --parameterization fft|pixel|maco  --batch N (batch size)
  --maco_dataset NAME|1/f  --transparency FILE (MaCo's map)
  --reference a.png,b.png (reference(0), reference(1) of the objective)
  --accentuate dataset:IDX|dataset:NAME:IDX|seed.npy (feature accentuation:
    start from that image, stay close to it)  --accentuate_layer L (close in
    L's activations, not pixels)  --accentuate_weight W (0: the default)
  --seed N  --lr X  --decay_power X  --progress_every N
  --precision fp32|bf16|tf32 (the steps' arithmetic; default: the server's)
  --exemplars N (dataset examples of the unit; --out x.png writes
    x.exemplars.png)  --path_similarity (check each picture against them)
  --trust_dataset NAME (default: the dataset that fits the model)
  --transforms default|none|'pad(2), jitter(1), scale(0.9, 1.1), rotate(-5, 5)'
  --out FILE (render.png; --out= for none)  --labels 'a,b,c'  --scale N
  --columns N  --npy FILE  --png_dir DIR  --preview_dir DIR
  submit: --owner O  --priority P
  render: --units all|0-15|3,5,9 with '*' for the unit in the objective
    (channel(conv2, *), neuron(fc1, *), conv2:*); no --units means all
  models with other than 1 or 3 input channels (bands): --out x.png is the
  composite the model card chooses, and x.bands.png beside it shows each band

bench options:
  --clients N (8)  --jobs M per client (4)  --model NAME (mnist_classifier)
  --objectives 'channel(conv2, {i%32})|logit({i%10})'   job g uses template
                    g % T with {i} -> g and {i%K} -> g mod K
  --steps N (256)  --batch N (1)  --parameterization fft|pixel|maco (server's)
  --transforms default|none|LIST (default)
  --seed_base S (0) job g's seed is S + g; a server's result cache answers
                    seeds it has seen, so change S to rerun against it
  --sequential      the same jobs one after another (the baseline)

circuits options:
  activations: --layer L  --channels 'a,b'  --npy FILE  --out_dir DIR (overlays)
  attribute:   --layer L  --top_k K (10 printed)  --out_dir DIR (GradCAM)
  both, the images: --dataset NAME  --indices 'i,j' | --start N --count N
               --label C
  top:         --layer L  --channels 'a,b'  --dataset NAME  --top_n N (9)
               --out_dir DIR (the example images)
  units:       --layer L (every conv and linear layer but the logits)
               --label K  --limit N (0: all)  --top_n N (100)  --dataset NAME
  circuits:    --layer L  --top_k K (3)  --out_dir DIR  --dataset NAME
               --examples_per_class N (64)  --classes 'a,b'  --steps N  --seed N (0)
  atlas:       --out_dir DIR  --dataset NAME  --top_n N (8)  --layers 'a,b'
               --steps N  --seed N (0)

Old spellings still work, with a note on stderr: --param, --decay,
--previews, --top, --examples, and --out for a folder.

objectives: neuron(conv2, 5)  channel(conv2, 5)  conv2:5  layer(conv2)
  channel('0', 3) (quoted layer paths)  output(age, 2) (a model output)
  logit(7)  prob(7)  direction(fc1, [...])  diversity(conv2)  alignment(conv2)
  tv()  l1()  l2()  l2(dataset(12)) (distance to an image's pixels)
  any term with batch=i (image i of the batch);
  inversion(conv2, dataset(mnist, 17))  inversion_l2(conv2, reference(0))
  caricature(conv2, dataset(3)) (a reference image: a hosted dataset's, or
  --reference's k-th);
  channel(conv2, 5) + 0.5 * prob(7) - 0.01 * tv()

exit status: 0 ok, 1 server, job or file error, 2 usage error
)";

constexpr char kDefaultServer[] = "127.0.0.1:8980";

// Old flag names and the vocabulary's (README, "One vocabulary"). --out and
// --examples changed meaning per command and are mapped in the commands.
const std::map<std::string, std::string>& FlagAliases() {
  static const auto* aliases = new std::map<std::string, std::string>{
      {"param", "parameterization"},
      {"decay", "decay_power"},
      {"previews", "preview_dir"},
      {"top", "top_k"},
  };
  return *aliases;
}

const std::set<std::string>& RenderFlags() {
  static const auto* flags = new std::set<std::string>{
      "json", "steps", "size", "height", "width", "gray", "parameterization",
      "batch", "seed", "lr", "precision",
      "decay_power", "transforms", "progress_every", "out", "npy", "png_dir",
      "preview_dir", "labels", "scale", "columns", "maco_dataset", "reference",
      "transparency", "accentuate", "accentuate_layer", "accentuate_weight",
      "exemplars", "path_similarity", "trust_dataset"};
  return *flags;
}
// What `featviz compare` takes: the render options that apply to both.
const std::set<std::string>& CompareFlags() {
  static const auto* flags = new std::set<std::string>{
      "json", "steps", "size", "height", "width", "gray", "parameterization",
      "batch", "seed", "lr", "precision", "decay_power", "transforms",
      "progress_every", "out", "scale", "maco_dataset"};
  return *flags;
}
const std::set<std::string>& OutputFlags() {
  static const auto* flags = new std::set<std::string>{
      "json", "out", "npy", "png_dir", "preview_dir", "labels", "scale",
      "columns", "transparency"};
  return *flags;
}
const std::set<std::string>& SliceFlags() {
  static const auto* flags = new std::set<std::string>{
      "dataset", "indices", "start", "count", "label"};
  return *flags;
}
std::set<std::string> Union(std::set<std::string> a,
                            const std::set<std::string>& b) {
  a.insert(b.begin(), b.end());
  return a;
}

const std::set<std::string>& GlobalFlags() {
  static const auto* flags = new std::set<std::string>{
      "server", "timeout", "token_file", "tls_ca", "tls_cert", "tls_key"};
  return *flags;
}

struct Args {
  std::vector<std::string> positional;
  std::set<std::string> flags;  // Canonical names, as set.
  std::vector<std::string> notes;  // Deprecation notes for stderr.
  bool help = false;
};

// What a command's handler gets.
struct Invocation {
  VisualizerClient& client;
  const std::vector<std::string>& operands;
  const Args& args;
};

// A handler's outcome: a usage error (exit 2) or the command's status.
struct Outcome {
  std::string usage;  // Non-empty: a usage error.
  absl::Status status;
};
Outcome Usage(std::string message) { return {std::move(message), {}}; }
// A usage error saying `status`'s message.
Outcome Usage(const absl::Status& status) {
  return Usage(std::string(status.message()));
}
Outcome Done(absl::Status status) { return {"", std::move(status)}; }

struct Command {
  const char* name;
  const char* usage;  // "featviz NAME ..." for a wrong operand count.
  const char* summary;  // What it does, for `featviz NAME --help`.
  int min_operands;
  int max_operands;
  std::set<std::string> flags;
  Outcome (*run)(const Invocation&);
};

bool Json() { return absl::GetFlag(FLAGS_json); }

// A comma-separated list of integers; InvalidArgument (a usage error) names
// the flag and the item.
absl::StatusOr<std::vector<int64_t>> Integers(const std::string& flag,
                                              const std::string& text) {
  std::vector<int64_t> out;
  for (absl::string_view item : absl::StrSplit(text, ',', absl::SkipEmpty())) {
    int64_t value = 0;
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(item), &value)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--", flag, ": '", item, "' is not an integer"));
    }
    out.push_back(value);
  }
  return out;
}

// The render options of the flags (render, submit, watch).
absl::StatusOr<RenderCommandOptions> RenderOptions(const Invocation& in) {
  RenderCommandOptions options;
  if (!in.operands.empty()) options.model = in.operands[0];
  if (in.operands.size() > 1) options.objective = in.operands[1];
  options.steps = absl::GetFlag(FLAGS_steps);
  options.size = absl::GetFlag(FLAGS_size);
  options.height = absl::GetFlag(FLAGS_height);
  options.width = absl::GetFlag(FLAGS_width);
  options.gray = absl::GetFlag(FLAGS_gray);
  options.param = absl::GetFlag(FLAGS_parameterization);
  options.batch = absl::GetFlag(FLAGS_batch);
  options.seed = absl::GetFlag(FLAGS_seed);
  options.lr = absl::GetFlag(FLAGS_lr);
  options.precision = absl::GetFlag(FLAGS_precision);
  options.decay = absl::GetFlag(FLAGS_decay_power);
  options.transforms = absl::GetFlag(FLAGS_transforms);
  options.progress_every = absl::GetFlag(FLAGS_progress_every);
  options.out = absl::GetFlag(FLAGS_out);
  options.npy = absl::GetFlag(FLAGS_npy);
  options.png_dir = absl::GetFlag(FLAGS_png_dir);
  options.previews = absl::GetFlag(FLAGS_preview_dir);
  options.maco_dataset = absl::GetFlag(FLAGS_maco_dataset);
  options.references = absl::GetFlag(FLAGS_reference);
  options.accentuate = absl::GetFlag(FLAGS_accentuate);
  options.accentuate_layer = absl::GetFlag(FLAGS_accentuate_layer);
  options.accentuate_weight = absl::GetFlag(FLAGS_accentuate_weight);
  options.transparency = absl::GetFlag(FLAGS_transparency);
  options.exemplars = absl::GetFlag(FLAGS_exemplars);
  options.path_similarity = absl::GetFlag(FLAGS_path_similarity);
  options.trust_dataset = absl::GetFlag(FLAGS_trust_dataset);
  const std::string labels = absl::GetFlag(FLAGS_labels);
  if (!labels.empty()) options.labels = absl::StrSplit(labels, ',');
  options.scale = absl::GetFlag(FLAGS_scale);
  options.columns = absl::GetFlag(FLAGS_columns);
  options.json = Json();
  options.progress = ProgressModeFor(stderr);
  return options;
}

absl::StatusOr<DatasetSliceOptions> SliceOptions() {
  DatasetSliceOptions slice;
  slice.dataset = absl::GetFlag(FLAGS_dataset);
  FEATVIZ_ASSIGN_OR_RETURN(slice.indices,
                           Integers("indices", absl::GetFlag(FLAGS_indices)));
  slice.start = absl::GetFlag(FLAGS_start);
  slice.count = absl::GetFlag(FLAGS_count);
  if (slice.start < 0 || slice.count < 0) {
    return absl::InvalidArgumentError("--start and --count must be >= 0");
  }
  if (absl::GetFlag(FLAGS_label) >= 0) slice.label = absl::GetFlag(FLAGS_label);
  return slice;
}

// --out_dir, or the old --out for a folder.
std::string OutDir(const Invocation& in) {
  if (in.args.flags.count("out_dir") > 0 || in.args.flags.count("out") == 0) {
    return absl::GetFlag(FLAGS_out_dir);
  }
  std::fprintf(stderr,
               "featviz: --out for a folder is deprecated; use --out_dir\n");
  return absl::GetFlag(FLAGS_out);
}

// `value` of --NAME when set, else of the deprecated --examples when set.
int64_t OrExamples(const Invocation& in, const char* name, int64_t value) {
  if (in.args.flags.count(name) > 0 || in.args.flags.count("examples") == 0) {
    return value;
  }
  std::fprintf(stderr, "featviz: --examples is deprecated here; use --%s\n",
               name);
  return absl::GetFlag(FLAGS_examples);
}

Outcome RunModelsCommand(const Invocation& in) {
  return Done(RunModels(in.client, Json(), stdout));
}

Outcome RunLayersCommand(const Invocation& in) {
  return Done(RunLayers(in.client, in.operands[0], Json(), stdout));
}

Outcome RunJobCommand(const Invocation& in) {
  return Done(RunJob(in.client, in.operands[0], false, Json(), stdout));
}

Outcome RunCancelCommand(const Invocation& in) {
  return Done(RunJob(in.client, in.operands[0], true, Json(), stdout));
}

// A usage error for an objective that does not parse, or that has '*'
// (every unit of a layer), which only `featviz render` takes: "featviz
// <command_does> one objective; ...".
std::optional<Outcome> RefuseUnitTemplate(const std::string& objective,
                                          absl::string_view command_does) {
  absl::StatusOr<std::optional<UnitTemplate>> units =
      FindUnitTemplate(objective);
  if (!units.ok()) return Usage(units.status());
  if (units->has_value()) {
    return Usage(absl::StrCat("featviz ", command_does,
                              " one objective; '*' (every unit of a layer) "
                              "works with featviz render"));
  }
  return std::nullopt;
}

// `render` with '*' in the objective: a layer's units at once.
Outcome RunUnitRenderCommand(const Invocation& in,
                             const RenderCommandOptions& options) {
  for (const char* flag : {"batch", "labels", "preview_dir", "transparency"}) {
    if (in.args.flags.count(flag) > 0) {
      return Usage(absl::StrCat(
          "--", flag, " does not apply to a render of a layer's units ('*' "
          "in the objective): each unit gets one image, labelled by unit"));
    }
  }
  absl::StatusOr<UnitRenderPlan> plan =
      PlanUnitRender(in.client, options, absl::GetFlag(FLAGS_units));
  if (!plan.ok()) {
    if (absl::IsInvalidArgument(plan.status()) ||
        absl::IsOutOfRange(plan.status())) {
      return Usage(plan.status());
    }
    return Done(plan.status());
  }
  return Done(RunUnitRender(in.client, options, *plan, stdout, stderr));
}

Outcome RunRenderCommand(const Invocation& in) {
  absl::StatusOr<RenderCommandOptions> options = RenderOptions(in);
  if (!options.ok()) return Usage(options.status());
  absl::StatusOr<std::optional<UnitTemplate>> units =
      FindUnitTemplate(options->objective);
  if (!units.ok()) return Usage(units.status());
  if (units->has_value() || in.args.flags.count("units") > 0) {
    return RunUnitRenderCommand(in, *options);
  }
  absl::StatusOr<featviz::v1::RenderRequest> request =
      BuildRenderRequest(*options);
  if (!request.ok()) return Usage(request.status());
  return Done(RunRender(in.client, *options, *request, stdout, stderr));
}

Outcome RunCompareCommand(const Invocation& in) {
  absl::StatusOr<RenderCommandOptions> options = RenderOptions(in);
  if (!options.ok()) return Usage(options.status());
  options->model = in.operands[0];
  options->objective = in.operands[2];
  if (in.args.flags.count("out") == 0) options->out = "compare.png";
  if (std::optional<Outcome> refused =
          RefuseUnitTemplate(options->objective, "compare renders");
      refused.has_value()) {
    return *refused;
  }
  for (const std::string& model : {in.operands[0], in.operands[1]}) {
    options->model = ModelVersionRef(model);
    absl::StatusOr<featviz::v1::RenderRequest> request =
        BuildRenderRequest(*options);
    if (!request.ok()) return Usage(request.status());
  }
  return Done(RunCompare(in.client, *options,
                         {in.operands[0], in.operands[1]}, stdout, stderr));
}

Outcome RunSubmitCommand(const Invocation& in) {
  absl::StatusOr<RenderCommandOptions> options = RenderOptions(in);
  if (!options.ok()) return Usage(options.status());
  if (std::optional<Outcome> refused =
          RefuseUnitTemplate(options->objective, "submit queues");
      refused.has_value()) {
    return *refused;
  }
  absl::StatusOr<featviz::v1::RenderRequest> request =
      BuildRenderRequest(*options);
  if (!request.ok()) return Usage(request.status());
  return Done(RunSubmit(in.client, *request, absl::GetFlag(FLAGS_owner),
                        absl::GetFlag(FLAGS_priority), Json(), stdout));
}

Outcome RunWatchCommand(const Invocation& in) {
  absl::StatusOr<RenderCommandOptions> options = RenderOptions(in);
  if (!options.ok()) return Usage(options.status());
  if (options->scale < 0 || options->columns < 0) {
    return Usage("--scale and --columns must not be negative");
  }
  return Done(RunWatch(in.client, in.operands[0], *options, stdout, stderr));
}

Outcome RunJobsCommand(const Invocation& in) {
  absl::Status status = RunJobs(in.client, absl::GetFlag(FLAGS_owner),
                                absl::GetFlag(FLAGS_state), Json(), stdout);
  if (absl::IsInvalidArgument(status) &&
      absl::StartsWith(status.message(), "--state")) {
    return Usage(status);
  }
  return Done(status);
}

Outcome RunStatsCommand(const Invocation& in) {
  return Done(RunStats(in.client, Json(), stdout));
}

Outcome RunDatasetsCommand(const Invocation& in) {
  return Done(RunDatasets(in.client, Json(), stdout));
}

Outcome RunDatasetCommand(const Invocation& in) {
  const std::string& action = in.operands[0];
  if (action == "upload" && in.operands.size() == 3) {
    DatasetUploadOptions options;
    options.name = in.operands[1];
    options.path = in.operands[2];
    options.class_names = absl::StrSplit(absl::GetFlag(FLAGS_classes), ',',
                                         absl::SkipWhitespace());
    return Done(RunDatasetUpload(in.client, options, Json(), stdout));
  }
  if (action == "rm" && in.operands.size() == 2) {
    if (in.args.flags.count("classes") > 0) {
      return Usage("featviz dataset rm takes no flag --classes");
    }
    return Done(RunDatasetRemove(in.client, in.operands[1], Json(), stdout));
  }
  return Usage(
      "usage: featviz dataset upload NAME PATH [--classes a,b,...] | "
      "featviz dataset rm NAME");
}

Outcome RunActivationsCommand(const Invocation& in) {
  ActivationsCommandOptions options;
  options.model = in.operands[0];
  options.layer = absl::GetFlag(FLAGS_layer);
  if (options.layer.empty()) return Usage("featviz activations needs --layer");
  absl::StatusOr<std::vector<int64_t>> channels =
      Integers("channels", absl::GetFlag(FLAGS_channels));
  if (!channels.ok()) return Usage(channels.status());
  options.channels = *channels;
  absl::StatusOr<DatasetSliceOptions> slice = SliceOptions();
  if (!slice.ok()) return Usage(slice.status());
  options.images = *slice;
  options.npy = absl::GetFlag(FLAGS_npy);
  options.out_dir = OutDir(in);
  options.json = Json();
  return Done(RunActivations(in.client, options, stdout));
}

Outcome RunAttributeCommand(const Invocation& in) {
  AttributeCommandOptions options;
  options.model = in.operands[0];
  options.target = in.operands[1];
  options.layer = absl::GetFlag(FLAGS_layer);
  if (options.layer.empty()) return Usage("featviz attribute needs --layer");
  absl::StatusOr<DatasetSliceOptions> slice = SliceOptions();
  if (!slice.ok()) return Usage(slice.status());
  options.images = *slice;
  if (absl::GetFlag(FLAGS_top_k) != 0) options.top_k = absl::GetFlag(FLAGS_top_k);
  if (options.top_k < 1) return Usage("--top_k must be >= 1");
  options.out_dir = OutDir(in);
  options.json = Json();
  return Done(RunAttribute(in.client, options, stdout));
}

Outcome RunTopCommand(const Invocation& in) {
  TopCommandOptions options;
  options.model = in.operands[0];
  options.layer = absl::GetFlag(FLAGS_layer);
  if (options.layer.empty()) return Usage("featviz top needs --layer");
  absl::StatusOr<std::vector<int64_t>> channels =
      Integers("channels", absl::GetFlag(FLAGS_channels));
  if (!channels.ok()) return Usage(channels.status());
  options.channels = *channels;
  options.dataset = absl::GetFlag(FLAGS_dataset);
  if (absl::GetFlag(FLAGS_top_n) != 0) options.top_n = absl::GetFlag(FLAGS_top_n);
  if (options.top_n < 1 || options.top_n > 1000) {
    return Usage("--top_n must be in [1, 1000]");
  }
  options.out_dir = OutDir(in);
  options.json = Json();
  return Done(RunTop(in.client, options, stdout));
}

Outcome RunUnitsCommand(const Invocation& in) {
  UnitsCommandOptions options;
  options.model = in.operands[0];
  options.layer = absl::GetFlag(FLAGS_layer);
  options.dataset = absl::GetFlag(FLAGS_dataset);
  // Any value given is the server's to judge (a negative class is refused
  // by name there).
  if (in.args.flags.count("label") > 0) options.label = absl::GetFlag(FLAGS_label);
  options.top_n = absl::GetFlag(FLAGS_top_n);
  options.limit = absl::GetFlag(FLAGS_limit);
  constexpr int64_t kMaxInt32 = std::numeric_limits<int32_t>::max();
  if (in.args.flags.count("top_n") > 0 &&
      (options.top_n < 1 || options.top_n > kMaxInt32)) {
    return Usage(absl::StrCat("--top_n must be >= 1, got ", options.top_n));
  }
  if (options.limit < 0 || options.limit > kMaxInt32) {
    return Usage(absl::StrCat("--limit must be >= 0 (0: every unit), got ",
                              options.limit));
  }
  if (options.limit != 0 && !options.label.has_value()) {
    return Usage("--limit needs --label (the units most selective for it)");
  }
  options.json = Json();
  return Done(RunUnits(in.client, options, stdout));
}

Outcome RunCircuitsCommand(const Invocation& in) {
  CircuitsCommandOptions options;
  options.model = in.operands[0];
  options.layer = absl::GetFlag(FLAGS_layer);
  options.out_dir = OutDir(in);
  if (options.layer.empty() || options.out_dir.empty()) {
    return Usage("usage: featviz circuits MODEL --layer L --out_dir DIR [--top_k K]");
  }
  if (absl::GetFlag(FLAGS_top_k) != 0) options.top = absl::GetFlag(FLAGS_top_k);
  options.dataset = absl::GetFlag(FLAGS_dataset);
  const int64_t examples =
      OrExamples(in, "examples_per_class", absl::GetFlag(FLAGS_examples_per_class));
  if (examples != 0) options.examples = examples;
  options.steps = absl::GetFlag(FLAGS_steps);
  options.seed = std::max<int64_t>(0, absl::GetFlag(FLAGS_seed));
  options.json = Json();
  absl::StatusOr<std::vector<int64_t>> classes =
      Integers("classes", absl::GetFlag(FLAGS_classes));
  if (!classes.ok()) return Usage(classes.status());
  options.classes = *classes;
  if (options.top < 1 || options.examples < 1 || options.steps < 0) {
    return Usage("--top_k, --examples_per_class must be >= 1 and --steps >= 0");
  }
  return Done(RunCircuits(in.client, options, stdout, stderr));
}

Outcome RunAtlasCommand(const Invocation& in) {
  AtlasCommandOptions options;
  options.model = in.operands[0];
  options.out_dir = OutDir(in);
  if (options.out_dir.empty()) return Usage("usage: featviz atlas MODEL --out_dir DIR");
  options.dataset = absl::GetFlag(FLAGS_dataset);
  const int64_t top_n = OrExamples(in, "top_n", absl::GetFlag(FLAGS_top_n));
  if (top_n != 0) options.examples = top_n;
  options.steps = absl::GetFlag(FLAGS_steps);
  options.seed = std::max<int64_t>(0, absl::GetFlag(FLAGS_seed));
  options.layers = absl::StrSplit(absl::GetFlag(FLAGS_layers), ',',
                                  absl::SkipEmpty());
  if (options.examples < 1 || options.examples > 100 || options.steps < 0) {
    return Usage("--top_n must be in [1, 100] and --steps >= 0");
  }
  return Done(RunAtlas(in.client, options, stdout, stderr));
}

Outcome RunBenchCommand(const Invocation& in) {
  BenchOptions options;
  options.model = absl::GetFlag(FLAGS_model);
  options.objectives = absl::GetFlag(FLAGS_objectives);
  options.clients = absl::GetFlag(FLAGS_clients);
  options.jobs_per_client = absl::GetFlag(FLAGS_jobs);
  // --steps and --parameterization default to "the server's" for render;
  // the bench states its own so that runs compare.
  options.steps = absl::GetFlag(FLAGS_steps) != 0 ? absl::GetFlag(FLAGS_steps)
                                                  : 256;
  options.batch = absl::GetFlag(FLAGS_batch);
  if (!absl::GetFlag(FLAGS_parameterization).empty()) {
    options.param = absl::GetFlag(FLAGS_parameterization);
  }
  options.seed_base = absl::GetFlag(FLAGS_seed_base);
  options.transforms = absl::GetFlag(FLAGS_transforms);
  options.sequential = absl::GetFlag(FLAGS_sequential);
  options.json = Json();
  if (absl::Status valid = ValidateBenchOptions(options); !valid.ok()) {
    return Usage(valid);
  }
  return Done(RunBench(in.client, options, stdout, stderr));
}

Outcome RunUploadCommand(const Invocation& in) {
  UploadOptions options;
  options.model_path = in.operands[0];
  options.card_path = absl::GetFlag(FLAGS_card);
  options.name = absl::GetFlag(FLAGS_name);
  return Done(RunUpload(in.client, options, Json(), stdout));
}

Outcome RunLoadCommand(const Invocation& in) {
  return Done(RunLoad(in.client, in.operands[0], Json(), stdout));
}

Outcome RunUnloadCommand(const Invocation& in) {
  return Done(RunUnload(in.client, in.operands[0], absl::GetFlag(FLAGS_version),
                        Json(), stdout));
}

Outcome RunReloadCommand(const Invocation& in) {
  return Done(RunReload(in.client, in.operands.empty() ? "" : in.operands[0],
                        Json(), stdout));
}

// Every command: its operands, what it does (its --help), its flags besides
// the global ones, its handler.
const std::vector<Command>& Commands() {
  static const auto* commands = new std::vector<Command>{
      {"models", "featviz models", "the hosted models: each version's state, "
       "bytes and last use", 0, 0, {"json"}, RunModelsCommand},
      {"layers", "featviz layers MODEL",
       "a model's layer catalogue and its outputs", 1, 1, {"json"},
       RunLayersCommand},
      {"render", "featviz render MODEL 'OBJECTIVE' [options]",
       "render a feature visualisation (render.png); with '*' in the "
       "objective (channel(conv2, *)), every listed unit of the layer in one "
       "batched request, one sheet labelled by unit",
       2, 2, Union(RenderFlags(), {"units"}), RunRenderCommand},
      {"compare", "featviz compare MODEL_A MODEL_B 'OBJECTIVE' [options]",
       "the same objective, seed and options on two models (or versions "
       "name@1 name@2): one sheet with a row each, a table of values",
       3, 3, CompareFlags(), RunCompareCommand},
      {"bench", "featviz bench [options]",
       "load-test the server with many renders: jobs/s, images*steps/s, "
       "latency percentiles",
       0, 0,
       {"json", "steps", "batch", "parameterization", "clients", "jobs",
        "model", "objectives", "sequential", "seed_base", "transforms"},
       RunBenchCommand},
      {"submit", "featviz submit MODEL 'OBJECTIVE' [options]",
       "queue a render as a job and print its id (follow it with featviz "
       "watch ID)",
       2, 2, Union(RenderFlags(), {"owner", "priority"}), RunSubmitCommand},
      {"watch", "featviz watch ID [--out FILE ...]",
       "follow a job to its end; writes its files as render does", 1, 1,
       OutputFlags(), RunWatchCommand},
      {"job", "featviz job ID",
       "a job's state (asked of the replica its id names)", 1, 1, {"json"},
       RunJobCommand},
      {"cancel", "featviz cancel ID",
       "cancel a job; answers once it has ended", 1, 1, {"json"},
       RunCancelCommand},
      {"jobs", "featviz jobs [--owner O] [--state S]",
       "the jobs the server knows, newest first", 0, 0,
       {"json", "owner", "state"}, RunJobsCommand},
      {"stats", "featviz stats", "queue, worker, cache and job figures", 0, 0,
       {"json"}, RunStatsCommand},
      {"datasets", "featviz datasets",
       "the datasets the server hosts (size, shape, classes, who uploaded "
       "it, bytes)",
       0, 0, {"json"}, RunDatasetsCommand},
      {"dataset",
       "featviz dataset upload NAME PATH [--classes a,b,...] | featviz "
       "dataset rm NAME",
       "upload: send a dataset (the uploader role): an .npy or .npz file, an "
       "IDX3 file (labels beside it), or a folder of PNGs, one subfolder per "
       "class; rm: delete a dataset you uploaded (admins: any uploaded one)",
       2, 3, {"json", "classes"}, RunDatasetCommand},
      {"activations", "featviz activations MODEL --layer L [options]",
       "a layer's activations on dataset images", 1, 1,
       Union(SliceFlags(),
             {"json", "layer", "channels", "npy", "out_dir", "out"}),
       RunActivationsCommand},
      {"attribute", "featviz attribute MODEL 'TARGET' --layer L [options]",
       "L's channels ranked by their contribution to TARGET", 2, 2,
       Union(SliceFlags(), {"json", "layer", "top_k", "out_dir", "out"}),
       RunAttributeCommand},
      {"top", "featviz top MODEL --layer L [options]",
       "the dataset images that excite each unit most; with --out_dir, each "
       "image and one labelled contact sheet of them all (<layer>_top.png)",
       1, 1,
       {"json", "layer", "channels", "dataset", "top_n", "out_dir", "out"},
       RunTopCommand},
      {"units", "featviz units MODEL [--layer L] [--label K] [options]",
       "automatic unit labels on a labelled dataset: the classes of each "
       "unit's top examples (\"fires on 7s: 82 % of its top 100\"), a class "
       "selectivity index in [0, 1], the classes it feeds most by "
       "attribution; --label K lists the units most selective for class K",
       1, 1, {"json", "layer", "label", "limit", "top_n", "dataset"},
       RunUnitsCommand},
      {"circuits", "featviz circuits MODEL --layer L --out_dir DIR",
       "per class: its visualisation, its top-k detector channels in L with "
       "their visualisations and activation maps",
       1, 1,
       {"json", "layer", "top_k", "out_dir", "out", "dataset",
        "examples_per_class", "examples", "classes", "steps", "seed"},
       RunCircuitsCommand},
      {"atlas", "featviz atlas MODEL --out_dir DIR",
       "a static site with every conv channel and linear neuron: pictures, "
       "dataset examples, statistics, loss curves",
       1, 1,
       {"out_dir", "out", "dataset", "top_n", "examples", "layers", "steps",
        "seed"},
       RunAtlasCommand},
      {"upload", "featviz upload MODEL.pt [--card CARD.json] [--name NAME]",
       "send a TorchScript model to the server (the admin or uploader role); "
       "it is served as the next version of NAME",
       1, 1, {"json", "card", "name"}, RunUploadCommand},
      {"load", "featviz load PATH",
       "serve a model of the server's repository (the admin role)", 1, 1,
       {"json"}, RunLoadCommand},
      {"unload", "featviz unload NAME [--version V]",
       "stop serving a model; waits for its running jobs (the admin role)",
       1, 1, {"json", "version"}, RunUnloadCommand},
      {"reload", "featviz reload [NAME]",
       "bring served models in line with the repository (the admin role)", 0,
       1, {"json"}, RunReloadCommand},
  };
  return *commands;
}

const Command* FindCommand(const std::string& name) {
  for (const Command& command : Commands()) {
    if (name == command.name) return &command;
  }
  return nullptr;
}

std::string CommandNames() {
  std::vector<std::string> names;
  for (const Command& command : Commands()) names.push_back(command.name);
  return absl::StrJoin(names, ", ");
}

// Whether some command takes flag `name`.
bool KnownFlag(const std::string& name) {
  if (GlobalFlags().count(name) > 0) return true;
  for (const Command& command : Commands()) {
    if (command.flags.count(name) > 0) return true;
  }
  return false;
}

// Parses argv into the flags above and positional arguments. Unlike
// absl::ParseCommandLine, an error is returned (a usage error, exit 2)
// rather than exiting with 1. Flags may come anywhere; "--" ends them.
// Arguments starting with a single '-' are positional, so an objective may
// read '-0.01 * tv() + prob(3)'. Old flag names are read as the new ones,
// with a note.
absl::StatusOr<Args> ParseArgs(int argc, char** argv) {
  Args args;
  bool flags_done = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (flags_done || !absl::StartsWith(arg, "--")) {
      if (!flags_done && (arg == "-h")) {
        args.help = true;
        continue;
      }
      args.positional.push_back(arg);
      continue;
    }
    if (arg == "--") {
      flags_done = true;
      continue;
    }
    absl::string_view body = absl::StripPrefix(arg, "--");
    std::string name(body.substr(0, body.find('=')));
    const bool has_value = body.find('=') != absl::string_view::npos;
    std::string value =
        has_value ? std::string(body.substr(body.find('=') + 1)) : "";
    if (name == "help" || name == "helpfull") {
      args.help = true;
      continue;
    }
    if (const auto alias = FlagAliases().find(name);
        alias != FlagAliases().end()) {
      args.notes.push_back(absl::StrCat("--", name, " is deprecated; use --",
                                        alias->second));
      name = alias->second;
    }
    absl::CommandLineFlag* flag = nullptr;
    if (KnownFlag(name)) flag = absl::FindCommandLineFlag(name);
    bool negated = false;
    if (flag == nullptr && absl::StartsWith(name, "no")) {
      const std::string positive = name.substr(2);
      if (KnownFlag(positive)) {
        flag = absl::FindCommandLineFlag(positive);
        if (flag != nullptr && flag->IsOfType<bool>()) {
          negated = true;
          name = positive;
        } else {
          flag = nullptr;
        }
      }
    }
    if (flag == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag --", name));
    }
    if (flag->IsOfType<bool>()) {
      if (negated && has_value) {
        return absl::InvalidArgumentError(
            absl::StrCat("--no", name, " takes no value"));
      }
      if (!has_value) value = negated ? "false" : "true";
    } else if (!has_value) {
      if (i + 1 >= argc) {
        return absl::InvalidArgumentError(
            absl::StrCat("--", name, " needs a value"));
      }
      value = argv[++i];
    }
    std::string error;
    if (!flag->ParseFrom(value, &error)) {
      return absl::InvalidArgumentError(absl::StrCat("--", name, ": ", error));
    }
    args.flags.insert(name);
  }
  return args;
}

// `text` wrapped into lines of at most `width` characters, each after
// `indent` spaces.
std::string Wrap(absl::string_view text, size_t indent, size_t width) {
  std::string out;
  std::string line;
  for (absl::string_view word : absl::StrSplit(text, ' ', absl::SkipEmpty())) {
    if (!line.empty() && indent + line.size() + 1 + word.size() > width) {
      absl::StrAppend(&out, std::string(indent, ' '), line, "\n");
      line.clear();
    }
    absl::StrAppend(&line, line.empty() ? "" : " ", word);
  }
  if (!line.empty()) absl::StrAppend(&out, std::string(indent, ' '), line, "\n");
  return out;
}

// The flags `names` with the help text each was defined with.
std::string FlagsHelp(const std::set<std::string>& names) {
  std::string out;
  for (const std::string& name : names) {
    const absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
    if (flag == nullptr) continue;
    absl::StrAppend(&out, "  --", name, "\n", Wrap(flag->Help(), 6, 79));
  }
  return out;
}

// `featviz COMMAND --help`: the command's usage, what it does, and the flags
// it takes (the global help lists every command).
std::string CommandHelp(const Command& command) {
  std::set<std::string> flags = command.flags;
  // Old spellings (--examples; --out for a folder) stay out of the list.
  flags.erase("examples");
  if (flags.count("out_dir") > 0) flags.erase("out");
  std::string help = absl::StrCat("usage: ", command.usage, "\n\n",
                                  Wrap(command.summary, 0, 79));
  if (!flags.empty()) absl::StrAppend(&help, "\noptions:\n", FlagsHelp(flags));
  absl::StrAppend(&help, "\nglobal options:\n", FlagsHelp(GlobalFlags()),
                  "\n'featviz --help' lists every command, the objective "
                  "syntax and the exit status.\n");
  return help;
}

std::string ServerAddress() {
  std::string server = absl::GetFlag(FLAGS_server);
  if (!server.empty()) return server;
  const char* env = std::getenv("FEATVIZ_SERVER");
  if (env != nullptr && env[0] != '\0') return env;
  return kDefaultServer;
}

int UsageError(const std::string& message) {
  std::fprintf(stderr, "featviz: %s\nrun 'featviz --help' for usage\n",
               message.c_str());
  return 2;
}

int Fail(const absl::Status& status) {
  std::fprintf(stderr, "featviz: %s: %s\n",
               absl::StatusCodeToString(status.code()).c_str(),
               std::string(status.message()).c_str());
  if (status.code() == absl::StatusCode::kUnauthenticated) {
    // The server's message speaks of metadata; say how this CLI sends it.
    const char* env = std::getenv("FEATVIZ_TOKEN");
    const bool sent = !absl::GetFlag(FLAGS_token_file).empty() ||
                      (env != nullptr && env[0] != '\0');
    std::fputs(sent ? "featviz: the server refused the token sent (from "
                      "--token_file, else $FEATVIZ_TOKEN)\n"
                    : "featviz: no token was sent: give it with --token_file "
                      "FILE (its first line) or $FEATVIZ_TOKEN\n",
               stderr);
  }
  return 1;
}

int Main(int argc, char** argv) {
  absl::StatusOr<Args> args = ParseArgs(argc, argv);
  if (!args.ok()) return UsageError(std::string(args.status().message()));
  if (args->help || (!args->positional.empty() && args->positional[0] == "help")) {
    // `featviz CMD --help` and `featviz help CMD`: that command's own help.
    const size_t at = !args->positional.empty() && args->positional[0] == "help";
    const Command* command = args->positional.size() > at
                                 ? FindCommand(args->positional[at])
                                 : nullptr;
    std::fputs(command != nullptr ? CommandHelp(*command).c_str() : kUsage,
               stdout);
    return 0;
  }
  if (args->positional.empty()) {
    std::fputs(kUsage, stderr);
    return 2;
  }
  const Command* command = FindCommand(args->positional[0]);
  if (command == nullptr) {
    return UsageError(absl::StrCat("unknown command '", args->positional[0],
                                   "' (", CommandNames(), ")"));
  }
  for (const std::string& flag : args->flags) {
    if (GlobalFlags().count(flag) == 0 && command->flags.count(flag) == 0) {
      return UsageError(
          absl::StrCat("featviz ", command->name, " takes no flag --", flag));
    }
  }
  const std::vector<std::string> operands(args->positional.begin() + 1,
                                          args->positional.end());
  if (static_cast<int>(operands.size()) < command->min_operands ||
      static_cast<int>(operands.size()) > command->max_operands) {
    return UsageError(absl::StrCat("usage: ", command->usage));
  }
  for (const std::string& note : args->notes) {
    std::fprintf(stderr, "featviz: %s\n", note.c_str());
  }

  const double timeout = absl::GetFlag(FLAGS_timeout);
  if (!(timeout >= 0)) {
    return UsageError(absl::StrCat("--timeout must be >= 0, got ", timeout));
  }
  ClientOptions client_options;
  if (timeout > 0) {
    client_options.call_timeout = absl::Seconds(timeout);
    client_options.render_timeout = absl::Seconds(timeout);
  }
  absl::StatusOr<std::string> token =
      ResolveToken(absl::GetFlag(FLAGS_token_file));
  if (!token.ok()) return Fail(token.status());
  client_options.token = *std::move(token);
  client_options.tls_ca = absl::GetFlag(FLAGS_tls_ca);
  client_options.tls_cert = absl::GetFlag(FLAGS_tls_cert);
  client_options.tls_key = absl::GetFlag(FLAGS_tls_key);
  absl::StatusOr<VisualizerClientPtr> client =
      VisualizerClient::Create(ServerAddress(), client_options);
  if (!client.ok()) return UsageError(std::string(client.status().message()));

  const Outcome outcome = command->run({**client, operands, *args});
  std::fflush(stdout);
  if (!outcome.usage.empty()) return UsageError(outcome.usage);
  if (!outcome.status.ok()) return Fail(outcome.status);
  return 0;
}

}  // namespace
}  // namespace featviz::client

int main(int argc, char** argv) { return featviz::client::Main(argc, argv); }
