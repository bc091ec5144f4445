"""Rule files: what loads, what each selection matches, and how a bad file is refused
(naming the file, the line and the reason)."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from incident.rules import Rule, RuleError, RuleSetError, load_rule, load_rules, rule_files

SHIPPED = Path(__file__).resolve().parents[2] / "runbooks" / "rules"


def rule_of(text: str, name: str = "rule.yaml") -> Rule:
    return load_rule(name, textwrap.dedent(text))


def record(**fields: Any) -> dict[str, Any]:
    """A stored record's shape: every field present, as the ledger normalises it."""
    base: dict[str, Any] = {
        "tenant": "acme",
        "seq": 0,
        "hash": "0" * 64,
        "id": "e-1",
        "occurred_at": "2026-11-17T10:00:00.000000Z",
        "actor": {"id": "u-1", "type": "user", "ip": "203.0.113.7"},
        "action": "auth.login",
        "target": {"type": "user", "id": "u-1"},
        "outcome": "success",
        "source": "console",
        "metadata": {},
        "changes": {},
    }
    base.update(fields)
    return base


def refused(text: str, name: str = "bad.yaml") -> RuleError:
    with pytest.raises(RuleError) as caught:
        rule_of(text, name)
    return caught.value


# -- the shipped rules ------------------------------------------------------------------


def test_every_shipped_rule_loads_with_a_severity_and_its_runbook() -> None:
    rules = load_rules(SHIPPED)
    assert {rule.id for rule in rules} >= {
        "brute-force-login",
        "credential-stuffing",
        "privilege-escalation-outside-change-window",
        "bulk-export-many-objects",
        "bulk-export-large",
        "leaked-token-new-network",
        "identity-attribute-takeover",
        "forged-incident-record",
    }
    for rule in rules:
        assert rule.severity in ("SEV1", "SEV2", "SEV3", "SEV4")
        # A forged record needs an investigation, not a mitigation runbook.
        assert rule.runbook or rule.id == "forged-incident-record", f"{rule.id}: no runbook"
        assert Path(rule.path).name == f"{rule.id}.yaml"


# -- selections -----------------------------------------------------------------------------


def test_a_list_of_values_matches_any_of_them_and_fields_of_a_selection_all_must_match() -> None:
    rule = rule_of(
        """
        id: r
        title: failed logins
        level: low
        detection:
          failed:
            action: [auth.login, session.create]
            outcome: failure
          condition: failed
        """
    )
    assert rule.matches(record(action="session.create", outcome="failure"))
    assert not rule.matches(record(action="session.create", outcome="success"))
    assert not rule.matches(record(action="auth.logout", outcome="failure"))
    assert rule.actions == frozenset({"auth.login", "session.create"})


def test_prefix_suffix_contains_and_lowercase_modifiers() -> None:
    rule = rule_of(
        """
        id: r
        title: t
        level: low
        detection:
          exports:
            action|endswith: .export
          admins:
            actor.id|startswith: [adm-, root-]
          agent:
            actor.user_agent|lower|contains: curl
          condition: exports and (admins or agent)
        """
    )
    exporting = {"action": "contact.export"}
    assert rule.matches(record(**exporting, actor={"id": "adm-3", "type": "user"}))
    assert rule.matches(record(**exporting, actor={"id": "u-3", "user_agent": "CURL/8.1"}))
    assert not rule.matches(record(**exporting, actor={"id": "u-3", "user_agent": "Firefox"}))
    assert rule.matches(record(**exporting, actor={"id": "root-1", "type": "user"}))
    assert not rule.matches(record(action="contact.view", actor={"id": "adm-3"}))


def test_cidr_matches_ipv4_and_ipv6_networks_and_not_negates_a_field() -> None:
    rule = rule_of(
        """
        id: r
        title: t
        level: low
        detection:
          outside:
            actor.ip|cidr|not: [10.0.0.0/8, 2001:db8::/32]
          condition: outside
        """
    )
    assert not rule.matches(record(actor={"id": "u", "ip": "10.4.5.6"}))
    assert not rule.matches(record(actor={"id": "u", "ip": "2001:db8::17"}))
    assert rule.matches(record(actor={"id": "u", "ip": "192.0.2.1"}))
    assert rule.matches(record(actor={"id": "u", "ip": "2001:db9::1"}))


def test_not_and_or_with_parentheses_and_one_or_all_of_a_pattern() -> None:
    rule = rule_of(
        """
        id: r
        title: t
        level: low
        detection:
          selection_login:
            action: auth.login
          selection_reset:
            action: auth.password_reset
          filter_failed:
            outcome: failure
          filter_api:
            source: api
          condition: 1 of selection_* and not (all of filter_*)
        """
    )
    assert rule.matches(record(action="auth.password_reset", outcome="failure"))
    assert rule.matches(record(action="auth.login", source="api"))
    assert not rule.matches(record(action="auth.login", outcome="failure", source="api"))
    assert not rule.matches(record(action="auth.logout"))
    assert rule.actions == frozenset({"auth.login", "auth.password_reset"})


