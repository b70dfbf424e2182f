// The tokens file, the method -> role table and the Authorizer, in process.
#include "server/auth.h"

#include <fstream>
#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "featviz/v1/circuits.grpc.pb.h"
#include "featviz/v1/featviz.grpc.pb.h"
#include "google/protobuf/descriptor.h"

namespace featviz::server {
namespace {

constexpr char kAliceToken[] = "alice-token-0123456789abcdef";
constexpr char kOpsToken[] = "ops-token-0123456789abcdef";

std::string TokensText() {
  return std::string("# clients of the lab server\n") + kAliceToken +
         "  alice  user  max_queued=3 max_running=1 max_image_steps=5000\n"
         "\n" +
         kOpsToken + "\tops\tadmin   # no quotas\n";
}

TEST(ParseTokens, ReadsNamesRolesAndQuotas) {
  absl::StatusOr<TokenTable> table = ParseTokens(TokensText(), "tokens.txt");
  ASSERT_TRUE(table.ok()) << table.status();
  ASSERT_EQ(table->size(), 2u);
  const Identity& alice = table->at(kAliceToken);
  EXPECT_EQ(alice.name, "alice");
  EXPECT_EQ(alice.role, Role::kUser);
  EXPECT_EQ(alice.quotas.max_queued, 3);
  EXPECT_EQ(alice.quotas.max_running, 1);
  EXPECT_EQ(alice.quotas.max_image_steps, 5000);
  const Identity& ops = table->at(kOpsToken);
  EXPECT_EQ(ops.role, Role::kAdmin);
  EXPECT_FALSE(ops.quotas.max_queued.has_value());
  EXPECT_FALSE(ops.quotas.max_image_steps.has_value());
}

TEST(ParseTokens, ErrorsNameTheLineAndNeverTheToken) {
  const std::string secret = "secret-secret-secret-42";
  struct Case {
    std::string text;
    std::string expected;
  };
  for (const Case& c : std::vector<Case>{
           {"\n" + secret + " alice root\n", "tokens.txt:2: unknown role 'root'"},
           {secret + " alice\n", "tokens.txt:1: expected TOKEN NAME ROLE"},
           {"short alice user\n", "tokens.txt:1: the token must be 16 to 512"},
           {secret + " al/ice user\n", "tokens.txt:1: client name 'al/ice'"},
           {secret + " alice user max_queued=-1\n",
            "tokens.txt:1: quota 'max_queued=-1' must be NAME=N with N >= 0"},
           {secret + " alice user max_gpus=1\n",
            "tokens.txt:1: unknown quota 'max_gpus'"},
           {secret + " alice user\n" + secret + " bob user\n",
            "tokens.txt:2: client 'bob' repeats the token of client 'alice'"},
           {secret + " alice user\n" + secret + "-2 alice admin\n",
            "tokens.txt:2: client name 'alice' is already given on line 1"},
       }) {
    absl::StatusOr<TokenTable> table = ParseTokens(c.text, "tokens.txt");
    ASSERT_FALSE(table.ok()) << c.text;
    EXPECT_EQ(table.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_TRUE(absl::StartsWith(table.status().message(), c.expected))
        << table.status().message();
    EXPECT_FALSE(absl::StrContains(table.status().message(), secret))
        << table.status().message();
  }
}

TEST(RequiredRole, CoversEveryFeatvizMethodAndTheAdminRpcs) {
  std::set<std::string> named;
  for (const auto& [method, role] : MethodRoles()) named.insert(method);
  for (const google::protobuf::ServiceDescriptor* service :
       {v1::ListModelsRequest::descriptor()->file()->FindServiceByName(
            "Visualizer"),
        v1::ListDatasetsRequest::descriptor()->file()->FindServiceByName(
            "Circuits")}) {
    ASSERT_NE(service, nullptr);
    for (int i = 0; i < service->method_count(); ++i) {
      const std::string method =
          "/" + service->full_name() + "/" + service->method(i)->name();
      EXPECT_TRUE(named.count(method) > 0)
          << method << " is missing from the method -> role table";
      const bool admin = absl::EndsWith(method, "/LoadModel") ||
                         absl::EndsWith(method, "/UnloadModel") ||
                         absl::EndsWith(method, "/ReloadModel");
      const bool upload = absl::EndsWith(method, "/UploadModel") ||
                          absl::EndsWith(method, "/UploadDataset") ||
                          absl::EndsWith(method, "/DeleteDataset");
      EXPECT_EQ(RequiredRole(method),
                admin ? Role::kAdmin : upload ? Role::kUploader : Role::kUser)
          << method;
    }
  }
  for (const char* admin : {"LoadModel", "UnloadModel", "ReloadModel"}) {
    EXPECT_EQ(RequiredRole(std::string("/featviz.v1.Visualizer/") + admin),
              Role::kAdmin)
        << admin;
  }
  EXPECT_EQ(RequiredRole("/featviz.v1.Visualizer/Render"), Role::kUser);
  EXPECT_EQ(RequiredRole("/featviz.v1.Visualizer/WatchJob"), Role::kUser);
  EXPECT_EQ(RequiredRole("/grpc.health.v1.Health/Check"), Role::kPublic);
  EXPECT_EQ(RequiredRole("/grpc.health.v1.Health/Watch"), Role::kPublic);
  // Deny by default: a method added without a row needs an admin.
  EXPECT_EQ(RequiredRole("/featviz.v1.Visualizer/SomethingNew"), Role::kAdmin);
}

TEST(BearerToken, TakesTheTokenOfABearerHeaderOnly) {
  EXPECT_EQ(BearerToken("Bearer abc"), "abc");
  EXPECT_EQ(BearerToken("bearer   abc "), "abc");
  EXPECT_EQ(BearerToken("Basic abc"), std::nullopt);
  EXPECT_EQ(BearerToken("Bearer "), std::nullopt);
  EXPECT_EQ(BearerToken(""), std::nullopt);
}

class AuthorizerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = ::testing::TempDir() + "/featviz_auth_test_tokens.txt";
    Write(TokensText());
  }
  void Write(const std::string& text) {
    std::ofstream out(path_, std::ios::trunc);
    out << text;
  }
  std::string path_;
};

TEST_F(AuthorizerTest, RefusesMissingAndUnknownTokensAndUsersOnAdminRpcs) {
  absl::StatusOr<AuthorizerPtr> auth = Authorizer::Create(path_);
  ASSERT_TRUE(auth.ok()) << auth.status();
  const std::string alice = std::string("Bearer ") + kAliceToken;
  const std::string ops = std::string("Bearer ") + kOpsToken;

  absl::StatusOr<Identity> missing =
      (*auth)->Authorize("/featviz.v1.Visualizer/Render", std::nullopt);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kUnauthenticated);
  absl::StatusOr<Identity> unknown = (*auth)->Authorize(
      "/featviz.v1.Visualizer/Render", "Bearer not-a-known-token-at-all");
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kUnauthenticated);
  absl::StatusOr<Identity> malformed =
      (*auth)->Authorize("/featviz.v1.Visualizer/Render", kAliceToken);
  EXPECT_EQ(malformed.status().code(), absl::StatusCode::kUnauthenticated);

  absl::StatusOr<Identity> user =
      (*auth)->Authorize("/featviz.v1.Visualizer/Render", alice);
  ASSERT_TRUE(user.ok()) << user.status();
  EXPECT_EQ(user->name, "alice");
  absl::StatusOr<Identity> denied =
      (*auth)->Authorize("/featviz.v1.Visualizer/LoadModel", alice);
  EXPECT_EQ(denied.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_TRUE(absl::StrContains(denied.status().message(), "admin"));
  EXPECT_FALSE(absl::StrContains(denied.status().message(), kAliceToken));
  absl::StatusOr<Identity> admin =
      (*auth)->Authorize("/featviz.v1.Visualizer/LoadModel", ops);
  ASSERT_TRUE(admin.ok()) << admin.status();
  EXPECT_TRUE(admin->admin());

  // Health checks need no token.
  EXPECT_TRUE(
      (*auth)->Authorize("/grpc.health.v1.Health/Check", std::nullopt).ok());
}

TEST_F(AuthorizerTest, ReloadSwapsTokensAndKeepsThemWhenTheFileIsBroken) {
  absl::StatusOr<AuthorizerPtr> auth = Authorizer::Create(path_);
  ASSERT_TRUE(auth.ok()) << auth.status();
  const std::string method = "/featviz.v1.Visualizer/ListModels";
  const std::string carol_token = "carol-token-0123456789abcdef";
  Write(carol_token + " carol user\n");
  ASSERT_TRUE((*auth)->Reload().ok());
  EXPECT_TRUE((*auth)->Authorize(method, "Bearer " + carol_token).ok());
  EXPECT_EQ((*auth)
                ->Authorize(method, std::string("Bearer ") + kAliceToken)
                .status()
                .code(),
            absl::StatusCode::kUnauthenticated);

  Write("this line is not a client\n");
  const absl::Status broken = (*auth)->Reload();
  EXPECT_EQ(broken.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(broken.message(), ":1:"));
  EXPECT_TRUE((*auth)->Authorize(method, "Bearer " + carol_token).ok());
}

}  // namespace
}  // namespace featviz::server
