#include "client/table.h"

#include <algorithm>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace featviz::client {

std::string FormatTable(const std::vector<std::string>& header,
                        const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> width(header.size(), 0);
  for (size_t c = 0; c < header.size(); ++c) width[c] = header[c].size();
  for (const auto& row : rows) {
    for (size_t c = 0; c < row.size() && c < width.size(); ++c) {
      width[c] = std::max(width[c], row[c].size());
    }
  }
  std::string out;
  auto append_row = [&](const std::vector<std::string>& row, bool upper) {
    std::string line;
    for (size_t c = 0; c < width.size(); ++c) {
      std::string cell = c < row.size() ? row[c] : "";
      if (upper) absl::AsciiStrToUpper(&cell);
      line += cell;
      if (c + 1 < width.size()) line += std::string(width[c] - cell.size() + 2, ' ');
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    out += line;
    out += '\n';
  };
  append_row(header, /*upper=*/true);
  for (const auto& row : rows) append_row(row, /*upper=*/false);
  return out;
}

std::string HumanBytes(int64_t bytes) {
  const double b = static_cast<double>(bytes);
  if (bytes < 1024 && bytes > -1024) return absl::StrCat(bytes, " B");
  if (b < 1024.0 * 1024 && b > -1024.0 * 1024) {
    return absl::StrFormat("%.1f KiB", b / 1024);
  }
  if (b < 1024.0 * 1024 * 1024 && b > -1024.0 * 1024 * 1024) {
    return absl::StrFormat("%.1f MiB", b / (1024.0 * 1024));
  }
  return absl::StrFormat("%.2f GiB", b / (1024.0 * 1024 * 1024));
}

void Print(std::FILE* out, const std::string& text) {
  std::fwrite(text.data(), 1, text.size(), out);
}

}  // namespace featviz::client
