#include "core/objective.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <ostream>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/layer_info.h"
#include "gtest/gtest.h"

namespace featviz::core {

// Readable failures: gtest would otherwise dump the objects' bytes.
void PrintTo(const Objective& objective, std::ostream* os) {
  *os << "Objective{" << objective.ToString() << "}";
}
void PrintTo(const Term& term, std::ostream* os) { *os << term.ToString(); }

namespace {

// The CMake target links gtest without gmock, so no HasSubstr.
::testing::AssertionResult Contains(absl::string_view text,
                                    absl::string_view phrase) {
  if (absl::StrContains(text, phrase)) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << "'" << text << "' does not contain '" << phrase << "'";
}

Objective ParseOrDie(absl::string_view text) {
  absl::StatusOr<Objective> objective = Objective::Parse(text);
  EXPECT_TRUE(objective.ok()) << text << ": " << objective.status();
  return objective.ok() ? *std::move(objective) : Objective();
}

Objective WithParam(Objective objective, double param) {
  Term term = objective.terms().front().term;
  term.param = param;
  return Objective(std::move(term));
}

// ---------------------------------------------------------------------------
// Parse.

TEST(ObjectiveParse, ReadsLucidShorthandAsChannel) {
  EXPECT_EQ(ParseOrDie("conv2:5"), Channel("conv2", 5));
  EXPECT_EQ(ParseOrDie("layer1.0.conv1 : 12"), Channel("layer1.0.conv1", 12));
  EXPECT_EQ(ParseOrDie("features.3:0"), Channel("features.3", 0));
  EXPECT_EQ(ParseOrDie("_x:7"), Channel("_x", 7));
}

TEST(ObjectiveParse, ReadsEveryTermKind) {
  const std::vector<std::pair<std::string, Objective>> cases = {
      {"neuron(conv2, 5)", Neuron("conv2", 5)},
      {"neuron(conv2, 5, 3, 4)", Neuron("conv2", 5, 3, 4)},
      {"channel(conv2, 5)", Channel("conv2", 5)},
      {"layer(conv2)", LayerObjective("conv2")},
      {"logit(7)", Logit(7)},
      {"prob(7)", Prob(7)},
      {"direction(conv2, [0.5, -1])", Direction("conv2", {0.5, -1})},
      {"diversity(conv2)", Diversity("conv2")},
      {"alignment(conv2)", Alignment("conv2")},
      {"alignment(conv2, 3)", WithParam(Alignment("conv2"), 3)},
      {"tv()", TotalVariation()},
      {"l1()", L1()},
      {"l1(0.25)", WithParam(L1(), 0.25)},
      {"l2()", L2()},
      {"l2(-0.5)", WithParam(L2(), -0.5)},
  };
  for (const auto& [text, expected] : cases) {
    EXPECT_EQ(ParseOrDie(text), expected) << text;
  }
}

TEST(ObjectiveParse, ReadsBatchKeywordOnEveryCall) {
  EXPECT_EQ(ParseOrDie("channel(conv2, 3, batch=1)"),
            ForBatch(Channel("conv2", 3), 1));
  EXPECT_EQ(ParseOrDie("tv(batch=0)"), ForBatch(TotalVariation(), 0));
  EXPECT_EQ(ParseOrDie("logit( 4 , batch = 2 )"), ForBatch(Logit(4), 2));
  EXPECT_EQ(ParseOrDie("neuron(conv2, 5, 3, 4, batch=1)"),
            ForBatch(Neuron("conv2", 5, 3, 4), 1));
  EXPECT_EQ(ParseOrDie("direction(conv2, [1], batch=3)"),
            ForBatch(Direction("conv2", {1}), 3));
}

TEST(ObjectiveParse, ReadsNeuronPositionAsKeywordsInAnyOrder) {
  EXPECT_EQ(ParseOrDie("neuron(conv2, 5, y=4, x=3)"), Neuron("conv2", 5, 3, 4));
  EXPECT_EQ(ParseOrDie("neuron(conv2, 5, batch=1, x=3, y=4)"),
            ForBatch(Neuron("conv2", 5, 3, 4), 1));
}

TEST(ObjectiveParse, AcceptsLayerPathsThatShareNamesWithFunctionsOrKeywords) {
  EXPECT_EQ(ParseOrDie("channel(tv, 3)"), Channel("tv", 3));
  EXPECT_EQ(ParseOrDie("layer(batch)"), LayerObjective("batch"));
  EXPECT_EQ(ParseOrDie("neuron(x, 1, x=2, y=3)"), Neuron("x", 1, 2, 3));
  EXPECT_EQ(ParseOrDie("tv:2"), Channel("tv", 2));
}

TEST(ObjectiveParse, ReadsNumbersInEveryNotation) {
  const std::vector<std::pair<std::string, double>> cases = {
      {"2 * tv()", 2},       {"0.5 * tv()", 0.5},    {".5 * tv()", 0.5},
      {"1e-3 * tv()", 1e-3}, {"2.5E+2 * tv()", 250}, {"3. * tv()", 3},
      {"1e-999 * tv()", 0},
  };
  for (const auto& [text, weight] : cases) {
    const Objective objective = ParseOrDie(text);
    ASSERT_EQ(objective.terms().size(), 1u) << text;
    EXPECT_EQ(objective.terms()[0].weight, weight) << text;
  }
}

TEST(ObjectiveParse, NormalisesExpressionsIntoWeightedTermsInOrder) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"-(conv2:1 - 2*logit(3))/4",
       "-0.25 * channel(conv2, 1) + 0.5 * logit(3)"},
      {"2 * 3 * tv() / 4", "1.5 * tv()"},
      {"tv() * 2 - (l1() + l2()) / 2", "2 * tv() - 0.5 * l1() - 0.5 * l2()"},
      {"+-+-tv()", "tv()"},
      {"-(-(tv()))", "tv()"},
      {"2 * -tv()", "-2 * tv()"},
      {"channel( conv2 ,5 , batch = 1 )", "channel(conv2, 5, batch=1)"},
      {"0.1*tv()", "0.1 * tv()"},
      {"direction(conv2, [+1, -.5, 2e1])", "direction(conv2, [1, -0.5, 20])"},
      {"conv1:1 + conv2:2 - (conv1:1)",
       "channel(conv1, 1) + channel(conv2, 2) "
       "- channel(conv1, 1)"},
      {"\tlayer(conv2)\n", "layer(conv2)"},
  };
  for (const auto& [text, canonical] : cases) {
    EXPECT_EQ(ParseOrDie(text).ToString(), canonical) << text;
  }
}

