#include "core/objective.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "core/layer_info.h"
#include "core/status_macros.h"

namespace featviz::core {
namespace {

// Parentheses and unary signs recurse; the limit keeps hostile text (a
// request carrying thousands of '(') from overflowing the stack.
constexpr int kMaxNesting = 100;

// std::to_chars without a format is specified to give the shortest text that
// reads back to the same double, which is what makes ToString() round-trip.
std::string FormatNumber(double value) {
  char buffer[64];
  const std::to_chars_result result =
      std::to_chars(buffer, buffer + sizeof(buffer), value);
  return std::string(buffer, result.ptr);
}

// Concatenates in order. Pairwise rather than left to right, so that a sum of
// n terms costs n log n term copies instead of n^2 (operator+ copies).
Objective Concat(std::vector<Objective> parts) {
  if (parts.empty()) return Objective();
  while (parts.size() > 1) {
    std::vector<Objective> merged;
    merged.reserve((parts.size() + 1) / 2);
    for (size_t i = 0; i + 1 < parts.size(); i += 2) {
      merged.push_back(parts[i] + parts[i + 1]);
    }
    if (parts.size() % 2 == 1) merged.push_back(std::move(parts.back()));
    parts = std::move(merged);
  }
  return std::move(parts.front());
}

bool AllWeightsFinite(const Objective& objective) {
  for (const WeightedTerm& weighted : objective.terms()) {
    if (!std::isfinite(weighted.weight)) return false;
  }
  return true;
}

// ---------------------------------------------------------------------------
// Lexer.

enum class TokenKind {
  kEnd,
  kNumber,
  kPath,  // identifiers and dotted layer paths: conv2, layer1.0.conv1
  kPunct,
  kInvalid,          // a character that starts no token
  kMalformedNumber,  // "1e", "2.5e+", "5abc"
  kQuoted,           // 'any text' or "any text", quotes included
  kUnterminated,     // a quote without its closing quote
};

struct Token {
  TokenKind kind = TokenKind::kEnd;
  absl::string_view text;
  size_t offset = 0;  // byte offset; the column is offset + 1
};

bool IsDigit(char c) { return c >= '0' && c <= '9'; }
bool IsLetter(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}
bool IsWordChar(char c) { return IsLetter(c) || IsDigit(c); }
bool IsSpace(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' ||
         c == '\v';
}

std::vector<Token> Tokenize(absl::string_view text) {
  std::vector<Token> tokens;
  const size_t n = text.size();
  size_t i = 0;
  while (i < n) {
    const char c = text[i];
    if (IsSpace(c)) {
      ++i;
      continue;
    }
    const size_t start = i;
    TokenKind kind;
    if (IsDigit(c) || (c == '.' && i + 1 < n && IsDigit(text[i + 1]))) {
      kind = TokenKind::kNumber;
      while (i < n && IsDigit(text[i])) ++i;
      if (i < n && text[i] == '.') {
        ++i;
        while (i < n && IsDigit(text[i])) ++i;
      }
      if (i < n && (text[i] == 'e' || text[i] == 'E')) {
        size_t j = i + 1;
        if (j < n && (text[j] == '+' || text[j] == '-')) ++j;
        if (j < n && IsDigit(text[j])) {
          while (j < n && IsDigit(text[j])) ++j;
        } else {
          kind = TokenKind::kMalformedNumber;
        }
        i = j;
      }
      // Letters glued to a number ("5abc", "1.5.2") are one typo, reported
      // whole, rather than a number followed by a surprising second token.
      if (i < n && (IsWordChar(text[i]) || text[i] == '.')) {
        kind = TokenKind::kMalformedNumber;
        while (i < n && (IsWordChar(text[i]) || text[i] == '.')) ++i;
      }
    } else if (IsLetter(c)) {
      kind = TokenKind::kPath;
      while (i < n && IsWordChar(text[i])) ++i;
      while (i + 1 < n && text[i] == '.' && IsWordChar(text[i + 1])) {
        ++i;
        while (i < n && IsWordChar(text[i])) ++i;
      }
    } else if (c == '\'' || c == '"') {
      kind = TokenKind::kUnterminated;
      ++i;
      while (i < n) {
        if (text[i] == '\\' && i + 1 < n) {
          i += 2;
          continue;
        }
        if (text[i++] == c) {
          kind = TokenKind::kQuoted;
          break;
        }
      }
    } else if (absl::string_view("+-*/()[],:=").find(c) !=
               absl::string_view::npos) {
      kind = TokenKind::kPunct;
      ++i;
    } else {
      kind = TokenKind::kInvalid;
      ++i;
      // Quote a whole UTF-8 character in messages, not a broken first byte.
      while (i < n && (static_cast<unsigned char>(text[i]) & 0xC0) == 0x80) ++i;
    }
    tokens.push_back({kind, text.substr(start, i - start), start});
  }
  tokens.push_back({TokenKind::kEnd, absl::string_view(), n});
  return tokens;
}

// The text inside a kQuoted token, escapes resolved.
std::string Unquote(absl::string_view quoted) {
  std::string out;
  for (size_t i = 1; i + 1 < quoted.size(); ++i) {
    if (quoted[i] == '\\' && i + 2 < quoted.size()) ++i;
    out.push_back(quoted[i]);
  }
  return out;
}

// Letters, digits and '_' in components separated by single dots: what an
// argument accepts bare, whether it starts with a letter or a digit.
bool IsRelaxedPath(absl::string_view text) {
  if (text.empty() || text.front() == '.' || text.back() == '.') return false;
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '.') {
      if (text[i + 1] == '.') return false;
    } else if (!IsWordChar(text[i])) {
      return false;
    }
  }
  return true;
}

// A layer path or output name as the canonical text writes it: bare when it
// reads back as one path token, quoted otherwise.
std::string FormatName(absl::string_view name) {
  if (!name.empty() && IsLetter(name.front()) && IsRelaxedPath(name)) {
    return std::string(name);
  }
  std::string out = "'";
  for (char c : name) {
    if (c == '\'' || c == '\\') out.push_back('\\');
    out.push_back(c);
  }
  out.push_back('\'');
  return out;
}

// ---------------------------------------------------------------------------
// Function signatures of the text syntax.

enum class Arg {
  kLayer,
  kChannel,
  kClass,
  kX,
  kY,
  kVector,
  kDecay,
  kConstant,
  kOutput,
  kReference,
  // l2's one argument: a constant or a reference image.
  kConstantOrReference,
};

struct Signature {
  const char* name;
  TermKind kind;
  int min_args;
  int max_args;
  Arg args[4];
  const char* usage;
};

