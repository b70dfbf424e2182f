// Page tokens: one format for every listing, and a token of one listing is
// refused by another, naming the token.
#include "server/engine/page_token.h"

#include <gtest/gtest.h>

#include "absl/strings/match.h"

namespace featviz::server {
namespace {

TEST(PageToken, GivesBackThePositionItHolds) {
  const std::string token = PageToken("models", "mnist@2");
  absl::StatusOr<std::string> position = PagePosition("models", token);
  ASSERT_TRUE(position.ok()) << position.status();
  EXPECT_EQ(*position, "mnist@2");
  // URL-safe: it travels in a query string as it is.
  EXPECT_EQ(token.find_first_of("+/="), std::string::npos) << token;
}

TEST(PageToken, RefusesATokenOfAnotherListingOrNoneAtAll) {
  const std::string jobs = PageToken("jobs", "17");
  for (const std::string& token : {jobs, std::string("not base64!"),
                                   std::string(1000, 'A')}) {
    absl::StatusOr<std::string> position = PagePosition("models", token);
    ASSERT_FALSE(position.ok()) << token;
    EXPECT_EQ(position.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_TRUE(absl::StrContains(position.status().message(), "page_token '"))
        << position.status();
    EXPECT_TRUE(absl::StrContains(position.status().message(), "for models"))
        << position.status();
    // A megabyte of token is not echoed whole.
    EXPECT_LT(position.status().message().size(), 200u);
  }
}

}  // namespace
}  // namespace featviz::server
