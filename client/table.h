// Plain-text tables for the CLI: left-aligned columns two spaces apart, an
// upper-case header row, no trailing spaces.
#ifndef FEATVIZ_CLIENT_TABLE_H_
#define FEATVIZ_CLIENT_TABLE_H_

#include <string>
#include <vector>

namespace featviz::client {

// The table, one line per row (header first), each ending in '\n'. Rows
// shorter than the header are padded with empty cells.
std::string FormatTable(const std::vector<std::string>& header,
                        const std::vector<std::vector<std::string>>& rows);

}  // namespace featviz::client

#endif  // FEATVIZ_CLIENT_TABLE_H_