constexpr Signature kSignatures[] = {
    {"neuron",
     TermKind::kNeuron,
     2,
     4,
     {Arg::kLayer, Arg::kChannel, Arg::kX, Arg::kY},
     "neuron(layer, c[, x, y]) or neuron(layer, c, token)"},
    {"channel",
     TermKind::kChannel,
     2,
     2,
     {Arg::kLayer, Arg::kChannel},
     "channel(layer, c[, tokens=cls|patches])"},
    {"layer", TermKind::kLayer, 1, 1, {Arg::kLayer}, "layer(layer)"},
    {"logit", TermKind::kLogit, 1, 1, {Arg::kClass}, "logit(c)"},
    {"prob", TermKind::kProb, 1, 1, {Arg::kClass}, "prob(c)"},
    {"direction",
     TermKind::kDirection,
     2,
     2,
     {Arg::kLayer, Arg::kVector},
     "direction(layer, [v1, v2, ...])"},
    {"diversity",
     TermKind::kDiversity,
     1,
     1,
     {Arg::kLayer},
     "diversity(layer)"},
    {"alignment",
     TermKind::kAlignment,
     1,
     2,
     {Arg::kLayer, Arg::kDecay},
     "alignment(layer[, decay])"},
    {"tv", TermKind::kTotalVariation, 0, 0, {}, "tv()"},
    {"l1", TermKind::kL1, 0, 1, {Arg::kConstant}, "l1([c])"},
    {"l2",
     TermKind::kL2,
     0,
     1,
     {Arg::kConstantOrReference},
     "l2([c]) or l2(dataset(name, i) or reference(k))"},
    {"output",
     TermKind::kOutput,
     2,
     2,
     {Arg::kOutput, Arg::kChannel},
     "output(name, c)"},
    {"inversion",
     TermKind::kInversion,
     2,
     2,
     {Arg::kLayer, Arg::kReference},
     "inversion(layer, dataset(name, i) or reference(k))"},
    {"inversion_l2",
     TermKind::kInversionL2,
     2,
     2,
     {Arg::kLayer, Arg::kReference},
     "inversion_l2(layer, dataset(name, i) or reference(k))"},
    {"caricature",
     TermKind::kCaricature,
     2,
     2,
     {Arg::kLayer, Arg::kReference},
     "caricature(layer, dataset(name, i) or reference(k))"},
};

const Signature* FindSignature(absl::string_view name) {
  for (const Signature& signature : kSignatures) {
    if (name == signature.name) return &signature;
  }
  return nullptr;
}

std::string FunctionNames() {
  std::vector<absl::string_view> names;
  for (const Signature& signature : kSignatures) {
    names.push_back(signature.name);
  }
  return absl::StrJoin(names, ", ");
}

// How an argument is called in "expected ',' or ')' after ..." messages.
const char* ArgDescription(Arg arg) {
  switch (arg) {
    case Arg::kLayer:
      return "layer path";
    case Arg::kChannel:
      return "channel index";
    case Arg::kClass:
      return "class index";
    case Arg::kX:
      return "x";
    case Arg::kY:
      return "y";
    case Arg::kVector:
      return "direction vector";
    case Arg::kDecay:
      return "decay";
    case Arg::kConstant:
      return "constant";
    case Arg::kOutput:
      return "output name";
    case Arg::kReference:
      return "reference image";
    case Arg::kConstantOrReference:
      return "constant or reference image";
  }
  return "argument";
}

// ---------------------------------------------------------------------------
// Parser: recursive descent over the grammar
//   expr    := product (('+' | '-') product)*
//   product := unary (('*' | '/') unary)*
//   unary   := ('-' | '+') unary | primary
//   primary := NUMBER | call | name ':' INT | '(' expr ')'
//   name    := PATH | QUOTED | NUMBER (digits and dots, in arguments)
// Every sub-expression evaluates to either a number or an objective, which
// keeps the result linear by construction.

class Parser {
 public:
  explicit Parser(absl::string_view text)
      : text_(text), tokens_(Tokenize(text)) {}

  absl::StatusOr<Objective> Parse() {
    FEATVIZ_ASSIGN_OR_RETURN(Operand result, ParseExpr(0));
    if (Peek().kind != TokenKind::kEnd) {
      return Expected(Peek(), "'+', '-', '*', '/' or end of input");
    }
    if (result.is_number) {
      return ErrorAt(result.begin,
                     absl::StrCat("expected an objective, found the bare "
                                  "number '",
                                  Source(result), "'"));
    }
    return std::move(result.objective);
  }

 private:
  struct Operand {
    bool is_number = false;
    double number = 0;
    Objective objective;
    // Byte span in the text, for messages that quote the operand.
    size_t begin = 0;
    size_t end = 0;
  };

  const Token& Peek(size_t ahead = 0) const {
    return tokens_[std::min(next_ + ahead, tokens_.size() - 1)];
  }
  const Token& Next() {
    const Token& token = tokens_[next_];
    if (next_ + 1 < tokens_.size()) ++next_;
    return token;
  }
  static bool IsPunct(const Token& token, char c) {
    return token.kind == TokenKind::kPunct && token.text[0] == c;
  }
  static size_t EndOf(const Token& token) {
    return token.offset + token.text.size();
  }
  absl::string_view Source(const Operand& operand) const {
    return text_.substr(operand.begin, operand.end - operand.begin);
  }

  static absl::Status ErrorAt(size_t offset, absl::string_view message) {
    return absl::InvalidArgumentError(
        absl::StrCat("column ", offset + 1, ": ", message));
  }
  static std::string Describe(const Token& token) {
    switch (token.kind) {
      case TokenKind::kEnd:
        return "end of input";
      case TokenKind::kMalformedNumber:
        return absl::StrCat("malformed number '", token.text, "'");
      case TokenKind::kUnterminated:
        return absl::StrCat("unterminated quoted name ", token.text);
      default:
        return absl::StrCat("'", token.text, "'");
    }
  }
  static absl::Status Expected(const Token& token, absl::string_view what) {
    return ErrorAt(token.offset, absl::StrCat("expected ", what, ", found ",
                                              Describe(token)));
  }

  absl::Status BareNumberInSum(const Operand& operand) const {
    return ErrorAt(operand.begin,
                   absl::StrCat("expected an objective term, found the bare "
                                "number '",
                                Source(operand),
                                "'; a constant cannot be added to an "
                                "objective"));
  }

  absl::StatusOr<Operand> ParseExpr(int depth) {
    FEATVIZ_ASSIGN_OR_RETURN(Operand first, ParseProduct(depth));
    if (!IsPunct(Peek(), '+') && !IsPunct(Peek(), '-')) return first;
    if (first.is_number) return BareNumberInSum(first);
    Operand sum;
    sum.begin = first.begin;
    std::vector<Objective> parts;
    parts.push_back(std::move(first.objective));
    while (IsPunct(Peek(), '+') || IsPunct(Peek(), '-')) {
      const bool subtract = IsPunct(Next(), '-');
      FEATVIZ_ASSIGN_OR_RETURN(Operand summand, ParseProduct(depth));
      if (summand.is_number) return BareNumberInSum(summand);
      parts.push_back(subtract ? -summand.objective
                               : std::move(summand.objective));
      sum.end = summand.end;
    }
    sum.objective = Concat(std::move(parts));
    return sum;
  }

  absl::StatusOr<Operand> ParseProduct(int depth) {
    FEATVIZ_ASSIGN_OR_RETURN(Operand left, ParseUnary(depth));
    while (IsPunct(Peek(), '*') || IsPunct(Peek(), '/')) {
      const bool divide = IsPunct(Next(), '/');
      FEATVIZ_ASSIGN_OR_RETURN(Operand right, ParseUnary(depth));
      if (divide) {
        if (!right.is_number) {
          return ErrorAt(right.begin,
                         absl::StrCat("expected a number to divide by, found "
                                      "the objective '",
                                      Source(right), "'"));
        }
        if (right.number == 0) {
          return ErrorAt(right.begin,
                         absl::StrCat("expected a non-zero divisor, found '",
                                      Source(right), "' (division by zero)"));
        }
        if (left.is_number) {
          left.number /= right.number;
        } else {
          // Divide each weight rather than scale by 1/d: w / d is what the
          // user wrote, and 1/d is often not exactly representable.
          std::vector<Objective> parts;
          for (const WeightedTerm& weighted : left.objective.terms()) {
            parts.push_back(Objective(weighted.term) *
                            (weighted.weight / right.number));
          }
          left.objective = Concat(std::move(parts));
        }
      } else if (left.is_number && right.is_number) {
        left.number *= right.number;
      } else if (left.is_number) {
        left.objective = right.objective * left.number;
        left.is_number = false;
      } else if (right.is_number) {
        left.objective = left.objective * right.number;
      } else {
        return ErrorAt(right.begin,
                       absl::StrCat("expected a number, found the objective '",
                                    Source(right),
                                    "'; an objective can only be multiplied "
                                    "by a number"));
      }
      const bool finite = left.is_number ? std::isfinite(left.number)
                                         : AllWeightsFinite(left.objective);
      if (!finite) {
        return ErrorAt(right.begin, absl::StrCat("weight is not finite after ",
                                                 divide ? "dividing by '"
                                                        : "multiplying by '",
                                                 Source(right), "'"));
      }
      left.end = right.end;
    }
    return left;
  }

