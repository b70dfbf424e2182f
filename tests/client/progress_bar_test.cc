#include "client/progress_bar.h"

#include <algorithm>
#include <cstdio>
#include <string>

#include <gtest/gtest.h>

#include "absl/time/clock.h"

namespace featviz::client {
namespace {

featviz::v1::RenderProgress Progress(int64_t step, int64_t total,
                                     std::vector<double> values) {
  featviz::v1::RenderProgress p;
  p.set_step(step);
  p.set_total_steps(total);
  for (double v : values) p.add_term_values(v);
  return p;
}

TEST(ProgressBar, ShowsStepsTermsAndTheWeightedTotal) {
  ProgressBar bar(stderr, /*enabled=*/false, {"prob(3)", "tv()"}, {1.0, -0.5});
  const absl::Time start = absl::Now();
  bar.Line(Progress(64, 256, {0.5, 0.5}), start);
  const std::string line =
      bar.Line(Progress(128, 256, {0.75, 0.5}), start + absl::Seconds(2));
  EXPECT_NE(line.find("[##########..........]"), std::string::npos) << line;
  EXPECT_NE(line.find("128/256"), std::string::npos) << line;
  EXPECT_NE(line.find("prob(3)=0.75"), std::string::npos) << line;
  // Σ weight × value: 0.75 - 0.5 * 0.5.
  EXPECT_NE(line.find("objective=0.5"), std::string::npos) << line;
  // 64 steps in 2 s; 128 steps to go.
  EXPECT_NE(line.find("32.0 steps/s, 4 s left"), std::string::npos) << line;
}

// `watch` attaching to a job at step 229 of 512 must not count those 229
// steps as done since it attached (it printed 1161991.1 steps/s).
TEST(ProgressBar, MeasuresTheRateFromTheFirstEventItSaw) {
  ProgressBar bar(stderr, /*enabled=*/false, {"x"}, {1.0});
  const absl::Time attached = absl::Now();
  const std::string first = bar.Line(Progress(229, 512, {1}), attached);
  EXPECT_EQ(first.find("steps/s"), std::string::npos) << first;
  const std::string later = bar.Line(Progress(329, 512, {1}),
                                     attached + absl::Seconds(4));
  EXPECT_NE(later.find("25.0 steps/s, 7 s left"), std::string::npos) << later;
}

TEST(ProgressBar, ShowsRawValuesWhenTheTermsAreUnknown) {
  ProgressBar bar(stderr, /*enabled=*/false, {}, {});
  const std::string line = bar.Line(Progress(1, 2, {0.25}), absl::Now());
  EXPECT_NE(line.find("0.25"), std::string::npos) << line;
  EXPECT_EQ(line.find("total"), std::string::npos) << line;
}

TEST(ProgressBar, WritesNothingWhenDisabled) {
  std::FILE* file = std::tmpfile();
  ASSERT_NE(file, nullptr);
  {
    ProgressBar bar(file, /*enabled=*/false, {"x"}, {1});
    bar.Update(Progress(1, 2, {1}));
    bar.Finish();
  }
  EXPECT_EQ(std::ftell(file), 0);
  EXPECT_FALSE(ProgressBar::IsTerminal(file));
  std::fclose(file);
}

std::string ReadAll(std::FILE* file) {
  std::rewind(file);
  std::string text;
  for (int c = std::fgetc(file); c != EOF; c = std::fgetc(file)) {
    text.push_back(static_cast<char>(c));
  }
  return text;
}

TEST(ProgressBar, OnAPipeWritesOneLinePerTenthOfTheSteps) {
  std::FILE* file = std::tmpfile();
  ASSERT_NE(file, nullptr);
  {
    ProgressBar bar(file, ProgressMode::kLines, {"x"}, {1});
    for (int step = 1; step <= 256; ++step) bar.Update(Progress(step, 256, {1}));
  }
  const std::string text = ReadAll(file);
  std::fclose(file);
  EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 10) << text;
  EXPECT_EQ(text.find('\r'), std::string::npos) << text;
  EXPECT_EQ(text.find('\033'), std::string::npos) << text;
  EXPECT_NE(text.find("256/256"), std::string::npos) << text;
}

TEST(CountProgress, OnAPipeWritesOneLinePerTenthAndNoCarriageReturns) {
  std::FILE* file = std::tmpfile();
  ASSERT_NE(file, nullptr);
  {
    CountProgress progress(file, ProgressMode::kLines, "atlas", "units rendered");
    for (int done = 0; done <= 3; ++done) progress.Update(done, 3);
  }
  const std::string text = ReadAll(file);
  std::fclose(file);
  EXPECT_EQ(text,
            "atlas: 1/3 units rendered\natlas: 2/3 units rendered\n"
            "atlas: 3/3 units rendered\n");
}

}  // namespace
}  // namespace featviz::client
