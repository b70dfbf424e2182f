// The client's half of a chunked upload (UploadModel, UploadDataset): the
// header travels with the first chunk, the rest of the bytes follow in
// pieces, and a write that fails (the server has refused) ends the sending;
// the call's Finish then says why.
#ifndef FEATVIZ_CLIENT_CHUNKED_SEND_H_
#define FEATVIZ_CLIENT_CHUNKED_SEND_H_

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "absl/strings/string_view.h"

namespace featviz::client {

// Writes `header` and `bytes` (at least one message, even for no bytes) in
// pieces of `chunk_bytes` (at least 1), then WritesDone.
template <typename Request>
void SendChunks(grpc::ClientWriter<Request>& writer,
                const typename Request::Header& header,
                absl::string_view bytes, int64_t chunk_bytes) {
  const size_t chunk = static_cast<size_t>(std::max<int64_t>(1, chunk_bytes));
  Request request;
  *request.mutable_header() = header;
  size_t offset = 0;
  bool first = true;
  while (first || offset < bytes.size()) {
    const size_t n = std::min(chunk, bytes.size() - offset);
    request.set_chunk(std::string(bytes.substr(offset, n)));
    offset += n;
    if (!writer.Write(request)) break;
    if (first) {
      request.clear_header();
      first = false;
    }
  }
  writer.WritesDone();
}

}  // namespace featviz::client

#endif  // FEATVIZ_CLIENT_CHUNKED_SEND_H_