TEST(ObjectiveParse, KeepsRepeatedTermsSeparate) {
  const Objective objective = ParseOrDie("tv() + tv() - tv()");
  ASSERT_EQ(objective.terms().size(), 3u);
  EXPECT_EQ(objective.terms()[0].weight, 1);
  EXPECT_EQ(objective.terms()[1].weight, 1);
  EXPECT_EQ(objective.terms()[2].weight, -1);
}

TEST(ObjectiveParse, DividesWeightsExactly) {
  const Objective objective = ParseOrDie("(tv() - 2 * l1()) / 3");
  ASSERT_EQ(objective.terms().size(), 2u);
  EXPECT_EQ(objective.terms()[0].weight, 1.0 / 3);
  EXPECT_EQ(objective.terms()[1].weight, -2.0 / 3);
}

TEST(ObjectiveParse, RejectsEmptyText) {
  for (absl::string_view text : {"", "   ", " \t\n "}) {
    const absl::StatusOr<Objective> objective = Objective::Parse(text);
    ASSERT_FALSE(objective.ok()) << "'" << text << "'";
    EXPECT_EQ(objective.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(objective.status().message(), "objective is empty");
  }
}

struct MalformedCase {
  std::string text;
  int column;
  std::string phrase;
};

void ExpectParseError(const MalformedCase& c) {
  const absl::StatusOr<Objective> objective = Objective::Parse(c.text);
  ASSERT_FALSE(objective.ok())
      << c.text << " parsed as " << objective->ToString();
  EXPECT_EQ(objective.status().code(), absl::StatusCode::kInvalidArgument)
      << c.text;
  const std::string message(objective.status().message());
  EXPECT_EQ(message.rfind(absl::StrCat("column ", c.column, ": "), 0), 0u)
      << c.text << " -> " << message;
  EXPECT_TRUE(Contains(message, c.phrase)) << c.text;
}

TEST(ObjectiveParse, ReportsTheColumnAndWhatWasExpected) {
  const std::vector<MalformedCase> cases = {
      {"channel(conv2 5)", 15,
       "expected ',' or ')' after layer path, found '5'"},
      {"channel(conv2, 5", 17,
       "expected ',' or ')' after channel index, found end of input"},
      {"channel(conv2, 1.5)", 16,
       "expected a non-negative integer channel index, found '1.5'"},
      {"channel(conv2, -1)", 16, "found '-1'"},
      {"logit(x)", 7, "expected a non-negative integer class index"},
      // A layer path may start with a digit (top-level nn.Sequential).
      {"channel(5, conv2)", 12,
       "expected a non-negative integer channel index, found 'conv2'"},
      {"channel(-, 5)", 9, "expected a layer path"},
      {"channel(conv2, 99999999999999999999)", 16, "too large"},
      {"conv2:x", 7, "channel index, found 'x'"},
      {"conv2", 6, "':' after the layer path 'conv2', found end of input"},
      {"tv() +", 7, "found end of input"},
      {"(tv()", 6, "expected ')' to close '(' at column 1"},
      {"tv() & l1()", 6, "found '&'"},
      {"tv() tv()", 6, "expected '+', '-', '*', '/' or end of input"},
      {"1e * tv()", 1, "malformed number '1e'"},
      {"conv2:5abc", 7, "malformed number '5abc'"},
      {"direction(conv2, [1, 2)", 23, "',' or ']' after a direction value"},
      {"direction(conv2, 1)", 18, "'[' to start the direction vector"},
      {"channel(conv2, 5,)", 18, "an argument after ','"},
      {"channel(conv2, 5, batch=1, batch=2)", 28, "batch given twice"},
      {"neuron(conv2, 5, 1, 2, x=3)", 24, "x given twice"},
      {"channel(conv2, 5, foo=1)", 19, "unknown keyword 'foo' for channel"},
      {"channel(conv2, 5, x=1)", 19, "unknown keyword 'x'"},
      {"channel(conv2, 5, batch=1, 6)", 28, "expected name=value"},
      {"channel(conv2, 5, batch=-1)", 25,
       "non-negative integer batch index, found '-1'"},
      {"alignment(conv2, x)", 18, "a number for the decay"},
      {"tv() é", 6, "found 'é'"},
  };
  for (const MalformedCase& c : cases) ExpectParseError(c);
}

TEST(ObjectiveParse, UnknownFunctionListsTheValidNames) {
  ExpectParseError({"0.5 * chanel(conv2, 5)", 7,
                    "unknown function 'chanel'; functions are: neuron, "
                    "channel, layer, logit, prob, direction, diversity, "
                    "alignment, tv, l1, l2, output"});
}

TEST(ObjectiveParse, WrongArgumentCountNamesTheSignature) {
  const std::vector<MalformedCase> cases = {
      {"channel(conv2)", 14,
       "too few arguments to channel; expected channel(layer, c[, "
       "tokens=cls|patches]), found ')'"},
      {"channel(conv2, 5, 6)", 19,
       "too many arguments to channel; expected channel(layer, c[, "
       "tokens=cls|patches]), found '6'"},
      {"channel(batch=1, conv2, 5)", 9, "too few arguments to channel"},
      {"logit()", 7, "expected logit(c)"},
      {"tv(1)", 4, "too many arguments to tv; expected tv()"},
      {"l1(0.5, 1)", 9, "expected l1([c])"},
      {"alignment(conv2, 2, 3)", 21, "expected alignment(layer[, decay])"},
      {"direction(conv2)", 16, "expected direction(layer, [v1, v2, ...])"},
      {"neuron(conv2, 5, x=3)", 18,
       "neuron needs both x and y or neither, as in neuron(layer, c[, x, y])"},
      {"neuron(conv2, 5, 3, token=1)", 18,
       "neuron takes a token or a position (x, y), not both"},
      {"neuron(conv2, 5, y=3)", 18, "found only y"},
      {"neuron(conv2, 5, 1, 2, 3)", 24, "too many arguments to neuron"},
  };
  for (const MalformedCase& c : cases) ExpectParseError(c);
}

TEST(ObjectiveParse, RejectsBareNumbersAsTheObjectiveOrASummand) {
  const std::vector<MalformedCase> cases = {
      {"3", 1, "bare number '3'"},
      {"2 * 3", 1, "bare number '2 * 3'"},
      {"(4)", 1, "bare number '(4)'"},
      {"channel(a, 1) + 3", 17, "bare number '3'"},
      {"-3 + tv()", 1, "bare number '-3'"},
      {"tv() - 2 * 3 + l1()", 8, "bare number '2 * 3'"},
      {"(2 + 3) * tv()", 2, "bare number '2'"},
  };
  for (const MalformedCase& c : cases) ExpectParseError(c);
}

TEST(ObjectiveParse, RejectsProductsThatAreNotLinear) {
  const std::vector<MalformedCase> cases = {
      {"tv() * tv()", 8, "an objective can only be multiplied by a number"},
      {"2 * conv2:1 * (l1() + l2())", 15,
       "found the objective '(l1() + l2())'"},
      {"2 / tv()", 5, "expected a number to divide by, found the objective"},
      {"tv() / 0", 8, "division by zero"},
      {"tv() / (0.0 * 5)", 8, "division by zero"},
  };
  for (const MalformedCase& c : cases) ExpectParseError(c);
}

TEST(ObjectiveParse, RejectsWeightsThatAreNotFinite) {
  const std::vector<MalformedCase> cases = {
      {"1e999 * tv()", 1, "number '1e999' is not finite"},
      {"tv() * -1e999", 9, "number '1e999' is not finite"},
      {"1e200 * 1e200 * tv()", 9, "not finite"},
      {"tv() * 1e200 * 1e200", 16, "weight is not finite after multiplying"},
      {"tv() / 1e-300 / 1e-300", 17, "weight is not finite after dividing"},
      {"direction(conv2, [0.5, 1e999])", 24, "not finite"},
      {"l1(-1e999)", 5, "not finite"},
      {"alignment(conv2, 1e400)", 18, "not finite"},
  };
  for (const MalformedCase& c : cases) ExpectParseError(c);
  // There is no syntax for NaN or infinity: the words are not numbers.
  EXPECT_FALSE(Objective::Parse("nan * tv()").ok());
  EXPECT_FALSE(Objective::Parse("inf * tv()").ok());
  EXPECT_FALSE(Objective::Parse("tv() * 0 / 0").ok());
}

TEST(ObjectiveParse, RejectsDeepNestingWithoutCrashing) {
  const std::string parens =
      std::string(10000, '(') + "tv()" + std::string(10000, ')');
  ExpectParseError({parens, 101, "nested more than 100 levels"});
  ExpectParseError(
      {std::string(10000, '-') + "tv()", 101, "nested more than 100 levels"});
  // Moderate nesting is fine.
  EXPECT_EQ(ParseOrDie(std::string(50, '(') + "tv()" + std::string(50, ')')),
            TotalVariation());
}

TEST(ObjectiveParse, ReadsSumsUpToTheTermLimit) {
  std::string text = "tv()";
  for (int64_t i = 1; i < kMaxObjectiveTerms; ++i) absl::StrAppend(&text, " + l1()");
  const Objective objective = ParseOrDie(text);
  ASSERT_EQ(static_cast<int64_t>(objective.terms().size()), kMaxObjectiveTerms);
  EXPECT_EQ(objective.terms().front().term, TotalVariation().terms()[0].term);
  EXPECT_EQ(objective.terms().back().term, L1().terms()[0].term);
}

TEST(ObjectiveParse, RefusesMoreTermsThanTheLimit) {
  // 16,000 terms fit in the text limit; the parser reads them all without
  // trouble, then refuses the count.
  std::string text = "tv()";
  for (int i = 0; i < 16000; ++i) absl::StrAppend(&text, " + l1()");
  const absl::StatusOr<Objective> parsed = Objective::Parse(text);
  EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(parsed.status().message(),
                       "objective has 16001 terms, more than the limit of 256"));
}

