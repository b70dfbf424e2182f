#include "server/http/json_gateway.h"

#include <grpcpp/generic/generic_stub.h>

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "google/protobuf/dynamic_message.h"
#include "google/protobuf/message.h"
#include "google/protobuf/util/json_util.h"

namespace featviz::server::http {
namespace {

namespace pb = google::protobuf;

// The JSON of a response: every field, zeros and empty lists included (a
// page need not know proto3's defaults), names in lowerCamelCase as
// protobuf's JSON mapping writes them.
pb::util::JsonPrintOptions PrintOptions() {
  pb::util::JsonPrintOptions options;
  options.always_print_primitive_fields = true;
  return options;
}

std::string ToJson(const pb::Message& message) {
  std::string json;
  const pb::util::Status status =
      pb::util::MessageToJsonString(message, &json, PrintOptions());
  if (!status.ok()) {
    // Only a message with an unknown Any type fails; featviz has none.
    return ErrorJson(grpc::Status(grpc::StatusCode::INTERNAL,
                                  std::string(status.message())));
  }
  return json;
}

std::unique_ptr<pb::Message> NewMessage(const pb::Descriptor* type) {
  return std::unique_ptr<pb::Message>(
      pb::MessageFactory::generated_factory()->GetPrototype(type)->New());
}

// The request `json` as a message of `type`, or INVALID_ARGUMENT with the
// parser's message (which names the field).
absl::StatusOr<std::unique_ptr<pb::Message>> ParseRequest(
    const pb::Descriptor* type, absl::string_view json) {
  std::unique_ptr<pb::Message> message = NewMessage(type);
  // An empty body is the empty request: GET-like calls need not send "{}".
  if (json.find_first_not_of(" \t\r\n") == absl::string_view::npos) {
    return message;
  }
  pb::util::JsonParseOptions options;
  const pb::util::Status status = pb::util::JsonStringToMessage(
      pb::StringPiece(json.data(), json.size()), message.get(), options);
  if (!status.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("request body is not a JSON ", type->full_name(), ": ",
                     std::string(status.message())));
  }
  return message;
}

grpc::ByteBuffer Serialize(const pb::Message& message) {
  const std::string bytes = message.SerializeAsString();
  grpc::Slice slice(bytes);
  return grpc::ByteBuffer(&slice, 1);
}

bool Parse(const grpc::ByteBuffer& buffer, pb::Message& message) {
  std::vector<grpc::Slice> slices;
  if (!buffer.Dump(&slices).ok()) return false;
  std::string bytes;
  for (const grpc::Slice& slice : slices) {
    bytes.append(reinterpret_cast<const char*>(slice.begin()), slice.size());
  }
  return message.ParseFromString(bytes);
}

grpc::Status FromAbsl(const absl::Status& status) {
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()),
                      std::string(status.message()));
}

std::string Escape(absl::string_view text) {
  std::string out;
  for (const char c : text) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          out += absl::StrCat("\\u00", absl::Hex(c, absl::kZeroPad2));
        } else {
          out += c;
        }
    }
  }
  return out;
}

}  // namespace

int HttpStatusFor(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK:
      return 200;
    case grpc::StatusCode::INVALID_ARGUMENT:
    case grpc::StatusCode::OUT_OF_RANGE:
      return 400;
    case grpc::StatusCode::UNAUTHENTICATED:
      return 401;
    case grpc::StatusCode::PERMISSION_DENIED:
      return 403;
    case grpc::StatusCode::NOT_FOUND:
      return 404;
    case grpc::StatusCode::ALREADY_EXISTS:
    case grpc::StatusCode::ABORTED:
      return 409;
    case grpc::StatusCode::FAILED_PRECONDITION:
      return 412;
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      return 429;
    case grpc::StatusCode::CANCELLED:
      return 499;
    case grpc::StatusCode::UNIMPLEMENTED:
      return 501;
    case grpc::StatusCode::UNAVAILABLE:
      return 503;
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return 504;
    default:
      return 500;
  }
}

