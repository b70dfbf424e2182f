// `featviz upload`: sends a TorchScript model (and its card) to a server's
// UploadModel RPC in chunks, with the file's SHA-256 for the server to check.
#ifndef FEATVIZ_CLIENT_UPLOAD_H_
#define FEATVIZ_CLIENT_UPLOAD_H_

#include <cstdint>
#include <cstdio>
#include <string>

#include "absl/status/statusor.h"
#include "client/visualizer_client.h"
#include "featviz/v1/featviz.pb.h"

namespace featviz::client {

struct UploadOptions {
  std::string model_path;  // The TorchScript file.
  // Its card; empty: `<stem>.card.json` beside the model when it exists,
  // else none (the server guesses the input size).
  std::string card_path;
  // The name in the server's repository; empty: the card's name, else the
  // file's stem.
  std::string name;
  // Bytes per message (the server takes at most 4 MiB).
  int64_t chunk_bytes = int64_t{1} << 20;
};

// Uploads and returns the server's reply: the model version it now serves,
// and whether that version already had this file and card. NotFound for
// files that cannot be read; the server's status otherwise.
absl::StatusOr<featviz::v1::UploadModelResponse> UploadModel(
    VisualizerClient& client, const UploadOptions& options);

// The command: uploads, then prints the version served, saying when it was
// already there (one JSON object with `json`, the model's fields and
// "already_present").
absl::Status RunUpload(VisualizerClient& client, const UploadOptions& options,
                       bool json, std::FILE* out);

}  // namespace featviz::client

#endif  // FEATVIZ_CLIENT_UPLOAD_H_