  absl::StatusOr<Operand> ParseUnary(int depth) {
    if (!IsPunct(Peek(), '-') && !IsPunct(Peek(), '+')) {
      return ParsePrimary(depth);
    }
    const Token& sign = Next();
    if (depth >= kMaxNesting) {
      return ErrorAt(sign.offset, absl::StrCat("expression nested more than ",
                                               kMaxNesting, " levels deep"));
    }
    FEATVIZ_ASSIGN_OR_RETURN(Operand operand, ParseUnary(depth + 1));
    if (IsPunct(sign, '-')) {
      if (operand.is_number) {
        operand.number = -operand.number;
      } else {
        operand.objective = -operand.objective;
      }
    }
    operand.begin = sign.offset;
    return operand;
  }

  absl::StatusOr<Operand> ParsePrimary(int depth) {
    const Token& token = Peek();
    Operand operand;
    operand.begin = token.offset;
    if ((token.kind == TokenKind::kQuoted ||
         ((token.kind == TokenKind::kNumber ||
           token.kind == TokenKind::kMalformedNumber) &&
          IsRelaxedPath(token.text))) &&
        IsPunct(Peek(1), ':')) {
      // 'block-1':3 and 0:3, the shorthand for a layer that needs quotes or
      // starts with a digit.
      Term term;
      term.kind = TermKind::kChannel;
      FEATVIZ_ASSIGN_OR_RETURN(term.layer, ReadName("a layer path"));
      Next();  // ':'
      FEATVIZ_ASSIGN_OR_RETURN(term.index, ReadNonNegativeInt("channel index"));
      operand.objective = Objective(std::move(term));
      operand.begin = token.offset;
      operand.end = EndOf(tokens_[next_ - 1]);
      return operand;
    }
    if (token.kind == TokenKind::kNumber) {
      FEATVIZ_ASSIGN_OR_RETURN(operand.number, ReadNumber(Next()));
      operand.is_number = true;
      operand.end = EndOf(token);
      return operand;
    }
    if (IsPunct(token, '(')) {
      Next();
      if (depth >= kMaxNesting) {
        return ErrorAt(token.offset,
                       absl::StrCat("expression nested more than ", kMaxNesting,
                                    " levels deep"));
      }
      FEATVIZ_ASSIGN_OR_RETURN(operand, ParseExpr(depth + 1));
      if (!IsPunct(Peek(), ')')) {
        return Expected(Peek(), absl::StrCat("')' to close '(' at column ",
                                             token.offset + 1));
      }
      operand.begin = token.offset;
      operand.end = EndOf(Next());
      return operand;
    }
    if (token.kind == TokenKind::kPath) {
      Next();
      if (IsPunct(Peek(), '(')) {
        FEATVIZ_ASSIGN_OR_RETURN(Term term, ParseCall(token));
        operand.objective = Objective(std::move(term));
      } else if (IsPunct(Peek(), ':')) {
        Next();
        Term term;
        term.kind = TermKind::kChannel;
        term.layer = std::string(token.text);
        FEATVIZ_ASSIGN_OR_RETURN(term.index,
                                 ReadNonNegativeInt("channel index"));
        operand.objective = Objective(std::move(term));
      } else {
        return Expected(Peek(),
                        absl::StrCat("'(' after a function name or ':' after "
                                     "the layer path '",
                                     token.text, "'"));
      }
      operand.end = EndOf(tokens_[next_ - 1]);
      return operand;
    }
    return Expected(token,
                    "a number, a term such as channel(layer, c), or '('");
  }

  absl::StatusOr<double> ReadNumber(const Token& token) const {
    double value = 0;
    // The lexer only lets through digits, '.', and an exponent, so the text
    // always parses; out-of-range text reads as infinity or zero.
    if (!absl::SimpleAtod(token.text, &value) || !std::isfinite(value)) {
      return ErrorAt(token.offset,
                     absl::StrCat("number '", token.text, "' is not finite"));
    }
    return value;
  }

  absl::StatusOr<int64_t> ReadNonNegativeInt(absl::string_view what) {
    const Token& token = Peek();
    const std::string expected = absl::StrCat("a non-negative integer ", what);
    if ((IsPunct(token, '-') || IsPunct(token, '+')) &&
        (Peek(1).kind == TokenKind::kNumber ||
         Peek(1).kind == TokenKind::kMalformedNumber) &&
        Peek(1).offset == token.offset + 1) {
      // Quote "-1" whole: the sign is what makes it wrong.
      return ErrorAt(token.offset,
                     absl::StrCat("expected ", expected, ", found '",
                                  token.text, Peek(1).text, "'"));
    }
    bool digits = token.kind == TokenKind::kNumber;
    for (char c : token.text) digits = digits && IsDigit(c);
    if (!digits) return Expected(token, expected);
    int64_t value = 0;
    if (!absl::SimpleAtoi(token.text, &value)) {
      return ErrorAt(token.offset,
                     absl::StrCat(what, " '", token.text, "' is too large"));
    }
    Next();
    return value;
  }

  absl::StatusOr<double> ReadSignedNumber(absl::string_view what) {
    const Token& start = Peek();
    bool negative = false;
    if (IsPunct(start, '-') || IsPunct(start, '+')) {
      negative = IsPunct(start, '-');
      Next();
    }
    const Token& token = Peek();
    if (token.kind != TokenKind::kNumber) {
      return Expected(token, absl::StrCat("a number for the ", what));
    }
    FEATVIZ_ASSIGN_OR_RETURN(double value, ReadNumber(token));
    Next();
    return negative ? -value : value;
  }

  absl::StatusOr<std::vector<double>> ReadVector() {
    if (!IsPunct(Peek(), '[')) {
      return Expected(Peek(), "'[' to start the direction vector");
    }
    Next();
    std::vector<double> values;
    if (IsPunct(Peek(), ']')) {
      Next();
      return values;
    }
    while (true) {
      FEATVIZ_ASSIGN_OR_RETURN(double value,
                               ReadSignedNumber("direction value"));
      values.push_back(value);
      if (IsPunct(Peek(), ']')) {
        Next();
        return values;
      }
      if (!IsPunct(Peek(), ',')) {
        return Expected(Peek(), "',' or ']' after a direction value");
      }
      Next();
    }
  }

