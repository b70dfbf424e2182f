#include "client/unit_template.h"

#include <algorithm>
#include <cctype>
#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "core/objective.h"

namespace featviz::client {
namespace {

constexpr char kUnitTerms[] = "channel(LAYER, *), neuron(LAYER, *) or LAYER:*";

bool IsQuote(char c) { return c == '\'' || c == '"'; }

// Characters that end an operand: a '*' after one multiplies.
bool EndsOperand(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.' ||
         c == ')' || c == ']' || IsQuote(c);
}

// The index just past the quoted string starting at `begin` (or the text's
// end when it is not closed); a backslash escapes the next character.
size_t SkipQuoted(const std::string& text, size_t begin) {
  const char quote = text[begin];
  for (size_t i = begin + 1; i < text.size(); ++i) {
    if (text[i] == '\\') {
      ++i;
    } else if (text[i] == quote) {
      return i + 1;
    }
  }
  return text.size();
}

// The last non-space character before `pos`, and its index (npos if none).
size_t PreviousNonSpace(const std::string& text, size_t pos) {
  while (pos > 0) {
    --pos;
    if (!std::isspace(static_cast<unsigned char>(text[pos]))) return pos;
  }
  return std::string::npos;
}

// An open parenthesis: where it is, the name of the call it opens ("" for
// grouping), where that name starts, and the commas seen at its level.
struct Open {
  size_t paren = 0;
  std::string name;
  size_t name_begin = 0;
  int64_t commas = 0;
  size_t first_comma = std::string::npos;
};

// The identifier (letters, digits, '_', '.') ending just before `end`
// (spaces skipped), and where it starts.
std::string NameBefore(const std::string& text, size_t end, size_t* begin) {
  size_t last = PreviousNonSpace(text, end);
  if (last == std::string::npos) return "";
  size_t first = last + 1;
  while (first > 0) {
    const char c = text[first - 1];
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_' && c != '.') {
      break;
    }
    --first;
  }
  *begin = first;
  return text.substr(first, last + 1 - first);
}

// The operand (a path, a number or a quoted string) ending at `last`
// (included), and where it starts.
size_t OperandBegin(const std::string& text, size_t last) {
  if (IsQuote(text[last])) {
    // Find the opening quote: the text is scanned from the start, since a
    // quote may be escaped inside.
    size_t i = 0;
    size_t start = std::string::npos;
    while (i <= last) {
      if (IsQuote(text[i])) {
        const size_t end = SkipQuoted(text, i);
        if (end == last + 1) start = i;
        i = end;
      } else {
        ++i;
      }
    }
    return start == std::string::npos ? last : start;
  }
  size_t first = last;
  while (first > 0) {
    const char c = text[first - 1];
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_' && c != '.' &&
        c != '-') {
      break;
    }
    --first;
  }
  return first;
}

absl::Status Usage(std::string message) {
  return absl::InvalidArgumentError(std::move(message));
}

// The layer path of a layer argument as written: quotes removed, escapes
// resolved; bare text as it is.
std::string Unquote(absl::string_view text) {
  if (text.size() < 2 || !IsQuote(text.front()) || text.back() != text.front()) {
    return std::string(text);
  }
  std::string out;
  for (size_t i = 1; i + 1 < text.size(); ++i) {
    if (text[i] == '\\' && i + 2 < text.size()) ++i;
    out.push_back(text[i]);
  }
  return out;
}

}  // namespace

std::string UnitTemplate::Term(int64_t unit, int64_t batch) const {
  return absl::StrCat(head, unit, tail, ", batch=", batch, ")");
}

std::string UnitTemplate::Expand(const std::vector<int64_t>& units) const {
  std::vector<std::string> terms;
  terms.reserve(units.size());
  for (size_t i = 0; i < units.size(); ++i) {
    terms.push_back(Term(units[i], static_cast<int64_t>(i)));
  }
  return absl::StrCat(objective.substr(0, term_begin), "(",
                      absl::StrJoin(terms, " + "), ")",
                      objective.substr(term_end));
}

int64_t UnitTemplate::UnitsPerRequest() const {
  return std::max<int64_t>(
      1, std::min<int64_t>(kMaxUnitsPerRequest,
                           core::kMaxObjectiveTerms - other_terms));
}

