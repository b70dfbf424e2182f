// The JSON gateway over a real grpc::Server (in process) whose
// featviz.v1.Visualizer is scripted here: what the gateway makes of each
// status, of JSON both ways, of a server stream, and of a client that
// stops reading.
#include "server/http/json_gateway.h"

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <memory>
#include <string>

#include "absl/synchronization/notification.h"
#include "featviz/v1/featviz.grpc.pb.h"

namespace featviz::server::http {
namespace {

// GetModel answers by name: "ok" a model, "code-N" status N with a message
// naming the field; the authorization metadata is echoed as description.
// Render streams three progress events and a result; "endless" streams
// until cancelled, noting the cancel.
class ScriptedVisualizer final : public v1::Visualizer::CallbackService {
 public:
  absl::Notification render_cancelled;

  grpc::ServerUnaryReactor* GetModel(grpc::CallbackServerContext* context,
                                     const v1::GetModelRequest* request,
                                     v1::Model* response) override {
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    const std::string& name = request->name();
    if (name.rfind("code-", 0) == 0) {
      reactor->Finish(
          grpc::Status(static_cast<grpc::StatusCode>(std::stoi(name.substr(5))),
                       "GetModelRequest.name \"" + name + "\" is wrong"));
      return reactor;
    }
    response->set_name(name);
    response->set_memory_bytes(int64_t{1} << 40);
    response->add_class_names("<b>");
    const auto& metadata = context->client_metadata();
    auto it = metadata.find("authorization");
    if (it != metadata.end()) {
      response->set_description(
          std::string(it->second.data(), it->second.size()));
    }
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

  grpc::ServerWriteReactor<v1::RenderEvent>* Render(
      grpc::CallbackServerContext* context,
      const v1::RenderRequest* request) override {
    class Writer final : public grpc::ServerWriteReactor<v1::RenderEvent> {
     public:
      Writer(ScriptedVisualizer* service, grpc::CallbackServerContext* context,
             bool endless)
          : service_(service), endless_(endless) {
        if (!endless) {
          context->AddInitialMetadata("featviz-job-id", "7");
          StartSendInitialMetadata();
        }
        Next();
      }
      void OnWriteDone(bool ok) override {
        if (!ok) return Finish(grpc::Status::CANCELLED);
        Next();
      }
      void OnSendInitialMetadataDone(bool) override {}
      void OnCancel() override { service_->render_cancelled.Notify(); }
      void OnDone() override { delete this; }

     private:
      void Next() {
        if (!endless_ && sent_ == 4) return Finish(grpc::Status::OK);
        event_.Clear();
        if (!endless_ && sent_ == 3) {
          event_.mutable_result()->set_objective("logit(1)");
        } else {
          event_.mutable_progress()->set_step(sent_ + 1);
          event_.mutable_progress()->add_term_values(0.5);
        }
        ++sent_;
        StartWrite(&event_);
      }
      ScriptedVisualizer* service_;
      const bool endless_;
      int sent_ = 0;
      v1::RenderEvent event_;
    };
    if (request->model() == "refused") {
      class Refuse final : public grpc::ServerWriteReactor<v1::RenderEvent> {
       public:
        Refuse() {
          Finish(grpc::Status(grpc::StatusCode::NOT_FOUND, "model 'refused'"));
        }
        void OnDone() override { delete this; }
      };
      return new Refuse();
    }
    return new Writer(this, context, request->model() == "endless");
  }
};

class JsonGatewayTest : public ::testing::Test {
 protected:
  void SetUp() override {
    grpc::ServerBuilder builder;
    builder.RegisterService(&service_);
    server_ = builder.BuildAndStart();
    gateway_ = std::make_unique<JsonGateway>(
        server_->InProcessChannel(grpc::ChannelArguments()),
        std::set<std::string>{"featviz.v1.Visualizer"});
  }
  void TearDown() override {
    gateway_.reset();
    server_->Shutdown();
  }
  const google::protobuf::MethodDescriptor& Method(const std::string& path) {
    auto method = gateway_->Find(path);
    EXPECT_TRUE(method.ok()) << method.status();
    return **method;
  }

