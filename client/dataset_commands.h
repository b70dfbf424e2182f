// `featviz dataset upload NAME PATH` and `featviz dataset rm NAME`: a lab's
// own images sent to a server (Circuits.UploadDataset) and removed again.
//
// PATH is sent as it is when it is an .npy file, an .npz archive or an IDX3
// image file (`*-images-idx3-ubyte[.gz]`, with the IDX1 labels beside it
// when they exist, named as MNIST names them). A folder (PNGs in one
// subfolder per class, or anything else a server's --dataset_dir reads as
// one dataset) is read here and packed as an .npz archive: images.npy
// (uint8 when every pixel is a multiple of 1/255, else float32) and, with
// classes, labels.npy, the folders' names becoming the class names.
#ifndef FEATVIZ_CLIENT_DATASET_COMMANDS_H_
#define FEATVIZ_CLIENT_DATASET_COMMANDS_H_

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "client/visualizer_client.h"
#include "featviz/v1/circuits.pb.h"

namespace featviz::client {

// What PATH becomes on the wire.
struct PackedDataset {
  featviz::v1::DatasetFormat format = featviz::v1::DATASET_FORMAT_UNSPECIFIED;
  // The stream's bytes: the file, or for IDX the image file then the
  // label file.
  std::string bytes;
  int64_t labels_bytes = 0;
  // The folders' names for a packed folder; empty otherwise.
  std::vector<std::string> class_names;
};

// Reads (and for a folder, packs) `path`. NotFound for a path that does not
// exist; InvalidArgument for a file of no known format or a folder without
// images.
absl::StatusOr<PackedDataset> PackDataset(const std::string& path);

struct DatasetUploadOptions {
  std::string name;
  std::string path;
  // --classes: the class names (overriding a folder's); empty: the
  // folder's, else numbered by the server.
  std::vector<std::string> class_names;
  // Bytes per message (the server takes at most 4 MiB).
  int64_t chunk_bytes = int64_t{1} << 20;
};

// Packs and uploads; the dataset the server now hosts.
absl::StatusOr<featviz::v1::Dataset> UploadDataset(
    VisualizerClient& client, const DatasetUploadOptions& options);

// The commands: print the dataset uploaded or removed (one JSON object with
// `json`).
absl::Status RunDatasetUpload(VisualizerClient& client,
                              const DatasetUploadOptions& options, bool json,
                              std::FILE* out);
absl::Status RunDatasetRemove(VisualizerClient& client, const std::string& name,
                              bool json, std::FILE* out);

}  // namespace featviz::client

#endif  // FEATVIZ_CLIENT_DATASET_COMMANDS_H_
