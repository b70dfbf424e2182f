// End-to-end tests of the `featviz` CLI against the real featviz-server,
// started on a free loopback port with the bundled MNIST classifier.
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "absl/strings/match.h"
#include "core/device.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "core/image.h"
#include "tests/client/process.h"

namespace featviz::testing {
namespace {

using nlohmann::json;

const char kCli[] = FEATVIZ_CLI_BINARY;
const char kServer[] = FEATVIZ_SERVER_BINARY;
const char kModels[] = FEATVIZ_MODELS_DIR;

std::string ScratchDir(const std::string& name) {
  const std::string dir =
      absl::StrCat(::testing::TempDir(), "featviz_cli_test_", getpid(), "_", name);
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

// Runs the CLI with `args`; stdout and stderr are pipes, not terminals.
CommandResult Cli(const std::vector<std::string>& args,
                  const std::vector<std::string>& env = {}) {
  std::vector<std::string> argv = {kCli};
  argv.insert(argv.end(), args.begin(), args.end());
  absl::StatusOr<CommandResult> result = RunCommand(argv, env);
  EXPECT_TRUE(result.ok()) << result.status();
  return result.ok() ? *result : CommandResult{};
}

std::vector<std::string> Lines(const std::string& text) {
  return absl::StrSplit(text, '\n', absl::SkipEmpty());
}

// One server for every test of the suite.
class CliTest : public SharedServerTest {
 protected:
  static void SetUpTestSuite() { StartSharedServer(kServer, kModels, "cli_test"); }
  static void TearDownTestSuite() { StopSharedServer(); }

  // The CLI pointed at the test server.
  static CommandResult Run(std::vector<std::string> args) {
    args.insert(args.begin(), {"--server", server_->address()});
    return Cli(args);
  }
};


TEST_F(CliTest, ModelsListsTheMnistClassifier) {
  const CommandResult r = Run({"models"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::vector<std::string> lines = Lines(r.out);
  ASSERT_GE(lines.size(), 2u) << r.out;
  EXPECT_TRUE(absl::StartsWith(lines[0], "NAME")) << lines[0];
  bool found = false;
  for (const std::string& line : lines) {
    if (!absl::StartsWith(line, "mnist_classifier ")) continue;
    found = true;
    std::vector<std::string> cells =
        absl::StrSplit(line, ' ', absl::SkipEmpty());
    ASSERT_EQ(cells.size(), 9u) << line;
    EXPECT_EQ(cells[2].size(), 12u) << "hash column: " << line;
    EXPECT_EQ(cells[3], "1x28x28");
    EXPECT_EQ(cells[4], "10");
    // A server without a model budget keeps every model loaded.
    EXPECT_EQ(cells[6], "loaded") << line;
    EXPECT_GT(std::stoll(cells[7]), 10000) << "bytes column: " << line;
    EXPECT_TRUE(cells[8] == "never" || absl::EndsWith(cells[8], "s") ||
                absl::EndsWith(cells[8], "m") || absl::EndsWith(cells[8], "h"))
        << "last used column: " << line;
  }
  EXPECT_TRUE(found) << r.out;
  EXPECT_EQ(r.err, "");
}

TEST_F(CliTest, ModelsJsonIsAListOfModels) {
  const CommandResult r = Run({"models", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json models = json::parse(r.out);
  ASSERT_TRUE(models.is_array());
  bool found = false;
  for (const json& m : models) {
    if (m["name"] != "mnist_classifier") continue;
    found = true;
    EXPECT_EQ(m["content_hash"].get<std::string>().size(), 64u);
    EXPECT_EQ(m["input"]["height"], 28);
    EXPECT_EQ(m["class_names"].size(), 10u);
    EXPECT_EQ(m["state"], "loaded");
    EXPECT_GT(m["memory_bytes"].get<int64_t>(), 10000);
    ASSERT_EQ(m["copies"].size(), 1u);
    EXPECT_EQ(m["copies"][0]["device"], "cpu");
    EXPECT_EQ(m["copies"][0]["state"], "loaded");
  }
  EXPECT_TRUE(found) << r.out;
}

TEST_F(CliTest, ServerAddressComesFromTheEnvironment) {
  const CommandResult r =
      Cli({"models"}, {absl::StrCat("FEATVIZ_SERVER=", server_->address())});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(absl::StrContains(r.out, "mnist_classifier")) << r.out;
}

TEST_F(CliTest, LayersListsConv2With32Channels) {
  const CommandResult r = Run({"layers", "mnist_classifier"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  bool found = false;
  for (const std::string& line : Lines(r.out)) {
    if (!absl::StartsWith(line, "conv2 ")) continue;
    found = true;
    std::vector<std::string> cells =
        absl::StrSplit(line, ' ', absl::SkipEmpty());
    ASSERT_GE(cells.size(), 2u) << line;
    EXPECT_EQ(cells[cells.size() - 2], "32") << line;
    EXPECT_EQ(cells.back(), "spatial") << line;
    EXPECT_TRUE(absl::StrContains(line, "[1, 32, 8, 8]")) << line;
  }
  EXPECT_TRUE(found) << r.out;

  const CommandResult j = Run({"layers", "mnist_classifier", "--json"});
  ASSERT_EQ(j.exit_code, 0) << j.err;
  const json layers = json::parse(j.out);
  bool conv2 = false;
  for (const json& layer : layers) {
    if (layer["path"] == "conv2") {
      conv2 = true;
      EXPECT_EQ(layer["channels"], 32);
    }
  }
  EXPECT_TRUE(conv2) << j.out;
}

TEST_F(CliTest, RenderProbJsonReachesTheClassAndWritesFiles) {
  const std::string dir = ScratchDir("render_prob");
  const std::string png = dir + "/tmp.png";
  const std::string npy = dir + "/tmp.npy";
  const CommandResult r =
      Run({"render", "mnist_classifier", "prob(3)", "--steps", "256", "--seed",
           "0", "--json", "--out", png, "--npy", npy});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  // Exactly one JSON document on stdout.
  ASSERT_EQ(Lines(r.out).size(), 1u) << r.out;
  const json report = json::parse(r.out);
  EXPECT_EQ(report["model"], "mnist_classifier");
  EXPECT_EQ(report["objective"], "prob(3)");
  EXPECT_EQ(report["seed"], 0);
  EXPECT_EQ(report["steps"], 256);
  EXPECT_EQ(report["model_hash"].get<std::string>().size(), 64u);
  ASSERT_EQ(report["terms"].size(), 1u);
  EXPECT_EQ(report["terms"][0]["term"], "prob(3)");
  EXPECT_GE(report["probs"][0][3].get<double>(), 0.99) << r.out;
  EXPECT_EQ(report["top_class"][0], 3);
  EXPECT_EQ(report["logits"][0].size(), 10u);
  EXPECT_EQ(report["files"]["out"], png);
  EXPECT_EQ(report["files"]["npy"], npy);

  ASSERT_TRUE(std::filesystem::exists(png));
  EXPECT_EQ(ReadFileOrEmpty(png).substr(1, 3), "PNG");
  const std::string npy_bytes = ReadFileOrEmpty(npy);
  ASSERT_GT(npy_bytes.size(), 128u);
  EXPECT_EQ(npy_bytes.substr(0, 6), "\x93NUMPY");
  EXPECT_TRUE(absl::StrContains(npy_bytes.substr(0, 128), "'shape': (1, 1, 28, 28)"))
      << npy_bytes.substr(0, 128);
  // 1 * 1 * 28 * 28 float32 after the header.
  EXPECT_GT(npy_bytes.size(), 28u * 28 * 4);
  // Piped: no progress bar.
  EXPECT_FALSE(absl::StrContains(r.err, "\033")) << r.err;
  EXPECT_FALSE(absl::StrContains(r.err, "\r")) << r.err;
  // The server's default (--precision auto): bf16 on a CPU that computes
  // it natively, fp32 elsewhere.
  std::string why;
  EXPECT_EQ(report["precision"],
            featviz::core::PrecisionName(featviz::core::DefaultPrecision(
                featviz::core::PrecisionFactsFor({c10::Device(c10::kCPU)}),
                &why)));
}

TEST_F(CliTest, RenderPrecisionGoesToTheServerAndComesBackInTheReport) {
  const CommandResult bf16 =
      Run({"render", "mnist_classifier", "conv2:3", "--steps", "4", "--seed",
           "0", "--precision", "bf16", "--json", "--out="});
  ASSERT_EQ(bf16.exit_code, 0) << bf16.err;
  EXPECT_EQ(json::parse(bf16.out)["precision"], "bf16");
  const CommandResult bad =
      Run({"render", "mnist_classifier", "conv2:3", "--steps", "4",
           "--precision", "half", "--out="});
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_TRUE(absl::StrContains(
      bad.err, "precision must be fp32, tf32 or bf16, got 'half'"))
      << bad.err;
}

TEST_F(CliTest, PipedRenderPrintsASummaryAndAProgressLinePerTenth) {
  const CommandResult r =
      Run({"render", "mnist_classifier", "channel(conv2, 5)", "--steps", "32",
           "--progress_every", "1", "--out="});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  ASSERT_EQ(Lines(r.out).size(), 1u) << r.out;
  EXPECT_TRUE(absl::StrContains(r.out, "32 steps")) << r.out;
  EXPECT_FALSE(absl::StrContains(r.out + r.err, "\033")) << r.out << r.err;
  EXPECT_FALSE(absl::StrContains(r.out + r.err, "\r")) << r.out << r.err;
  // One plain line per 10 % of the steps, the last at 32/32.
  const std::vector<std::string> progress = Lines(r.err);
  ASSERT_EQ(progress.size(), 10u) << r.err;
  EXPECT_TRUE(absl::StrContains(progress.back(), "32/32")) << r.err;
}

// --accentuate sends an .npy seed as a reference tensor and prints what the
// accentuation did; the JSON carries it too.
TEST_F(CliTest, RenderAccentuatesAnNpySeedAndPrintsTheOutcome) {
  const std::string dir = ScratchDir("accentuate");
  // A plus sign: a horizontal and a vertical stroke.
  at::Tensor seed = at::zeros({1, 28, 28});
  seed.narrow(1, 13, 3).narrow(2, 6, 16).fill_(1.0);
  seed.narrow(2, 13, 3).narrow(1, 6, 16).fill_(1.0);
  const std::string path = dir + "/seed.npy";
  ASSERT_TRUE(core::WriteNpy(seed, path).ok());
  const CommandResult r =
      Run({"render", "mnist_classifier", "logit(4)", "--accentuate", path,
           "--seed", "1", "--out="});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::vector<std::string> lines = Lines(r.out);
  ASSERT_EQ(lines.size(), 2u) << r.out;
  EXPECT_TRUE(absl::StrContains(lines[0], "logit(4) - 4 * l2(reference(0))"))
      << r.out;
  EXPECT_TRUE(absl::StartsWith(lines[1], "accentuation: unit ")) << r.out;
  EXPECT_TRUE(absl::StrContains(lines[1], "pixel RMS distance")) << r.out;
  EXPECT_TRUE(absl::StrContains(lines[1], path)) << r.out;

  const CommandResult j =
      Run({"render", "mnist_classifier", "logit(4)", "--accentuate", path,
           "--accentuate_layer", "conv1", "--seed", "1", "--json", "--out="});
  ASSERT_EQ(j.exit_code, 0) << j.err;
  const json report = json::parse(j.out);
  EXPECT_TRUE(absl::StrContains(report["objective"].get<std::string>(),
                                "4 * inversion_l2(conv1, reference(0))"))
      << j.out;
  ASSERT_EQ(report["accentuation"].size(), 1u) << j.out;
  EXPECT_GT(report["accentuation"][0]["value"].get<double>(),
            report["accentuation"][0]["seed_value"].get<double>());
  EXPECT_GT(report["accentuation"][0]["pixel_distance"].get<double>(), 0);

  // Usage errors before anything is sent; the server names its field.
  EXPECT_EQ(Run({"render", "mnist_classifier", "logit(4)", "--accentuate",
                 "dataset:x", "--out="})
                .exit_code,
            2);
  EXPECT_EQ(Run({"render", "mnist_classifier", "logit(4)",
                 "--accentuate_weight", "2", "--out="})
                .exit_code,
            2);
  const CommandResult bad =
      Run({"render", "mnist_classifier", "logit(4)", "--accentuate", path,
           "--accentuate_weight", "-1", "--out="});
  EXPECT_EQ(bad.exit_code, 2) << bad.err;
  EXPECT_TRUE(absl::StrContains(bad.err, "--accentuate_weight")) << bad.err;
  const CommandResult layer =
      Run({"render", "mnist_classifier", "logit(4)", "--accentuate", path,
           "--accentuate_layer", "conv9", "--out="});
  EXPECT_EQ(layer.exit_code, 1) << layer.err;
  EXPECT_TRUE(absl::StrContains(layer.err, "accentuate.layer")) << layer.err;
}

// Issue 27: the progress line ended at one total, the summary printed
// another (the sum over the batch) and the JSON a third, unnamed. Each is now
// named, and they agree: the progress line's last objective is the
// summary's "at the last step", and the sum is the per-image value times the
// images for an objective of per-image terms.
TEST_F(CliTest, TheObjectiveFiguresAreNamedAndAgree) {
  const std::vector<std::string> args = {
      "render", "mnist_classifier", "channel(conv2, 5) - 0.01 * tv()",
      "--batch", "4", "--steps", "16", "--progress_every", "1", "--seed", "3",
      "--out="};
  const CommandResult r = Run(args);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::vector<std::string> progress = Lines(r.err);
  ASSERT_FALSE(progress.empty());
  auto number_after = [](const std::string& text, const std::string& key) {
    const size_t at = text.find(key);
    EXPECT_NE(at, std::string::npos) << key << " in " << text;
    return at == std::string::npos ? 0.0
                                   : std::strtod(text.c_str() + at + key.size(), nullptr);
  };
  const double last_line = number_after(progress.back(), "objective=");
  EXPECT_TRUE(absl::StrContains(r.out, "per image on the final images")) << r.out;
  EXPECT_TRUE(absl::StrContains(r.out, "summed over the 4 images")) << r.out;
  const std::string key = "per image on the final images (";
  const size_t open = r.out.find(key);
  ASSERT_NE(open, std::string::npos) << r.out;
  const double at_last_step = std::strtod(r.out.c_str() + open + key.size(), nullptr);
  EXPECT_TRUE(absl::StrContains(r.out, " at the last step, with transforms")) << r.out;
  EXPECT_NEAR(at_last_step, last_line, 1e-3 * std::abs(last_line)) << r.out << r.err;

  std::vector<std::string> json_args = args;
  json_args.push_back("--json");
  const CommandResult j = Run(json_args);
  ASSERT_EQ(j.exit_code, 0) << j.err;
  const nlohmann::json report = nlohmann::json::parse(j.out);
  const double per_image = report["objective_values"]["per_image"].get<double>();
  const double summed = report["objective_values"]["summed_over_images"].get<double>();
  EXPECT_DOUBLE_EQ(summed, report["final_total"].get<double>());
  EXPECT_NEAR(summed, 4 * per_image, 1e-5 * std::abs(summed)) << j.out;
  EXPECT_NEAR(report["objective_values"]["per_image_at_last_step"].get<double>(), last_line,
              1e-3 * std::abs(last_line));
}

TEST_F(CliTest, RenderWritesRenderPngByDefault) {
  const std::string dir = ScratchDir("render_default");
  absl::StatusOr<CommandResult> r = RunCommand(
      {"/bin/sh", "-c",
       absl::StrCat("cd '", dir, "' && exec '", kCli, "' --server ",
                    server_->address(),
                    " render mnist_classifier 'logit(1)' --steps 8")});
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->exit_code, 0) << r->err;
  EXPECT_TRUE(absl::StrContains(r->out, "wrote render.png")) << r->out;
  EXPECT_EQ(ReadFileOrEmpty(dir + "/render.png").substr(1, 3), "PNG");
}

TEST_F(CliTest, OldFlagNamesStillWorkWithANote) {
  const CommandResult r =
      Run({"render", "mnist_classifier", "logit(2)", "--steps", "4", "--param",
           "pixel", "--decay", "1.0", "--out="});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(absl::StrContains(
      r.err, "--param is deprecated; use --parameterization")) << r.err;
  EXPECT_TRUE(absl::StrContains(r.err, "--decay is deprecated; use --decay_power"))
      << r.err;
}

TEST_F(CliTest, SubmitWatchJobsAndStatsFollowOneJob) {
  const std::string dir = ScratchDir("submit_watch");
  const CommandResult submitted =
      Run({"submit", "mnist_classifier", "logit(4)", "--steps", "16", "--seed",
           "3", "--owner", "alice"});
  ASSERT_EQ(submitted.exit_code, 0) << submitted.err;
  const std::vector<std::string> id = Lines(submitted.out);
  ASSERT_EQ(id.size(), 1u) << submitted.out;

  const CommandResult watched =
      Run({"watch", id[0], "--out", dir + "/watched.png", "--json"});
  ASSERT_EQ(watched.exit_code, 0) << watched.err;
  const json report = json::parse(watched.out);
  EXPECT_EQ(report["job"], id[0]);
  EXPECT_EQ(report["objective"], "logit(4)");
  EXPECT_EQ(report["files"]["out"], dir + "/watched.png");
  EXPECT_EQ(ReadFileOrEmpty(dir + "/watched.png").substr(1, 3), "PNG");

  const CommandResult jobs =
      Run({"jobs", "--owner", "alice", "--state", "succeeded", "--json"});
  ASSERT_EQ(jobs.exit_code, 0) << jobs.err;
  const json list = json::parse(jobs.out);
  ASSERT_EQ(list.size(), 1u) << jobs.out;
  EXPECT_EQ(list[0]["id"], id[0]);
  EXPECT_EQ(list[0]["state"], "succeeded");

  const CommandResult table = Run({"jobs"});
  ASSERT_EQ(table.exit_code, 0) << table.err;
  EXPECT_TRUE(absl::StrContains(table.out, id[0])) << table.out;

  const CommandResult stats = Run({"stats", "--json"});
  ASSERT_EQ(stats.exit_code, 0) << stats.err;
  EXPECT_GE(std::stoll(json::parse(stats.out)["jobs_submitted"].get<std::string>()),
            1);
  const CommandResult stats_text = Run({"stats"});
  ASSERT_EQ(stats_text.exit_code, 0) << stats_text.err;
  EXPECT_TRUE(absl::StrContains(stats_text.out, "succeeded")) << stats_text.out;
  EXPECT_TRUE(absl::StrContains(stats_text.out, "MODELS LOADED"))
      << stats_text.out;
  EXPECT_TRUE(absl::StrContains(stats_text.out, "datasets: "))
      << stats_text.out;
}

TEST(CliAdmin, UnloadLoadAndReloadChangeWhatIsServed) {
  const std::string dir = ScratchDir("admin");
  std::filesystem::copy_file(std::string(kModels) + "/mnist_classifier.pt",
                             dir + "/mnist_classifier.pt");
  std::filesystem::copy_file(std::string(kModels) + "/mnist_classifier.card.json",
                             dir + "/mnist_classifier.card.json");
  absl::StatusOr<std::unique_ptr<ServerProcess>> server =
      ServerProcess::Start(kServer, dir, dir + "/server.log");
  ASSERT_TRUE(server.ok()) << server.status();
  auto cli = [&](std::vector<std::string> args) {
    args.insert(args.begin(), {"--server", (*server)->address()});
    return Cli(args);
  };
  const CommandResult unloaded = cli({"unload", "mnist_classifier", "--json"});
  ASSERT_EQ(unloaded.exit_code, 0) << unloaded.err;
  EXPECT_EQ(json::parse(unloaded.out)["models"][0]["name"], "mnist_classifier");
  EXPECT_EQ(cli({"layers", "mnist_classifier"}).exit_code, 1);

  const CommandResult loaded = cli({"load", "mnist_classifier.pt"});
  ASSERT_EQ(loaded.exit_code, 0) << loaded.err;
  EXPECT_TRUE(absl::StartsWith(loaded.out, "loaded mnist_classifier@")) << loaded.out;

  const CommandResult reloaded = cli({"reload"});
  ASSERT_EQ(reloaded.exit_code, 0) << reloaded.err;
  EXPECT_EQ(reloaded.out, "nothing changed\n");
  EXPECT_EQ((*server)->Stop(), 0);
}

TEST_F(CliTest, JobAndJobsSpellAJobsStateAlike) {
  const CommandResult submitted =
      Run({"submit", "mnist_classifier", "logit(5)", "--steps", "8", "--seed",
           "11", "--owner", "spelling"});
  ASSERT_EQ(submitted.exit_code, 0) << submitted.err;
  const std::string id = Lines(submitted.out).at(0);
  // `watch` returns once the job has ended.
  ASSERT_EQ(Run({"watch", id, "--out="}).exit_code, 0);

  const CommandResult job = Run({"job", id});
  ASSERT_EQ(job.exit_code, 0) << job.err;
  EXPECT_TRUE(absl::StartsWith(job.out, id + " succeeded ")) << job.out;
  const CommandResult table = Run({"jobs", "--owner", "spelling"});
  ASSERT_EQ(table.exit_code, 0) << table.err;
  const std::vector<std::string> rows = Lines(table.out);
  ASSERT_EQ(rows.size(), 2u) << table.out;
  EXPECT_TRUE(absl::StrContains(rows[1], " succeeded ")) << table.out;
  EXPECT_FALSE(absl::StrContains(job.out + table.out, "SUCCEEDED"))
      << job.out << table.out;
  // The JSON keeps the spelling scripts read.
  const CommandResult job_json = Run({"job", id, "--json"});
  ASSERT_EQ(job_json.exit_code, 0) << job_json.err;
  EXPECT_EQ(json::parse(job_json.out)["state"], "SUCCEEDED");
}

// A model whose class names are words, so that a name and an index differ.
TEST(CliClassNames, RenderNamesTheTopClassWithAndWithoutAFile) {
  const std::string dir = ScratchDir("class_names");
  std::filesystem::copy_file(std::string(kModels) + "/mnist_classifier.pt",
                             dir + "/words.pt");
  json card = json::parse(
      ReadFileOrEmpty(std::string(kModels) + "/mnist_classifier.card.json"));
  const std::vector<std::string> names = {"zero", "one", "two",   "three",
                                          "four", "five", "six",  "seven",
                                          "eight", "nine"};
  card["name"] = "words";
  card["classes"] = names;
  std::ofstream(dir + "/words.card.json") << card.dump(2);
  absl::StatusOr<std::unique_ptr<ServerProcess>> server =
      ServerProcess::Start(kServer, dir, dir + "/server.log");
  ASSERT_TRUE(server.ok()) << server.status();
  // The summary line's classes: "... top classes A (p), B (p)...".
  auto top_classes = [&](const std::vector<std::string>& out_flags) {
    std::vector<std::string> args = {"--server", (*server)->address(),
                                     "render",   "words",
                                     "logit(3)", "--steps",
                                     "8",        "--seed",
                                     "5",        "--batch",
                                     "2"};
    args.insert(args.end(), out_flags.begin(), out_flags.end());
    const CommandResult r = Cli(args);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    const size_t at = r.out.find("top classes ");
    EXPECT_NE(at, std::string::npos) << r.out;
    if (at == std::string::npos) return std::string();
    return r.out.substr(at, r.out.find_first_of(";\n", at) - at);
  };
  const std::string without_file = top_classes({"--out="});
  const std::string with_file = top_classes({"--out", dir + "/words.png"});
  EXPECT_EQ(without_file, with_file);
  // Two names, no index.
  for (absl::string_view part :
       absl::StrSplit(absl::StripPrefix(without_file, "top classes "), ", ")) {
    const std::string name(part.substr(0, part.find(" (")));
    EXPECT_NE(std::find(names.begin(), names.end(), name), names.end())
        << "'" << name << "' in " << without_file;
  }
  EXPECT_EQ((*server)->Stop(), 0);
}

TEST_F(CliTest, RenderWritesOnePngPerImageAndPreviews) {
  const std::string dir = ScratchDir("render_batch");
  const CommandResult r =
      Run({"render", "mnist_classifier", "logit(0, batch=0) + logit(1, batch=1)",
           "--batch", "2", "--steps", "32", "--progress_every", "16", "--seed",
           "1", "--transforms", "pad(1), jitter(1), rotate(-5, 5)", "--out",
           dir + "/grid.png", "--labels", "zero,one", "--png_dir", dir,
           "--preview_dir", dir + "/previews", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json report = json::parse(r.out);
  EXPECT_EQ(report["probs"].size(), 2u);
  EXPECT_TRUE(absl::StrContains(report["transforms"].get<std::string>(), "rotate"))
      << report["transforms"];
  EXPECT_EQ(report["files"]["png"].size(), 2u);
  for (const char* name : {"/image_0.png", "/image_1.png", "/grid.png",
                           "/previews/step_00016.png",
                           "/previews/step_00032.png"}) {
    const std::string path = dir + name;
    EXPECT_TRUE(std::filesystem::exists(path)) << path;
    EXPECT_EQ(ReadFileOrEmpty(path).substr(1, 3), "PNG") << path;
  }
}

TEST_F(CliTest, UnknownModelIsOneNotFoundLine) {
  const CommandResult r = Run({"render", "no_such_model", "prob(3)"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.out, "");
  ASSERT_EQ(Lines(r.err).size(), 1u) << r.err;
  EXPECT_TRUE(absl::StartsWith(r.err, "featviz: NOT_FOUND: ")) << r.err;
  EXPECT_TRUE(absl::StrContains(r.err, "no_such_model")) << r.err;

  const CommandResult layers = Run({"layers", "no_such_model"});
  EXPECT_EQ(layers.exit_code, 1);
  EXPECT_TRUE(absl::StrContains(layers.err, "NOT_FOUND")) << layers.err;
  EXPECT_TRUE(absl::StrContains(layers.err, "no_such_model")) << layers.err;
}

TEST_F(CliTest, MalformedObjectiveNamesTheColumn) {
  const CommandResult r = Run({"render", "mnist_classifier", "prob(3"});
  EXPECT_EQ(r.exit_code, 1);
  ASSERT_EQ(Lines(r.err).size(), 1u) << r.err;
  EXPECT_TRUE(absl::StrContains(r.err, "INVALID_ARGUMENT")) << r.err;
  EXPECT_TRUE(absl::StrContains(r.err, "column")) << r.err;
}

TEST_F(CliTest, ObjectiveOutOfRangeIsAnError) {
  const CommandResult r = Run({"render", "mnist_classifier", "channel(conv2, 70)"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(absl::StrContains(r.err, "70")) << r.err;
}

// Needs no server.
TEST(CliTokens, TheTokenComesFromTokenFileOrTheEnvironment) {
  const std::string dir = ScratchDir("tokens");
  const std::string token = "cli-test-0123456789-token";
  {
    std::ofstream tokens(dir + "/tokens");
    tokens << token << " cli-user user max_image_steps=100\n";
    std::ofstream token_file(dir + "/token");
    token_file << token << "\n";
  }
  absl::StatusOr<std::unique_ptr<ServerProcess>> server =
      ServerProcess::Start(kServer, kModels, dir + "/server.log",
                           absl::Seconds(60), {"--tokens_file=" + dir + "/tokens"});
  ASSERT_TRUE(server.ok()) << server.status();
  const std::string address = (*server)->address();

  const CommandResult none = Cli({"--server", address, "models"});
  EXPECT_EQ(none.exit_code, 1);
  EXPECT_TRUE(absl::StartsWith(none.err, "featviz: UNAUTHENTICATED: ")) << none.err;
  // The CLI says how it sends a token, which the server's message cannot.
  EXPECT_TRUE(absl::StrContains(
      none.err, "featviz: no token was sent: give it with --token_file FILE "
                "(its first line) or $FEATVIZ_TOKEN"))
      << none.err;
  const CommandResult wrong = Cli({"--server", address, "models"},
                                  {"FEATVIZ_TOKEN=not-the-token"});
  EXPECT_EQ(wrong.exit_code, 1);
  EXPECT_TRUE(absl::StrContains(
      wrong.err, "featviz: the server refused the token sent (from "
                 "--token_file, else $FEATVIZ_TOKEN)"))
      << wrong.err;

  const CommandResult from_file =
      Cli({"--server", address, "--token_file", dir + "/token", "models"});
  EXPECT_EQ(from_file.exit_code, 0) << from_file.err;
  EXPECT_TRUE(absl::StrContains(from_file.out, "mnist_classifier"));

  const CommandResult from_env =
      Cli({"--server", address, "models"}, {"FEATVIZ_TOKEN=" + token});
  EXPECT_EQ(from_env.exit_code, 0) << from_env.err;

  const CommandResult over_quota =
      Cli({"--server", address, "render", "mnist_classifier", "logit(3)",
           "--steps", "200"},
          {"FEATVIZ_TOKEN=" + token});
  EXPECT_EQ(over_quota.exit_code, 1);
  EXPECT_TRUE(absl::StrContains(over_quota.err,
                                "RESOURCE_EXHAUSTED: the render's 1 images x 200 "
                                "steps = 200 is over client 'cli-user''s quota "
                                "max_image_steps (100)"))
      << over_quota.err;

  const CommandResult missing_file =
      Cli({"--server", address, "--token_file", dir + "/nope", "models"});
  EXPECT_EQ(missing_file.exit_code, 1);
  EXPECT_TRUE(absl::StrContains(missing_file.err, "--token_file: cannot read"))
      << missing_file.err;
  EXPECT_EQ((*server)->Stop(), 0);
}

TEST(CliNoServer, UnreachableServerIsUnavailable) {
  absl::StatusOr<int> port = UnusedPort();
  ASSERT_TRUE(port.ok()) << port.status();
  const std::string address = absl::StrCat("127.0.0.1:", *port);
  for (const std::vector<std::string>& args :
       {std::vector<std::string>{"models"},
        std::vector<std::string>{"render", "mnist_classifier", "prob(3)"}}) {
    std::vector<std::string> with_server = {"--server", address};
    with_server.insert(with_server.end(), args.begin(), args.end());
    const CommandResult r = Cli(with_server);
    EXPECT_EQ(r.exit_code, 1) << r.err;
    ASSERT_EQ(Lines(r.err).size(), 1u) << r.err;
    EXPECT_TRUE(absl::StartsWith(
        r.err, absl::StrCat("featviz: UNAVAILABLE: cannot reach server at ", address)))
        << r.err;
  }
}

TEST(CliNoServer, UsageErrorsExitWithTwo) {
  const std::vector<std::vector<std::string>> cases = {
      {},
      {"bogus"},
      {"models", "--no_such_flag"},
      {"models", "--steps", "3"},
      {"layers"},
      {"render", "mnist_classifier"},
      {"render", "mnist_classifier", "prob(3)", "--steps", "many"},
      {"render", "mnist_classifier", "prob(3)", "--param", "wavelet"},
      {"render", "mnist_classifier", "prob(3)", "--transforms", "spin(3)"},
      {"render", "mnist_classifier", "prob(3)", "--batch", "2", "--labels", "a"},
      {"render", "mnist_classifier", "prob(3)", "--steps"},
      {"jobs", "--state", "sleeping"},
      {"watch"},
      {"unload"},
      {"activations", "mnist_classifier"},
      {"top", "mnist_classifier", "--layer", "conv2", "--channels", "a"},
      {"stats", "--layer", "conv2"},
  };
  for (const std::vector<std::string>& args : cases) {
    std::vector<std::string> with_server = {"--server", "127.0.0.1:1"};
    with_server.insert(with_server.end(), args.begin(), args.end());
    const CommandResult r = Cli(with_server);
    EXPECT_EQ(r.exit_code, 2) << absl::StrJoin(args, " ") << "\n" << r.err;
    EXPECT_NE(r.err, "") << absl::StrJoin(args, " ");
  }
}

TEST(CliNoServer, HelpPrintsUsage) {
  const CommandResult r = Cli({"--help"});
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_TRUE(absl::StrContains(r.out, "usage: featviz")) << r.out;
  EXPECT_TRUE(absl::StrContains(r.out, "models and rendering:")) << r.out;
}

TEST(CliNoServer, EveryCommandsHelpIsItsOwn) {
  for (const std::string command :
       {"models", "layers", "render", "compare", "bench", "submit", "watch",
        "job", "cancel", "jobs", "stats", "datasets", "dataset", "activations",
        "attribute", "top", "circuits", "atlas", "upload", "load", "unload",
        "reload"}) {
    // Every spelling for a few; --help for the rest (each run loads LibTorch).
    std::vector<std::vector<std::string>> spellings = {{command, "--help"}};
    if (command == "circuits" || command == "models") {
      spellings.push_back({"help", command});
      spellings.push_back({command, "-h"});
    }
    for (const std::vector<std::string>& args : spellings) {
      const CommandResult r = Cli(args);
      EXPECT_EQ(r.exit_code, 0) << absl::StrJoin(args, " ") << "\n" << r.err;
      const std::string usage = "usage: featviz " + command;
      EXPECT_TRUE(absl::StartsWith(r.out, usage + " ") ||
                  absl::StartsWith(r.out, usage + "\n"))
          << absl::StrJoin(args, " ") << "\n" << r.out;
      // Not the global help, which lists every command.
      EXPECT_FALSE(absl::StrContains(r.out, "models and rendering:"))
          << absl::StrJoin(args, " ");
      EXPECT_TRUE(absl::StrContains(r.out, "--server")) << r.out;
    }
  }
  const CommandResult circuits = Cli({"circuits", "--help"});
  for (const char* flag : {"--layer", "--top_k", "--out_dir", "--classes",
                           "--examples_per_class"}) {
    EXPECT_TRUE(absl::StrContains(circuits.out, flag)) << flag << circuits.out;
  }
  // Only its own flags.
  EXPECT_FALSE(absl::StrContains(circuits.out, "--batch")) << circuits.out;
}

}  // namespace
}  // namespace featviz::testing
