"""A layer at once: the `*` of an objective template.

`channel(conv2, *)`, `neuron(fc1, *) - 0.01 * tv()` or `conv2:*` stands for
every listed unit of the layer; `UnitTemplate.expand` writes one `batch=i`
term per unit, in parentheses so that a weight on the `*` term weighs each:

    channel(conv2, *)  with units [0, 1, 5]  ->
    (channel(conv2, 0, batch=0) + channel(conv2, 1, batch=1) + channel(conv2, 5, batch=2))

The same rules as the `featviz` CLI (client/unit_template.h), so both refuse
the same templates with the same messages.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Sequence, Union

MAX_OBJECTIVE_TERMS = 256
"""The server's bound on an objective's terms."""

MAX_UNITS_PER_REQUEST = 64
"""The most units one request renders: the server's default --max_batch."""

_UNIT_TERMS = "channel(LAYER, *), neuron(LAYER, *) or LAYER:*"
_TERM_KINDS = frozenset({
    "neuron", "channel", "layer", "logit", "prob", "output", "direction",
    "diversity", "alignment", "tv", "l1", "l2", "inversion", "inversion_l2",
    "caricature"})
_NAME_CHARS = re.compile(r"[A-Za-z0-9_.]")


@dataclass(frozen=True)
class UnitTemplate:
    """An objective with one `*` term (see `find_unit_template`)."""

    objective: str
    kind: str          # "channel" or "neuron"
    layer: str         # the layer's path, quotes removed
    head: str          # the term up to the '*': "channel(conv2, "
    tail: str          # after the '*', without the closing ')': "" or ", 3, 4"
    term_begin: int    # the '*' term's span in `objective`
    term_end: int
    other_terms: int   # terms besides the '*' term

    def term(self, unit: int, batch: int) -> str:
        """The term for `unit` on image `batch`: "channel(conv2, 5, batch=3)"."""
        return f"{self.head}{unit}{self.tail}, batch={batch})"

    def expand(self, units: Sequence[int]) -> str:
        """The objective with the '*' term replaced by the units' terms."""
        terms = " + ".join(self.term(u, i) for i, u in enumerate(units))
        return f"{self.objective[:self.term_begin]}({terms}){self.objective[self.term_end:]}"

    def units_per_request(self) -> int:
        """Units one request may carry within the server's 256 terms."""
        return max(1, min(MAX_UNITS_PER_REQUEST, MAX_OBJECTIVE_TERMS - self.other_terms))


def _skip_quoted(text: str, begin: int) -> int:
    quote = text[begin]
    i = begin + 1
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == quote:
            return i + 1
        i += 1
    return len(text)


def _previous_non_space(text: str, pos: int) -> int:
    pos -= 1
    while pos >= 0 and text[pos].isspace():
        pos -= 1
    return pos


def _ends_operand(c: str) -> bool:
    return c.isalnum() or c in "_.)]'\""


def _name_before(text: str, end: int) -> tuple[str, int]:
    last = _previous_non_space(text, end)
    if last < 0:
        return "", 0
    first = last + 1
    while first > 0 and _NAME_CHARS.match(text[first - 1]):
        first -= 1
    return text[first:last + 1], first


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] in "'\"" and text[-1] == text[0]:
        return re.sub(r"\\(.)", r"\1", text[1:-1])
    return text


def _count_terms(text: str) -> int:
    """Terms of an objective: term calls plus LAYER:N shorthands."""
    count, i = 0, 0
    while i < len(text):
        c = text[i]
        if c in "'\"":
            i = _skip_quoted(text, i)
            continue
        if c == "(":
            name, _ = _name_before(text, i)
            if name.lower() in _TERM_KINDS:
                count += 1
        elif c == ":":
            count += 1  # LAYER:N
        i += 1
    return count


