#include "client/upload.h"

#include <algorithm>
#include <filesystem>
#include <memory>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "client/chunked_send.h"
#include "client/json.h"
#include "core/files.h"
#include "core/sha256.h"
#include "core/status_macros.h"

namespace featviz::client {
namespace {

namespace fs = std::filesystem;
namespace v1 = featviz::v1;

// The bytes of `path`; an error says which of the upload's files it is
// ("model: cannot read 'm.pt'").
absl::StatusOr<std::string> ReadUploadFile(const std::string& path,
                                           absl::string_view what) {
  absl::StatusOr<std::string> bytes = core::ReadFile(path);
  if (!bytes.ok()) {
    return core::Prefixed(what, bytes.status());
  }
  return bytes;
}

}  // namespace

absl::StatusOr<v1::UploadModelResponse> UploadModel(
    VisualizerClient& client, const UploadOptions& options) {
  absl::StatusOr<std::string> model = ReadUploadFile(options.model_path, "model");
  if (!model.ok()) return model.status();
  std::string card_path = options.card_path;
  if (card_path.empty()) {
    fs::path beside(options.model_path);
    beside.replace_extension(".card.json");
    if (fs::exists(beside)) card_path = beside.string();
  }
  std::string card;
  if (!card_path.empty()) {
    absl::StatusOr<std::string> read = ReadUploadFile(card_path, "card");
    if (!read.ok()) return read.status();
    card = *std::move(read);
  }
  std::string name = options.name;
  if (name.empty() && !card.empty()) {
    const nlohmann::json parsed = nlohmann::json::parse(card, nullptr, false);
    if (parsed.is_object() && parsed.contains("name") &&
        parsed["name"].is_string()) {
      name = parsed["name"].get<std::string>();
    }
  }
  if (name.empty()) name = fs::path(options.model_path).stem().string();

  auto stub = v1::Visualizer::NewStub(client.channel());
  grpc::ClientContext context;
  // Loading a large model takes a while: ten times the call deadline.
  client.Prepare(context, client.options().call_timeout * 10);
  v1::UploadModelResponse response;
  std::unique_ptr<grpc::ClientWriter<v1::UploadModelRequest>> writer =
      stub->UploadModel(&context, &response);
  v1::UploadModelRequest::Header header;
  header.set_name(name);
  header.set_size_bytes(static_cast<int64_t>(model->size()));
  header.set_sha256(core::Sha256Hex(*model));
  header.set_card_json(card);
  SendChunks(*writer, header, *model, options.chunk_bytes);
  FEATVIZ_RETURN_IF_ERROR(client.FromGrpc(writer->Finish()));
  return response;
}

absl::Status RunUpload(VisualizerClient& client, const UploadOptions& options,
                       bool json, std::FILE* out) {
  absl::StatusOr<v1::UploadModelResponse> response =
      UploadModel(client, options);
  if (!response.ok()) return response.status();
  const v1::Model* model = &response->model();
  if (json) {
    nlohmann::ordered_json report = ModelToJson(*model);
    report["already_present"] = response->already_present();
    const std::string text = report.dump() + "\n";
    std::fputs(text.c_str(), out);
    return absl::OkStatus();
  }
  const std::string text = absl::StrCat(
      response->already_present() ? "already served, same file and card: "
                                  : "uploaded ",
      model->name(), "@", model->version(), " (", model->path(), ", sha256 ",
      model->content_hash().substr(0, 12), "): ", model->layers_size(),
      " layers, ", model->class_names_size(), " classes, input ",
      model->input().channels(), "x", model->input().height(), "x",
      model->input().width(), "\n");
  std::fputs(text.c_str(), out);
  return absl::OkStatus();
}

}  // namespace featviz::client
