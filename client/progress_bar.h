// A one-line progress bar for renders, redrawn in place on a terminal:
//
//   [##########..........]  128/256  prob(3)=0.981  total=0.981  52.1 steps/s
//
// On a terminal it is redrawn in place; on a pipe or a file (ProgressMode
// kLines) it writes one plain line each time another 10 % of the steps is
// done, so that logs carry at most ten lines and no escape codes.
#ifndef FEATVIZ_CLIENT_PROGRESS_BAR_H_
#define FEATVIZ_CLIENT_PROGRESS_BAR_H_

#include <cstdint>
#include <cstdio>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/time/time.h"
#include "featviz/v1/featviz.pb.h"

namespace featviz::client {

// How progress is shown: a bar redrawn in place, a line per 10 %, nothing.
enum class ProgressMode { kBar, kLines, kOff };

// kBar when `file` is a terminal, else kLines.
ProgressMode ProgressModeFor(std::FILE* file);

class ProgressBar {
 public:
  // `labels` and `weights` name and weigh the objective's terms in order;
  // when their length differs from an event's values the bar shows the raw
  // values and no total. kOff makes every call a no-op.
  ProgressBar(std::FILE* out, ProgressMode mode, std::vector<std::string> labels,
              std::vector<double> weights);
  // `enabled`: kBar, else kOff.
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
  // The rate and the time left are measured from the first event the bar
  // saw (a `watch` may attach to a job half done), so the first line has
  // neither.
  std::string Line(const featviz::v1::RenderProgress& progress,
                   absl::Time now) const;

 private:
  std::FILE* const out_;
  const ProgressMode mode_;
  const std::vector<std::string> labels_;
  const std::vector<double> weights_;
  // The first event's step and when it was seen (Line's rate).
  mutable std::optional<std::pair<int64_t, absl::Time>> first_;
  bool drawn_ = false;
  int64_t deciles_written_ = 0;  // kLines: tenths of the steps reported.
};

// Progress of a count of things (jobs, units): "circuits: 12/40 jobs done",
// redrawn in place on a terminal, a line per 10 % otherwise.
class CountProgress {
 public:
  CountProgress(std::FILE* out, ProgressMode mode, std::string what,
                std::string unit);
  CountProgress(const CountProgress&) = delete;
  CountProgress& operator=(const CountProgress&) = delete;
  ~CountProgress();

  void Update(int64_t done, int64_t total);
  // Ends the bar's line (kBar).
  void Finish();

 private:
  std::FILE* const out_;
  const ProgressMode mode_;
  const std::string what_;
  const std::string unit_;
  bool drawn_ = false;
  int64_t deciles_written_ = 0;
};

}  // namespace featviz::client

#endif  // FEATVIZ_CLIENT_PROGRESS_BAR_H_
