#include "client/table.h"

#include <gtest/gtest.h>

namespace featviz::client {
namespace {

TEST(FormatTable, AlignsColumnsAndUppercasesTheHeader) {
  EXPECT_EQ(FormatTable({"path", "channels"}, {{"conv1", "16"}, {"fc", "64"}}),
            "PATH   CHANNELS\n"
            "conv1  16\n"
            "fc     64\n");
}

TEST(FormatTable, PadsShortRowsWithoutTrailingSpaces) {
  EXPECT_EQ(FormatTable({"a", "b"}, {{"x"}}), "A  B\nx\n");
}

}  // namespace
}  // namespace featviz::client
