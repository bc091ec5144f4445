"""Detection rules: YAML files in the spirit of Sigma, loaded, checked and compiled.

A rule names *selections* (field matchers over an audit record), combines them with a
boolean *condition*, and may add a *correlation* over records that match (a count or a
number of distinct values within a time window, a value never seen before for a group,
an identity attribute claimed from its owner). Its *level* gives the incident's
severity, its *dedup* template the key under which at most one incident stays open.
``docs/detection.md`` is the format's reference.

Loading works on YAML nodes rather than on plain values, so every refusal names the file
and the line of the node at fault (:class:`RuleError`). What loads is compiled once into
closures: the detector calls them for every record, which is where the time goes.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Literal, TypeAlias, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from incident.exceptions import ConfigurationError

Record: TypeAlias = Mapping[str, Any]
Predicate: TypeAlias = Callable[[Record], bool]

LEVELS: dict[str, str] = {
    "critical": "SEV1",
    "high": "SEV2",
    "medium": "SEV3",
    "low": "SEV4",
    "informational": "SEV4",
}
"""Sigma's levels and the incident severity each one opens."""

RULE_ID = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*$")
_TEMPLATE_FIELD = re.compile(r"\{([^{}]*)\}")
_DURATION = re.compile(r"^(\d+)(s|m|h|d)$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_RULE_KEYS = frozenset(
    {
        "id",
        "title",
        "description",
        "status",
        "author",
        "references",
        "tags",
        "level",
        "timezone",
        "detection",
        "correlation",
        "dedup",
        "runbook",
        "falsepositives",
    }
)
MODIFIERS = frozenset(
    {
        "startswith",
        "endswith",
        "contains",
        "cidr",
        "exists",
        "gt",
        "gte",
        "lt",
        "lte",
        "fieldref",
        "weekday",
        "time",
        "lower",
        "all",
        "not",
    }
)


class RuleError(ConfigurationError):
    """A rule file that cannot be used: ``path``, ``line`` (1-based) and ``reason``."""

    def __init__(self, path: str, line: int | None, reason: str):
        self.path = path
        self.line = line
        self.reason = reason
        super().__init__(f"{path}:{line}" if line is not None else path, reason)


# -- the compiled rule ------------------------------------------------------------------


CorrelationType = Literal["event_count", "value_count", "new_value", "value_claimed"]


@dataclass(frozen=True)
class Correlation:
    """What must hold over the records a rule's condition matched, beyond one record.

    - ``event_count``: at least ``threshold`` records within ``timespan`` per group;
    - ``value_count``: at least ``threshold`` distinct values of ``field`` within
      ``timespan`` per group;
    - ``new_value``: a value of ``field`` (an IP's network when ``network`` is set) the
      group has not shown before, once the group is at least ``learning`` old;
    - ``value_claimed``: a record sets an attribute (``values``) to a value that another
      ``owner`` holds; every record matching ``learn_from`` teaches who holds what.
    """

    type: CorrelationType
    group_by: tuple[str, ...] = ()
    timespan: float = 0.0
    """Seconds."""
    threshold: int = 1
    field: str | None = None
    learning: float = 0.0
    """Seconds (``new_value``)."""
    network: tuple[int, int] | None = None
    """Prefix lengths (IPv4, IPv6) that a ``new_value`` IP is reduced to."""
    owner: str | None = None
    values: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """Attribute name and the record fields that may carry its new value."""
    learn_from: Predicate | None = None
    max_values: int = 1000
    """Most values a ``new_value`` group remembers (the oldest are forgotten first)."""

    def describe(self) -> str:
        window = duration_text(self.timespan)
        by = f" group by {', '.join(self.group_by)}" if self.group_by else ""
        if self.type == "event_count":
            return f"count >= {self.threshold} within {window}{by}"
        if self.type == "value_count":
            return f"distinct {self.field} >= {self.threshold} within {window}{by}"
        if self.type == "new_value":
            return f"new {self.field}{by} after {duration_text(self.learning)}"
        return f"value of {', '.join(name for name, _ in self.values)} claimed from {self.owner}"


@dataclass(frozen=True)
class Rule:
    id: str
    title: str
    level: str
    severity: str
    path: str
    condition: Predicate
    condition_text: str
    dedup: Template
    description: str = ""
    runbook: str | None = None
    runbook_line: int | None = None
    correlation: Correlation | None = None
    tags: tuple[str, ...] = ()
    actions: frozenset[str] | None = None
    """Every action a matching record can have, or None when the condition does not say:
    the detector offers a rule only records of these actions."""

    def matches(self, record: Record) -> bool:
        """Whether ``record`` satisfies the rule's condition (not its correlation)."""
        if self.actions is not None and record.get("action") not in self.actions:
            return False
        return self.condition(record)


