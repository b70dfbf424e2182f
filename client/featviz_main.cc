// featviz: the command-line client of a featviz server.
//
//   featviz models
//   featviz layers mnist_classifier
//   featviz render mnist_classifier 'prob(3)' --steps 256 --out three.png
//   featviz bench --clients 8 --jobs 8
//   featviz job 17@10.0.0.2:8980
//
// --server is any gRPC target; one naming several replicas
// (dns:///featviz.lab.svc:8980) is balanced round-robin.
//
// Exit codes: 0 success; 1 an error from the server, an unreachable server,
// or a file that could not be written; 2 a usage error.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/flags/commandlineflag.h"
#include "absl/flags/flag.h"
#include "absl/flags/reflection.h"
#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/time.h"
#include "client/bench.h"
#include "client/circuits_commands.h"
#include "client/commands.h"
#include "client/progress_bar.h"
#include "client/upload.h"
#include "client/visualizer_client.h"

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
ABSL_FLAG(std::string, param, "", "Parameterisation: fft or pixel; default fft");
ABSL_FLAG(int64_t, batch, 1, "Images rendered together");
ABSL_FLAG(int64_t, seed, -1, "Random seed; -1: the server picks (and reports) one");
ABSL_FLAG(double, lr, 0, "Adam learning rate; 0: the server's (0.05)");
ABSL_FLAG(double, decay, 0, "FFT spectrum decay power; 0: the server's (1.0)");
ABSL_FLAG(std::string, transforms, "default",
          "default, none, or a list like 'pad(2), jitter(1), scale(0.9, 1.1), "
          "rotate(-5, 5)'");
ABSL_FLAG(int64_t, progress_every, 0,
          "Progress event every N steps; 0: the server's (16)");
ABSL_FLAG(std::string, out, "", "Labelled grid PNG of all images");
ABSL_FLAG(std::string, npy, "", ".npy file of the float images [B, C, H, W]");
ABSL_FLAG(std::string, png_dir, "", "Directory for one PNG per image, image_<b>.png");
ABSL_FLAG(std::string, previews, "",
          "Directory for a preview PNG per progress event, step_<NNNNN>.png");
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

ABSL_FLAG(std::string, layer, "", "circuits: the layer whose channels detect");
ABSL_FLAG(int64_t, top, 3, "circuits: detector channels per class");
ABSL_FLAG(std::string, dataset, "",
          "circuits, atlas: a dataset the server hosts; default: the first "
          "that fits the model");
ABSL_FLAG(int64_t, examples, 0,
          "circuits: images of each class to score on (64); atlas: top "
          "dataset examples per unit (8)");
ABSL_FLAG(std::string, classes, "", "circuits: comma-separated classes; all when empty");
ABSL_FLAG(std::string, layers, "", "atlas: comma-separated layers; all conv and linear when empty");