def find_unit_template(objective: str) -> Optional[UnitTemplate]:
    """The objective's `*` term, or None when it has no `*` standing for a
    unit (a `*` after a number, a term or ')' multiplies). Raises ValueError
    for a second `*`, a `*` outside a term or in a term other than
    channel/neuron(LAYER, *) / LAYER:*, a `*` where the layer goes, or an
    objective that sets batch= itself."""
    opened: list[dict] = []
    stars: list[int] = []
    star_call = None
    star_arg = -1
    batch_at = -1
    i = 0
    while i < len(objective):
        c = objective[i]
        if c in "'\"":
            i = _skip_quoted(objective, i)
            continue
        if c == "(":
            name, begin = _name_before(objective, i)
            opened.append({"paren": i, "name": name, "name_begin": begin,
                           "commas": 0, "first_comma": -1})
        elif c == ")":
            if opened:
                opened.pop()
        elif c == "," and opened:
            if opened[-1]["commas"] == 0:
                opened[-1]["first_comma"] = i
            opened[-1]["commas"] += 1
        elif c == "=" and batch_at < 0:
            name, begin = _name_before(objective, i)
            if name.lower() == "batch":
                batch_at = begin
        elif c == "*":
            prev = _previous_non_space(objective, i)
            if not (prev >= 0 and _ends_operand(objective[prev])):
                if not stars and opened:
                    star_call = dict(opened[-1])
                    star_arg = opened[-1]["commas"]
                stars.append(i)
        i += 1
    if not stars:
        return None
    if len(stars) > 1:
        columns = ", ".join(str(s + 1) for s in stars)
        raise ValueError(f"the objective has {len(stars)} '*' (at columns {columns}); one "
                         f"term stands for a layer's units: write '*' once, in {_UNIT_TERMS}")
    star = stars[0]
    if batch_at >= 0:
        raise ValueError(f"the objective sets batch= (column {batch_at + 1}); with '*' each "
                         "unit gets its own image, batch=i, so leave batch= out")
    prev = _previous_non_space(objective, star)
    if prev >= 0 and objective[prev] == ":":
        layer_last = _previous_non_space(objective, prev)
        if layer_last < 0 or not _ends_operand(objective[layer_last]):
            raise ValueError(f"'*' at column {star + 1} follows ':' with no layer before it; "
                             f"write {_UNIT_TERMS}")
        if objective[layer_last] in "'\"":
            begin = objective.rfind(objective[layer_last], 0, layer_last)
            begin = max(begin, 0)
        else:
            begin = layer_last
            while begin > 0 and (objective[begin - 1].isalnum() or objective[begin - 1] in "_.-"):
                begin -= 1
        layer_text = objective[begin:layer_last + 1]
        kind, layer, head, tail = "channel", _unquote(layer_text), f"channel({layer_text}, ", ""
        term_begin, term_end = begin, star + 1
    else:
        if star_call is None or not star_call["name"]:
            raise ValueError(f"'*' at column {star + 1} is not inside a term, so it names no "
                             f"layer; '*' stands for every unit of a layer: {_UNIT_TERMS}")
        depth, close = 0, -1
        j = star_call["paren"]
        while j < len(objective):
            c = objective[j]
            if c in "'\"":
                j = _skip_quoted(objective, j)
                continue
            if c == "(":
                depth += 1
            elif c == ")":
                depth -= 1
                if depth == 0:
                    close = j
                    break
            j += 1
        written = objective[star_call["name_begin"]:] if close < 0 else \
            objective[star_call["name_begin"]:close + 1]
        kind = star_call["name"].lower()
        if kind not in ("channel", "neuron"):
            raise ValueError(f"'*' in {written} (column {star + 1}) has no layer to take "
                             f"units of; '*' stands for every unit of a layer: {_UNIT_TERMS}")
        if star_arg != 1:
            where = "the layer goes" if star_arg == 0 else "a position goes"
            raise ValueError(f"'*' in {written} (column {star + 1}) stands where {where}; "
                             f"'*' stands for every unit of a layer: {_UNIT_TERMS}")
        if close < 0:
            raise ValueError(f"'{written}' has no closing ')'")
        layer = _unquote(objective[star_call["paren"] + 1:star_call["first_comma"]].strip())
        head = objective[star_call["name_begin"]:star]
        tail = objective[star + 1:close].rstrip()
        term_begin, term_end = star_call["name_begin"], close + 1
    probe = objective[:star] + "0" + objective[star + 1:]
    return UnitTemplate(objective=objective, kind=kind, layer=layer, head=head, tail=tail,
                        term_begin=term_begin, term_end=term_end,
                        other_terms=max(0, _count_terms(probe) - 1))


def parse_units(spec: Union[str, int, Sequence[int], None], layer: str,
                channels: int) -> list[int]:
    """The units `spec` lists: None or "all" (every unit), an int, a list of
    ints, or text: comma-separated units and ranges "a-b" ("0-15", "3,5,9").
    Raises ValueError naming the item, and the layer and its channel count
    for a unit out of range."""
    span = f"units 0-{channels - 1}" if channels > 0 else "no units"

    def out_of_range(unit: int, item: str) -> ValueError:
        what = f"unit {unit} is" if item == str(unit) else \
            f"range {item} reaches unit {unit},"
        return ValueError(f"units: {what} out of range for layer {layer} with "
                          f"{channels} channels ({span})")

    if spec is None or (isinstance(spec, str) and spec.strip().lower() == "all"):
        if channels < 1:
            raise ValueError(f"units all: layer {layer} has no channels to render")
        return list(range(channels))
    if isinstance(spec, int):
        spec = [spec]
    if not isinstance(spec, str):
        items = [str(int(u)) for u in spec]
        text = ",".join(items)
    else:
        text = spec.strip()
        items = text.split(",")
    if not text:
        raise ValueError("units is empty; give all, a range such as 0-15, or a list such "
                         "as 3,5,9")
    units: list[int] = []
    seen: set[int] = set()
    for raw in items:
        item = raw.strip()
        if not item:
            raise ValueError(f"units '{text}' has an empty item; separate units and "
                             "ranges with single commas")
        match = re.fullmatch(r"(\d+)\s*(?:-\s*(\d+))?", item)
        if match is None:
            raise ValueError(f"units: '{item}' is not a unit (a non-negative integer), "
                             "a range a-b, or all")
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) is not None else first
        if first > last:
            raise ValueError(f"units: range {item} runs backwards; write {last}-{first}")
        if first >= channels:
            raise out_of_range(first, item)
        if last >= channels:
            raise out_of_range(last, item)
        for unit in range(first, last + 1):
            if unit in seen:
                raise ValueError(f"units: unit {unit} is listed twice")
            seen.add(unit)
            units.append(unit)
    return units