std::string CodeName(grpc::StatusCode code) {
  return absl::StatusCodeToString(static_cast<absl::StatusCode>(code));
}

std::string ErrorJson(const grpc::Status& status) {
  return absl::StrCat("{\"code\":\"", CodeName(status.error_code()),
                      "\",\"message\":\"", Escape(status.error_message()),
                      "\"}");
}

// One call over the generic stub, driven op by op on its own completion
// queue by the HTTP thread that serves the request (one op in flight at a
// time, so the tag is always the same).
struct JsonGateway::Stream::Call {
  grpc::ClientContext context;
  grpc::CompletionQueue queue;
  std::unique_ptr<grpc::GenericClientAsyncReaderWriter> rpc;
  const pb::Descriptor* response_type = nullptr;
  bool finished = false;

  // Starts `op` and waits for it; false when it failed (the call is over).
  bool Do(const std::function<void(void*)>& op) {
    op(this);
    void* tag = nullptr;
    bool ok = false;
    if (!queue.Next(&tag, &ok)) return false;
    return ok;
  }

  grpc::Status Finish() {
    grpc::Status status;
    Do([&](void* tag) { rpc->Finish(&status, tag); });
    finished = true;
    return status;
  }

  ~Call() {
    if (rpc != nullptr && !finished) {
      context.TryCancel();
      Finish();
    }
    queue.Shutdown();
    void* tag = nullptr;
    bool ok = false;
    while (queue.Next(&tag, &ok)) {
    }
  }
};

namespace {

using Call = JsonGateway::Stream::Call;

// A call of `method` with `authorization` forwarded, started.
std::unique_ptr<Call> StartCall(grpc::GenericStub& stub,
                                const pb::MethodDescriptor& method,
                                absl::string_view authorization) {
  auto call = std::make_unique<Call>();
  if (!authorization.empty()) {
    call->context.AddMetadata("authorization", std::string(authorization));
  }
  call->response_type = method.output_type();
  const std::string path =
      absl::StrCat("/", method.service()->full_name(), "/", method.name());
  call->rpc = stub.PrepareCall(&call->context, path, &call->queue);
  call->Do([&](void* tag) { call->rpc->StartCall(tag); });
  return call;
}

// Reads the one response of a unary or client-streaming call, and its end.
JsonReply ReadReply(Call& call) {
  grpc::ByteBuffer buffer;
  const bool got = call.Do([&](void* tag) { call.rpc->Read(&buffer, tag); });
  grpc::Status status = call.Finish();
  if (!status.ok()) return {status, ""};
  std::unique_ptr<pb::Message> response = NewMessage(call.response_type);
  if (!got || !Parse(buffer, *response)) {
    return {grpc::Status(grpc::StatusCode::INTERNAL,
                         "the server's response did not parse"),
            ""};
  }
  return {status, ToJson(*response)};
}

}  // namespace

JsonGateway::JsonGateway(std::shared_ptr<grpc::Channel> channel,
                         std::set<std::string> services)
    : channel_(std::move(channel)), services_(std::move(services)) {}

absl::StatusOr<const pb::MethodDescriptor*> JsonGateway::Find(
    absl::string_view path) const {
  const std::vector<absl::string_view> parts = absl::StrSplit(path, '/');
  if (parts.size() != 2 || !services_.count(std::string(parts[0]))) {
    return absl::NotFoundError(
        absl::StrCat("no method '", path,
                     "': paths are /api/SERVICE/METHOD with SERVICE one of ",
                     absl::StrJoin(services_, ", "), " (GET /api lists them)"));
  }
  const pb::MethodDescriptor* method =
      pb::DescriptorPool::generated_pool()->FindMethodByName(
          absl::StrCat(parts[0], ".", parts[1]));
  if (method == nullptr) {
    return absl::NotFoundError(absl::StrCat("service ", parts[0],
                                            " has no method '", parts[1],
                                            "' (GET /api lists them)"));
  }
  return method;
}

