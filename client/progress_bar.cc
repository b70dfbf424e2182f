#include "client/progress_bar.h"

#include <unistd.h>

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"

namespace featviz::client {

namespace {
constexpr int kBarWidth = 20;

// Tenths of `total` that `done` has reached, in [0, 10].
int64_t Deciles(int64_t done, int64_t total) {
  if (total <= 0) return 10;
  return std::clamp<int64_t>(done, 0, total) * 10 / total;
}
}  // namespace

ProgressMode ProgressModeFor(std::FILE* file) {
  return ProgressBar::IsTerminal(file) ? ProgressMode::kBar
                                       : ProgressMode::kLines;
}

ProgressBar::ProgressBar(std::FILE* out, ProgressMode mode,
                         std::vector<std::string> labels,
                         std::vector<double> weights)
    : out_(out),
      mode_(mode),
      labels_(std::move(labels)),
      weights_(std::move(weights)) {}

ProgressBar::ProgressBar(std::FILE* out, bool enabled,
                         std::vector<std::string> labels,
                         std::vector<double> weights)
    : ProgressBar(out, enabled ? ProgressMode::kBar : ProgressMode::kOff,
                  std::move(labels), std::move(weights)) {}

ProgressBar::~ProgressBar() { Finish(); }

bool ProgressBar::IsTerminal(std::FILE* file) {
  return file != nullptr && isatty(fileno(file)) == 1;
}

std::string ProgressBar::Line(const featviz::v1::RenderProgress& progress,
                              absl::Time now) const {
  const int64_t total = std::max<int64_t>(progress.total_steps(), 1);
  const int64_t step = std::clamp<int64_t>(progress.step(), 0, total);
  const int filled = static_cast<int>(step * kBarWidth / total);
  std::string line = absl::StrCat(
      "[", std::string(filled, '#'), std::string(kBarWidth - filled, '.'),
      "] ", absl::StrFormat("%*d/%d", static_cast<int>(absl::StrCat(total).size()),
                            step, total));
  const auto& values = progress.term_values();
  if (values.size() == static_cast<int>(labels_.size()) &&
      labels_.size() == weights_.size()) {
    double sum = 0;
    // A long objective (ten logits) would wrap the line; the sum says it.
    const bool each = labels_.size() <= 3;
    for (int i = 0; i < values.size(); ++i) {
      sum += weights_[i] * values[i];
      if (each) absl::StrAppendFormat(&line, "  %s=%.4g", labels_[i], values[i]);
    }
    // The objective per image at this step (with transforms): the figure
    // the summary repeats as "at the last step" (ObjectiveFigures).
    absl::StrAppendFormat(&line, "  objective=%.4g", sum);
  } else {
    for (double v : values) absl::StrAppendFormat(&line, "  %.4g", v);
  }
  if (!first_.has_value()) first_.emplace(step, now);
  const double seconds = absl::ToDoubleSeconds(now - first_->second);
  const int64_t steps = step - first_->first;
  if (seconds > 0 && steps > 0) {
    const double rate = steps / seconds;
    absl::StrAppendFormat(&line, "  %.1f steps/s", rate);
    if (total > step) {
      absl::StrAppendFormat(&line, ", %.0f s left",
                            static_cast<double>(total - step) / rate);
    }
  }
  return line;
}

void ProgressBar::Update(const featviz::v1::RenderProgress& progress) {
  if (mode_ == ProgressMode::kOff) return;
  if (mode_ == ProgressMode::kLines) {
    const int64_t deciles = Deciles(progress.step(), progress.total_steps());
    if (deciles <= deciles_written_) return;
    deciles_written_ = deciles;
    std::fprintf(out_, "%s\n", Line(progress, absl::Now()).c_str());
    std::fflush(out_);
    return;
  }
  // \r back to the start, \033[K erases what a longer line left behind.
  std::fprintf(out_, "\r%s\033[K", Line(progress, absl::Now()).c_str());
  std::fflush(out_);
  drawn_ = true;
}

void ProgressBar::Finish() {
  if (mode_ != ProgressMode::kBar || !drawn_) return;
  std::fprintf(out_, "\r\033[K");
  std::fflush(out_);
  drawn_ = false;
}

CountProgress::CountProgress(std::FILE* out, ProgressMode mode,
                             std::string what, std::string unit)
    : out_(out), mode_(mode), what_(std::move(what)), unit_(std::move(unit)) {}

CountProgress::~CountProgress() { Finish(); }

void CountProgress::Update(int64_t done, int64_t total) {
  const std::string line =
      absl::StrFormat("%s: %d/%d %s", what_, done, total, unit_);
  if (mode_ == ProgressMode::kBar) {
    std::fprintf(out_, "\r%s\033[K", line.c_str());
    drawn_ = true;
  } else if (mode_ == ProgressMode::kLines) {
    const int64_t deciles = Deciles(done, total);
    if (deciles <= deciles_written_) return;
    deciles_written_ = deciles;
    std::fprintf(out_, "%s\n", line.c_str());
  }
  std::fflush(out_);
}

void CountProgress::Finish() {
  if (mode_ != ProgressMode::kBar || !drawn_) return;
  std::fputc('\n', out_);
  std::fflush(out_);
  drawn_ = false;
}

}  // namespace featviz::client