@dataclass(frozen=True)
class Template:
    """A dedup key template: text with ``{field.path}`` holes (``{rule}``: the rule id)."""

    text: str
    fields: tuple[str, ...] = field(default=())

    def render(self, rule_id: str, record: Record) -> str:
        def value(match: re.Match[str]) -> str:
            name = match.group(1)
            if name == "rule":
                return rule_id
            found = get_field(record, name)
            return "-" if found is None else str(found)

        return _TEMPLATE_FIELD.sub(value, self.text)


# -- field access -------------------------------------------------------------------------


def get_field(record: Record, path: str) -> Any:
    """The value at a dotted path of a record, or None where any part is missing."""
    value: Any = record
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _getter(path: str) -> Callable[[Record], Any]:
    parts = tuple(path.split("."))
    if len(parts) == 1:
        (only,) = parts
        return lambda record: record.get(only)
    if len(parts) == 2:
        first, second = parts

        def two(record: Record) -> Any:
            inner = record.get(first)
            return inner.get(second) if isinstance(inner, dict) else None

        return two

    def deep(record: Record) -> Any:
        value: Any = record
        for part in parts:
            if not isinstance(value, dict):
                return None
            value = value.get(part)
        return value

    return deep


def parse_time(stamp: str) -> float:
    """POSIX seconds of a stored timestamp (the ledger spells them all with ``Z``)."""
    return datetime.fromisoformat(stamp).timestamp()


# -- loading --------------------------------------------------------------------------------


class _Source:
    """The file being loaded, to name it and a node's line in every refusal."""

    def __init__(self, path: str):
        self.path = path

    def error(self, node: yaml.Node | None, reason: str) -> RuleError:
        line = node.start_mark.line + 1 if node is not None else None
        return RuleError(self.path, line, reason)

    def mapping(self, node: yaml.Node, what: str) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        """A mapping node's entries by key, refusing duplicate and non-text keys."""
        if not isinstance(node, yaml.MappingNode):
            raise self.error(node, f"{what} must be a mapping")
        entries: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key_node, value_node in node.value:
            key = self.scalar(key_node, f"a key of {what}")
            if not isinstance(key, str):
                raise self.error(key_node, f"{what}: key {key!r} must be text")
            if key in entries:
                raise self.error(key_node, f"{what}: {key!r} is given twice")
            entries[key] = (key_node, value_node)
        return entries

    def scalar(self, node: yaml.Node, what: str) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            raise self.error(node, f"{what} must be a single value, not a list or mapping")
        return yaml.SafeLoader("").construct_object(node)

    def text(self, node: yaml.Node, what: str) -> str:
        value = self.scalar(node, what)
        if not isinstance(value, str) or not value.strip():
            raise self.error(node, f"{what} must be non-empty text")
        return value

    def scalars(self, node: yaml.Node, what: str) -> list[tuple[yaml.Node, Any]]:
        """A value or a list of values, each with its node."""
        if isinstance(node, yaml.SequenceNode):
            if not node.value:
                raise self.error(node, f"{what}: the list is empty")
            return [(item, self.scalar(item, f"an item of {what}")) for item in node.value]
        return [(node, self.scalar(node, what))]


def load_rule(path: str | Path, text: str | None = None) -> Rule:
    """Load one rule file; raises :class:`RuleError` naming the file, line and reason."""
    name = str(path)
    source = _Source(name)
    if text is None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise RuleError(name, None, f"cannot read the file: {error}") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = mark.line + 1 if mark is not None else None
        raise RuleError(name, line, f"not valid YAML: {error.problem or error}") from None
    except yaml.YAMLError as error:
        raise RuleError(name, None, f"not valid YAML: {error}") from None
    if root is None:
        raise RuleError(name, 1, "the file is empty; a rule needs id, title, level, detection")
    return _Compiler(source).rule(root)