TEST(ObjectiveParse, RefusesTextLongerThanTheLimitBeforeReadingIt) {
  const std::string text = "tv()" + std::string(kMaxObjectiveTextBytes, ' ');
  const absl::StatusOr<Objective> parsed = Objective::Parse(text);
  EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(parsed.status().message(),
                       absl::StrCat("objective text is ", text.size(),
                                    " bytes, more than the limit of 131072")));
}

TEST(ObjectiveParse, RefusesNumbersBeyondTheMagnitudeLimit) {
  for (const char* text :
       {"1e300 * tv()", "tv() * 2e6", "-1e7 * logit(3)",
        "direction(fc1, [1, 1e300])", "l1(1e7)", "alignment(conv2, 1e300)"}) {
    SCOPED_TRACE(text);
    const absl::StatusOr<Objective> parsed = Objective::Parse(text);
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_TRUE(Contains(parsed.status().message(),
                         "must be finite and at most 1e+06 in magnitude"));
  }
  EXPECT_TRUE(Objective::Parse("1e6 * tv() - 1e6 * l1(-1e6)").ok());
}

// ---------------------------------------------------------------------------
// ToString.

TEST(ObjectiveToString, PrintsEveryTermKindCanonically) {
  Term neuron_half = Neuron("conv2", 5).terms()[0].term;
  const std::vector<std::pair<Objective, std::string>> cases = {
      {Neuron("conv2", 5), "neuron(conv2, 5)"},
      {Neuron("conv2", 5, 3, 4), "neuron(conv2, 5, 3, 4)"},
      {Channel("conv2", 5), "channel(conv2, 5)"},
      {LayerObjective("conv2"), "layer(conv2)"},
      {Logit(7), "logit(7)"},
      {Prob(7), "prob(7)"},
      {Direction("conv2", {0.5, -1}), "direction(conv2, [0.5, -1])"},
      {Direction("conv2", {}), "direction(conv2, [])"},
      {Diversity("conv2"), "diversity(conv2)"},
      {Alignment("conv2"), "alignment(conv2)"},
      {WithParam(Alignment("conv2"), 3), "alignment(conv2, 3)"},
      {TotalVariation(), "tv()"},
      {L1(), "l1()"},
      {WithParam(L1(), 0.25), "l1(0.25)"},
      {L2(), "l2()"},
      {ForBatch(TotalVariation(), 1), "tv(batch=1)"},
      {ForBatch(Channel("conv2", 3), 1), "channel(conv2, 3, batch=1)"},
      {ForBatch(Neuron("conv2", 5, 3, 4), 0),
       "neuron(conv2, 5, 3, 4, batch=0)"},
      {ForBatch(WithParam(L2(), 0.1), 2), "l2(0.1, batch=2)"},
  };
  for (const auto& [objective, text] : cases) {
    EXPECT_EQ(objective.ToString(), text);
    EXPECT_EQ(ParseOrDie(text), objective) << text;
  }
}