absl::StatusOr<std::optional<UnitTemplate>> FindUnitTemplate(
    const std::string& objective) {
  // One pass: quotes skipped, parentheses tracked; each '*' that does not
  // follow an operand is a unit wildcard, with the call it sits in.
  std::vector<Open> open;
  std::vector<size_t> stars;
  std::optional<Open> star_call;  // The call around the first '*'.
  int64_t star_arg = -1;
  size_t batch_at = std::string::npos;
  for (size_t i = 0; i < objective.size(); ++i) {
    const char c = objective[i];
    if (IsQuote(c)) {
      i = SkipQuoted(objective, i) - 1;
      continue;
    }
    if (c == '(') {
      Open o;
      o.paren = i;
      o.name = NameBefore(objective, i, &o.name_begin);
      open.push_back(o);
    } else if (c == ')') {
      if (!open.empty()) open.pop_back();
    } else if (c == ',' && !open.empty()) {
      if (open.back().commas++ == 0) open.back().first_comma = i;
    } else if (c == '=' && batch_at == std::string::npos) {
      size_t begin = 0;
      if (absl::AsciiStrToLower(NameBefore(objective, i, &begin)) == "batch") {
        batch_at = begin;
      }
    } else if (c == '*') {
      const size_t prev = PreviousNonSpace(objective, i);
      if (prev != std::string::npos && EndsOperand(objective[prev])) continue;
      if (stars.empty() && !open.empty()) {
        star_call = open.back();
        star_arg = open.back().commas;
      }
      stars.push_back(i);
    }
  }
  if (stars.empty()) return std::nullopt;
  if (stars.size() > 1) {
    std::vector<size_t> columns;
    for (size_t s : stars) columns.push_back(s + 1);
    return Usage(absl::StrCat(
        "the objective has ", stars.size(), " '*' (at columns ",
        absl::StrJoin(columns, ", "),
        "); one term stands for a layer's units: write '*' once, in ",
        kUnitTerms));
  }
  const size_t star = stars[0];
  if (batch_at != std::string::npos) {
    return Usage(absl::StrCat(
        "the objective sets batch= (column ", batch_at + 1,
        "); with '*' each unit gets its own image, batch=i, so leave batch= "
        "out"));
  }

  UnitTemplate t;
  t.objective = objective;
  const size_t prev = PreviousNonSpace(objective, star);
  if (prev != std::string::npos && objective[prev] == ':') {
    // LAYER:*, the shorthand of channel(LAYER, *).
    const size_t layer_last = PreviousNonSpace(objective, prev);
    if (layer_last == std::string::npos || !EndsOperand(objective[layer_last])) {
      return Usage(absl::StrCat("'*' at column ", star + 1,
                                " follows ':' with no layer before it; write ",
                                kUnitTerms));
    }
    t.term_begin = OperandBegin(objective, layer_last);
    t.term_end = star + 1;
    const std::string layer_text =
        objective.substr(t.term_begin, layer_last + 1 - t.term_begin);
    t.kind = "channel";
    t.layer = Unquote(layer_text);
    t.head = absl::StrCat("channel(", layer_text, ", ");
  } else {
    if (!star_call.has_value() || star_call->name.empty()) {
      return Usage(absl::StrCat(
          "'*' at column ", star + 1,
          " is not inside a term, so it names no layer; '*' stands for every "
          "unit of a layer: ",
          kUnitTerms));
    }
    const Open& call = *star_call;
    // The call's closing parenthesis.
    int depth = 0;
    size_t close = std::string::npos;
    for (size_t i = call.paren; i < objective.size(); ++i) {
      if (IsQuote(objective[i])) {
        i = SkipQuoted(objective, i) - 1;
      } else if (objective[i] == '(') {
        ++depth;
      } else if (objective[i] == ')' && --depth == 0) {
        close = i;
        break;
      }
    }
    const std::string written =
        close == std::string::npos
            ? objective.substr(call.name_begin)
            : objective.substr(call.name_begin, close + 1 - call.name_begin);
    const std::string kind = absl::AsciiStrToLower(call.name);
    if (kind != "channel" && kind != "neuron") {
      return Usage(absl::StrCat(
          "'*' in ", written, " (column ", star + 1,
          ") has no layer to take units of; '*' stands for every unit of a "
          "layer: ",
          kUnitTerms));
    }
    if (star_arg != 1) {
      return Usage(absl::StrCat(
          "'*' in ", written, " (column ", star + 1,
          ") stands where ",
          star_arg == 0 ? "the layer goes" : "a position goes",
          "; '*' stands for every unit of a layer: ", kUnitTerms));
    }
    if (close == std::string::npos) {
      return Usage(absl::StrCat("'", written, "' has no closing ')'"));
    }
    t.kind = kind;
    t.layer = Unquote(absl::StripAsciiWhitespace(objective.substr(
        call.paren + 1, call.first_comma - call.paren - 1)));
    t.term_begin = call.name_begin;
    t.term_end = close + 1;
    t.head = objective.substr(call.name_begin, star - call.name_begin);
    t.tail = std::string(absl::StripTrailingAsciiWhitespace(
        objective.substr(star + 1, close - star - 1)));
  }
  // The rest must parse: checked with '*' read as unit 0, so that the
  // parser's columns are the user's.
  std::string probe = objective;
  probe[star] = '0';
  absl::StatusOr<core::Objective> parsed = core::Objective::Parse(probe);
  if (!parsed.ok()) return Usage(std::string(parsed.status().message()));
  t.other_terms = static_cast<int64_t>(parsed->terms().size()) - 1;
  return t;
}

