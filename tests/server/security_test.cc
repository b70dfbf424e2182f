// End to end against the real featviz-server: TLS and mTLS with
// certificates made here by openssl, plaintext refused off loopback, bearer
// tokens and roles on every RPC, jobs owned by the authenticated client,
// quotas, tokens re-read on SIGHUP and never logged.
#include <signal.h>

#include <cstdlib>
#include <fstream>
#include <functional>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "tests/server/server_process.h"
#include "tests/server/test_client.h"

namespace featviz::testing {
namespace {

using ::grpc::StatusCode;
using Health = ::grpc::health::v1::HealthCheckResponse;

constexpr char kAliceToken[] = "alice-0123456789-token-abcdef";
constexpr char kBobToken[] = "bob-0123456789-token-abcdef";
constexpr char kOpsToken[] = "ops-0123456789-token-abcdef";
constexpr char kCarolToken[] = "carol-0123456789-token-abcdef";

std::string ReadText(const std::string& path) {
  std::ifstream in(path);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

void WriteText(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::trunc);
  out << text;
}

std::string TempPath(const std::string& name) {
  return absl::StrCat(::testing::TempDir(), "/featviz_security_", getpid(),
                      "_", name);
}

// alice: a user with quotas; bob: a user without; ops: an admin.
std::string TokensText() {
  return absl::StrCat(
      "# the test's clients\n", kAliceToken,
      " alice user max_queued=2 max_running=1 max_image_steps=30000\n",
      kBobToken, " bob user\n", kOpsToken, " ops admin\n");
}

std::unique_ptr<ServerProcess> StartServer(std::vector<std::string> flags,
                                           const std::string& log = "") {
  absl::StatusOr<std::unique_ptr<ServerProcess>> server =
      ServerProcess::Start(std::move(flags), absl::Seconds(120), log);
  EXPECT_TRUE(server.ok()) << server.status();
  return server.ok() ? *std::move(server) : nullptr;
}

std::unique_ptr<grpc::ClientContext> Context(const std::string& token) {
  auto context = std::make_unique<grpc::ClientContext>();
  context->set_deadline(After(60));
  if (!token.empty()) {
    context->AddMetadata("authorization", absl::StrCat("Bearer ", token));
  }
  return context;
}

// One call of each featviz.v1.Visualizer RPC with `token`; their statuses.
std::vector<std::pair<std::string, grpc::Status>> CallEveryRpc(
    v1::Visualizer::Stub& stub, const std::string& token) {
  std::vector<std::pair<std::string, grpc::Status>> statuses;
  {
    v1::ListModelsResponse response;
    statuses.emplace_back("ListModels",
                          stub.ListModels(Context(token).get(), {}, &response));
  }
  {
    v1::GetModelRequest request;
    request.set_name(kModel);
    v1::Model response;
    statuses.emplace_back(
        "GetModel", stub.GetModel(Context(token).get(), request, &response));
  }
  {
    auto context = Context(token);
    auto reader = stub.Render(context.get(), TextRequest("logit(1)", 2));
    statuses.emplace_back("Render", ReadAll(*reader).status);
  }
  {
    v1::SubmitJobRequest request;
    *request.mutable_request() = TextRequest("logit(1)", 2);
    v1::Job response;
    statuses.emplace_back(
        "SubmitJob", stub.SubmitJob(Context(token).get(), request, &response));
  }
  {
    v1::GetJobRequest request;
    request.set_id("1");
    v1::Job response;
    statuses.emplace_back("GetJob",
                          stub.GetJob(Context(token).get(), request, &response));
  }
  {
    v1::WatchJobRequest request;
    request.set_id("1");
    auto context = Context(token);
    auto reader = stub.WatchJob(context.get(), request);
    statuses.emplace_back("WatchJob", ReadAll(*reader).status);
  }
  {
    v1::CancelJobRequest request;
    request.set_id("1");
    v1::Job response;
    statuses.emplace_back(
        "CancelJob", stub.CancelJob(Context(token).get(), request, &response));
  }
  {
    v1::ListJobsResponse response;
    statuses.emplace_back("ListJobs",
                          stub.ListJobs(Context(token).get(), {}, &response));
  }
  {
    v1::ServerStats response;
    statuses.emplace_back(
        "GetServerStats",
        stub.GetServerStats(Context(token).get(), {}, &response));
  }
  return statuses;
}

// A unary call of `method` with an empty message, through the generic stub
// (for RPCs this build's proto may not have).
grpc::Status CallRaw(const std::shared_ptr<grpc::Channel>& channel,
                     const std::string& method, const std::string& token) {
  grpc::GenericStub stub(channel);
  auto context = Context(token);
  // An empty message: one empty slice (a buffer of none is not a message).
  grpc::Slice empty("");
  grpc::ByteBuffer request(&empty, 1);
  grpc::ByteBuffer response;
  grpc::Status status;
  absl::Notification done;
  stub.UnaryCall(context.get(), method, grpc::StubOptions(), &request,
                 &response, [&](grpc::Status s) {
                   status = std::move(s);
                   done.Notify();
                 });
  done.WaitForNotification();
  return status;
}

absl::StatusOr<v1::Job> Submit(v1::Visualizer::Stub& stub,
                               const std::string& token,
                               const v1::RenderRequest& render) {
  v1::SubmitJobRequest request;
  *request.mutable_request() = render;
  v1::Job job;
  const grpc::Status status =
      stub.SubmitJob(Context(token).get(), request, &job);
  if (!status.ok()) {
    return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                        status.error_message());
  }
  return job;
}

v1::Job GetJob(v1::Visualizer::Stub& stub, const std::string& token,
               const std::string& id) {
  v1::GetJobRequest request;
  request.set_id(id);
  v1::Job job;
  EXPECT_TRUE(stub.GetJob(Context(token).get(), request, &job).ok());
  return job;
}

// Polls job `id` until `done(job)` or 120 s pass; the last job seen.
v1::Job WaitForJob(v1::Visualizer::Stub& stub, const std::string& token,
                   const std::string& id,
                   const std::function<bool(const v1::Job&)>& done) {
  const absl::Time give_up = absl::Now() + absl::Seconds(120);
  v1::Job job = GetJob(stub, token, id);
  while (!done(job) && absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(20));
    job = GetJob(stub, token, id);
  }
  return job;
}