  // A layer path or output name: bare, quoted, or a number-like path.
  absl::StatusOr<std::string> ReadName(absl::string_view what) {
    const Token& token = Peek();
    switch (token.kind) {
      case TokenKind::kPath: {
        Next();
        const Token& after = Peek();
        if ((IsPunct(after, '-') || after.kind == TokenKind::kInvalid) &&
            after.offset == EndOf(token)) {
          // "block-1": arithmetic has no place in an argument, so this is a
          // name with a character that needs quotes.
          return ErrorAt(
              token.offset,
              absl::StrCat(what, " '", token.text, "' is followed by '",
                           after.text, "'; quote it, as in '", token.text,
                           after.text, "...'"));
        }
        return std::string(token.text);
      }
      case TokenKind::kQuoted: {
        std::string name = Unquote(Next().text);
        if (name.empty()) {
          return ErrorAt(token.offset, absl::StrCat(what, " is empty"));
        }
        return name;
      }
      case TokenKind::kNumber:
      case TokenKind::kMalformedNumber:
        if (IsRelaxedPath(token.text)) return std::string(Next().text);
        break;
      default:
        break;
    }
    return Expected(token, absl::StrCat(what,
                                        " (quote it, as in 'block-1', "
                                        "if it has other characters)"));
  }

  absl::Status ReadPositional(Arg arg, Term& term) {
    switch (arg) {
      case Arg::kLayer: {
        FEATVIZ_ASSIGN_OR_RETURN(term.layer, ReadName("a layer path"));
        return absl::OkStatus();
      }
      case Arg::kOutput: {
        FEATVIZ_ASSIGN_OR_RETURN(term.output, ReadName("an output name"));
        return absl::OkStatus();
      }
      case Arg::kChannel:
      case Arg::kClass: {
        FEATVIZ_ASSIGN_OR_RETURN(term.index,
                                 ReadNonNegativeInt(ArgDescription(arg)));
        return absl::OkStatus();
      }
      case Arg::kX: {
        FEATVIZ_ASSIGN_OR_RETURN(term.x, ReadNonNegativeInt("x"));
        return absl::OkStatus();
      }
      case Arg::kY: {
        FEATVIZ_ASSIGN_OR_RETURN(term.y, ReadNonNegativeInt("y"));
        return absl::OkStatus();
      }
      case Arg::kVector: {
        FEATVIZ_ASSIGN_OR_RETURN(term.vector, ReadVector());
        return absl::OkStatus();
      }
      case Arg::kDecay:
      case Arg::kConstant: {
        FEATVIZ_ASSIGN_OR_RETURN(term.param,
                                 ReadSignedNumber(ArgDescription(arg)));
        return absl::OkStatus();
      }
      case Arg::kReference: {
        FEATVIZ_ASSIGN_OR_RETURN(term.reference, ReadReference());
        return absl::OkStatus();
      }
      case Arg::kConstantOrReference: {
        const Token& start = Peek();
        if (start.kind == TokenKind::kPath &&
            (start.text == "dataset" || start.text == "reference")) {
          FEATVIZ_ASSIGN_OR_RETURN(term.reference, ReadReference());
          term.pixel_reference = true;
          return absl::OkStatus();
        }
        FEATVIZ_ASSIGN_OR_RETURN(
            term.param,
            ReadSignedNumber("constant (or a reference image: "
                             "dataset(name, i) or reference(k))"));
        return absl::OkStatus();
      }
    }
    return absl::InternalError("unhandled argument kind");
  }

  // dataset(name, i), dataset(i) or reference(k).
  absl::StatusOr<ReferenceImage> ReadReference() {
    const Token& start = Peek();
    const bool is_dataset =
        start.kind == TokenKind::kPath && start.text == "dataset";
    const bool is_tensor =
        start.kind == TokenKind::kPath && start.text == "reference";
    if ((!is_dataset && !is_tensor) || !IsPunct(Peek(1), '(')) {
      return Expected(start,
                      "a reference image: dataset(name, i) or reference(k)");
    }
    Next();
    Next();  // '('
    ReferenceImage reference;
    if (is_tensor) {
      reference.source = ReferenceImage::Source::kTensor;
      FEATVIZ_ASSIGN_OR_RETURN(reference.index,
                               ReadNonNegativeInt("reference index"));
    } else {
      reference.source = ReferenceImage::Source::kDataset;
      if (!(Peek().kind == TokenKind::kNumber && IsPunct(Peek(1), ')'))) {
        FEATVIZ_ASSIGN_OR_RETURN(reference.dataset, ReadName("a dataset name"));
        if (!IsPunct(Peek(), ',')) {
          return Expected(Peek(), "',' after the dataset name");
        }
        Next();
      }
      FEATVIZ_ASSIGN_OR_RETURN(reference.index,
                               ReadNonNegativeInt("dataset index"));
    }
    if (!IsPunct(Peek(), ')')) {
      return Expected(Peek(), "')' to close the reference image");
    }
    Next();
    return reference;
  }

  // Reads `name=value` with the cursor on `name`; `after` is set to what was
  // read, for the message about the separator that should follow.
  absl::Status ReadKeyword(const Signature& signature, Term& term,
                           std::optional<size_t>& x_offset,
                           std::optional<size_t>& y_offset,
                           const char*& after) {
    const Token& name = Next();
    Next();  // '='
    const bool is_neuron = signature.kind == TermKind::kNeuron;
    const bool takes_tokens = signature.kind == TermKind::kChannel ||
                              signature.kind == TermKind::kDirection ||
                              signature.kind == TermKind::kLayer;
    if (is_neuron && name.text == "token") {
      if (term.token.has_value()) {
        return ErrorAt(name.offset, "token given twice");
      }
      FEATVIZ_ASSIGN_OR_RETURN(term.token, ReadNonNegativeInt("token index"));
      after = "token index";
      return absl::OkStatus();
    }
    if (takes_tokens && name.text == "tokens") {
      const Token& value = Peek();
      if (value.kind != TokenKind::kPath ||
          (value.text != "all" && value.text != "cls" &&
           value.text != "patches")) {
        return Expected(value, "all, cls or patches after tokens=");
      }
      term.tokens = value.text == "cls"       ? TokenSubset::kPrefix
                    : value.text == "patches" ? TokenSubset::kPatches
                                              : TokenSubset::kAll;
      Next();
      after = "tokens";
      return absl::OkStatus();
    }
    if (name.text == "batch") {
      if (term.batch.has_value()) {
        return ErrorAt(name.offset, "batch given twice");
      }
      FEATVIZ_ASSIGN_OR_RETURN(term.batch, ReadNonNegativeInt("batch index"));
      after = "batch index";
      return absl::OkStatus();
    }
    if (is_neuron && (name.text == "x" || name.text == "y")) {
      const bool is_x = name.text == "x";
      std::optional<int64_t>& slot = is_x ? term.x : term.y;
      if (slot.has_value()) {
        return ErrorAt(name.offset, absl::StrCat(name.text, " given twice"));
      }
      FEATVIZ_ASSIGN_OR_RETURN(slot, ReadNonNegativeInt(name.text));
      (is_x ? x_offset : y_offset) = name.offset;
      after = is_x ? "x" : "y";
      return absl::OkStatus();
    }
    return ErrorAt(name.offset,
                   absl::StrCat("unknown keyword '", name.text, "' for ",
                                signature.name, "; expected ",
                                is_neuron      ? "x=, y=, token= or batch="
                                : takes_tokens ? "tokens= or batch="
                                               : "batch="));
  }

