"""Just enough PromQL reading to list the series an expression selects and the label names it relies on.

Not a parser: a tokenizer that knows which identifiers are functions, aggregation modifiers and keywords, so
what is left are metric names (with their ``{...}`` matchers) and label lists (``by``, ``without``, ``on``,
``ignoring``, ``group_left``, ``group_right``). Grafana's ``$variables`` are accepted where PromQL has a
range or a label value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_TOKEN = re.compile(
    r"""
      (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*')
    | (?P<range>\[[^\]]*\])
    | (?P<matchers>\{[^}]*\})
    | (?P<duration>\d+(?:ms|s|m|h|d|w|y)\b)
    | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
    | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
    | (?P<var>\$\{?\w+\}?)
    | (?P<open>\()
    | (?P<close>\))
    | (?P<other>\S)
    """,
    re.VERBOSE,
)
_MATCHER = re.compile(r"""([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*("(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*')""")

LABEL_LIST_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
KEYWORDS = frozenset({"bool", "and", "or", "unless", "offset", "atan2", "inf", "nan", "Inf", "NaN"})
# Aggregations may be followed by `by (...)` before their parenthesis: never metric names.
AGGREGATIONS = frozenset(
    {
        "sum",
        "avg",
        "min",
        "max",
        "count",
        "group",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
    }
)


@dataclass(frozen=True)
class Selector:
    metric: str
    matchers: dict[str, str] = field(default_factory=dict)  # label -> matched value (as written)


@dataclass(frozen=True)
class Expression:
    selectors: tuple[Selector, ...]
    grouping_labels: frozenset[str]

    @property
    def metrics(self) -> frozenset[str]:
        return frozenset(s.metric for s in self.selectors)

    @property
    def label_names(self) -> frozenset[str]:
        return self.grouping_labels | {name for s in self.selectors for name in s.matchers}


def parse(expr: str) -> Expression:
    tokens = [(m.lastgroup, m.group()) for m in _TOKEN.finditer(expr)]
    selectors: list[Selector] = []
    grouping: set[str] = set()
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        following = tokens[i + 1] if i + 1 < len(tokens) else (None, "")
        if kind == "ident" and text in LABEL_LIST_KEYWORDS:
            if following[0] == "open":
                i += 2
                while i < len(tokens) and tokens[i][0] != "close":
                    if tokens[i][0] == "ident":
                        grouping.add(tokens[i][1])
                    i += 1
            i += 1
            continue
        if kind == "ident" and (
            following[0] == "open" or text in AGGREGATIONS
        ):  # a function or an aggregation
            i += 1
            continue
        if kind == "ident" and text not in KEYWORDS:
            matchers: dict[str, str] = {}
            if following[0] == "matchers":
                matchers = {m.group(1): m.group(3)[1:-1] for m in _MATCHER.finditer(following[1])}
                i += 1
            selectors.append(Selector(text, matchers))
        i += 1
    return Expression(tuple(selectors), frozenset(grouping))


_LABEL_VALUES = re.compile(
    r"^\s*label_values\(\s*(?P<expr>.+?)\s*,\s*(?P<label>[A-Za-z_][A-Za-z0-9_]*)\s*\)\s*$"
)


def parse_grafana_variable_query(query: str) -> Expression:
    """Grafana's ``label_values(<series>, <label>)`` names a label, not a metric, as its second argument."""
    match = _LABEL_VALUES.match(query)
    if match is None:
        return parse(query)
    inner = parse(match["expr"])
    return Expression(inner.selectors, inner.grouping_labels | {match["label"]})