def test_a_list_of_mappings_matches_when_any_mapping_does() -> None:
    rule = rule_of(
        """
        id: r
        title: t
        level: low
        detection:
          admin_role:
            - changes.role.to: admin
            - metadata.role: admin
          condition: admin_role
        """
    )
    assert rule.matches(record(changes={"role": {"from": "agent", "to": "admin"}}))
    assert rule.matches(record(metadata={"role": "admin"}))
    assert not rule.matches(record(metadata={"role": "agent"}))


def test_a_field_holding_a_list_matches_when_any_element_does() -> None:
    rule = rule_of(
        """
        id: r
        title: t
        level: low
        detection:
          granted:
            metadata.roles: owner
          condition: granted
        """
    )
    assert rule.matches(record(metadata={"roles": ["viewer", "owner"]}))
    assert not rule.matches(record(metadata={"roles": ["viewer"]}))


def test_numbers_existence_and_a_field_compared_with_another() -> None:
    rule = rule_of(
        """
        id: r
        title: t
        level: low
        detection:
          large:
            metadata.row_count|gte: 10000
          has_ip:
            actor.ip|exists: true
          own_record:
            actor.id|fieldref: target.id
          condition: large and has_ip and own_record
        """
    )
    mine = {"actor": {"id": "u-9", "ip": "192.0.2.4"}, "target": {"type": "user", "id": "u-9"}}
    assert rule.matches(record(**mine, metadata={"row_count": 10_000}))
    assert not rule.matches(record(**mine, metadata={"row_count": 9_999}))
    assert not rule.matches(record(**mine, metadata={"row_count": "10000"}))
    assert not rule.matches(
        record(
            actor={"id": "u-9", "ip": None}, target=mine["target"], metadata={"row_count": 10**6}
        )
    )
    assert not rule.matches(
        record(
            actor=mine["actor"], target={"type": "user", "id": "u-1"}, metadata={"row_count": 10**6}
        )
    )


def test_weekday_and_time_of_day_are_read_in_the_rules_time_zone() -> None:
    rule = rule_of(
        """
        id: r
        title: t
        level: low
        timezone: Europe/Berlin
        detection:
          window:
            occurred_at|weekday: tue
            occurred_at|time: "18:00-20:00"
          condition: window
        """
    )
    # 17:30 UTC is 18:30 in Berlin in November (UTC+1).
    assert rule.matches(record(occurred_at="2026-11-17T17:30:00.000000Z"))
    assert not rule.matches(record(occurred_at="2026-11-17T19:30:00.000000Z"))
    assert not rule.matches(record(occurred_at="2026-11-18T17:30:00.000000Z"))


def test_a_time_range_may_cross_midnight() -> None:
    rule = rule_of(
        """
        id: r
        title: t
        level: low
        detection:
          night:
            occurred_at|time: "22:00-06:00"
          condition: night
        """
    )
    assert rule.matches(record(occurred_at="2026-11-17T23:10:00.000000Z"))
    assert rule.matches(record(occurred_at="2026-11-17T05:59:00.000000Z"))
    assert not rule.matches(record(occurred_at="2026-11-17T06:00:00.000000Z"))


def test_correlation_shorthand_reads_as_the_full_form() -> None:
    counted = rule_of(
        """
        id: r
        title: t
        level: high
        detection:
          s: {outcome: failure}
          condition: s
        correlation: count >= 5 within 10m group by actor.id
        """
    )
    distinct = rule_of(
        """
        id: r
        title: t
        level: high
        detection:
          s: {outcome: failure}
          condition: s
        correlation: distinct target.id > 49 within 5m group by actor.id, actor.ip
        """
    )
    assert counted.correlation is not None
    assert counted.correlation.describe() == "count >= 5 within 10m group by actor.id"
    assert distinct.correlation is not None
    assert distinct.correlation.describe() == (
        "distinct target.id >= 50 within 5m group by actor.id, actor.ip"
    )
    assert counted.dedup.render("r", record()) == "r:u-1"
    assert counted.severity == "SEV2"


# -- refusals name the file, the line and the reason ----------------------------------------