  // Cursor on the '(' after the function name.
  absl::StatusOr<Term> ParseCall(const Token& name) {
    const Signature* signature = FindSignature(name.text);
    if (signature == nullptr) {
      return ErrorAt(name.offset,
                     absl::StrCat("unknown function '", name.text,
                                  "'; functions are: ", FunctionNames()));
    }
    Next();  // '('
    Term term;
    term.kind = signature->kind;
    int positional = 0;
    std::optional<size_t> x_offset;
    std::optional<size_t> y_offset;
    bool x_positional = false;
    bool positional_done = false;
    auto finish_positional = [&](const Token& at) -> absl::Status {
      if (positional_done) return absl::OkStatus();
      positional_done = true;
      if (positional < signature->min_args) {
        return ErrorAt(at.offset,
                       absl::StrCat("too few arguments to ", signature->name,
                                    "; expected ", signature->usage, ", found ",
                                    Describe(at)));
      }
      return absl::OkStatus();
    };

    if (IsPunct(Peek(), ')')) {
      FEATVIZ_RETURN_IF_ERROR(finish_positional(Peek()));
      Next();
    } else {
      while (true) {
        const Token& arg = Peek();
        const char* after = nullptr;
        if (arg.kind == TokenKind::kPath && IsPunct(Peek(1), '=')) {
          FEATVIZ_RETURN_IF_ERROR(finish_positional(arg));
          FEATVIZ_RETURN_IF_ERROR(
              ReadKeyword(*signature, term, x_offset, y_offset, after));
        } else {
          if (positional_done) {
            return Expected(arg,
                            "name=value (positional arguments come before "
                            "keyword arguments)");
          }
          if (positional == signature->max_args) {
            return ErrorAt(
                arg.offset,
                absl::StrCat("too many arguments to ", signature->name,
                             "; expected ", signature->usage, ", found ",
                             Describe(arg)));
          }
          const Arg kind = signature->args[positional];
          if (kind == Arg::kX) {
            x_offset = arg.offset;
            x_positional = true;
          }
          if (kind == Arg::kY) y_offset = arg.offset;
          FEATVIZ_RETURN_IF_ERROR(ReadPositional(kind, term));
          after = ArgDescription(kind);
          ++positional;
        }
        if (IsPunct(Peek(), ',')) {
          Next();
          if (IsPunct(Peek(), ')')) {
            return Expected(Peek(), "an argument after ','");
          }
          continue;
        }
        if (IsPunct(Peek(), ')')) {
          FEATVIZ_RETURN_IF_ERROR(finish_positional(Peek()));
          Next();
          break;
        }
        return Expected(Peek(), absl::StrCat("',' or ')' after ", after));
      }
    }

    // neuron(layer, d, t): one position alone is a token of a token layer.
    if (x_positional && !term.y.has_value() && !term.token.has_value()) {
      term.token = term.x;
      term.x.reset();
    }
    if (term.token.has_value() && (term.x.has_value() || term.y.has_value())) {
      return ErrorAt(
          term.x.has_value() ? *x_offset : *y_offset,
          absl::StrCat("neuron takes a token or a position (x, y), not both, "
                       "as in ",
                       signature->usage));
    }
    if (term.x.has_value() != term.y.has_value()) {
      const bool has_x = term.x.has_value();
      return ErrorAt(
          has_x ? *x_offset : *y_offset,
          absl::StrCat("neuron needs both x and y or neither, as "
                       "in ",
                       signature->usage, "; found only ", has_x ? "x" : "y"));
    }
    return term;
  }

  absl::string_view text_;
  std::vector<Token> tokens_;
  size_t next_ = 0;
};

// ---------------------------------------------------------------------------
// Validation.

const LayerInfo* FindLayer(const ModelShape& model, absl::string_view path) {
  for (const LayerInfo& layer : model.layers) {
    if (layer.path == path) return &layer;
  }
  return nullptr;
}

std::string ShapeText(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

std::string TokenLayerText(const LayerInfo& layer) {
  std::string grid =
      layer.grid_h > 0
          ? absl::StrCat(layer.token_prefix > 0
                             ? absl::StrCat(layer.token_prefix, " + ")
                             : std::string(),
                         layer.grid_h, "x", layer.grid_w, " patches")
          : std::string("no patch grid");
  return absl::StrCat("token layer ", layer.path, " with output shape ",
                      ShapeText(layer.shape), " (", layer.tokens,
                      " tokens: ", grid, "; ", layer.channels, " features)");
}

// neuron(layer, d, t) or neuron(layer, d, x, y) on a token layer.
absl::Status ValidateTokenNeuron(const Term& term, const LayerInfo& layer) {
  if (term.token.has_value() &&
      (*term.token < 0 || *term.token >= layer.tokens)) {
    return absl::OutOfRangeError(absl::StrCat(
        "token ", *term.token, " out of range for ", TokenLayerText(layer)));
  }
  if (!term.x.has_value()) return absl::OkStatus();
  if (layer.grid_h == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        term.ToString(), " gives a position (", *term.x, ", ", *term.y,
        "), but ", TokenLayerText(layer),
        " has no patch grid to place it on; give a token index, as in "
        "neuron(layer, d, t), or the card's \"tokens\" grid"));
  }
  if (*term.x < 0 || *term.y < 0 || *term.x >= layer.grid_w ||
      *term.y >= layer.grid_h) {
    return absl::OutOfRangeError(
        absl::StrCat("neuron position (", *term.x, ", ", *term.y,
                     ") out of range for ", TokenLayerText(layer)));
  }
  return absl::OkStatus();
}

// tokens=cls|patches: only on a token layer that has such tokens.
absl::Status ValidateTokenSubset(const Term& term, const LayerInfo& layer) {
  if (term.tokens == TokenSubset::kAll) return absl::OkStatus();
  if (layer.layout != LayerLayout::kTokens) {
    return absl::InvalidArgumentError(
        absl::StrCat(term.ToString(), ": tokens=", TokenSubsetName(term.tokens),
                     " needs a token layer, but layer ", layer.path, " is ",
                     LayerLayoutName(layer.layout), " with output shape ",
                     ShapeText(layer.shape)));
  }
  if (term.tokens == TokenSubset::kPrefix && layer.token_prefix == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(term.ToString(), ": tokens=cls needs a class token, but ",
                     TokenLayerText(layer), " has none before its patches"));
  }
  if (term.tokens == TokenSubset::kPatches &&
      layer.token_prefix >= layer.tokens) {
    return absl::InvalidArgumentError(
        absl::StrCat(term.ToString(), ": tokens=patches, but ",
                     TokenLayerText(layer), " has no patch tokens"));
  }
  return absl::OkStatus();
}