TEST(ObjectiveToString, PrintsWeightsWithTheShortestTextThatReadsBack) {
  const Objective tv = TotalVariation();
  EXPECT_EQ((tv * 0.1).ToString(), "0.1 * tv()");
  EXPECT_EQ((tv * (0.1 + 0.2)).ToString(), "0.30000000000000004 * tv()");
  EXPECT_EQ((tv * 2).ToString(), "2 * tv()");
  EXPECT_EQ((tv * 1e-5).ToString(), "1e-05 * tv()");
  EXPECT_EQ((tv * 1e21).ToString(), "1e+21 * tv()");
  EXPECT_EQ((tv * 0).ToString(), "0 * tv()");
  const Objective third = tv * (1.0 / 3);
  EXPECT_EQ(ParseOrDie(third.ToString()), third);
}

TEST(ObjectiveToString, WritesTheSignOfTheFirstWeightAndSubtractsLaterOnes) {
  EXPECT_EQ((-0.5 * TotalVariation()).ToString(), "-0.5 * tv()");
  EXPECT_EQ((-TotalVariation()).ToString(), "-tv()");
  EXPECT_EQ((TotalVariation() - 0.5 * L2() + 1.0 * L1() - L1()).ToString(),
            "tv() - 0.5 * l2() + l1() - l1()");
  EXPECT_EQ((Channel("conv2", 5) + 0.5 * Prob(7) - 0.01 * TotalVariation())
                .ToString(),
            "channel(conv2, 5) + 0.5 * prob(7) - 0.01 * tv()");
}