def load_rules(directory: str | Path) -> list[Rule]:
    """Every ``*.yaml``/``*.yml`` rule of a directory (sorted by file name).

    Raises :class:`RuleSetError` with every file's problem when any file is refused, so an
    operator fixes them all in one go."""
    rules: list[Rule] = []
    problems: list[RuleError] = []
    seen: dict[str, str] = {}
    for path in rule_files(directory):
        try:
            rule = load_rule(path)
        except RuleError as error:
            problems.append(error)
            continue
        if rule.id in seen:
            problems.append(
                RuleError(str(path), 1, f"rule id {rule.id!r} is also used by {seen[rule.id]}")
            )
            continue
        seen[rule.id] = str(path)
        rules.append(rule)
    if problems:
        raise RuleSetError(problems)
    return rules


def rule_files(directory: str | Path) -> list[Path]:
    folder = Path(directory)
    if not folder.is_dir():
        raise RuleError(str(folder), None, "is not a directory of rule files")
    return sorted(
        path for path in folder.iterdir() if path.suffix in (".yaml", ".yml") and path.is_file()
    )


class RuleSetError(RuleError):
    """Several refused rule files; ``errors`` holds each one."""

    def __init__(self, errors: Sequence[RuleError]):
        self.errors = list(errors)
        first = self.errors[0]
        super().__init__(first.path, first.line, first.reason)
        self.args = ("\n".join(str(error) for error in self.errors),)

    def __str__(self) -> str:
        return "\n".join(str(error) for error in self.errors)