absl::Status ValidateTerm(const Term& term, const ModelShape& model,
                          int64_t batch_size) {
  const LayerInfo* layer = nullptr;
  if (term.UsesLayer()) {
    layer = FindLayer(model, term.layer);
    if (layer == nullptr) {
      std::vector<absl::string_view> paths;
      for (const LayerInfo& info : model.layers) paths.push_back(info.path);
      return absl::NotFoundError(
          paths.empty()
              ? absl::StrCat("unknown layer '", term.layer,
                             "'; the model has no layers")
              : absl::StrCat("unknown layer '", term.layer,
                             "'; layers are: ", absl::StrJoin(paths, ", ")));
    }
    if (!layer->tappable) {
      return absl::InvalidArgumentError(absl::StrCat(
          "layer ", layer->path, " cannot be tapped: ",
          layer->untappable_reason, " (in ", term.ToString(), ")"));
    }
    if (layer->channels <= 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "layer ", layer->path, " has no channels (output shape ",
          ShapeText(layer->shape),
          "); only tensor outputs of rank 2 or more can be used in ",
          term.ToString()));
    }
    FEATVIZ_RETURN_IF_ERROR(ValidateTokenSubset(term, *layer));
  }

  switch (term.kind) {
    case TermKind::kNeuron:
    case TermKind::kChannel:
      if (term.index < 0 || term.index >= layer->channels) {
        return absl::OutOfRangeError(
            absl::StrCat("channel ", term.index, " out of range for layer ",
                         layer->path, " with ", layer->channels, " channels"));
      }
      if (term.kind != TermKind::kNeuron) break;
      if (term.x.has_value() != term.y.has_value()) {
        return absl::InvalidArgumentError(absl::StrCat(
            term.ToString(), " sets only ", term.x.has_value() ? "x" : "y",
            "; a neuron position needs both x and y or neither"));
      }
      if (term.token.has_value() &&
          (term.x.has_value() || term.y.has_value())) {
        return absl::InvalidArgumentError(
            absl::StrCat(term.ToString(),
                         " gives both a token and a position (x, y); "
                         "give one"));
      }
      if (layer->layout == LayerLayout::kTokens) {
        FEATVIZ_RETURN_IF_ERROR(ValidateTokenNeuron(term, *layer));
        break;
      }
      if (term.token.has_value() && layer->layout == LayerLayout::kSequence) {
        if (*term.token < 0 || *term.token >= layer->shape[2]) {
          return absl::OutOfRangeError(absl::StrCat(
              "position ", *term.token, " out of range for layer ", layer->path,
              " with output shape ", ShapeText(layer->shape), " (length ",
              layer->shape[2], ")"));
        }
        break;
      }
      if (term.token.has_value()) {
        return absl::InvalidArgumentError(absl::StrCat(
            term.ToString(), " names token ", *term.token, ", but layer ",
            layer->path, " is not a token layer (",
            LayerLayoutName(layer->layout), ", output shape ",
            ShapeText(layer->shape), ")",
            layer->shape.size() == 4 ? "; give a position x, y" : ""));
      }
      if (term.x.has_value()) {
        if (layer->shape.size() != 4) {
          return absl::InvalidArgumentError(absl::StrCat(
              term.ToString(), " gives a position (", *term.x, ", ", *term.y,
              "), but layer ", layer->path, " has no spatial map (shape ",
              ShapeText(layer->shape), ")"));
        }
        const int64_t height = layer->shape[2];
        const int64_t width = layer->shape[3];
        if (*term.x < 0 || *term.x >= width) {
          return absl::OutOfRangeError(
              absl::StrCat("neuron x ", *term.x, " out of range for layer ",
                           layer->path, " with width ", width));
        }
        if (*term.y < 0 || *term.y >= height) {
          return absl::OutOfRangeError(
              absl::StrCat("neuron y ", *term.y, " out of range for layer ",
                           layer->path, " with height ", height));
        }
      }
      break;
    case TermKind::kLogit:
    case TermKind::kProb:
      if (model.num_classes == 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            term.ToString(), " needs class scores, but model ",
            model.model_name.empty() ? "(unnamed)" : model.model_name,
            " has no class output",
            model.no_classes_reason.empty()
                ? ""
                : absl::StrCat(": ", model.no_classes_reason),
            "; channel, neuron, layer, direction and output(name, c) terms "
            "work on it"));
      }
      if (term.index < 0 || term.index >= model.num_classes) {
        return absl::OutOfRangeError(absl::StrCat(
            "class ", term.index, " out of range for a model with ",
            model.num_classes, " classes"));
      }
      break;
    case TermKind::kDirection:
      if (static_cast<int64_t>(term.vector.size()) != layer->channels) {
        return absl::InvalidArgumentError(absl::StrCat(
            "direction vector has ", term.vector.size(), " values but layer ",
            layer->path, " has ", layer->channels, " channels"));
      }
      for (size_t i = 0; i < term.vector.size(); ++i) {
        if (!std::isfinite(term.vector[i])) {
          return absl::InvalidArgumentError(
              absl::StrCat("direction value ", FormatNumber(term.vector[i]),
                           " at position ", i, " is not finite"));
        }
      }
      break;
    case TermKind::kDiversity:
    case TermKind::kAlignment:
      // Both compare images of the batch with each other, so they need at
      // least two and cannot be narrowed to one.
      if (batch_size < 2) {
        return absl::InvalidArgumentError(
            absl::StrCat(term.ToString(),
                         " compares the images of a batch and needs at "
                         "least 2, but the batch has ",
                         batch_size));
      }
      if (term.batch.has_value()) {
        return absl::InvalidArgumentError(
            absl::StrCat(term.ToString(),
                         " compares the images of a batch and cannot be "
                         "restricted to image ",
                         *term.batch));
      }
      if (term.kind == TermKind::kAlignment && term.param.has_value() &&
          !(std::isfinite(*term.param) && *term.param > 0)) {
        return absl::InvalidArgumentError(
            absl::StrCat("alignment decay ", FormatNumber(*term.param),
                         " must be a positive finite number"));
      }
      break;
    case TermKind::kL1:
    case TermKind::kL2:
      if (term.param.has_value() && !std::isfinite(*term.param)) {
        return absl::InvalidArgumentError(
            absl::StrCat(TermKindName(term.kind), " constant ",
                         FormatNumber(*term.param), " is not finite"));
      }
      if (term.pixel_reference && term.param.has_value()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "l2 takes a constant or a reference image, not both; got ",
            FormatNumber(*term.param), " and ", term.reference.ToString()));
      }
      // Whether the reference exists and has the images' shape is checked
      // where it is resolved (RenderSession::Create).
      break;
    case TermKind::kOutput: {
      const OutputInfo* output = nullptr;
      for (const OutputInfo& o : model.outputs) {
        if (o.name == term.output) output = &o;
      }
      if (output == nullptr) {
        std::vector<absl::string_view> names;
        for (const OutputInfo& o : model.outputs) names.push_back(o.name);
        return absl::NotFoundError(
            absl::StrCat("unknown output ", FormatName(term.output),
                         " of model ", model.model_name, "; outputs are: ",
                         names.empty() ? "none" : absl::StrJoin(names, ", ")));
      }
      if (output->channels <= 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            "output ", FormatName(output->name), " has no channels (shape ",
            ShapeText(output->shape), "); ", term.ToString(),
            " needs an output of rank 2 or more"));
      }
      if (term.index < 0 || term.index >= output->channels) {
        return absl::OutOfRangeError(absl::StrCat(
            "channel ", term.index, " out of range for output ",
            FormatName(output->name), " with ", output->channels, " channels"));
      }
      break;
    }
    case TermKind::kLayer:
    case TermKind::kTotalVariation:
    case TermKind::kInversion:
    case TermKind::kInversionL2:
    case TermKind::kCaricature:
      // Whether the reference exists (and fits the model) is checked where
      // it is resolved: by the server for datasets and request tensors, by
      // RenderSession::Create for the images it is given.
      break;
  }

  if (term.batch.has_value() &&
      (*term.batch < 0 || *term.batch >= batch_size)) {
    return absl::OutOfRangeError(absl::StrCat("batch index ", *term.batch,
                                              " out of range for a batch of ",
                                              batch_size));
  }
  return absl::OkStatus();
}

Term MakeTerm(TermKind kind, std::string layer = "", int64_t index = 0) {
  Term term;
  term.kind = kind;
  term.layer = std::move(layer);
  term.index = index;
  return term;
}

}  // namespace

const char* LayerLayoutName(LayerLayout layout) {
  switch (layout) {
    case LayerLayout::kFlat:
      return "flat";
    case LayerLayout::kSpatial:
      return "spatial";
    case LayerLayout::kSequence:
      return "sequence";
    case LayerLayout::kTokens:
      return "tokens";
    case LayerLayout::kOther:
      return "other";
  }
  return "other";
}

const char* TokenSubsetName(TokenSubset subset) {
  switch (subset) {
    case TokenSubset::kAll:
      return "all";
    case TokenSubset::kPrefix:
      return "cls";
    case TokenSubset::kPatches:
      return "patches";
  }
  return "all";
}