TEST(ObjectiveToString, PrintsAnEmptyObjectiveAsEmptyText) {
  EXPECT_EQ(Objective().ToString(), "");
}

TEST(ObjectiveToString, CanonicalTextOfCompoundExpressionsIsAFixedPoint) {
  for (absl::string_view text : {
           "channel(conv2, 5) + 0.5 * prob(7) - 0.01 * tv()",
           "-0.25 * channel(conv2, 1) + 0.5 * logit(3)",
           "-tv() + l1(0.25) - 2 * l2()",
           "layer(features.3) - neuron(layer1.0.conv1, 12, 1, 2, batch=3)",
           "diversity(conv2) + alignment(conv2, 3) + direction(conv2, [1, "
           "-0.5, 1e-07])",
           "999999.5 * logit(0, batch=0) - 5e-324 * prob(9)",
       }) {
    EXPECT_EQ(ParseOrDie(text).ToString(), text);
  }
}

// ---------------------------------------------------------------------------
// Round trip over many generated objectives.

double RandomNumber(std::mt19937_64& rng) {
  switch (rng() % 7) {
    case 0:
      return 1;
    case 1:
      return -1;
    case 2:
      return static_cast<double>(static_cast<int64_t>(rng() % 21) - 10);
    case 3:
      return std::uniform_real_distribution<double>(-10, 10)(rng);
    case 4:
      return static_cast<double>(static_cast<int64_t>(rng() % 2001) - 1000) /
             std::pow(10.0, static_cast<double>(rng() % 7));
    case 5:
      return (rng() % 2 == 0) ? 0.0 : -0.0;
    default: {
      // Any bit pattern within the magnitude bound: subnormals, tiny
      // exponents, the bound's neighbourhood.
      while (true) {
        const uint64_t bits = rng();
        double value;
        std::memcpy(&value, &bits, sizeof(value));
        if (std::isfinite(value) && std::abs(value) <= kMaxObjectiveMagnitude) {
          return value;
        }
      }
    }
  }
}