// ------------------------------------------------------------- tokens

class TokenTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    tokens_path_ = new std::string(TempPath("tokens.txt"));
    log_path_ = new std::string(TempPath("server.log"));
    WriteText(*tokens_path_, TokensText());
    server_ = StartServer({"--tokens_file=" + *tokens_path_,
                           "--max_batch_images=8"},
                          *log_path_)
                  .release();
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
    // The whole suite's log: no token ever appears in it.
    const std::string log = ReadText(*log_path_);
    EXPECT_TRUE(absl::StrContains(log, "tokens: 3 clients")) << log;
    for (const char* token : {kAliceToken, kBobToken, kOpsToken}) {
      EXPECT_FALSE(absl::StrContains(log, token)) << "a token was logged";
    }
    delete tokens_path_;
    delete log_path_;
  }
  void SetUp() override {
    ASSERT_NE(server_, nullptr);
    stub_ = server_->NewStub();
  }

  static ServerProcess* server_;
  static std::string* tokens_path_;
  static std::string* log_path_;
  std::unique_ptr<v1::Visualizer::Stub> stub_;
};
ServerProcess* TokenTest::server_ = nullptr;
std::string* TokenTest::tokens_path_ = nullptr;
std::string* TokenTest::log_path_ = nullptr;

TEST_F(TokenTest, EveryRpcWithoutOrWithAWrongTokenIsUnauthenticated) {
  for (const std::string& token :
       {std::string(), std::string("not-a-token-this-server-knows")}) {
    for (const auto& [method, status] : CallEveryRpc(*stub_, token)) {
      EXPECT_EQ(status.error_code(), StatusCode::UNAUTHENTICATED)
          << method << " with token '" << token
          << "': " << status.error_message();
    }
  }
}

TEST_F(TokenTest, EveryUserRpcAnswersAUserToken) {
  for (const auto& [method, status] : CallEveryRpc(*stub_, kBobToken)) {
    // Past authentication: the RPC itself answers (job "1" may be anyone's
    // or not exist; PERMISSION_DENIED is then about ownership, not role).
    EXPECT_NE(status.error_code(), StatusCode::UNAUTHENTICATED) << method;
    if (method == "ListModels" || method == "GetModel" || method == "Render" ||
        method == "SubmitJob" || method == "ListJobs" ||
        method == "GetServerStats") {
      EXPECT_TRUE(status.ok()) << method << ": " << status.error_message();
    }
  }
}