const char* TermKindName(TermKind kind) {
  switch (kind) {
    case TermKind::kNeuron:
      return "neuron";
    case TermKind::kChannel:
      return "channel";
    case TermKind::kLayer:
      return "layer";
    case TermKind::kLogit:
      return "logit";
    case TermKind::kProb:
      return "prob";
    case TermKind::kDirection:
      return "direction";
    case TermKind::kDiversity:
      return "diversity";
    case TermKind::kAlignment:
      return "alignment";
    case TermKind::kTotalVariation:
      return "tv";
    case TermKind::kL1:
      return "l1";
    case TermKind::kL2:
      return "l2";
    case TermKind::kOutput:
      return "output";
    case TermKind::kInversion:
      return "inversion";
    case TermKind::kInversionL2:
      return "inversion_l2";
    case TermKind::kCaricature:
      return "caricature";
  }
  return "unknown";
}

bool Term::UsesLayer() const {
  switch (kind) {
    case TermKind::kNeuron:
    case TermKind::kChannel:
    case TermKind::kLayer:
    case TermKind::kDirection:
    case TermKind::kDiversity:
    case TermKind::kAlignment:
    case TermKind::kInversion:
    case TermKind::kInversionL2:
    case TermKind::kCaricature:
      return true;
    case TermKind::kLogit:
    case TermKind::kProb:
    case TermKind::kTotalVariation:
    case TermKind::kL1:
    case TermKind::kL2:
    case TermKind::kOutput:
      return false;
  }
  return false;
}

// Fields that `kind` does not use are ignored: they do not appear in the
// text, so comparing them would make Parse(ToString()) differ from a term
// built in code with a stray value.
bool Term::operator==(const Term& other) const {
  if (kind != other.kind || batch != other.batch) return false;
  if (UsesLayer() && layer != other.layer) return false;
  switch (kind) {
    case TermKind::kNeuron:
      return index == other.index && x == other.x && y == other.y &&
             token == other.token;
    case TermKind::kChannel:
      return index == other.index && tokens == other.tokens;
    case TermKind::kDirection:
      return vector == other.vector && tokens == other.tokens;
    case TermKind::kLayer:
      return tokens == other.tokens;
    case TermKind::kLogit:
    case TermKind::kProb:
      return index == other.index;
    case TermKind::kAlignment:
    case TermKind::kL1:
      return param == other.param;
    case TermKind::kL2:
      if (pixel_reference != other.pixel_reference) return false;
      return pixel_reference ? reference == other.reference
                             : param == other.param;
    case TermKind::kDiversity:
    case TermKind::kTotalVariation:
      return true;
    case TermKind::kOutput:
      return output == other.output && index == other.index;
    case TermKind::kInversion:
    case TermKind::kInversionL2:
    case TermKind::kCaricature:
      return reference == other.reference;
  }
  return true;
}

bool Term::UsesReference() const {
  return kind == TermKind::kInversion || kind == TermKind::kInversionL2 ||
         kind == TermKind::kCaricature ||
         (kind == TermKind::kL2 && pixel_reference);
}

bool Term::IsUnit() const {
  return kind == TermKind::kNeuron || kind == TermKind::kChannel ||
         kind == TermKind::kLogit || kind == TermKind::kProb;
}

std::string ReferenceImage::ToString() const {
  if (source == Source::kTensor) return absl::StrCat("reference(", index, ")");
  if (dataset.empty()) return absl::StrCat("dataset(", index, ")");
  return absl::StrCat("dataset(", FormatName(dataset), ", ", index, ")");
}

std::string Term::ToString() const {
  std::vector<std::string> args;
  switch (kind) {
    case TermKind::kNeuron:
      args = {FormatName(layer), absl::StrCat(index)};
      if (x.has_value() && y.has_value()) {
        args.push_back(absl::StrCat(*x));
        args.push_back(absl::StrCat(*y));
      } else if (x.has_value()) {
        // Not valid, but say what the term holds rather than hide it.
        args.push_back(absl::StrCat("x=", *x));
      } else if (y.has_value()) {
        args.push_back(absl::StrCat("y=", *y));
      }
      if (token.has_value()) {
        args.push_back(x.has_value() || y.has_value()
                           ? absl::StrCat("token=", *token)
                           : absl::StrCat(*token));
      }
      break;
    case TermKind::kChannel:
      args = {FormatName(layer), absl::StrCat(index)};
      break;
    case TermKind::kLayer:
    case TermKind::kDiversity:
      args = {FormatName(layer)};
      break;
    case TermKind::kOutput:
      args = {FormatName(output), absl::StrCat(index)};
      break;
    case TermKind::kLogit:
    case TermKind::kProb:
      args = {absl::StrCat(index)};
      break;
    case TermKind::kDirection:
      args = {FormatName(layer),
              absl::StrCat("[",
                           absl::StrJoin(vector, ", ",
                                         [](std::string* out, double value) {
                                           out->append(FormatNumber(value));
                                         }),
                           "]")};
      break;
    case TermKind::kAlignment:
      args = {FormatName(layer)};
      if (param.has_value()) args.push_back(FormatNumber(*param));
      break;
    case TermKind::kTotalVariation:
      break;
    case TermKind::kL1:
      if (param.has_value()) args.push_back(FormatNumber(*param));
      break;
    case TermKind::kL2:
      if (pixel_reference) {
        args.push_back(reference.ToString());
      } else if (param.has_value()) {
        args.push_back(FormatNumber(*param));
      }
      break;
    case TermKind::kInversion:
    case TermKind::kInversionL2:
    case TermKind::kCaricature:
      args = {FormatName(layer), reference.ToString()};
      break;
  }
  const bool takes_tokens = kind == TermKind::kChannel ||
                            kind == TermKind::kDirection ||
                            kind == TermKind::kLayer;
  if (takes_tokens && tokens != TokenSubset::kAll) {
    args.push_back(absl::StrCat("tokens=", TokenSubsetName(tokens)));
  }
  if (batch.has_value()) args.push_back(absl::StrCat("batch=", *batch));
  return absl::StrCat(TermKindName(kind), "(", absl::StrJoin(args, ", "), ")");
}

absl::StatusOr<Objective> Objective::Parse(absl::string_view text) {
  bool blank = true;
  for (char c : text) blank = blank && IsSpace(c);
  if (blank) return absl::InvalidArgumentError("objective is empty");
  if (static_cast<int64_t>(text.size()) > kMaxObjectiveTextBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "objective text is ", text.size(), " bytes, more than the limit of ",
        kMaxObjectiveTextBytes));
  }
  FEATVIZ_ASSIGN_OR_RETURN(Objective objective, Parser(text).Parse());
  FEATVIZ_RETURN_IF_ERROR(objective.CheckBounds());
  return objective;
}

absl::Status Objective::CheckBounds() const {
  if (static_cast<int64_t>(terms_.size()) > kMaxObjectiveTerms) {
    return absl::InvalidArgumentError(
        absl::StrCat("objective has ", terms_.size(),
                     " terms, more than the limit of ", kMaxObjectiveTerms));
  }
  const auto within = [](double v) {
    return std::isfinite(v) && std::abs(v) <= kMaxObjectiveMagnitude;
  };
  const std::string bound =
      absl::StrCat(" must be finite and at most ",
                   FormatNumber(kMaxObjectiveMagnitude), " in magnitude");
  for (const WeightedTerm& weighted : terms_) {
    const Term& term = weighted.term;
    if (!within(weighted.weight)) {
      return absl::InvalidArgumentError(
          absl::StrCat("weight ", FormatNumber(weighted.weight), " of ",
                       term.ToString(), bound));
    }
    for (size_t i = 0; i < term.vector.size(); ++i) {
      if (!within(term.vector[i])) {
        return absl::InvalidArgumentError(
            absl::StrCat("direction value ", FormatNumber(term.vector[i]),
                         " at position ", i, bound));
      }
    }
    if (term.param.has_value() && !within(*term.param)) {
      return absl::InvalidArgumentError(
          absl::StrCat("the constant ", FormatNumber(*term.param), " of ",
                       TermKindName(term.kind), bound));
    }
  }
  return absl::OkStatus();
}