Term RandomTerm(std::mt19937_64& rng) {
  static const char* const kLayers[] = {"conv2", "features.3", "layer1.0.conv1",
                                        "_x",    "batch",      "x",
                                        "tv",    "channel",    "a.b_c.0"};
  Term term;
  term.kind = static_cast<TermKind>(rng() % 11);
  term.layer = kLayers[rng() % (sizeof(kLayers) / sizeof(kLayers[0]))];
  term.index = static_cast<int64_t>(rng() % 1000);
  if (term.kind == TermKind::kNeuron && rng() % 2 == 0) {
    term.x = static_cast<int64_t>(rng() % 64);
    term.y = static_cast<int64_t>(rng() % 64);
  }
  if (term.kind == TermKind::kDirection) {
    const int size = static_cast<int>(rng() % 6);
    for (int i = 0; i < size; ++i) term.vector.push_back(RandomNumber(rng));
  }
  if ((term.kind == TermKind::kAlignment || term.kind == TermKind::kL1 ||
       term.kind == TermKind::kL2) &&
      rng() % 2 == 0) {
    term.param = RandomNumber(rng);
  }
  if (rng() % 2 == 0) term.batch = static_cast<int64_t>(rng() % 8);
  return term;
}

TEST(ObjectiveRoundTrip, ParsesItsOwnTextBackForManyGeneratedObjectives) {
  std::mt19937_64 rng(20220623);
  for (int i = 0; i < 3000; ++i) {
    Objective objective;
    const int terms = 1 + static_cast<int>(rng() % 6);
    for (int t = 0; t < terms; ++t) {
      objective = objective + Objective(RandomTerm(rng)) * RandomNumber(rng);
    }
    const std::string text = objective.ToString();
    const absl::StatusOr<Objective> parsed = Objective::Parse(text);
    ASSERT_TRUE(parsed.ok()) << text << ": " << parsed.status();
    ASSERT_EQ(*parsed, objective) << text;
    EXPECT_EQ(parsed->ToString(), text);
    for (size_t t = 0; t < objective.terms().size(); ++t) {
      // == treats 0 and -0 alike; the text keeps the sign anyway.
      EXPECT_EQ(std::signbit(parsed->terms()[t].weight),
                std::signbit(objective.terms()[t].weight))
          << text;
    }
  }
}

// ---------------------------------------------------------------------------
// Operators, helpers and small functions.

TEST(ObjectiveOperators, CombineTermListsWithoutMerging) {
  const Objective sum = Channel("conv2", 1) + Channel("conv2", 1);
  ASSERT_EQ(sum.terms().size(), 2u);
  const Objective difference = TotalVariation() - (L1() - 2 * L2());
  ASSERT_EQ(difference.terms().size(), 3u);
  EXPECT_EQ(difference.terms()[0].weight, 1);
  EXPECT_EQ(difference.terms()[1].weight, -1);
  EXPECT_EQ(difference.terms()[2].weight, 2);
  const Objective scaled = (TotalVariation() - L1()) * 0.5;
  EXPECT_EQ(scaled.terms()[0].weight, 0.5);
  EXPECT_EQ(scaled.terms()[1].weight, -0.5);
  EXPECT_EQ(-scaled, -0.5 * TotalVariation() + 0.5 * L1());
}

TEST(ObjectiveOperators, ForBatchRestrictsEveryTermAndKeepsWeights) {
  const Objective objective =
      ForBatch(Channel("conv2", 1) - 0.25 * TotalVariation(), 3);
  ASSERT_EQ(objective.terms().size(), 2u);
  for (const WeightedTerm& weighted : objective.terms()) {
    EXPECT_EQ(weighted.term.batch, 3);
  }
  EXPECT_EQ(objective.terms()[1].weight, -0.25);
  EXPECT_EQ(objective.ToString(),
            "channel(conv2, 1, batch=3) - 0.25 * tv(batch=3)");
}

TEST(TermEquality, IgnoresFieldsTheKindDoesNotUse) {
  Term a = Logit(3).terms()[0].term;
  Term b = a;
  b.layer = "conv2";
  b.param = 0.5;
  b.vector = {1, 2};
  EXPECT_EQ(a, b);
  b.batch = 0;
  EXPECT_NE(a, b);
  Term c = Channel("conv2", 3).terms()[0].term;
  Term d = Neuron("conv2", 3).terms()[0].term;
  EXPECT_NE(c, d);
  EXPECT_FALSE(Neuron("conv2", 3) == Neuron("conv2", 3, 0, 0));
  EXPECT_FALSE(Alignment("conv2") == WithParam(Alignment("conv2"), 2));
}

TEST(TermKindName, NamesEveryKindAsTheSyntaxDoes) {
  EXPECT_STREQ(TermKindName(TermKind::kNeuron), "neuron");
  EXPECT_STREQ(TermKindName(TermKind::kChannel), "channel");
  EXPECT_STREQ(TermKindName(TermKind::kLayer), "layer");
  EXPECT_STREQ(TermKindName(TermKind::kLogit), "logit");
  EXPECT_STREQ(TermKindName(TermKind::kProb), "prob");
  EXPECT_STREQ(TermKindName(TermKind::kDirection), "direction");
  EXPECT_STREQ(TermKindName(TermKind::kDiversity), "diversity");
  EXPECT_STREQ(TermKindName(TermKind::kAlignment), "alignment");
  EXPECT_STREQ(TermKindName(TermKind::kTotalVariation), "tv");
  EXPECT_STREQ(TermKindName(TermKind::kL1), "l1");
  EXPECT_STREQ(TermKindName(TermKind::kL2), "l2");
}