class _Compiler:
    def __init__(self, source: _Source):
        self.source = source
        self.zone: ZoneInfo | None = None

    def error(self, node: yaml.Node | None, reason: str) -> RuleError:
        return self.source.error(node, reason)

    def rule(self, root: yaml.Node) -> Rule:
        src = self.source
        entries = src.mapping(root, "a rule")
        for key, (key_node, _) in entries.items():
            if key not in _RULE_KEYS:
                raise self.error(
                    key_node, f"unknown key {key!r}; a rule has {', '.join(sorted(_RULE_KEYS))}"
                )
        for required in ("id", "title", "level", "detection"):
            if required not in entries:
                raise self.error(root, f"the rule has no {required!r}")
        id_node = entries["id"][1]
        rule_id = src.text(id_node, "id")
        if not RULE_ID.fullmatch(rule_id):
            raise self.error(id_node, f"id {rule_id!r} must match {RULE_ID.pattern}")
        title = src.text(entries["title"][1], "title")
        if len(title) > 300:
            raise self.error(entries["title"][1], "title is longer than 300 characters")
        level_node = entries["level"][1]
        level = src.text(level_node, "level")
        if level not in LEVELS:
            raise self.error(level_node, f"level {level!r} is not one of {', '.join(LEVELS)}")
        if "timezone" in entries:
            zone_node = entries["timezone"][1]
            zone = src.text(zone_node, "timezone")
            try:
                self.zone = ZoneInfo(zone)
            except (ZoneInfoNotFoundError, ValueError):
                raise self.error(
                    zone_node, f"unknown time zone {zone!r} (use e.g. Europe/Berlin)"
                ) from None
        description = ""
        if "description" in entries:
            description = src.text(entries["description"][1], "description").strip()
        tags: tuple[str, ...] = ()
        if "tags" in entries:
            tags = tuple(str(value) for _, value in src.scalars(entries["tags"][1], "tags"))
        runbook, runbook_line = None, None
        if "runbook" in entries:
            runbook = src.text(entries["runbook"][1], "runbook")
            runbook_line = entries["runbook"][1].start_mark.line + 1
        selections, condition_node, condition_text = self.detection(entries["detection"][1])
        condition, actions = _ConditionParser(
            self, condition_node, condition_text, selections
        ).parse()
        correlation = None
        if "correlation" in entries:
            correlation = self.correlation(entries["correlation"][1], selections)
        if "dedup" in entries:
            dedup = self.template(entries["dedup"][1])
        else:
            groups = correlation.group_by if correlation else ()
            if correlation and correlation.type == "value_claimed" and correlation.owner:
                groups = (correlation.owner,)
            dedup = Template("{rule}" + "".join(f":{{{name}}}" for name in groups), groups)
        return Rule(
            id=rule_id,
            title=title,
            level=level,
            severity=LEVELS[level],
            path=src.path,
            condition=condition,
            condition_text=condition_text,
            dedup=dedup,
            description=description,
            runbook=runbook,
            runbook_line=runbook_line,
            correlation=correlation,
            tags=tags,
            actions=actions,
        )

    # -- detection: selections and the condition -------------------------------------

    def detection(
        self, node: yaml.Node
    ) -> tuple[dict[str, tuple[Predicate, frozenset[str] | None]], yaml.Node, str]:
        entries = self.source.mapping(node, "detection")
        if "condition" not in entries:
            raise self.error(node, "detection has no 'condition' (e.g. condition: selection)")
        selections: dict[str, tuple[Predicate, frozenset[str] | None]] = {}
        for name, (key_node, value_node) in entries.items():
            if name == "condition":
                continue
            if not _NAME.fullmatch(name):
                raise self.error(key_node, f"selection name {name!r} must match {_NAME.pattern}")
            if name in ("and", "or", "not", "of", "them", "all"):
                raise self.error(key_node, f"{name!r} is a condition keyword, not a name")
            selections[name] = self.selection(name, value_node)
        if not selections:
            raise self.error(node, "detection names no selection")
        condition_node = entries["condition"][1]
        return selections, condition_node, self.source.text(condition_node, "condition")

    def selection(self, name: str, node: yaml.Node) -> tuple[Predicate, frozenset[str] | None]:
        """A mapping (every field matches) or a list of mappings (any of them does)."""
        if isinstance(node, yaml.SequenceNode):
            if not node.value:
                raise self.error(node, f"selection {name!r} is an empty list")
            alternatives = [self.field_map(name, item) for item in node.value]
            predicates = [predicate for predicate, _ in alternatives]
            action_sets = [actions for _, actions in alternatives]
            actions = (
                None
                if any(a is None for a in action_sets)
                else frozenset().union(*(a for a in action_sets if a is not None))
            )
            return (lambda record: any(p(record) for p in predicates)), actions
        return self.field_map(name, node)

    def field_map(self, name: str, node: yaml.Node) -> tuple[Predicate, frozenset[str] | None]:
        entries = self.source.mapping(node, f"selection {name!r}")
        if not entries:
            raise self.error(node, f"selection {name!r} has no field")
        ranked: list[tuple[int, Predicate]] = []
        actions: frozenset[str] | None = None
        for key, (key_node, value_node) in entries.items():
            predicate, exact = self.matcher(key, key_node, value_node)
            # Every entry must match, in any order: the cheap comparisons go first.
            modifiers = set(key.split("|")[1:]) - {"not", "all", "lower"}
            cost = 0 if not modifiers else 2 if modifiers & _COSTLY else 1
            ranked.append((cost, predicate))
            if exact is not None and key == "action":
                actions = exact
        predicates = [predicate for _, predicate in sorted(ranked, key=lambda item: item[0])]
        if len(predicates) == 1:
            return predicates[0], actions
        if len(predicates) == 2:
            first, second = predicates
            return (lambda record: first(record) and second(record)), actions
        return (lambda record: all(p(record) for p in predicates)), actions

    def matcher(
        self, key: str, key_node: yaml.Node, value_node: yaml.Node
    ) -> tuple[Predicate, frozenset[str] | None]:
        """One ``field|modifier|...: value(s)`` entry; also the exact values an
        un-negated plain equality allows (for the action index)."""
        path, *modifiers = key.split("|")
        if not _FIELD.fullmatch(path):
            raise self.error(
                key_node, f"{path!r} is not a field path (e.g. actor.ip, metadata.role)"
            )
        for modifier in modifiers:
            if modifier not in MODIFIERS:
                raise self.error(
                    key_node,
                    f"unknown modifier {modifier!r}; use {', '.join(sorted(MODIFIERS))}",
                )
        negate = "not" in modifiers
        match_all = "all" in modifiers
        kinds = [m for m in modifiers if m not in ("not", "all", "lower")]
        if len(kinds) > 1:
            raise self.error(key_node, f"{key!r}: only one of {', '.join(kinds)} may be used")
        kind = kinds[0] if kinds else "equals"
        lower = "lower" in modifiers
        get = _getter(path)
        values = self.source.scalars(value_node, key)
        tests = [self.value_test(kind, lower, node, value) for node, value in values]
        exact: frozenset[str] | None = None
        if (
            kind == "equals"
            and not negate
            and not lower
            and not match_all
            and all(isinstance(v, str) for _, v in values)
        ):
            exact = frozenset(v for _, v in values)

        if kind == "exists":
            wanted = tests[0]

            def exists(record: Record) -> bool:
                return wanted(get(record))

            return (_negated(exists) if negate else exists), None
        if kind == "fieldref":
            others = [_getter(str(value)) for _, value in values]

            def refers(record: Record) -> bool:
                mine = get(record)
                return mine is not None and any(mine == other(record) for other in others)

            return (_negated(refers) if negate else refers), None

        if kind in ("startswith", "endswith") and not lower and not match_all and len(tests) > 1:
            # str.startswith and str.endswith take a tuple: one call for every value.
            affixes = tuple(str(value) for _, value in values)
            if kind == "startswith":
                tests = [lambda value: isinstance(value, str) and value.startswith(affixes)]
            else:
                tests = [lambda value: isinstance(value, str) and value.endswith(affixes)]
        if len(tests) == 1:
            (single,) = tests

            def one(record: Record) -> bool:
                value = get(record)
                if type(value) is list:
                    return any(single(item) for item in value)
                return single(value)

            predicate: Predicate = one
        elif match_all:

            def every(record: Record) -> bool:
                value = get(record)
                items = value if type(value) is list else [value]
                return all(any(test(item) for item in items) for test in tests)

            predicate = every
        else:
            if (
                kind == "equals"
                and not lower
                and all(isinstance(v, str | int) and not isinstance(v, bool) for _, v in values)
            ):
                allowed = frozenset(v for _, v in values)

                def member(record: Record) -> bool:
                    value = get(record)
                    if type(value) is list:
                        return any(type(item) in _HASHED and item in allowed for item in value)
                    # An object or a list is not hashable: it can equal none of the values.
                    return type(value) in _HASHED and value in allowed

                predicate = member
            else:

                def any_of(record: Record) -> bool:
                    value = get(record)
                    items = value if type(value) is list else [value]
                    return any(test(item) for item in items for test in tests)

                predicate = any_of
        return (_negated(predicate) if negate else predicate), exact

    def value_test(
        self, kind: str, lower: bool, node: yaml.Node, expected: Any
    ) -> Callable[[Any], bool]:
        """The test one expected value makes of a record's value."""
        if kind == "equals":
            if expected is None:
                return lambda value: value is None
            if isinstance(expected, str):
                if lower:
                    folded = expected.casefold()
                    return lambda value: isinstance(value, str) and value.casefold() == folded
                return lambda value: value == expected
            if isinstance(expected, bool):
                return lambda value: value is expected
            if isinstance(expected, int | float):
                return lambda value: (
                    isinstance(value, int | float)
                    and not isinstance(value, bool)
                    and value == expected
                )
            raise self.error(node, f"cannot compare with {expected!r}")
        if kind in ("startswith", "endswith", "contains"):
            if not isinstance(expected, str) or not expected:
                raise self.error(node, f"|{kind} needs non-empty text, not {expected!r}")
            want = expected.casefold() if lower else expected
            if kind == "startswith":
                test: Callable[[str], bool] = lambda text: text.startswith(want)  # noqa: E731
            elif kind == "endswith":
                test = lambda text: text.endswith(want)  # noqa: E731
            else:
                test = lambda text: want in text  # noqa: E731
            if lower:
                return lambda value: isinstance(value, str) and test(value.casefold())
            return lambda value: isinstance(value, str) and test(value)
        if kind == "cidr":
            try:
                network = ipaddress.ip_network(str(expected), strict=False)
            except ValueError:
                raise self.error(
                    node, f"|cidr: {expected!r} is not an IP network (e.g. 10.0.0.0/8)"
                ) from None
            return lambda value: _in_network(value, network)
        if kind == "exists":
            if not isinstance(expected, bool):
                raise self.error(node, f"|exists takes true or false, not {expected!r}")
            return lambda value: (value is not None) is expected
        if kind in ("gt", "gte", "lt", "lte"):
            if isinstance(expected, bool) or not isinstance(expected, int | float):
                raise self.error(node, f"|{kind} needs a number, not {expected!r}")
            limit: float = expected
            compare: Callable[[float], bool] = {
                "gt": lambda number: number > limit,
                "gte": lambda number: number >= limit,
                "lt": lambda number: number < limit,
                "lte": lambda number: number <= limit,
            }[kind]
            return lambda value: (
                isinstance(value, int | float) and not isinstance(value, bool) and compare(value)
            )
        if kind == "fieldref":
            if not isinstance(expected, str) or not _FIELD.fullmatch(expected):
                raise self.error(node, f"|fieldref needs a field path, not {expected!r}")
            return lambda value: True  # compared in matcher(), which sees the whole record
        if kind == "weekday":
            day = str(expected).lower()[:3]
            if day not in _WEEKDAYS:
                raise self.error(node, f"|weekday: {expected!r} is not a day (mon ... sun)")
            index = _WEEKDAYS.index(day)
            zone = self.zone
            return lambda value: (
                _local(value, zone) is not None
                and (
                    _local(value, zone).weekday() == index  # type: ignore[union-attr]
                )
            )
        if kind == "time":
            start, end = self.time_range(node, expected)
            zone = self.zone

            def within(value: Any) -> bool:
                moment = _local(value, zone)
                if moment is None:
                    return False
                clock = moment.time()
                if start <= end:
                    return start <= clock < end
                return clock >= start or clock < end  # a range across midnight

            return within
        raise self.error(node, f"unsupported modifier {kind!r}")  # pragma: no cover

    def time_range(self, node: yaml.Node, expected: Any) -> tuple[time, time]:
        text = str(expected)
        parts = text.split("-")
        try:
            if len(parts) != 2:
                raise ValueError
            start, end = (time.fromisoformat(part.strip()) for part in parts)
        except ValueError:
            raise self.error(
                node, f"|time: {text!r} is not a range of times of day like 18:00-20:00"
            ) from None
        if start == end:
            raise self.error(node, f"|time: {text!r} is an empty range")
        return start, end

    # -- correlation ---------------------------------------------------------------------

    def correlation(
        self, node: yaml.Node, selections: dict[str, tuple[Predicate, frozenset[str] | None]]
    ) -> Correlation:
        src = self.source
        if isinstance(node, yaml.ScalarNode):
            return self.correlation_text(node, src.text(node, "correlation"))
        entries = src.mapping(node, "correlation")
        known = {
            "type",
            "group_by",
            "timespan",
            "condition",
            "field",
            "learning",
            "network",
            "owner",
            "values",
            "learn_from",
            "max_values",
        }
        for key, (key_node, _) in entries.items():
            if key not in known:
                raise self.error(
                    key_node, f"unknown correlation key {key!r}; use {', '.join(sorted(known))}"
                )
        if "type" not in entries:
            raise self.error(
                node, "correlation has no type (event_count, value_count, new_value, value_claimed)"
            )
        type_node = entries["type"][1]
        kind = cast(CorrelationType, src.text(type_node, "correlation type"))
        group_by: tuple[str, ...] = ()
        if "group_by" in entries:
            group_by = tuple(
                self.field_path(item_node, value)
                for item_node, value in src.scalars(entries["group_by"][1], "group_by")
            )

        def need(key: str) -> yaml.Node:
            if key not in entries:
                raise self.error(node, f"a {kind} correlation needs {key!r}")
            return entries[key][1]

        if kind in ("event_count", "value_count"):
            timespan = self.duration(need("timespan"), "timespan")
            threshold = self.threshold(need("condition"))
            field_path = None
            if kind == "value_count":
                field_node = need("field")
                field_path = self.field_path(field_node, src.scalar(field_node, "field"))
            return Correlation(
                kind, group_by, timespan=timespan, threshold=threshold, field=field_path
            )
        if kind == "new_value":
            field_node = need("field")
            field_path = self.field_path(field_node, src.scalar(field_node, "field"))
            learning = self.duration(need("learning"), "learning") if "learning" in entries else 0.0
            network = None
            if "network" in entries:
                network = self.network(entries["network"][1])
            max_values = 1000
            if "max_values" in entries:
                max_node = entries["max_values"][1]
                max_values = src.scalar(max_node, "max_values")
                if (
                    isinstance(max_values, bool)
                    or not isinstance(max_values, int)
                    or max_values < 1
                ):
                    raise self.error(max_node, "max_values must be a positive integer")
            return Correlation(
                kind,
                group_by,
                field=field_path,
                learning=learning,
                network=network,
                max_values=max_values,
            )
        if kind == "value_claimed":
            owner_node = need("owner")
            owner = self.field_path(owner_node, src.scalar(owner_node, "owner"))
            values_node = need("values")
            values: list[tuple[str, tuple[str, ...]]] = []
            for attribute, (_, paths_node) in src.mapping(values_node, "values").items():
                paths = tuple(
                    self.field_path(item, value)
                    for item, value in src.scalars(paths_node, f"values.{attribute}")
                )
                values.append((attribute, paths))
            if not values:
                raise self.error(values_node, "values names no attribute")
            learn_node = need("learn_from")
            learn_text = src.text(learn_node, "learn_from")
            learn, _ = _ConditionParser(self, learn_node, learn_text, selections).parse()
            return Correlation(kind, group_by, owner=owner, values=tuple(values), learn_from=learn)
        raise self.error(
            type_node,
            f"correlation type {kind!r} is not one of event_count, value_count, "
            "new_value, value_claimed",
        )

    _SHORTHAND = re.compile(
        r"^(?:count|distinct\s+(?P<field>\S+))\s*(?P<op>>=|>)\s*(?P<n>\d+)\s+within\s+"
        r"(?P<span>\d+[smhd])(?:\s+group\s+by\s+(?P<by>\S+(?:\s*,\s*\S+)*))?$"
    )

    def correlation_text(self, node: yaml.Node, text: str) -> Correlation:
        """``count >= 5 within 10m group by actor.id`` or
        ``distinct target.id >= 50 within 5m group by actor.id``."""
        match = self._SHORTHAND.fullmatch(" ".join(text.split()))
        if match is None:
            raise self.error(
                node,
                f"correlation {text!r} is not 'count >= N within 10m group by FIELD' nor "
                "'distinct FIELD >= N within 5m group by FIELD'",
            )
        threshold = int(match["n"]) + (1 if match["op"] == ">" else 0)
        if threshold < 1:
            raise self.error(node, "the threshold must be at least 1")
        timespan = self.duration(node, "within", match["span"])
        group_by = tuple(
            self.field_path(node, part.strip()) for part in (match["by"] or "").split(",") if part
        )
        if match["field"]:
            return Correlation(
                "value_count",
                group_by,
                timespan=timespan,
                threshold=threshold,
                field=self.field_path(node, match["field"]),
            )
        return Correlation("event_count", group_by, timespan=timespan, threshold=threshold)

    def field_path(self, node: yaml.Node, value: Any) -> str:
        if not isinstance(value, str) or not _FIELD.fullmatch(value):
            raise self.error(node, f"{value!r} is not a field path (e.g. actor.id)")
        return value

    def duration(self, node: yaml.Node, what: str, text: str | None = None) -> float:
        value = text if text is not None else self.source.scalar(node, what)
        match = _DURATION.fullmatch(str(value))
        if match is None or int(match[1]) == 0:
            raise self.error(node, f"{what} {value!r} is not a duration like 30s, 10m, 2h or 7d")
        return float(int(match[1]) * _UNITS[match[2]])

    def threshold(self, node: yaml.Node) -> int:
        entries = self.source.mapping(node, "condition")
        if len(entries) != 1 or next(iter(entries)) not in ("gte", "gt"):
            raise self.error(node, "condition must be {gte: N} or {gt: N}")
        operator, (_, value_node) = next(iter(entries.items()))
        value = self.source.scalar(value_node, operator)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(value_node, f"{operator} needs an integer, not {value!r}")
        threshold = value + (1 if operator == "gt" else 0)
        if threshold < 1:
            raise self.error(value_node, "the threshold must be at least 1")
        return threshold

    def network(self, node: yaml.Node) -> tuple[int, int]:
        entries = self.source.mapping(node, "network")
        lengths = {"ipv4": 24, "ipv6": 48}
        for key, (key_node, value_node) in entries.items():
            if key not in lengths:
                raise self.error(
                    key_node, f"network takes ipv4 and ipv6 prefix lengths, not {key!r}"
                )
            value = self.source.scalar(value_node, key)
            top = 32 if key == "ipv4" else 128
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= top:
                raise self.error(value_node, f"{key} prefix length must be 0 to {top}")
            lengths[key] = value
        return lengths["ipv4"], lengths["ipv6"]

    def template(self, node: yaml.Node) -> Template:
        text = self.source.text(node, "dedup")
        fields = []
        for name in _TEMPLATE_FIELD.findall(text):
            if name != "rule" and not _FIELD.fullmatch(name):
                raise self.error(node, f"dedup: {{{name}}} is not a field path nor {{rule}}")
            fields.append(name)
        if text.count("{") != len(fields) or text.count("}") != len(fields):
            raise self.error(node, f"dedup {text!r} has an unbalanced brace")
        return Template(text, tuple(fields))


