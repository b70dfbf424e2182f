// Scraping a featviz-server's Prometheus endpoint in end-to-end tests: one
// HTTP GET (civetweb's client), the text exposition parsed into samples,
// and one sample's value looked up.
#ifndef FEATVIZ_TESTS_SERVER_SCRAPE_H_
#define FEATVIZ_TESTS_SERVER_SCRAPE_H_

#include <civetweb.h>
#include <gtest/gtest.h>

#include <cstring>
#include <map>
#include <optional>
#include <regex>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"

namespace featviz::testing {

// One scrape: HTTP status and body.
struct Scrape {
  int status = 0;
  std::string body;
  std::string error;
};

inline Scrape Get(int port, const std::string& path) {
  Scrape scrape;
  char error[256] = "";
  mg_connection* connection =
      mg_download("127.0.0.1", port, 0, error, sizeof(error),
                  "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n", path.c_str());
  if (connection == nullptr) {
    scrape.error = error;
    return scrape;
  }
  const mg_response_info* info = mg_get_response_info(connection);
  if (info != nullptr) scrape.status = info->status_code;
  char buffer[4096];
  int n = 0;
  while ((n = mg_read(connection, buffer, sizeof(buffer))) > 0) {
    scrape.body.append(buffer, n);
  }
  mg_close_connection(connection);
  return scrape;
}

// A sample: metric name, labels, value.
struct Sample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value = 0;
};

// The samples of a text exposition; fails the test on a malformed line or a
// sample whose family has no # TYPE line.
inline std::vector<Sample> Parse(const std::string& text) {
  static const std::regex kSample(
      R"(^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? ([-+0-9.eEinfNa]+)$)");
  static const std::regex kLabel(R"re(([a-zA-Z_][a-zA-Z0-9_]*)="([^"]*)")re");
  std::vector<Sample> samples;
  std::set<std::string> typed;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    if (absl::StartsWith(line, "# TYPE ")) {
      std::vector<std::string> parts = absl::StrSplit(line, ' ');
      EXPECT_EQ(parts.size(), 4u) << line;
      if (parts.size() == 4) typed.insert(parts[2]);
      continue;
    }
    if (absl::StartsWith(line, "#")) continue;
    const std::string owned(line);
    std::smatch m;
    if (!std::regex_match(owned, m, kSample)) {
      ADD_FAILURE() << "not a sample line: " << line;
      continue;
    }
    Sample sample;
    sample.name = m[1];
    const std::string labels = m[3];
    for (auto it = std::sregex_iterator(labels.begin(), labels.end(), kLabel);
         it != std::sregex_iterator(); ++it) {
      sample.labels[(*it)[1]] = (*it)[2];
    }
    EXPECT_TRUE(absl::SimpleAtod(std::string(m[4]), &sample.value)) << line;
    std::string family = sample.name;
    for (const char* suffix : {"_bucket", "_sum", "_count"}) {
      if (!typed.count(family) && absl::EndsWith(family, suffix)) {
        family = family.substr(0, family.size() - std::strlen(suffix));
      }
    }
    EXPECT_TRUE(typed.count(family) > 0) << "no # TYPE for " << sample.name;
    samples.push_back(std::move(sample));
  }
  return samples;
}

// The value of the sample `name` with exactly `labels`; nullopt when absent.
inline std::optional<double> Value(
    const std::vector<Sample>& samples, const std::string& name,
    const std::map<std::string, std::string>& labels) {
  for (const Sample& sample : samples) {
    if (sample.name == name && sample.labels == labels) return sample.value;
  }
  return std::nullopt;
}

}  // namespace featviz::testing

#endif  // FEATVIZ_TESTS_SERVER_SCRAPE_H_