TEST_F(TokenTest, HealthNeedsNoToken) {
  const HealthOutcome health = CheckHealth(server_->channel(), kServiceName);
  EXPECT_TRUE(health.status.ok()) << health.status.error_message();
  EXPECT_EQ(health.serving, Health::SERVING);
}

TEST_F(TokenTest, AdminRpcsAreDeniedToUsers) {
  for (const char* method : {"LoadModel", "UnloadModel", "ReloadModel"}) {
    const std::string path = absl::StrCat("/featviz.v1.Visualizer/", method);
    const grpc::Status user = CallRaw(server_->channel(), path, kAliceToken);
    if (user.error_code() == StatusCode::UNIMPLEMENTED) {
      GTEST_SKIP() << method << " is not served by this build (the model "
                   << "repository adds it); the role table covers it";
    }
    EXPECT_EQ(user.error_code(), StatusCode::PERMISSION_DENIED)
        << method << ": " << user.error_message();
    EXPECT_EQ(CallRaw(server_->channel(), path, "").error_code(),
              StatusCode::UNAUTHENTICATED);
    const grpc::Status admin = CallRaw(server_->channel(), path, kOpsToken);
    EXPECT_NE(admin.error_code(), StatusCode::PERMISSION_DENIED);
    EXPECT_NE(admin.error_code(), StatusCode::UNAUTHENTICATED);
  }
}

TEST_F(TokenTest, JobsBelongToTheAuthenticatedClientWhoAloneSeesThem) {
  absl::StatusOr<v1::Job> job = Submit(*stub_, kBobToken, LongRequest());
  ASSERT_TRUE(job.ok()) << job.status();
  EXPECT_EQ(job->owner(), "bob");

  // A user cannot claim another owner.
  v1::RenderRequest claimed = TextRequest("logit(1)", 2);
  claimed.set_owner("alice");
  absl::StatusOr<v1::Job> refused = Submit(*stub_, kBobToken, claimed);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_TRUE(absl::StrContains(refused.status().message(), "owner 'alice'"))
      << refused.status().message();

  // Alice can neither see, watch, list nor cancel Bob's job.
  {
    v1::GetJobRequest request;
    request.set_id(job->id());
    v1::Job seen;
    EXPECT_EQ(stub_->GetJob(Context(kAliceToken).get(), request, &seen)
                  .error_code(),
              StatusCode::PERMISSION_DENIED);
  }
  {
    v1::WatchJobRequest request;
    request.set_id(job->id());
    auto context = Context(kAliceToken);
    auto reader = stub_->WatchJob(context.get(), request);
    EXPECT_EQ(ReadAll(*reader).status.error_code(),
              StatusCode::PERMISSION_DENIED);
  }
  {
    v1::ListJobsRequest request;
    v1::ListJobsResponse listed;
    ASSERT_TRUE(
        stub_->ListJobs(Context(kAliceToken).get(), request, &listed).ok());
    for (const v1::Job& j : listed.jobs()) EXPECT_EQ(j.owner(), "alice");
    request.set_owner("bob");
    EXPECT_EQ(stub_->ListJobs(Context(kAliceToken).get(), request, &listed)
                  .error_code(),
              StatusCode::PERMISSION_DENIED);
  }
  v1::CancelJobRequest cancel;
  cancel.set_id(job->id());
  v1::Job cancelled;
  EXPECT_EQ(stub_->CancelJob(Context(kAliceToken).get(), cancel, &cancelled)
                .error_code(),
            StatusCode::PERMISSION_DENIED);
  EXPECT_NE(GetJob(*stub_, kBobToken, job->id()).state(),
            v1::JOB_STATE_CANCELLED);

  // An admin may.
  const grpc::Status admin =
      stub_->CancelJob(Context(kOpsToken).get(), cancel, &cancelled);
  EXPECT_TRUE(admin.ok()) << admin.error_message();
  EXPECT_EQ(cancelled.state(), v1::JOB_STATE_CANCELLED);
}