std::string JsonGateway::Describe() const {
  std::string json = "{\"services\":[";
  bool first_service = true;
  for (const std::string& name : services_) {
    const pb::ServiceDescriptor* service =
        pb::DescriptorPool::generated_pool()->FindServiceByName(name);
    if (service == nullptr) continue;
    absl::StrAppend(&json, first_service ? "" : ",", "{\"name\":\"", name,
                    "\",\"methods\":[");
    first_service = false;
    for (int i = 0; i < service->method_count(); ++i) {
      const pb::MethodDescriptor* method = service->method(i);
      absl::StrAppend(&json, i == 0 ? "" : ",", "{\"name\":\"", method->name(),
                      "\",\"path\":\"/api/", name, "/", method->name(),
                      "\",\"request\":\"", method->input_type()->full_name(),
                      "\",\"response\":\"", method->output_type()->full_name(),
                      "\",\"clientStreaming\":",
                      method->client_streaming() ? "true" : "false",
                      ",\"serverStreaming\":",
                      method->server_streaming() ? "true" : "false", "}");
    }
    json += "]}";
  }
  json += "]}";
  return json;
}

JsonReply JsonGateway::CallUnary(const pb::MethodDescriptor& method,
                                 absl::string_view json,
                                 absl::string_view authorization) const {
  absl::StatusOr<std::unique_ptr<pb::Message>> request =
      ParseRequest(method.input_type(), json);
  if (!request.ok()) return {FromAbsl(request.status()), ""};
  grpc::GenericStub stub(channel_);
  std::unique_ptr<Call> call = StartCall(stub, method, authorization);
  const grpc::ByteBuffer buffer = Serialize(**request);
  call->Do([&](void* tag) { call->rpc->Write(buffer, tag); });
  call->Do([&](void* tag) { call->rpc->WritesDone(tag); });
  return ReadReply(*call);
}

JsonReply JsonGateway::CallUpload(const pb::MethodDescriptor& method,
                                  absl::string_view header_json,
                                  absl::string_view bytes,
                                  absl::string_view authorization,
                                  int64_t chunk_bytes) const {
  const pb::FieldDescriptor* chunk =
      method.input_type()->FindFieldByName("chunk");
  if (chunk == nullptr || chunk->type() != pb::FieldDescriptor::TYPE_BYTES) {
    return {
        grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                     absl::StrCat(method.full_name(), " takes no file upload")),
        ""};
  }
  absl::StatusOr<std::unique_ptr<pb::Message>> first =
      ParseRequest(method.input_type(), header_json);
  if (!first.ok()) return {FromAbsl(first.status()), ""};
  grpc::GenericStub stub(channel_);
  std::unique_ptr<Call> call = StartCall(stub, method, authorization);
  const size_t step = static_cast<size_t>(std::max<int64_t>(1, chunk_bytes));
  size_t offset = 0;
  std::unique_ptr<pb::Message> message = std::move(*first);
  bool writing = true;
  do {
    const absl::string_view piece = bytes.substr(offset, step);
    message->GetReflection()->SetString(message.get(), chunk,
                                        std::string(piece));
    offset += piece.size();
    const grpc::ByteBuffer buffer = Serialize(*message);
    // A failed write means the server has ended the call (a refused header,
    // a quota): its status says why.
    writing = call->Do([&](void* tag) { call->rpc->Write(buffer, tag); });
    message = NewMessage(method.input_type());
  } while (writing && offset < bytes.size());
  if (writing) call->Do([&](void* tag) { call->rpc->WritesDone(tag); });
  return ReadReply(*call);
}