def test_a_yaml_syntax_error_names_its_line() -> None:
    error = refused(
        """\
        id: r
        title: t
        level: low
        detection:
          s:
            action: [auth.login
          condition: s
        """
    )
    assert error.path == "bad.yaml"
    assert error.line == 7
    assert "not valid YAML" in error.reason
    assert str(error).startswith("bad.yaml:7: ")


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        (
            """\
            id: r
            title: t
            level: severe
            detection: {s: {outcome: failure}, condition: s}
            """,
            3,
            "level 'severe' is not one of critical, high, medium, low, informational",
        ),
        (
            """\
            id: r
            title: t
            level: low
            detection:
              s:
                actor.ip|cidr: 10.0.0.300/8
              condition: s
            """,
            6,
            "|cidr: '10.0.0.300/8' is not an IP network",
        ),
        (
            """\
            id: r
            title: t
            level: low
            detection:
              s:
                action|regex: '^auth'
              condition: s
            """,
            6,
            "unknown modifier 'regex'",
        ),
        (
            """\
            id: r
            title: t
            level: low
            detection:
              s: {outcome: failure}
              condition: s and (t or s
            """,
            6,
            "is not a selection of this rule",
        ),
        (
            """\
            id: r
            title: t
            level: low
            detection:
              s: {outcome: failure}
              condition: (s or s
            """,
            6,
            "ends too early",
        ),
        (
            """\
            id: r
            title: t
            level: low
            detection:
              s: {outcome: failure}
              condition: 1 of filter_*
            """,
            6,
            "'filter_*' names no selection",
        ),
        (
            """\
            id: r
            title: t
            level: low
            detection:
              s: {outcome: failure}
              condition: s
            correlation: count >= 5 within ten minutes
            """,
            7,
            "is not 'count >= N within 10m group by FIELD'",
        ),
        (
            """\
            id: r
            title: t
            level: low
            detection:
              s: {outcome: failure}
              condition: s
            correlation:
              type: event_count
              timespan: 10 minutes
              condition: {gte: 5}
            """,
            9,
            "timespan '10 minutes' is not a duration",
        ),
        (
            """\
            id: r
            title: t
            level: low
            detection:
              s: {outcome: failure}
              s: {outcome: success}
              condition: s
            """,
            6,
            "'s' is given twice",
        ),
        (
            """\
            id: r
            title: t
            level: low
            detection:
              s: {outcome: failure}
              condition: s
            dedup: "{rule}:{actor id}"
            """,
            7,
            "{actor id} is not a field path",
        ),
        (
            """\
            id: r
            title: t
            level: low
            detection:
              s: {outcome: failure}
              condition: s
            runbok: lockout
            """,
            7,
            "unknown key 'runbok'",
        ),
        (
            """\
            title: t
            level: low
            detection: {s: {outcome: failure}, condition: s}
            """,
            1,
            "the rule has no 'id'",
        ),
    ],
)
def test_a_bad_rule_is_refused_naming_the_line_and_the_reason(
    text: str, line: int, reason: str
) -> None:
    error = refused(textwrap.dedent(text))
    assert (error.path, error.line) == ("bad.yaml", line)
    assert reason in error.reason


def test_a_directory_with_bad_files_is_refused_naming_each_of_them(tmp_path: Path) -> None:
    (tmp_path / "good.yaml").write_text(
        "id: good\ntitle: t\nlevel: low\ndetection: {s: {outcome: failure}, condition: s}\n"
    )
    (tmp_path / "twin.yml").write_text(
        "id: good\ntitle: t\nlevel: low\ndetection: {s: {outcome: failure}, condition: s}\n"
    )
    (tmp_path / "broken.yaml").write_text("id: b\ntitle: t\nlevel: low\ndetection: [\n")
    (tmp_path / "notes.txt").write_text("not a rule")
    assert [path.name for path in rule_files(tmp_path)] == ["broken.yaml", "good.yaml", "twin.yml"]
    with pytest.raises(RuleSetError) as caught:
        load_rules(tmp_path)
    problems = {(Path(e.path).name, e.line) for e in caught.value.errors}
    assert problems == {("broken.yaml", 5), ("twin.yml", 1)}
    assert "also used by" in str(caught.value)


def test_a_field_holding_an_object_matches_no_value_and_breaks_nothing() -> None:
    rule = rule_of(
        """
        id: r
        title: t
        level: low
        detection:
          admin:
            metadata.role: [admin, owner]
          condition: admin
        """
    )
    assert not rule.matches(record(metadata={"role": {"name": "admin"}}))
    assert not rule.matches(record(metadata={"role": [{"name": "admin"}, ["owner"]]}))
    assert not rule.matches(record(metadata={"role": True}))
    assert rule.matches(record(metadata={"role": ["viewer", "owner"]}))


def _expressions() -> st.SearchStrategy[str]:
    names = st.sampled_from(["a", "b", "c"])
    return st.recursive(
        names,
        lambda inner: st.one_of(
            st.tuples(inner, st.sampled_from(["and", "or"]), inner).map(" ".join),
            inner.map(lambda e: f"not {e}"),
            inner.map(lambda e: f"({e})"),
        ),
        max_leaves=8,
    )


@given(
    expression=_expressions(),
    truth=st.tuples(st.booleans(), st.booleans(), st.booleans()),
)
def test_conditions_bind_not_then_and_then_or_as_python_does(
    expression: str, truth: tuple[bool, bool, bool]
) -> None:
    rule = rule_of(
        f"""
        id: r
        title: t
        level: low
        detection:
          a: {{metadata.a: true}}
          b: {{metadata.b: true}}
          c: {{metadata.c: true}}
          condition: {expression}
        """
    )
    values = dict(zip("abc", truth, strict=True))
    expected = eval(expression, {}, values)  # noqa: S307  (the strategy's own grammar)
    assert rule.matches(record(metadata=values)) is expected