TEST_F(TokenTest, QuotasLimitAClientAndNameTheQuota) {
  // max_image_steps=30000: 4 images x 10000 steps is over.
  v1::RenderRequest big = LongRequest();
  big.mutable_image()->set_batch(4);
  absl::StatusOr<v1::Job> too_big = Submit(*stub_, kAliceToken, big);
  EXPECT_EQ(too_big.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(absl::StrContains(too_big.status().message(),
                                "the render's 4 images x 10000 steps = 40000 "
                                "is over client 'alice''s quota "
                                "max_image_steps (30000)"))
      << too_big.status().message();

  // max_running=1: Alice's second job waits while her first runs, although
  // it could share the first's batch; Bob's job joins that batch.
  absl::StatusOr<v1::Job> first = Submit(*stub_, kAliceToken, LongRequest());
  ASSERT_TRUE(first.ok()) << first.status();
  const v1::Job running =
      WaitForJob(*stub_, kAliceToken, first->id(), [](const v1::Job& j) {
        return j.state() == v1::JOB_STATE_RUNNING && j.steps_done() > 0;
      });
  ASSERT_EQ(running.state(), v1::JOB_STATE_RUNNING);
  absl::StatusOr<v1::Job> second = Submit(*stub_, kAliceToken, LongRequest());
  ASSERT_TRUE(second.ok()) << second.status();
  absl::StatusOr<v1::Job> bobs = Submit(*stub_, kBobToken, LongRequest());
  ASSERT_TRUE(bobs.ok()) << bobs.status();
  const v1::Job bob_running =
      WaitForJob(*stub_, kBobToken, bobs->id(), [](const v1::Job& j) {
        return j.state() == v1::JOB_STATE_RUNNING;
      });
  EXPECT_EQ(bob_running.state(), v1::JOB_STATE_RUNNING);
  // Several steps after Bob's job joined, Alice's second still waits.
  const int64_t steps = GetJob(*stub_, kAliceToken, first->id()).steps_done();
  WaitForJob(*stub_, kAliceToken, first->id(), [&](const v1::Job& j) {
    return j.steps_done() >= steps + 3;
  });
  EXPECT_EQ(GetJob(*stub_, kAliceToken, second->id()).state(),
            v1::JOB_STATE_QUEUED);

  // max_queued=2: a third waiting job is refused, naming the quota.
  absl::StatusOr<v1::Job> third = Submit(*stub_, kAliceToken, LongRequest());
  ASSERT_TRUE(third.ok()) << third.status();
  absl::StatusOr<v1::Job> fourth = Submit(*stub_, kAliceToken, LongRequest());
  EXPECT_EQ(fourth.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(absl::StrContains(fourth.status().message(),
                                "client 'alice' already has 2 queued jobs, "
                                "its quota max_queued"))
      << fourth.status().message();

  // Once her running job ends, her next one starts.
  for (const std::string& id : {first->id(), bobs->id()}) {
    v1::CancelJobRequest cancel;
    cancel.set_id(id);
    v1::Job ended;
    EXPECT_TRUE(
        stub_->CancelJob(Context(kOpsToken).get(), cancel, &ended).ok());
  }
  EXPECT_EQ(WaitForJob(*stub_, kAliceToken, second->id(),
                       [](const v1::Job& j) {
                         return j.state() == v1::JOB_STATE_RUNNING;
                       })
                .state(),
            v1::JOB_STATE_RUNNING);
  for (const std::string& id : {second->id(), third->id()}) {
    v1::CancelJobRequest cancel;
    cancel.set_id(id);
    v1::Job ended;
    EXPECT_TRUE(
        stub_->CancelJob(Context(kAliceToken).get(), cancel, &ended).ok());
  }
}

TEST(TokenReloadTest, SighupRereadsTheTokensFile) {
  const std::string tokens = TempPath("reload_tokens.txt");
  WriteText(tokens, TokensText());
  auto server = StartServer({"--tokens_file=" + tokens});
  ASSERT_NE(server, nullptr);
  auto stub = server->NewStub();
  v1::ListModelsResponse models;
  ASSERT_TRUE(stub->ListModels(Context(kBobToken).get(), {}, &models).ok());
  EXPECT_EQ(
      stub->ListModels(Context(kCarolToken).get(), {}, &models).error_code(),
      StatusCode::UNAUTHENTICATED);

  // Carol in, Bob out.
  WriteText(tokens, absl::StrCat(kCarolToken, " carol user\n", kOpsToken,
                                 " ops admin\n"));
  server->Signal(SIGHUP);
  const absl::Time give_up = absl::Now() + absl::Seconds(60);
  grpc::Status carol;
  do {
    carol = stub->ListModels(Context(kCarolToken).get(), {}, &models);
  } while (!carol.ok() && absl::Now() < give_up);
  EXPECT_TRUE(carol.ok()) << carol.error_message();
  EXPECT_EQ(
      stub->ListModels(Context(kBobToken).get(), {}, &models).error_code(),
      StatusCode::UNAUTHENTICATED);

  // A broken file is refused and the tokens in use stay.
  WriteText(tokens, "not a tokens file\n");
  server->Signal(SIGHUP);
  absl::SleepFor(absl::Milliseconds(200));
  EXPECT_TRUE(stub->ListModels(Context(kCarolToken).get(), {}, &models).ok());

  server->Signal(SIGTERM);
  absl::StatusOr<int> exit_code = server->WaitForExit(absl::Seconds(60));
  ASSERT_TRUE(exit_code.ok()) << exit_code.status();
  EXPECT_EQ(*exit_code, 0);
}

TEST(TokenStartTest, ABrokenTokensFileStopsTheServerNamingTheLine) {
  const std::string tokens = TempPath("broken_tokens.txt");
  WriteText(tokens, absl::StrCat("# ok\n", kAliceToken, " alice superuser\n"));
  const std::string log = TempPath("broken.log");
  absl::StatusOr<std::unique_ptr<ServerProcess>> server = ServerProcess::Start(
      {"--tokens_file=" + tokens}, absl::Seconds(120), log);
  EXPECT_FALSE(server.ok());
  const std::string text = ReadText(log);
  EXPECT_TRUE(absl::StrContains(text, tokens + ":2: unknown role 'superuser'"))
      << text;
  EXPECT_FALSE(absl::StrContains(text, kAliceToken));
}

// ---------------------------------------------------------------- TLS

// A CA, a server certificate for 127.0.0.1 / localhost, a client
// certificate it signs (CN alice-laptop), and a client certificate signed
// by another CA; made once by openssl.
class TlsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(TempPath("pki"));
    const std::string script = absl::StrCat(
        "set -e; rm -rf '", *dir_, "'; mkdir -p '", *dir_, "'; cd '", *dir_,
        "'\n"
        "key() { openssl genpkey -algorithm EC -pkeyopt "
        "ec_paramgen_curve:prime256v1 -out $1 2>/dev/null; }\n"
        "key ca.key; openssl req -x509 -new -key ca.key -out ca.pem -days 2 "
        "-subj /CN=featviz-test-ca\n"
        "key rogue.key; openssl req -x509 -new -key rogue.key -out rogue.pem "
        "-days 2 -subj /CN=rogue-ca\n"
        "printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\n' > server.ext\n"
        "key server.key; openssl req -new -key server.key -out server.csr "
        "-subj /CN=localhost\n"
        "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key "
        "-CAcreateserial -out server.pem -days 2 -extfile server.ext "
        "2>/dev/null\n"
        "key client.key; openssl req -new -key client.key -out client.csr "
        "-subj /CN=alice-laptop\n"
        "openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key "
        "-CAcreateserial -out client.pem -days 2 2>/dev/null\n"
        "key intruder.key; openssl req -new -key intruder.key -out "
        "intruder.csr -subj /CN=intruder\n"
        "openssl x509 -req -in intruder.csr -CA rogue.pem -CAkey rogue.key "
        "-CAcreateserial -out intruder.pem -days 2 2>/dev/null\n");
    const std::string script_path = *dir_ + ".sh";
    WriteText(script_path, script);
    ok_ = std::system(("bash '" + script_path + "'").c_str()) == 0;
  }
  static void TearDownTestSuite() { delete dir_; }
  void SetUp() override { ASSERT_TRUE(ok_) << "openssl failed"; }

  static std::string File(const std::string& name) {
    return *dir_ + "/" + name;
  }
  // A TLS channel verifying the server against `ca`, with the client
  // certificate `client` (its .pem and .key) unless empty.
  static std::shared_ptr<grpc::Channel> TlsChannel(
      const std::string& address, const std::string& ca,
      const std::string& client = "") {
    grpc::SslCredentialsOptions options;
    options.pem_root_certs = ReadText(File(ca));
    if (!client.empty()) {
      options.pem_cert_chain = ReadText(File(client + ".pem"));
      options.pem_private_key = ReadText(File(client + ".key"));
    }
    return grpc::CreateChannel(address, grpc::SslCredentials(options));
  }
  static grpc::Status ListModels(const std::shared_ptr<grpc::Channel>& channel) {
    auto stub = v1::Visualizer::NewStub(channel);
    grpc::ClientContext context;
    context.set_deadline(After(20));
    v1::ListModelsResponse response;
    return stub->ListModels(&context, {}, &response);
  }

  static std::string* dir_;
  static bool ok_;
};
std::string* TlsTest::dir_ = nullptr;
bool TlsTest::ok_ = false;

