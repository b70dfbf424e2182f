// A layer at once: the '*' of an objective template such as
// `channel(conv2, *)`, `neuron(fc1, *) - 0.01 * tv()` or `conv2:*` stands for
// every listed unit of the layer, and is expanded client-side into one
// `batch=i` term per unit, so that all of them render as one batched request:
//
//   channel(conv2, *)  with units 0, 1, 5  ->
//   (channel(conv2, 0, batch=0) + channel(conv2, 1, batch=1) +
//    channel(conv2, 5, batch=2))
//
// The other terms (a tv() regulariser) apply to every image. The units come
// from `--units` (ParseUnits): all, 0-15, 3,5,9.
#ifndef FEATVIZ_CLIENT_UNIT_TEMPLATE_H_
#define FEATVIZ_CLIENT_UNIT_TEMPLATE_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace featviz::client {

// The server's bound on an objective's terms (core::kMaxObjectiveTerms), and
// the most units one request renders: the server's default --max_batch.
inline constexpr int64_t kMaxUnitsPerRequest = 64;

// An objective with one '*' term.
struct UnitTemplate {
  std::string objective;  // As written.
  std::string kind;       // "channel" or "neuron".
  std::string layer;      // The layer's path (quotes removed).
  // The '*' term as written, cut at the '*': "channel(conv2, " and "" (its
  // closing ')' left out); "neuron(fc1, " and ", 3, 4". For `conv2:*`, the
  // call form: "channel(conv2, " and "".
  std::string head;
  std::string tail;
  // Where the '*' term is in `objective`: [term_begin, term_end).
  size_t term_begin = 0;
  size_t term_end = 0;
  // The objective's terms besides the '*' term.
  int64_t other_terms = 0;

  // The term for `unit` on image `batch`: "channel(conv2, 5, batch=3)".
  std::string Term(int64_t unit, int64_t batch) const;
  // The objective with the '*' term replaced by the sum, in parentheses, of
  // Term(units[i], i): a weight on the '*' term weighs every unit.
  std::string Expand(const std::vector<int64_t>& units) const;
  // How many units one request may carry: kMaxUnitsPerRequest, less when
  // the other terms and the units would pass the server's 256 terms.
  int64_t UnitsPerRequest() const;
};

// The '*' term of `objective`; nullopt when it has no '*' standing for a
// unit (a '*' after a number, a term or ')' multiplies). InvalidArgument,
// naming the column, for a second '*', a '*' outside a term or in a term
// other than channel(LAYER, *) / neuron(LAYER, *) / LAYER:*, a '*' where the
// layer goes, an objective that sets batch= itself, or (the parser's
// message) an objective that is malformed elsewhere.
absl::StatusOr<std::optional<UnitTemplate>> FindUnitTemplate(
    const std::string& objective);

// The units `spec` lists: "all" (every unit, 0 to channels - 1), or
// comma-separated units and ranges "a-b" (both ends included), in the order
// given. InvalidArgument names the item and, for a unit out of range, the
// layer and its channel count ("--units: unit 1000 is out of range for
// layer fc1 with 64 channels (units 0-63)"); also for a backwards range, a
// unit listed twice, or an empty list.
absl::StatusOr<std::vector<int64_t>> ParseUnits(absl::string_view spec,
                                                const std::string& layer,
                                                int64_t channels);

}  // namespace featviz::client

#endif  // FEATVIZ_CLIENT_UNIT_TEMPLATE_H_
