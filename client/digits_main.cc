// featviz-digits: example digits for a machine without the MNIST files.
// Draws each digit from a TrueType font with random distortions
// (core/digits.h) and writes them as a dataset the server reads:
// OUT_DIR/<digit>/<nnnn>.png.
//
//   featviz-digits OUT_DIR [--per_class N] [--seed S] [--font PATH]
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_format.h"
#include "core/digits.h"
#include "core/files.h"
#include "core/image.h"

ABSL_FLAG(int64_t, per_class, 100, "Images of each digit");
ABSL_FLAG(uint64_t, seed, 0, "Seed of the distortions");
ABSL_FLAG(std::string, font, featviz::core::kDefaultDigitFont, "TrueType font");

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Writes drawn example digits as OUT_DIR/<digit>/<n>.png.\n"
      "  featviz-digits OUT_DIR [--per_class N] [--seed S] [--font PATH]");
  std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  if (args.size() != 2) {
    std::fprintf(stderr, "usage: featviz-digits OUT_DIR [--per_class N]\n");
    return 2;
  }
  const int64_t per_class = absl::GetFlag(FLAGS_per_class);
  if (per_class < 1 || per_class > 100000) {
    std::fprintf(stderr, "featviz-digits: --per_class must be in [1, 100000]\n");
    return 2;
  }
  absl::StatusOr<featviz::core::DatasetPtr> digits = featviz::core::DrawDigits(
      per_class, absl::GetFlag(FLAGS_seed), absl::GetFlag(FLAGS_font));
  if (!digits.ok()) {
    std::fprintf(stderr, "featviz-digits: %s\n", digits.status().ToString().c_str());
    return 1;
  }
  const std::filesystem::path out(args[1]);
  const featviz::core::Dataset& d = **digits;
  for (int64_t i = 0; i < d.size(); ++i) {
    const int64_t label = d.labels[i].item<int64_t>();
    const std::filesystem::path dir = out / d.class_names[label];
    absl::Status status = featviz::core::MakeDirectories(dir.string());
    if (status.ok()) {
      status = featviz::core::WritePng(
          d.images[i], (dir / absl::StrFormat("%05d.png", i)).string());
    }
    if (!status.ok()) {
      std::fprintf(stderr, "featviz-digits: %s\n", status.ToString().c_str());
      return 1;
    }
  }
  std::printf("featviz-digits: wrote %lld digits to %s\n",
              static_cast<long long>(d.size()), out.string().c_str());
  return 0;
}