TEST_F(TlsTest, ServesTlsVerifiedByTheCaAndRefusesPlaintextClients) {
  auto server = StartServer({"--tls_cert=" + File("server.pem"),
                             "--tls_key=" + File("server.key")});
  ASSERT_NE(server, nullptr);
  const grpc::Status tls = ListModels(TlsChannel(server->address(), "ca.pem"));
  EXPECT_TRUE(tls.ok()) << tls.error_message();
  // A client that does not trust the server's CA, or speaks plaintext,
  // gets nothing.
  EXPECT_FALSE(ListModels(TlsChannel(server->address(), "rogue.pem")).ok());
  EXPECT_FALSE(ListModels(server->channel()).ok());
}

TEST_F(TlsTest, MutualTlsNeedsACertificateFromTheClientCaAndNamesTheOwner) {
  auto server = StartServer({"--tls_cert=" + File("server.pem"),
                             "--tls_key=" + File("server.key"),
                             "--tls_client_ca=" + File("ca.pem")});
  ASSERT_NE(server, nullptr);
  auto channel = TlsChannel(server->address(), "ca.pem", "client");
  const grpc::Status mtls = ListModels(channel);
  EXPECT_TRUE(mtls.ok()) << mtls.error_message();
  EXPECT_FALSE(ListModels(TlsChannel(server->address(), "ca.pem")).ok());
  EXPECT_FALSE(
      ListModels(TlsChannel(server->address(), "ca.pem", "intruder")).ok());

  // Without tokens, the certificate's common name owns the job.
  auto stub = v1::Visualizer::NewStub(channel);
  absl::StatusOr<v1::Job> job = Submit(*stub, "", TextRequest("logit(2)", 2));
  ASSERT_TRUE(job.ok()) << job.status();
  EXPECT_EQ(job->owner(), "alice-laptop");
}