namespace featviz::client {
namespace {

constexpr char kUsage[] = R"(usage: featviz [--server ADDR] [--timeout S] COMMAND ...

commands:
  models [--json]                 the hosted models
  layers MODEL [--json]           a model's layer catalogue
  render MODEL 'OBJECTIVE' [options]
                                  render a feature visualisation
  bench [options]                 load-test the server with many renders
  circuits MODEL --layer L --out DIR [--top K]
                                  per class: its visualisation, its top-K
                                  detector channels in L with their
                                  visualisations and activation maps
  atlas MODEL --out DIR           a static site with every conv channel and
                                  linear neuron: pictures, dataset examples,
                                  statistics, loss curves
  upload MODEL.pt [--card CARD.json] [--name NAME] [--json]
                                  send a TorchScript model to the server
                                  (uploader or admin role); it is served as
                                  the next version of NAME
  job ID [--json]                 a job's state (asked of the replica its id names)
  cancel ID [--json]              cancel a job; answers once it has ended

global options:
  --server ADDR     host:port (default $FEATVIZ_SERVER, else 127.0.0.1:8980), or
                    dns:///host:port to balance round-robin over every address
  --timeout S       deadline in seconds (0: none for render, 30 s otherwise)
  --token_file F    bearer token: F's first line (default $FEATVIZ_TOKEN)
  --tls_ca F        connect over TLS, verifying the server against PEM CAs F
  --tls_cert F --tls_key K   client certificate and key (mTLS)

render options:
  --steps N  --size N | --height N --width N  --gray  --param fft|pixel
  --batch N  --seed N  --lr X
  --decay X  --transforms default|none|'pad(2), jitter(1), scale(0.9, 1.1), rotate(-5, 5)'
  --progress_every N
  --out grid.png  --labels 'a,b,c'  --scale N  --columns N
  --npy images.npy  --png_dir DIR  --previews DIR
  --json            print the result's statistics as one JSON object

bench options:
  --clients N (8)  --jobs M per client (4)  --model NAME (mnist_classifier)
  --objectives 'channel(conv2, {i%32})|logit({i%10})'   job g uses template
                    g % T with {i} -> g and {i%K} -> g mod K
  --steps N (256)  --batch N (1)  --param fft|pixel (fft)
  --seed_base S (0) job g's seed is S + g; a server's result cache answers
                    seeds it has seen, so change S to rerun against it
  --sequential      the same jobs one after another (the baseline)
  --json            one JSON object: jobs, failures, jobs/s, latency, ...

circuits options:
  --layer L  --top K (3)  --out DIR  --dataset NAME  --examples N (64 per class)
  --classes 'a,b'  --steps N  --seed N (0)  --json

atlas options:
  --out DIR  --dataset NAME  --examples N (8 per unit)  --layers 'a,b'
  --steps N  --seed N (0)

objectives: neuron(conv2, 5)  channel(conv2, 5)  conv2:5  layer(conv2)
  channel('0', 3) (quoted layer paths)  output(age, 2) (a model output)
  logit(7)  prob(7)  direction(fc1, [...])  diversity(conv2)  alignment(conv2)
  tv()  l1()  l2()  any term with batch=N;  channel(conv2, 5) + 0.5 * prob(7) - 0.01 * tv()

exit status: 0 ok, 1 server or file error, 2 usage error
)";

constexpr char kDefaultServer[] = "127.0.0.1:8980";

// Which flags each command takes, besides the global ones.
const std::map<std::string, std::set<std::string>>& CommandFlags() {
  static const auto* flags = new std::map<std::string, std::set<std::string>>{
      {"models", {"json"}},
      {"layers", {"json"}},
      {"job", {"json"}},
      {"cancel", {"json"}},
      {"upload", {"json", "card", "name"}},
      {"render",
       {"json", "steps", "size", "height", "width", "gray", "param", "batch", "seed", "lr", "decay",
        "transforms", "progress_every", "out", "npy", "png_dir", "previews",
        "labels", "scale", "columns"}},
      {"bench",
       {"json", "steps", "batch", "param", "clients", "jobs", "model",
        "objectives", "sequential", "seed_base"}},
      {"circuits",
       {"json", "layer", "top", "out", "dataset", "examples", "classes",
        "steps", "seed"}},
      {"atlas", {"out", "dataset", "examples", "layers", "steps", "seed"}},
  };
  return *flags;
}
const std::set<std::string>& GlobalFlags() {
  static const auto* flags = new std::set<std::string>{
      "server", "timeout", "token_file", "tls_ca", "tls_cert", "tls_key"};
  return *flags;
}

// Whether some command takes flag `name`.
bool KnownFlag(const std::string& name) {
  if (GlobalFlags().count(name) > 0) return true;
  for (const auto& [command, flags] : CommandFlags()) {
    if (flags.count(name) > 0) return true;
  }
  return false;
}

struct Args {
  std::vector<std::string> positional;
  std::vector<std::string> flags;  // Names, as set.
  bool help = false;
};

// Parses argv into the flags above and positional arguments. Unlike
// absl::ParseCommandLine, an error is returned (a usage error, exit 2)
// rather than exiting with 1. Flags may come anywhere; "--" ends them.
// Arguments starting with a single '-' are positional, so an objective may
// read '-0.01 * tv() + prob(3)'.
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
    args.flags.push_back(name);
  }
  return args;
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
  return 1;
}