  ScriptedVisualizer service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<JsonGateway> gateway_;
};

TEST(HttpStatusFor, MapsEveryCodeTheApiUses) {
  EXPECT_EQ(HttpStatusFor(grpc::StatusCode::OK), 200);
  EXPECT_EQ(HttpStatusFor(grpc::StatusCode::INVALID_ARGUMENT), 400);
  EXPECT_EQ(HttpStatusFor(grpc::StatusCode::OUT_OF_RANGE), 400);
  EXPECT_EQ(HttpStatusFor(grpc::StatusCode::UNAUTHENTICATED), 401);
  EXPECT_EQ(HttpStatusFor(grpc::StatusCode::PERMISSION_DENIED), 403);
  EXPECT_EQ(HttpStatusFor(grpc::StatusCode::NOT_FOUND), 404);
  EXPECT_EQ(HttpStatusFor(grpc::StatusCode::ALREADY_EXISTS), 409);
  EXPECT_EQ(HttpStatusFor(grpc::StatusCode::FAILED_PRECONDITION), 412);
  EXPECT_EQ(HttpStatusFor(grpc::StatusCode::RESOURCE_EXHAUSTED), 429);
  EXPECT_EQ(HttpStatusFor(grpc::StatusCode::CANCELLED), 499);
  EXPECT_EQ(HttpStatusFor(grpc::StatusCode::UNAVAILABLE), 503);
  EXPECT_EQ(HttpStatusFor(grpc::StatusCode::DEADLINE_EXCEEDED), 504);
  EXPECT_EQ(HttpStatusFor(grpc::StatusCode::INTERNAL), 500);
  EXPECT_EQ(HttpStatusFor(grpc::StatusCode::UNKNOWN), 500);
}

TEST(ErrorJson, EscapesTheMessage) {
  EXPECT_EQ(ErrorJson(grpc::Status(grpc::StatusCode::NOT_FOUND,
                                   "model \"a\\b\"\n\x01")),
            R"({"code":"NOT_FOUND","message":"model \"a\\b\"\n\u0001"})");
}

TEST_F(JsonGatewayTest, FindsOnlyTheServicesItServes) {
  EXPECT_TRUE(gateway_->Find("featviz.v1.Visualizer/GetModel").ok());
  const auto unknown = gateway_->Find("featviz.v1.Visualizer/Nope");
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(unknown.status().message().find("Nope"), absl::string_view::npos);
  EXPECT_EQ(gateway_->Find("featviz.v1.Circuits/TopExamples").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(gateway_->Find("grpc.health.v1.Health/Check").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_NE(gateway_->Describe().find(
                R"("path":"/api/featviz.v1.Visualizer/Render")"),
            std::string::npos);
}

TEST_F(JsonGatewayTest, AnswersJsonAndForwardsTheAuthorization) {
  const JsonReply reply =
      gateway_->CallUnary(Method("featviz.v1.Visualizer/GetModel"),
                          R"({"name": "ok"})", "Bearer t0ken");
  ASSERT_TRUE(reply.status.ok()) << reply.status.error_message();
  EXPECT_NE(reply.json.find(R"("name":"ok")"), std::string::npos);
  EXPECT_NE(reply.json.find(R"("description":"Bearer t0ken")"),
            std::string::npos);
  // int64 as a string, every field present, names in lowerCamelCase.
  EXPECT_NE(reply.json.find(R"("memoryBytes":"1099511627776")"),
            std::string::npos);
  EXPECT_NE(reply.json.find(R"("contentHash":"")"), std::string::npos);
  EXPECT_NE(reply.json.find(R"("classNames":[")"), std::string::npos)
      << reply.json;
}

TEST_F(JsonGatewayTest, KeepsTheServersStatusAndMessage) {
  for (const grpc::StatusCode code :
       {grpc::StatusCode::UNAUTHENTICATED, grpc::StatusCode::PERMISSION_DENIED,
        grpc::StatusCode::RESOURCE_EXHAUSTED,
        grpc::StatusCode::FAILED_PRECONDITION}) {
    const std::string name = "code-" + std::to_string(static_cast<int>(code));
    const JsonReply reply =
        gateway_->CallUnary(Method("featviz.v1.Visualizer/GetModel"),
                            R"({"name": ")" + name + R"("})", "");
    EXPECT_EQ(reply.status.error_code(), code);
    EXPECT_EQ(reply.status.error_message(),
              "GetModelRequest.name \"" + name + "\" is wrong");
  }
}

TEST_F(JsonGatewayTest, RefusesJsonThatIsNotTheRequestNamingTheField) {
  const JsonReply reply = gateway_->CallUnary(
      Method("featviz.v1.Visualizer/GetModel"), R"({"nmae": "x"})", "");
  EXPECT_EQ(reply.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(reply.status.error_message().find("nmae"), std::string::npos);
  EXPECT_NE(reply.status.error_message().find("featviz.v1.GetModelRequest"),
            std::string::npos);
}

TEST_F(JsonGatewayTest, StreamsServerSentEvents) {
  auto stream = gateway_->StartStream(Method("featviz.v1.Visualizer/Render"),
                                      R"({"model": "m"})", "");
  ASSERT_TRUE(stream.ok()) << stream.status();
  std::string text;
  const grpc::Status status = (*stream)->Pump(
      [&](absl::string_view piece) {
        text.append(piece.data(), piece.size());
        return true;
      },
      absl::Hours(1));
  EXPECT_TRUE(status.ok());
  const std::string progress =
      "event: metadata\ndata: {\"featviz-job-id\":\"7\"}\n\n"
      "data: {\"progress\":{\"step\":\"1\",\"totalSteps\":\"0\","
      "\"termValues\":[0.5],\"previewPng\":\"\"}}\n\n"
      "data: {\"progress\":{\"step\":\"2\",\"totalSteps\":\"0\","
      "\"termValues\":[0.5],\"previewPng\":\"\"}}\n\n"
      "data: {\"progress\":{\"step\":\"3\",\"totalSteps\":\"0\","
      "\"termValues\":[0.5],\"previewPng\":\"\"}}\n\n"
      "data: {\"result\":{";
  EXPECT_EQ(text.substr(0, progress.size()), progress) << text;
  const std::string end = "}}\n\nevent: end\ndata: {}\n\n";
  ASSERT_GT(text.size(), end.size());
  EXPECT_EQ(text.substr(text.size() - end.size()), end) << text;
  EXPECT_NE(text.find(R"x("objective":"logit(1)")x"), std::string::npos);
}

TEST_F(JsonGatewayTest, AStreamRefusedBeforeItStartsIsAPlainError) {
  auto stream = gateway_->StartStream(Method("featviz.v1.Visualizer/Render"),
                                      R"({"model": "refused"})", "");
  EXPECT_EQ(stream.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(stream.status().message(), "model 'refused'");
}

TEST_F(JsonGatewayTest, AClientThatLeavesCancelsTheCall) {
  auto stream = gateway_->StartStream(Method("featviz.v1.Visualizer/Render"),
                                      R"({"model": "endless"})", "");
  ASSERT_TRUE(stream.ok()) << stream.status();
  int writes = 0;
  const grpc::Status status = (*stream)->Pump(
      [&](absl::string_view) { return ++writes < 3; }, absl::Hours(1));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::CANCELLED);
  // The server hears of it (on its own thread: waited for, not timed).
  EXPECT_TRUE(service_.render_cancelled.WaitForNotificationWithTimeout(
      absl::Seconds(60)));
  EXPECT_EQ(writes, 3);  // Nothing is written once the sink has failed.
}

}  // namespace
}  // namespace featviz::server::http