TEST(TermUsesLayer, IsTrueOnlyForTermsThatReadActivations) {
  for (const Objective& objective :
       {Neuron("a", 0), Channel("a", 0), LayerObjective("a"),
        Direction("a", {1}), Diversity("a"), Alignment("a")}) {
    EXPECT_TRUE(objective.terms()[0].term.UsesLayer()) << objective.ToString();
  }
  for (const Objective& objective :
       {Logit(0), Prob(0), TotalVariation(), L1(), L2()}) {
    EXPECT_FALSE(objective.terms()[0].term.UsesLayer()) << objective.ToString();
  }
}

TEST(ObjectiveLayers, ListsDistinctLayersInFirstUseOrder) {
  const Objective objective = ParseOrDie(
      "conv2:1 + logit(3) + layer(fc1) - neuron(conv2, 2) + tv() + "
      "diversity(conv1) + alignment(fc1)");
  EXPECT_EQ(objective.Layers(),
            (std::vector<std::string>{"conv2", "fc1", "conv1"}));
  EXPECT_TRUE(ParseOrDie("tv() + prob(1)").Layers().empty());
}

// ---------------------------------------------------------------------------
// Validate.

class ObjectiveValidate : public ::testing::Test {
 protected:
  ObjectiveValidate() {
    model_.layers = {
        {"conv1", "Conv2d", {1, 16, 24, 24}, 16, true, ""},
        {"conv2", "Conv2d", {1, 32, 8, 8}, 32, true, ""},
        {"fc1", "Linear", {1, 64}, 64, true, ""},
        {"fc2", "Linear", {1, 10}, 10, true, ""},
    };
    model_.num_classes = 10;
  }

  absl::Status Validate(absl::string_view text, int64_t batch_size = 1) {
    return ParseOrDie(text).Validate(model_, batch_size);
  }

  ModelShape model_;
};

TEST_F(ObjectiveValidate, AcceptsObjectivesThatFitTheModel) {
  EXPECT_TRUE(
      Validate("channel(conv2, 31) + 0.5 * prob(9) - 0.01 * tv()").ok());
  EXPECT_TRUE(Validate("neuron(conv1, 15, 23, 23) + neuron(conv2, 0)").ok());
  EXPECT_TRUE(Validate("neuron(fc1, 63) + layer(fc2) + logit(0)").ok());
  EXPECT_TRUE(Validate("l1(0.5) + l2() + alignment(conv1, 3)", 2).ok());
  EXPECT_TRUE(Validate("diversity(conv2) + conv2:1", 4).ok());
  EXPECT_TRUE(Validate("channel(conv2, 1, batch=1)", 2).ok());
  std::vector<double> direction(32, 0.5);
  EXPECT_TRUE(Direction("conv2", direction).Validate(model_, 1).ok());
}

TEST_F(ObjectiveValidate, RejectsObjectivesBuiltInCodeBeyondTheBounds) {
  EXPECT_EQ((Logit(3) * 1e300).Validate(model_, 1).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((Logit(3) * std::numeric_limits<double>::quiet_NaN())
                .Validate(model_, 1)
                .code(),
            absl::StatusCode::kInvalidArgument);
  Objective many = Logit(1);
  for (int64_t i = 1; i <= kMaxObjectiveTerms; ++i) many = many + Logit(1);
  const absl::Status status = many.Validate(model_, 1);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(status.message(), "more than the limit of 256"));
}

TEST_F(ObjectiveValidate, RejectsAnEmptyObjective) {
  const absl::Status status = Objective().Validate(model_, 1);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message(), "objective is empty");
}

TEST_F(ObjectiveValidate, RejectsUnknownLayerAndListsTheModelsLayers) {
  const absl::Status status = Validate("tv() + channel(conv9, 1)");
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(status.message(),
            "unknown layer 'conv9'; layers are: conv1, conv2, fc1, fc2");
  EXPECT_EQ(Validate("diversity(features.3)", 2).code(),
            absl::StatusCode::kNotFound);
}