absl::StatusOr<std::unique_ptr<JsonGateway::Stream>> JsonGateway::StartStream(
    const pb::MethodDescriptor& method, absl::string_view json,
    absl::string_view authorization) const {
  absl::StatusOr<std::unique_ptr<pb::Message>> request =
      ParseRequest(method.input_type(), json);
  if (!request.ok()) return request.status();
  grpc::GenericStub stub(channel_);
  std::unique_ptr<Call> call = StartCall(stub, method, authorization);
  const grpc::ByteBuffer buffer = Serialize(**request);
  call->Do([&](void* tag) { call->rpc->Write(buffer, tag); });
  call->Do([&](void* tag) { call->rpc->WritesDone(tag); });
  // A refused call ends without initial metadata (trailers only): answer
  // it as a plain HTTP error, before any event is sent.
  call->Do([&](void* tag) { call->rpc->ReadInitialMetadata(tag); });
  if (call->context.GetServerInitialMetadata().empty()) {
    // Either refused, or a method that sends no metadata: the first
    // message or the end tells which. Kept as the stream's first event.
    auto stream = std::unique_ptr<Stream>(new Stream(std::move(call)));
    Call& c = *stream->call_;
    grpc::ByteBuffer first;
    if (!c.Do([&](void* tag) { c.rpc->Read(&first, tag); })) {
      const grpc::Status status = c.Finish();
      if (!status.ok()) {
        return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                            status.error_message());
      }
    } else {
      stream->first_ = std::move(first);
    }
    return stream;
  }
  return std::unique_ptr<Stream>(new Stream(std::move(call)));
}

JsonGateway::Stream::Stream(std::unique_ptr<Call> call)
    : call_(std::move(call)) {}

JsonGateway::Stream::~Stream() = default;

void JsonGateway::Stream::Cancel() { call_->context.TryCancel(); }

grpc::Status JsonGateway::Stream::Pump(const EventSink& sink,
                                       absl::Duration heartbeat) {
  Call& call = *call_;
  bool alive = true;
  const auto send = [&](absl::string_view text) {
    if (alive && !sink(text)) {
      alive = false;
      call.context.TryCancel();  // Render: the job is cancelled.
    }
  };
  const auto& metadata = call.context.GetServerInitialMetadata();
  if (!metadata.empty()) {
    std::string json = "{";
    bool first = true;
    for (const auto& [key, value] : metadata) {
      absl::StrAppend(
          &json, first ? "" : ",", "\"",
          Escape(absl::string_view(key.data(), key.size())), "\":\"",
          Escape(absl::string_view(value.data(), value.size())), "\"");
      first = false;
    }
    json += "}";
    send(absl::StrCat("event: metadata\ndata: ", json, "\n\n"));
  }
  const auto send_message = [&](const grpc::ByteBuffer& buffer) {
    std::unique_ptr<pb::Message> message = NewMessage(call.response_type);
    if (!Parse(buffer, *message)) return false;
    send(absl::StrCat("data: ", ToJson(*message), "\n\n"));
    return true;
  };
  if (first_.has_value()) send_message(*first_);
  while (!call.finished) {
    grpc::ByteBuffer buffer;
    call.rpc->Read(&buffer, &call);
    void* tag = nullptr;
    bool ok = false;
    for (;;) {
      const auto next = call.queue.AsyncNext(
          &tag, &ok, absl::ToChronoTime(absl::Now() + heartbeat));
      if (next == grpc::CompletionQueue::GOT_EVENT) break;
      if (next == grpc::CompletionQueue::SHUTDOWN) {
        ok = false;
        break;
      }
      send(": keep-alive\n\n");
    }
    if (!ok) break;
    if (!send_message(buffer)) {
      call.context.TryCancel();
      break;
    }
  }
  const grpc::Status status = call.finished ? grpc::Status::OK : call.Finish();
  if (status.ok()) {
    send("event: end\ndata: {}\n\n");
  } else {
    send(absl::StrCat("event: error\ndata: ", ErrorJson(status), "\n\n"));
  }
  return status;
}

}  // namespace featviz::server::http
