// Plain text for the CLI: tables (left-aligned columns two spaces apart, an
// upper-case header row, no trailing spaces), sizes, and writing it out.
#ifndef FEATVIZ_CLIENT_TABLE_H_
#define FEATVIZ_CLIENT_TABLE_H_

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

namespace featviz::client {

// The table, one line per row (header first), each ending in '\n'. Rows
// shorter than the header are padded with empty cells.
std::string FormatTable(const std::vector<std::string>& header,
                        const std::vector<std::vector<std::string>>& rows);

// `bytes` for people: "812 B", "3.4 KiB", "12.0 MiB", "1.50 GiB".
std::string HumanBytes(int64_t bytes);

// Writes `text` to `out` as it is (no format string, NULs included).
void Print(std::FILE* out, const std::string& text);

}  // namespace featviz::client

#endif  // FEATVIZ_CLIENT_TABLE_H_
