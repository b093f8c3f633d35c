"""The metric names a PromQL expression reads, for checking them against what is really exported.

Small on purpose: it knows PromQL's lexical shape (strings, label matchers in braces, ranges and
subqueries in brackets, numbers and durations, the keywords, label lists after ``by``/``without``/
``on``/``ignoring``/``group_left``/``group_right``) and nothing of its grammar beyond that. A name is
an identifier that is not a keyword, not called like a function (nor an aggregation followed by its
label list), and not a label in one of those lists; ``{__name__="x"}`` names ``x`` too. Grafana's
variables (``$app``, ``${datasource}``, ``$__rate_interval``) are dropped first, as Grafana replaces
them before the query is sent.
"""

import re

# Keywords and operators spelled as words; ``inf`` and ``nan`` are number literals.
_KEYWORDS = frozenset(
    {"and", "or", "unless", "atan2", "bool", "offset", "by", "without", "on", "ignoring"}
    | {"group_left", "group_right", "inf", "nan", "start", "end"}
)
# Words followed by a parenthesised list of label names, not of expressions.
_LABEL_LISTS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})

_GRAFANA_VARIABLE = re.compile(r"\$(?:\{[^}]*\}|\[\[[^\]]*\]\]|\w+)")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_TOKEN = re.compile(
    r"""
    (?P<number>0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?(?:ms|[smhdwy])*)
    |(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)
    |(?P<open>[({\[])
    |(?P<close>[)}\]])
    |(?P<other>\S)
    """,
    re.VERBOSE,
)
_NAME_MATCHER = re.compile(r"""__name__\s*=\s*(?P<q>["'`])(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)(?P=q)""")


class PromQLSyntaxError(ValueError):
    """The brackets of an expression do not pair up."""


def metric_names(expression: str) -> set[str]:
    """Every metric name ``expression`` selects (bare, or as ``{__name__="..."}``)."""
    text = _GRAFANA_VARIABLE.sub("1", expression)
    found = {match["name"] for match in _NAME_MATCHER.finditer(text)}
    text = _STRING.sub('""', text)
    tokens = [(m.lastgroup or "", m.group()) for m in _TOKEN.finditer(text) if m.group().strip()]

    closing = {"(": ")", "{": "}", "[": "]"}
    stack: list[str] = []  # open brackets; "L" marks a label list's parenthesis
    for index, (kind, value) in enumerate(tokens):
        following = tokens[index + 1][1] if index + 1 < len(tokens) else ""
        if kind == "open":
            previous = tokens[index - 1][1] if index > 0 else ""
            stack.append("L" if value == "(" and previous in _LABEL_LISTS else value)
        elif kind == "close":
            if not stack:
                raise PromQLSyntaxError(f"unmatched {value!r} in {expression!r}")
            opened = stack.pop()
            if closing["(" if opened == "L" else opened] != value:
                raise PromQLSyntaxError(f"{opened!r} closed by {value!r} in {expression!r}")
        elif kind == "name":
            inside = stack[-1] if stack else ""
            # Label names and values in a matcher, label lists, and durations in a range are not metrics.
            if inside in ("{", "[", "L"):
                continue
            # Called like a function, or an aggregation whose label list comes first (sum by (x) (...)).
            if value in _KEYWORDS or following in ("(", "by", "without"):
                continue
            found.add(value)
    if stack:
        raise PromQLSyntaxError(f"unclosed {stack[-1]!r} in {expression!r}")
    return found
