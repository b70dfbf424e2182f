// SHA-256 through OpenSSL, the one copy: whole strings (a model's content
// hash, a render's cache key) and streams (an upload's bytes as they arrive).
#ifndef FEATVIZ_CORE_SHA256_H_
#define FEATVIZ_CORE_SHA256_H_

#include <memory>
#include <string>

#include "absl/strings/string_view.h"

namespace featviz::core {

// The SHA-256 of `bytes`, 64 lowercase hex digits.
std::string Sha256Hex(absl::string_view bytes);

// True for 64 lowercase hex digits (what Sha256Hex writes).
bool IsSha256Hex(absl::string_view text);

// A SHA-256 fed piece by piece. Not thread-safe.
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;

  void Update(absl::string_view bytes);
  // The digest of everything fed so far, as Sha256Hex; the hash starts over.
  std::string HexDigest();

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace featviz::core

#endif  // FEATVIZ_CORE_SHA256_H_
