#include "server/auth.h"

#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "core/files.h"
#include "core/status_macros.h"

namespace featviz::server {
namespace {

constexpr size_t kMinTokenLength = 16;
constexpr size_t kMaxTokenLength = 512;

// Every method the server serves, and the three model administration RPCs
// the model repository adds. Kept in one place so that a review sees the
// whole policy.
const std::vector<std::pair<std::string, Role>>& Table() {
  static const auto* table = new std::vector<std::pair<std::string, Role>>{
      {"/grpc.health.v1.Health/Check", Role::kPublic},
      {"/grpc.health.v1.Health/Watch", Role::kPublic},
      {"/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
       Role::kPublic},
      {"/featviz.v1.Visualizer/ListModels", Role::kUser},
      {"/featviz.v1.Visualizer/GetModel", Role::kUser},
      {"/featviz.v1.Visualizer/Render", Role::kUser},
      {"/featviz.v1.Visualizer/SubmitJob", Role::kUser},
      {"/featviz.v1.Visualizer/GetJob", Role::kUser},
      {"/featviz.v1.Visualizer/WatchJob", Role::kUser},
      {"/featviz.v1.Visualizer/CancelJob", Role::kUser},
      {"/featviz.v1.Visualizer/ListJobs", Role::kUser},
      {"/featviz.v1.Visualizer/GetServerStats", Role::kUser},
      {"/featviz.v1.Circuits/ListDatasets", Role::kUser},
      {"/featviz.v1.Circuits/ComputeActivations", Role::kUser},
      {"/featviz.v1.Circuits/Attribute", Role::kUser},
      {"/featviz.v1.Circuits/FindCircuit", Role::kUser},
      {"/featviz.v1.Circuits/TopExamples", Role::kUser},
      {"/featviz.v1.Circuits/LabelUnits", Role::kUser},
      // The owner check (or admin) follows in the handler.
      {"/featviz.v1.Circuits/UploadDataset", Role::kUploader},
      {"/featviz.v1.Circuits/DeleteDataset", Role::kUploader},
      {"/featviz.v1.Visualizer/LoadModel", Role::kAdmin},
      {"/featviz.v1.Visualizer/UnloadModel", Role::kAdmin},
      {"/featviz.v1.Visualizer/ReloadModel", Role::kAdmin},
      {"/featviz.v1.Visualizer/UploadModel", Role::kUploader},
  };
  return *table;
}

bool ValidName(absl::string_view name) {
  if (name.empty() || name.size() > 128) return false;
  for (char c : name) {
    if (!absl::ascii_isalnum(c) && c != '.' && c != '_' && c != '@' &&
        c != '-') {
      return false;
    }
  }
  return true;
}

bool ValidToken(absl::string_view token) {
  if (token.size() < kMinTokenLength || token.size() > kMaxTokenLength) {
    return false;
  }
  for (char c : token) {
    if (!absl::ascii_isgraph(c)) return false;
  }
  return true;
}

}  // namespace

absl::string_view RoleName(Role role) {
  switch (role) {
    case Role::kPublic:
      return "public";
    case Role::kUser:
      return "user";
    case Role::kUploader:
      return "uploader";
    case Role::kAdmin:
      return "admin";
  }
  return "unknown";
}

absl::StatusOr<TokenTable> ParseTokens(absl::string_view text,
                                       absl::string_view source) {
  TokenTable table;
  absl::flat_hash_map<std::string, int> names;  // name -> its line
  int line_number = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_number;
    auto error = [&](absl::string_view what) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ":", line_number, ": ", what));
    };
    const size_t hash = line.find('#');
    if (hash != absl::string_view::npos) line = line.substr(0, hash);
    std::vector<absl::string_view> fields =
        absl::StrSplit(line, absl::ByAnyChar(" \t\r"), absl::SkipEmpty());
    if (fields.empty()) continue;
    if (fields.size() < 3) {
      return error("expected TOKEN NAME ROLE [QUOTA=N ...]");
    }
    const std::string token(fields[0]);
    if (!ValidToken(token)) {
      // The token itself is never repeated back.
      return error(absl::StrCat("the token must be ", kMinTokenLength, " to ",
                                kMaxTokenLength,
                                " printable characters without spaces"));
    }
    Identity identity;
    identity.name = std::string(fields[1]);
    if (!ValidName(identity.name)) {
      return error(absl::StrCat("client name '", fields[1],
                                "' must be 1 to 128 of [A-Za-z0-9._@-]"));
    }
    if (fields[2] == "admin") {
      identity.role = Role::kAdmin;
    } else if (fields[2] == "user") {
      identity.role = Role::kUser;
    } else if (fields[2] == "uploader") {
      identity.role = Role::kUploader;
    } else {
      return error(absl::StrCat("unknown role '", fields[2],
                                "' (admin, uploader or user)"));
    }
    for (size_t i = 3; i < fields.size(); ++i) {
      std::pair<absl::string_view, absl::string_view> kv =
          absl::StrSplit(fields[i], absl::MaxSplits('=', 1));
      int64_t value = 0;
      if (!absl::SimpleAtoi(kv.second, &value) || value < 0) {
        return error(absl::StrCat("quota '", fields[i],
                                  "' must be NAME=N with N >= 0"));
      }
      if (kv.first == "max_queued") {
        identity.quotas.max_queued = value;
      } else if (kv.first == "max_running") {
        identity.quotas.max_running = value;
      } else if (kv.first == "max_image_steps") {
        identity.quotas.max_image_steps = value;
      } else if (kv.first == "max_upload_bytes") {
        identity.quotas.max_upload_bytes = value;
      } else {
        return error(absl::StrCat(
            "unknown quota '", kv.first,
            "' (max_queued, max_running, max_image_steps or max_upload_bytes)"));
      }
    }
    if (table.contains(token)) {
      return error(absl::StrCat("client '", identity.name,
                                "' repeats the token of client '",
                                table[token].name, "'"));
    }
    auto [it, added] = names.emplace(identity.name, line_number);
    if (!added) {
      // One name, one set of quotas: two lines would make them ambiguous.
      return error(absl::StrCat("client name '", identity.name,
                                "' is already given on line ", it->second));
    }
    table.emplace(token, std::move(identity));
  }
  return table;
}