TEST_F(ObjectiveValidate, RejectsChannelOutOfRange) {
  absl::Status status = Validate("channel(conv2, 32)");
  EXPECT_EQ(status.code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(status.message(),
            "channel 32 out of range for layer conv2 with 32 channels");
  status = Validate("neuron(fc1, 70)");
  EXPECT_EQ(status.code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(status.message(),
            "channel 70 out of range for layer fc1 with 64 channels");
}

TEST_F(ObjectiveValidate, RejectsNegativeIndicesBuiltInCode) {
  absl::Status status = Channel("conv2", -1).Validate(model_, 1);
  EXPECT_EQ(status.code(), absl::StatusCode::kOutOfRange);
  EXPECT_TRUE(Contains(status.message(), "channel -1"));
  status = Logit(-2).Validate(model_, 1);
  EXPECT_EQ(status.code(), absl::StatusCode::kOutOfRange);
  EXPECT_TRUE(Contains(status.message(), "class -2"));
  status = ForBatch(TotalVariation(), -1).Validate(model_, 1);
  EXPECT_EQ(status.code(), absl::StatusCode::kOutOfRange);
  EXPECT_TRUE(Contains(status.message(), "batch index -1"));
}

TEST_F(ObjectiveValidate, RejectsNeuronPositionOutsideTheMap) {
  absl::Status status = Validate("neuron(conv2, 1, 8, 0)");
  EXPECT_EQ(status.code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(status.message(),
            "neuron x 8 out of range for layer conv2 with width 8");
  status = Validate("neuron(conv1, 1, 0, 24)");
  EXPECT_EQ(status.code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(status.message(),
            "neuron y 24 out of range for layer conv1 with height 24");
  EXPECT_TRUE(Validate("neuron(conv2, 1, 7, 7)").ok());
}

TEST_F(ObjectiveValidate, RejectsNeuronPositionOnALayerWithoutAMap) {
  const absl::Status status = Validate("neuron(fc1, 3, 0, 0)");
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(status.message(), "fc1"));
  EXPECT_TRUE(Contains(status.message(), "[1, 64]"));
}

TEST_F(ObjectiveValidate, RejectsAHalfSetNeuronPositionBuiltInCode) {
  Term term = Neuron("conv2", 1).terms()[0].term;
  term.x = 3;
  const absl::Status status = Objective(term).Validate(model_, 1);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(status.message(), "sets only x"));
}

TEST_F(ObjectiveValidate, RejectsClassOutOfRange) {
  absl::Status status = Validate("prob(12)");
  EXPECT_EQ(status.code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(status.message(),
            "class 12 out of range for a model with 10 classes");
  status = Validate("tv() - logit(10)");
  EXPECT_EQ(status.code(), absl::StatusCode::kOutOfRange);
  EXPECT_TRUE(Contains(status.message(), "class 10"));
}

TEST_F(ObjectiveValidate, RejectsDirectionWhoseLengthDiffersFromChannels) {
  const absl::Status status = Validate("direction(conv2, [1, 0, -1])");
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message(),
            "direction vector has 3 values but layer conv2 has 32 channels");
}

TEST_F(ObjectiveValidate, RejectsBatchIndexOutsideTheBatch) {
  const absl::Status status = Validate("channel(conv2, 1, batch=3)", 2);
  EXPECT_EQ(status.code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(status.message(), "batch index 3 out of range for a batch of 2");
}

TEST_F(ObjectiveValidate, RejectsDiversityAndAlignmentOfASingleImage) {
  absl::Status status = Validate("diversity(conv2)", 1);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(status.message(), "diversity(conv2)"));
  EXPECT_TRUE(Contains(status.message(), "batch has 1"));
  EXPECT_EQ(Validate("alignment(conv2)", 1).code(),
            absl::StatusCode::kInvalidArgument);
  status = Validate("diversity(conv2, batch=0)", 4);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(status.message(), "image 0"));
}

TEST_F(ObjectiveValidate, RejectsAlignmentDecayThatIsNotPositive) {
  const absl::Status status = Validate("alignment(conv2, 0)", 2);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(status.message(), "decay 0"));
}

TEST_F(ObjectiveValidate, RejectsLayerWithoutChannels) {
  model_.layers.push_back({"aux", "Tuple", {}, 0, true, ""});
  const absl::Status status = Validate("layer(aux)");
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(status.message(), "layer aux has no channels"));
}

TEST_F(ObjectiveValidate, RejectsWeightsAndValuesThatAreNotFiniteBuiltInCode) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  absl::Status status = (TotalVariation() * inf).Validate(model_, 1);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(status.message(), "weight inf"));
  std::vector<double> direction(32, 0);
  direction[5] = nan;
  status = Direction("conv2", direction).Validate(model_, 1);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(status.message(), "position 5"));
}

TEST_F(ObjectiveValidate, RejectsABatchSizeBelowOne) {
  const absl::Status status = Validate("tv()", 0);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(status.message(), "batch size 0"));
}

}  // namespace
}  // namespace featviz::core