TEST_F(TlsTest, TokensWorkOverTls) {
  const std::string tokens = TempPath("tls_tokens.txt");
  WriteText(tokens, TokensText());
  auto server = StartServer({"--tls_cert=" + File("server.pem"),
                             "--tls_key=" + File("server.key"),
                             "--tokens_file=" + tokens});
  ASSERT_NE(server, nullptr);
  auto stub = v1::Visualizer::NewStub(TlsChannel(server->address(), "ca.pem"));
  v1::ListModelsResponse models;
  EXPECT_EQ(stub->ListModels(Context("").get(), {}, &models).error_code(),
            StatusCode::UNAUTHENTICATED);
  EXPECT_TRUE(stub->ListModels(Context(kBobToken).get(), {}, &models).ok());
}

TEST(TransportTest, PlaintextOffLoopbackNeedsInsecure) {
  const std::string log = TempPath("plaintext.log");
  absl::StatusOr<std::unique_ptr<ServerProcess>> refused =
      ServerProcess::Start({"--listen=0.0.0.0:0"}, absl::Seconds(120), log);
  EXPECT_FALSE(refused.ok());
  EXPECT_TRUE(absl::StrContains(ReadText(log), "--insecure")) << ReadText(log);

  auto allowed = StartServer({"--listen=0.0.0.0:0", "--insecure"});
  ASSERT_NE(allowed, nullptr);
  auto stub = v1::Visualizer::NewStub(grpc::CreateChannel(
      absl::StrCat("127.0.0.1:", allowed->port()),
      grpc::InsecureChannelCredentials()));
  v1::ListModelsResponse models;
  EXPECT_TRUE(stub->ListModels(Context("").get(), {}, &models).ok());
}

TEST(TransportTest, HalfATlsConfigurationIsRefused) {
  absl::StatusOr<std::unique_ptr<ServerProcess>> server =
      ServerProcess::Start({"--tls_cert=/nonexistent.pem"});
  EXPECT_FALSE(server.ok());
}

}  // namespace
}  // namespace featviz::testing