_COSTLY = frozenset({"cidr", "fieldref", "weekday", "time"})
"""Modifiers whose test parses or looks further than the field itself."""
_HASHED = (str, int, float)
"""Types a record's value may have to be looked up in a set of rule values (a bool is
not one: YAML's ``1`` must not match ``true``)."""


def _negated(predicate: Predicate) -> Predicate:
    return lambda record: not predicate(record)


def _in_network(value: Any, network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    if not isinstance(value, str):
        return False
    try:
        return ipaddress.ip_address(value) in network
    except ValueError:
        return False


def _local(value: Any, zone: ZoneInfo | None) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(zone or UTC)


def duration_text(seconds: float) -> str:
    """``600.0`` as ``10m``: the spelling rule files use."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def duration_seconds(text: str) -> timedelta:
    """A duration like ``30s``, ``10m``, ``2h``, ``7d`` (for callers outside rule files)."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a duration like 30s, 10m, 2h or 7d")
    return timedelta(seconds=int(match[1]) * _UNITS[match[2]])


# -- the condition: and / or / not, parentheses, "1 of pattern", "all of them" ------------

_TOKEN = re.compile(r"\s*(\(|\)|[A-Za-z_*][A-Za-z0-9_*]*|\d+|\S)")


class _ConditionParser:
    """Recursive descent over ``or`` < ``and`` < ``not`` < atoms, as in Sigma."""

    def __init__(
        self,
        compiler: _Compiler,
        node: yaml.Node,
        text: str,
        selections: dict[str, tuple[Predicate, frozenset[str] | None]],
    ):
        self.compiler = compiler
        self.node = node
        self.text = text
        self.selections = selections
        self.tokens = _TOKEN.findall(text)
        self.at = 0

    def error(self, reason: str) -> RuleError:
        return self.compiler.error(self.node, f"condition {self.text!r}: {reason}")

    def peek(self) -> str | None:
        return self.tokens[self.at] if self.at < len(self.tokens) else None

    def take(self) -> str:
        token = self.peek()
        if token is None:
            raise self.error("ends too early")
        self.at += 1
        return token

    def parse(self) -> tuple[Predicate, frozenset[str] | None]:
        result = self.disjunction()
        if self.peek() is not None:
            raise self.error(f"unexpected {self.peek()!r}")
        return result

    def disjunction(self) -> tuple[Predicate, frozenset[str] | None]:
        parts = [self.conjunction()]
        while self.peek() == "or":
            self.take()
            parts.append(self.conjunction())
        if len(parts) == 1:
            return parts[0]
        predicates = [p for p, _ in parts]
        return (lambda record: any(p(record) for p in predicates)), _union(a for _, a in parts)

    def conjunction(self) -> tuple[Predicate, frozenset[str] | None]:
        parts = [self.negation()]
        while self.peek() == "and":
            self.take()
            parts.append(self.negation())
        if len(parts) == 1:
            return parts[0]
        predicates = [p for p, _ in parts]
        narrowed = [a for _, a in parts if a is not None]
        actions = frozenset.intersection(*narrowed) if narrowed else None
        if len(predicates) == 2:
            first, second = predicates
            return (lambda record: first(record) and second(record)), actions
        return (lambda record: all(p(record) for p in predicates)), actions

    def negation(self) -> tuple[Predicate, frozenset[str] | None]:
        if self.peek() == "not":
            self.take()
            predicate, _ = self.negation()
            return _negated(predicate), None
        return self.atom()

    def atom(self) -> tuple[Predicate, frozenset[str] | None]:
        word = self.take()
        if word == "(":
            inner = self.disjunction()
            if self.take() != ")":
                raise self.error("a parenthesis is not closed")
            return inner
        if word in ("1", "any", "all"):
            if self.peek() != "of":
                raise self.error(f"{word!r} must be followed by 'of'")
            self.take()
            pattern = self.take()
            names = [
                name for name in self.selections if pattern == "them" or fnmatchcase(name, pattern)
            ]
            if not names:
                raise self.error(f"{pattern!r} names no selection")
            chosen = [self.selections[name] for name in names]
            predicates = [p for p, _ in chosen]
            if word == "all":
                narrowed = [a for _, a in chosen if a is not None]
                return (
                    (lambda record: all(p(record) for p in predicates)),
                    frozenset.intersection(*narrowed) if narrowed else None,
                )
            return (lambda record: any(p(record) for p in predicates)), _union(a for _, a in chosen)
        if word in ("and", "or", "of", ")"):
            raise self.error(f"unexpected {word!r}")
        if word not in self.selections:
            raise self.error(
                f"{word!r} is not a selection of this rule ({', '.join(self.selections)})"
            )
        return self.selections[word]


def _union(action_sets: Iterable[frozenset[str] | None]) -> frozenset[str] | None:
    sets = list(action_sets)
    if any(a is None for a in sets):
        return None
    return frozenset().union(*(a for a in sets if a is not None))
