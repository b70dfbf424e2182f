// A model repository in a temporary directory for the tests, filled with
// copies of real models, removed when the test is done. Versions appear
// atomically (written under a dot name, then renamed), as an operator
// should add them to a polled repository.
#ifndef FEATVIZ_TESTS_SERVER_MODEL_REPO_H_
#define FEATVIZ_TESTS_SERVER_MODEL_REPO_H_

#include <stdlib.h>
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include <openssl/evp.h>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace featviz::testing {

inline std::string MnistFile() {
  return std::string(FEATVIZ_MODELS_DIR) + "/mnist_classifier.pt";
}
inline std::string MnistCard() {
  return std::string(FEATVIZ_MODELS_DIR) + "/mnist_classifier.card.json";
}
inline std::string TestModelFile(absl::string_view name) {
  return absl::StrCat(FEATVIZ_TEST_MODELS_DIR, "/", name);
}

// SHA-256 of a file's bytes, lowercase hex.
inline std::string FileSha256(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream bytes;
  bytes << in.rdbuf();
  const std::string content = bytes.str();
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  EVP_Digest(content.data(), content.size(), digest, &length, EVP_sha256(),
             nullptr);
  return absl::BytesToHexString(absl::string_view(
      reinterpret_cast<const char*>(digest), static_cast<size_t>(length)));
}

// Resident set size of process `pid` ("self" for this one), in bytes.
inline int64_t ResidentBytes(const std::string& pid = "self") {
  std::ifstream in(absl::StrCat("/proc/", pid, "/statm"));
  int64_t size = 0, resident = 0;
  in >> size >> resident;
  return resident * sysconf(_SC_PAGESIZE);
}

class TempRepository {
 public:
  TempRepository() {
    char dir[] = "/tmp/featviz_repo_XXXXXX";
    root_ = mkdtemp(dir);
  }
  ~TempRepository() {
    std::error_code error;
    std::filesystem::remove_all(root_, error);
    std::filesystem::remove_all(outside_, error);
  }
  TempRepository(const TempRepository&) = delete;
  TempRepository& operator=(const TempRepository&) = delete;

  const std::string& root() const { return root_; }

  // <root>/<name>/<version>/model.pt (and model.card.json when `card`).
  void AddVersion(const std::string& name, const std::string& version,
                  const std::string& model, const std::string& card) {
    namespace fs = std::filesystem;
    const fs::path staging = fs::path(root_) / absl::StrCat(".staging-", name, "-", version);
    fs::create_directories(staging);
    fs::copy_file(model, staging / "model.pt");
    if (!card.empty()) fs::copy_file(card, staging / "model.card.json");
    fs::create_directories(fs::path(root_) / name);
    fs::rename(staging, fs::path(root_) / name / version);
  }
  void AddMnist(const std::string& version) {
    AddVersion("mnist", version, MnistFile(), MnistCard());
  }
  // <root>/<stem>.pt and its card, a flat model.
  void AddFlat(const std::string& stem, const std::string& model,
               const std::string& card) {
    namespace fs = std::filesystem;
    const fs::path root(root_);
    fs::copy_file(model, root / ".staging.pt");
    fs::rename(root / ".staging.pt", root / absl::StrCat(stem, ".pt"));
    if (!card.empty()) {
      fs::copy_file(card, root / absl::StrCat(stem, ".card.json"),
                    fs::copy_options::overwrite_existing);
    }
  }
  // A directory outside the repository holding a model as
  // `<outside>/1/model.pt`, to point symlinks at.
  std::string Outside() {
    namespace fs = std::filesystem;
    if (outside_.empty()) {
      char dir[] = "/tmp/featviz_outside_XXXXXX";
      outside_ = mkdtemp(dir);
      fs::create_directories(fs::path(outside_) / "1");
      fs::copy_file(MnistFile(), fs::path(outside_) / "1" / "model.pt");
      fs::copy_file(MnistFile(), fs::path(outside_) / "secret.pt");
    }
    return outside_;
  }
  std::string Path(absl::string_view relative) const {
    return absl::StrCat(root_, "/", relative);
  }

 private:
  std::string root_;
  std::string outside_;
};

}  // namespace featviz::testing

#endif  // FEATVIZ_TESTS_SERVER_MODEL_REPO_H_