std::string Objective::ToString() const {
  std::string out;
  for (size_t i = 0; i < terms_.size(); ++i) {
    const double weight = terms_[i].weight;
    const std::string term = terms_[i].term.ToString();
    if (i == 0) {
      if (weight == 1) {
        out = term;
      } else if (weight == -1) {
        out = absl::StrCat("-", term);
      } else {
        out = absl::StrCat(FormatNumber(weight), " * ", term);
      }
      continue;
    }
    // signbit rather than < 0 so that -0.0 keeps its sign through the text.
    const bool negative = std::signbit(weight);
    const double magnitude = negative ? -weight : weight;
    absl::StrAppend(&out, negative ? " - " : " + ");
    if (magnitude != 1) absl::StrAppend(&out, FormatNumber(magnitude), " * ");
    absl::StrAppend(&out, term);
  }
  return out;
}

absl::Status Objective::Validate(const ModelShape& model,
                                 int64_t batch_size) const {
  if (terms_.empty()) return absl::InvalidArgumentError("objective is empty");
  if (batch_size < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("batch size ", batch_size, " must be at least 1"));
  }
  FEATVIZ_RETURN_IF_ERROR(CheckBounds());
  for (const WeightedTerm& weighted : terms_) {
    FEATVIZ_RETURN_IF_ERROR(ValidateTerm(weighted.term, model, batch_size));
  }
  return absl::OkStatus();
}

std::vector<std::string> Objective::Layers() const {
  std::vector<std::string> layers;
  for (const WeightedTerm& weighted : terms_) {
    if (!weighted.term.UsesLayer()) continue;
    bool seen = false;
    for (const std::string& layer : layers) {
      if (layer == weighted.term.layer) {
        seen = true;
        break;
      }
    }
    if (!seen) layers.push_back(weighted.term.layer);
  }
  return layers;
}

bool Objective::ReadsOutputs() const {
  return std::any_of(terms_.begin(), terms_.end(), [](const WeightedTerm& w) {
    return w.term.kind == TermKind::kLogit || w.term.kind == TermKind::kProb ||
           w.term.kind == TermKind::kOutput;
  });
}

Objective Objective::operator+(const Objective& other) const {
  Objective sum = *this;
  sum.terms_.insert(sum.terms_.end(), other.terms_.begin(), other.terms_.end());
  return sum;
}

Objective Objective::operator-(const Objective& other) const {
  Objective difference = *this;
  difference.terms_.reserve(terms_.size() + other.terms_.size());
  for (const WeightedTerm& weighted : other.terms_) {
    difference.terms_.push_back({-weighted.weight, weighted.term});
  }
  return difference;
}

Objective Objective::operator-() const {
  Objective negated = *this;
  for (WeightedTerm& weighted : negated.terms_)
    weighted.weight = -weighted.weight;
  return negated;
}

Objective Objective::operator*(double scale) const {
  Objective scaled = *this;
  for (WeightedTerm& weighted : scaled.terms_) weighted.weight *= scale;
  return scaled;
}

Objective Neuron(std::string layer, int64_t channel) {
  return Objective(MakeTerm(TermKind::kNeuron, std::move(layer), channel));
}

Objective Neuron(std::string layer, int64_t channel, int64_t x, int64_t y) {
  Term term = MakeTerm(TermKind::kNeuron, std::move(layer), channel);
  term.x = x;
  term.y = y;
  return Objective(std::move(term));
}

Objective Channel(std::string layer, int64_t channel) {
  return Objective(MakeTerm(TermKind::kChannel, std::move(layer), channel));
}

Objective LayerObjective(std::string layer) {
  return Objective(MakeTerm(TermKind::kLayer, std::move(layer)));
}

Objective Logit(int64_t class_index) {
  return Objective(MakeTerm(TermKind::kLogit, "", class_index));
}

Objective Prob(int64_t class_index) {
  return Objective(MakeTerm(TermKind::kProb, "", class_index));
}

Objective Output(std::string output, int64_t channel) {
  Term term = MakeTerm(TermKind::kOutput, "", channel);
  term.output = std::move(output);
  return Objective(std::move(term));
}

Objective Direction(std::string layer, std::vector<double> vector) {
  Term term = MakeTerm(TermKind::kDirection, std::move(layer));
  term.vector = std::move(vector);
  return Objective(std::move(term));
}

Objective Diversity(std::string layer) {
  return Objective(MakeTerm(TermKind::kDiversity, std::move(layer)));
}

Objective Alignment(std::string layer) {
  return Objective(MakeTerm(TermKind::kAlignment, std::move(layer)));
}

Objective TotalVariation() {
  return Objective(MakeTerm(TermKind::kTotalVariation));
}

Objective L1() { return Objective(MakeTerm(TermKind::kL1)); }

Objective L2() { return Objective(MakeTerm(TermKind::kL2)); }
Objective L2(ReferenceImage reference) {
  Term term = MakeTerm(TermKind::kL2);
  term.reference = std::move(reference);
  term.pixel_reference = true;
  return Objective(std::move(term));
}

namespace {
Objective ReferenceTerm(TermKind kind, std::string layer,
                        ReferenceImage reference) {
  Term term = MakeTerm(kind, std::move(layer));
  term.reference = std::move(reference);
  return Objective(std::move(term));
}
}  // namespace

Objective Inversion(std::string layer, ReferenceImage reference) {
  return ReferenceTerm(TermKind::kInversion, std::move(layer),
                       std::move(reference));
}
Objective InversionL2(std::string layer, ReferenceImage reference) {
  return ReferenceTerm(TermKind::kInversionL2, std::move(layer),
                       std::move(reference));
}
Objective Caricature(std::string layer, ReferenceImage reference) {
  return ReferenceTerm(TermKind::kCaricature, std::move(layer),
                       std::move(reference));
}
ReferenceImage DatasetReference(std::string dataset, int64_t index) {
  ReferenceImage reference;
  reference.source = ReferenceImage::Source::kDataset;
  reference.dataset = std::move(dataset);
  reference.index = index;
  return reference;
}
ReferenceImage TensorReference(int64_t index) {
  ReferenceImage reference;
  reference.source = ReferenceImage::Source::kTensor;
  reference.index = index;
  return reference;
}

std::optional<size_t> UnitTermIndex(const Objective& objective,
                                    std::optional<int64_t> image) {
  for (size_t i = 0; i < objective.terms().size(); ++i) {
    const WeightedTerm& wt = objective.terms()[i];
    if (image.has_value() && wt.term.batch.has_value() &&
        *wt.term.batch != *image) {
      continue;
    }
    if (wt.weight > 0 && wt.term.IsUnit()) return i;
  }
  return std::nullopt;
}

Objective ForBatch(Objective objective, int64_t batch_index) {
  std::vector<Objective> parts;
  parts.reserve(objective.terms().size());
  for (const WeightedTerm& weighted : objective.terms()) {
    Term term = weighted.term;
    term.batch = batch_index;
    // Objective(term) has weight exactly 1, so the product is exactly the
    // original weight.
    parts.push_back(Objective(std::move(term)) * weighted.weight);
  }
  return Concat(std::move(parts));
}

}  // namespace featviz::core
