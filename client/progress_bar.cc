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
}  // namespace

ProgressBar::ProgressBar(std::FILE* out, bool enabled,
                         std::vector<std::string> labels,
                         std::vector<double> weights)
    : out_(out),
      enabled_(enabled),
      labels_(std::move(labels)),
      weights_(std::move(weights)),
      start_(absl::Now()) {}

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
    // A long objective (ten logits) would wrap the line; the total says it.
    const bool each = labels_.size() <= 3;
    for (int i = 0; i < values.size(); ++i) {
      sum += weights_[i] * values[i];
      if (each) absl::StrAppendFormat(&line, "  %s=%.4g", labels_[i], values[i]);
    }
    absl::StrAppendFormat(&line, "  total=%.4g", sum);
  } else {
    for (double v : values) absl::StrAppendFormat(&line, "  %.4g", v);
  }
  const double seconds = absl::ToDoubleSeconds(now - start_);
  if (seconds > 0 && step > 0) {
    absl::StrAppendFormat(&line, "  %.1f steps/s", step / seconds);
  }
  return line;
}

void ProgressBar::Update(const featviz::v1::RenderProgress& progress) {
  if (!enabled_) return;
  // \r back to the start, \033[K erases what a longer line left behind.
  std::fprintf(out_, "\r%s\033[K", Line(progress, absl::Now()).c_str());
  std::fflush(out_);
  drawn_ = true;
}

void ProgressBar::Finish() {
  if (!enabled_ || !drawn_) return;
  std::fprintf(out_, "\r\033[K");
  std::fflush(out_);
  drawn_ = false;
}

}  // namespace featviz::client
