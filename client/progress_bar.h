// A one-line progress bar for renders, redrawn in place on a terminal:
//
//   [##########..........]  128/256  prob(3)=0.981  total=0.981  52.1 steps/s
//
// Disabled (draws nothing) when its stream is not a terminal, so piped and
// redirected output carries no escape codes.
#ifndef FEATVIZ_CLIENT_PROGRESS_BAR_H_
#define FEATVIZ_CLIENT_PROGRESS_BAR_H_

#include <cstdio>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "featviz/v1/featviz.pb.h"

namespace featviz::client {

class ProgressBar {
 public:
  // `labels` and `weights` name and weigh the objective's terms in order;
  // when their length differs from an event's values the bar shows the raw
  // values and no total. `enabled` false makes every call a no-op.
  ProgressBar(std::FILE* out, bool enabled, std::vector<std::string> labels,
              std::vector<double> weights);
  ProgressBar(const ProgressBar&) = delete;
  ProgressBar& operator=(const ProgressBar&) = delete;
  ~ProgressBar();

  // True when `file` is a terminal.
  static bool IsTerminal(std::FILE* file);

  // Redraws the bar for `progress`.
  void Update(const featviz::v1::RenderProgress& progress);
  // Erases the bar so that what follows starts on a clean line.
  void Finish();

  // The text of the bar for `progress` without escape codes (for tests).
  std::string Line(const featviz::v1::RenderProgress& progress,
                   absl::Time now) const;

 private:
  std::FILE* const out_;
  const bool enabled_;
  const std::vector<std::string> labels_;
  const std::vector<double> weights_;
  const absl::Time start_;
  bool drawn_ = false;
};

}  // namespace featviz::client

#endif  // FEATVIZ_CLIENT_PROGRESS_BAR_H_