absl::StatusOr<std::vector<int64_t>> ParseUnits(absl::string_view spec,
                                                const std::string& layer,
                                                int64_t channels) {
  const std::string range_text =
      channels > 0 ? absl::StrCat("units 0-", channels - 1) : "no units";
  auto out_of_range = [&](int64_t unit, absl::string_view item) {
    const std::string what =
        item == absl::StrCat(unit)
            ? absl::StrCat("unit ", unit, " is")
            : absl::StrCat("range ", item, " reaches unit ", unit, ",");
    return Usage(absl::StrCat("--units: ", what, " out of range for layer ",
                              layer, " with ", channels, " channels (",
                              range_text, ")"));
  };
  spec = absl::StripAsciiWhitespace(spec);
  if (spec.empty()) {
    return Usage(
        "--units is empty; give all, a range such as 0-15, or a list such as "
        "3,5,9");
  }
  std::vector<int64_t> units;
  if (absl::AsciiStrToLower(spec) == "all") {
    if (channels < 1) {
      return Usage(absl::StrCat("--units all: layer ", layer,
                                " has no channels to render"));
    }
    for (int64_t u = 0; u < channels; ++u) units.push_back(u);
    return units;
  }
  std::set<int64_t> seen;
  for (absl::string_view raw : absl::StrSplit(spec, ',')) {
    const absl::string_view item = absl::StripAsciiWhitespace(raw);
    if (item.empty()) {
      return Usage(absl::StrCat("--units '", spec,
                                "' has an empty item; separate units and "
                                "ranges with single commas"));
    }
    int64_t first = 0, last = 0;
    const size_t dash = item.find('-', 1);
    bool ok;
    if (dash == absl::string_view::npos) {
      ok = absl::SimpleAtoi(item, &first) && first >= 0;
      last = first;
    } else {
      ok = absl::SimpleAtoi(absl::StripAsciiWhitespace(item.substr(0, dash)),
                            &first) &&
           absl::SimpleAtoi(absl::StripAsciiWhitespace(item.substr(dash + 1)),
                            &last) &&
           first >= 0 && last >= 0;
    }
    if (!ok) {
      return Usage(absl::StrCat(
          "--units: '", item,
          "' is not a unit (a non-negative integer), a range a-b, or all"));
    }
    if (first > last) {
      return Usage(absl::StrCat("--units: range ", item, " runs backwards; write ",
                                last, "-", first));
    }
    if (first >= channels) return out_of_range(first, item);
    if (last >= channels) return out_of_range(last, item);
    for (int64_t u = first; u <= last; ++u) {
      if (!seen.insert(u).second) {
        return Usage(absl::StrCat("--units: unit ", u, " is listed twice"));
      }
      units.push_back(u);
    }
  }
  return units;
}

}  // namespace featviz::client