absl::StatusOr<TokenTable> ReadTokensFile(const std::string& path) {
  absl::StatusOr<std::string> text = core::ReadFile(path);
  if (!text.ok()) return core::Prefixed("tokens file", text.status());
  return ParseTokens(*text, path);
}

Role RequiredRole(absl::string_view method) {
  for (const auto& [name, role] : Table()) {
    if (name == method) return role;
  }
  return Role::kAdmin;
}

std::vector<std::pair<std::string, Role>> MethodRoles() { return Table(); }

std::optional<std::string> BearerToken(absl::string_view authorization) {
  authorization = absl::StripAsciiWhitespace(authorization);
  // The scheme is case-insensitive (RFC 7235).
  if (authorization.size() < 7 ||
      !absl::EqualsIgnoreCase(authorization.substr(0, 7), "bearer ")) {
    return std::nullopt;
  }
  absl::string_view token =
      absl::StripLeadingAsciiWhitespace(authorization.substr(7));
  if (token.empty()) return std::nullopt;
  return std::string(token);
}

absl::StatusOr<std::unique_ptr<Authorizer>> Authorizer::Create(
    std::string tokens_file) {
  absl::StatusOr<TokenTable> tokens = ReadTokensFile(tokens_file);
  if (!tokens.ok()) return tokens.status();
  return std::unique_ptr<Authorizer>(
      new Authorizer(std::move(tokens_file), *std::move(tokens)));
}

Authorizer::Authorizer(std::string tokens_file, TokenTable tokens)
    : tokens_file_(std::move(tokens_file)),
      tokens_(std::make_shared<const TokenTable>(std::move(tokens))) {}

absl::Status Authorizer::Reload() {
  absl::StatusOr<TokenTable> tokens = ReadTokensFile(tokens_file_);
  if (!tokens.ok()) return tokens.status();
  auto table = std::make_shared<const TokenTable>(*std::move(tokens));
  absl::MutexLock lock(&mu_);
  tokens_ = std::move(table);
  return absl::OkStatus();
}

absl::StatusOr<Identity> Authorizer::Authorize(
    absl::string_view method,
    std::optional<absl::string_view> authorization) const {
  const Role needed = RequiredRole(method);
  std::shared_ptr<const TokenTable> tokens;
  {
    absl::MutexLock lock(&mu_);
    tokens = tokens_;
  }
  std::optional<std::string> token;
  if (authorization.has_value()) token = BearerToken(*authorization);
  if (!token.has_value()) {
    if (needed == Role::kPublic) {
      return Identity{"anonymous", Role::kPublic, Quotas{}};
    }
    return absl::UnauthenticatedError(
        authorization.has_value()
            ? "the authorization metadata must be 'Bearer <token>'"
            : "this server needs a token: send 'authorization: Bearer "
              "<token>' metadata");
  }
  auto it = tokens->find(*token);
  if (it == tokens->end()) {
    return absl::UnauthenticatedError("the token is not known to this server");
  }
  const Identity& identity = it->second;
  if (needed == Role::kAdmin && identity.role != Role::kAdmin) {
    return absl::PermissionDeniedError(
        absl::StrCat(method, " needs the admin role; client '", identity.name,
                     "' has the role ", RoleName(identity.role)));
  }
  if (needed == Role::kUploader && identity.role != Role::kUploader &&
      identity.role != Role::kAdmin) {
    return absl::PermissionDeniedError(absl::StrCat(
        method, " needs the uploader or admin role; client '", identity.name,
        "' has the role ", RoleName(identity.role)));
  }
  return identity;
}

size_t Authorizer::size() const {
  absl::MutexLock lock(&mu_);
  return tokens_->size();
}

}  // namespace featviz::server