int Main(int argc, char** argv) {
  absl::StatusOr<Args> args = ParseArgs(argc, argv);
  if (!args.ok()) return UsageError(std::string(args.status().message()));
  if (args->help || (!args->positional.empty() && args->positional[0] == "help")) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  if (args->positional.empty()) {
    std::fputs(kUsage, stderr);
    return 2;
  }
  const std::string command = args->positional[0];
  const auto allowed = CommandFlags().find(command);
  if (allowed == CommandFlags().end()) {
    return UsageError(absl::StrCat("unknown command '", command,
                                   "' (models, layers, render, bench, circuits, "
                                   "atlas, upload, job, cancel)"));
  }
  for (const std::string& flag : args->flags) {
    if (GlobalFlags().count(flag) == 0 && allowed->second.count(flag) == 0) {
      return UsageError(
          absl::StrCat("featviz ", command, " takes no flag --", flag));
    }
  }
  const std::vector<std::string> operands(args->positional.begin() + 1,
                                          args->positional.end());

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
  const std::string address = ServerAddress();
  absl::StatusOr<VisualizerClientPtr> client =
      VisualizerClient::Create(address, client_options);
  if (!client.ok()) return UsageError(std::string(client.status().message()));

  absl::Status status;
  if (command == "models") {
    if (!operands.empty()) {
      return UsageError("featviz models takes no arguments");
    }
    status = RunModels(**client, absl::GetFlag(FLAGS_json), stdout);
  } else if (command == "layers") {
    if (operands.size() != 1) return UsageError("usage: featviz layers MODEL");
    status = RunLayers(**client, operands[0], absl::GetFlag(FLAGS_json), stdout);
  } else if (command == "upload") {
    if (operands.size() != 1) {
      return UsageError(
          "usage: featviz upload MODEL.pt [--card CARD.json] [--name NAME]");
    }
    UploadOptions options;
    options.model_path = operands[0];
    options.card_path = absl::GetFlag(FLAGS_card);
    options.name = absl::GetFlag(FLAGS_name);
    status = RunUpload(**client, options, absl::GetFlag(FLAGS_json), stdout);
  } else if (command == "job" || command == "cancel") {
    if (operands.size() != 1) {
      return UsageError(absl::StrCat("usage: featviz ", command, " ID"));
    }
    status = RunJob(**client, operands[0], command == "cancel",
                    absl::GetFlag(FLAGS_json), stdout);
  } else if (command == "bench") {
    if (!operands.empty()) return UsageError("featviz bench takes no arguments");
    BenchOptions options;
    options.model = absl::GetFlag(FLAGS_model);
    options.objectives = absl::GetFlag(FLAGS_objectives);
    options.clients = absl::GetFlag(FLAGS_clients);
    options.jobs_per_client = absl::GetFlag(FLAGS_jobs);
    // --steps and --param default to "the server's" for render; the bench
    // states its own so that runs compare.
    options.steps = absl::GetFlag(FLAGS_steps) != 0 ? absl::GetFlag(FLAGS_steps)
                                                    : 256;
    options.batch = absl::GetFlag(FLAGS_batch);
    if (!absl::GetFlag(FLAGS_param).empty()) {
      options.param = absl::GetFlag(FLAGS_param);
    }
    options.seed_base = absl::GetFlag(FLAGS_seed_base);
    options.sequential = absl::GetFlag(FLAGS_sequential);
    options.json = absl::GetFlag(FLAGS_json);
    if (absl::Status valid = ValidateBenchOptions(options); !valid.ok()) {
      return UsageError(std::string(valid.message()));
    }
    status = RunBench(**client, options, stdout, stderr);
  } else if (command == "circuits") {
    if (operands.size() != 1 || absl::GetFlag(FLAGS_layer).empty() ||
        absl::GetFlag(FLAGS_out).empty()) {
      return UsageError("usage: featviz circuits MODEL --layer L --out DIR [--top K]");
    }
    CircuitsCommandOptions options;
    options.model = operands[0];
    options.layer = absl::GetFlag(FLAGS_layer);
    options.top = absl::GetFlag(FLAGS_top);
    options.out_dir = absl::GetFlag(FLAGS_out);
    options.dataset = absl::GetFlag(FLAGS_dataset);
    if (absl::GetFlag(FLAGS_examples) != 0) {
      options.examples = absl::GetFlag(FLAGS_examples);
    }
    options.steps = absl::GetFlag(FLAGS_steps);
    options.seed = std::max<int64_t>(0, absl::GetFlag(FLAGS_seed));
    options.json = absl::GetFlag(FLAGS_json);
    for (absl::string_view c : absl::StrSplit(absl::GetFlag(FLAGS_classes), ',',
                                             absl::SkipEmpty())) {
      int64_t value = 0;
      if (!absl::SimpleAtoi(c, &value)) {
        return UsageError(absl::StrCat("--classes: '", c, "' is not a class index"));
      }
      options.classes.push_back(value);
    }
    if (options.top < 1 || options.examples < 1 || options.steps < 0) {
      return UsageError("--top, --examples must be >= 1 and --steps >= 0");
    }
    status = RunCircuits(**client, options, stdout, stderr);
  } else if (command == "atlas") {
    if (operands.size() != 1 || absl::GetFlag(FLAGS_out).empty()) {
      return UsageError("usage: featviz atlas MODEL --out DIR");
    }
    AtlasCommandOptions options;
    options.model = operands[0];
    options.out_dir = absl::GetFlag(FLAGS_out);
    options.dataset = absl::GetFlag(FLAGS_dataset);
    if (absl::GetFlag(FLAGS_examples) != 0) {
      options.examples = absl::GetFlag(FLAGS_examples);
    }
    options.steps = absl::GetFlag(FLAGS_steps);
    options.seed = std::max<int64_t>(0, absl::GetFlag(FLAGS_seed));
    options.layers = absl::StrSplit(absl::GetFlag(FLAGS_layers), ',',
                                    absl::SkipEmpty());
    if (options.examples < 1 || options.examples > 100 || options.steps < 0) {
      return UsageError("--examples must be in [1, 100] and --steps >= 0");
    }
    status = RunAtlas(**client, options, stdout, stderr);
  } else {
    if (operands.size() != 2) {
      return UsageError("usage: featviz render MODEL 'OBJECTIVE' [options]");
    }
    RenderCommandOptions options;
    options.model = operands[0];
    options.objective = operands[1];
    options.steps = absl::GetFlag(FLAGS_steps);
    options.size = absl::GetFlag(FLAGS_size);
    options.height = absl::GetFlag(FLAGS_height);
    options.width = absl::GetFlag(FLAGS_width);
    options.gray = absl::GetFlag(FLAGS_gray);
    options.param = absl::GetFlag(FLAGS_param);
    options.batch = absl::GetFlag(FLAGS_batch);
    options.seed = absl::GetFlag(FLAGS_seed);
    options.lr = absl::GetFlag(FLAGS_lr);
    options.decay = absl::GetFlag(FLAGS_decay);
    options.transforms = absl::GetFlag(FLAGS_transforms);
    options.progress_every = absl::GetFlag(FLAGS_progress_every);
    options.out = absl::GetFlag(FLAGS_out);
    options.npy = absl::GetFlag(FLAGS_npy);
    options.png_dir = absl::GetFlag(FLAGS_png_dir);
    options.previews = absl::GetFlag(FLAGS_previews);
    const std::string labels = absl::GetFlag(FLAGS_labels);
    if (!labels.empty()) options.labels = absl::StrSplit(labels, ',');
    options.scale = absl::GetFlag(FLAGS_scale);
    options.columns = absl::GetFlag(FLAGS_columns);
    options.json = absl::GetFlag(FLAGS_json);
    options.progress_bar = ProgressBar::IsTerminal(stderr);
    absl::StatusOr<featviz::v1::RenderRequest> request =
        BuildRenderRequest(options);
    if (!request.ok()) return UsageError(std::string(request.status().message()));
    status = RunRender(**client, options, *request, stdout, stderr);
  }
  std::fflush(stdout);
  if (!status.ok()) return Fail(status);
  return 0;
}

}  // namespace
}  // namespace featviz::client

int main(int argc, char** argv) { return featviz::client::Main(argc, argv); }
