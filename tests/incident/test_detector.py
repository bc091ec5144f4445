"""The correlation engine: windows on the records' own clock, one incident per dedup key
while it is open, the same incidents on replay, and never a rule fed on the incident
module's own audit records."""

from __future__ import annotations

import hashlib
import random
import textwrap
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from eventsourcing.persistence import Tracking

from audit_core.domain import client_content
from audit_core.schema import format_timestamp
from incident.application import Incidents
from incident.detector import SWEEP_EVERY, Detection, Detector, MemoryIncidentSink
from incident.rules import Rule, load_rule
from tests.stores import SQLiteStore

T0 = datetime(2026, 11, 17, 9, 0, tzinfo=UTC)


def rule_of(text: str) -> Rule:
    return load_rule("test.yaml", textwrap.dedent(text))


class Trail:
    """Records as the ledger stores them (seq in order, a hash each) for one tenant."""

    def __init__(self, tenant: str = "acme"):
        self.tenant = tenant
        self.records: list[dict[str, Any]] = []

    def add(
        self,
        at: datetime,
        action: str = "auth.login",
        *,
        actor: str = "u-1",
        actor_type: str = "user",
        ip: str | None = "203.0.113.7",
        target: str | None = "u-1",
        outcome: str = "failure",
        source: str = "console",
        **fields: Any,
    ) -> dict[str, Any]:
        seq = len(self.records)
        record: dict[str, Any] = {
            "tenant": self.tenant,
            "seq": seq,
            "hash": hashlib.sha256(f"{self.tenant}{seq}".encode()).hexdigest(),
            "id": f"e-{seq}",
            "occurred_at": format_timestamp(at),
            "actor": {"id": actor, "type": actor_type, "ip": ip},
            "action": action,
            "target": None if target is None else {"type": "user", "id": target},
            "outcome": outcome,
            "source": source,
            "metadata": {},
            "changes": {},
            **fields,
        }
        self.records.append(record)
        return record


COUNT_RULE = """
    id: many-failures
    title: Many failed logins
    level: high
    detection:
      failed: {action: auth.login, outcome: failure}
      condition: failed
    correlation: count >= 5 within 10m group by target.id
    runbook: credential-stuffing
"""


def run(
    rules: Sequence[Rule], records: Iterable[dict[str, Any]], sink: MemoryIncidentSink | None = None
) -> tuple[list[Detection], MemoryIncidentSink]:
    sink = sink or MemoryIncidentSink()
    detector = Detector(rules, sink.load_state())
    detections = detector.process(records)
    sink.open_or_attach(detections, detector.take_changes(), None)
    return detections, sink


def test_a_count_fires_once_its_threshold_is_reached_inside_the_window() -> None:
    trail = Trail()
    attempts = [trail.add(T0 + timedelta(minutes=2 * n)) for n in range(5)]
    detections, sink = run([rule_of(COUNT_RULE)], trail.records)
    [detection] = detections
    assert detection.rule_id == "many-failures"
    assert detection.severity == "SEV2"
    assert detection.runbook == "credential-stuffing"
    assert detection.dedup_key == "many-failures:u-1"
    assert [e.seq for e in detection.evidence] == [r["seq"] for r in attempts]
    assert detection.first_at == attempts[0]["occurred_at"]
    assert detection.summary == "5 matching records within 10m (target.id=u-1)"
    assert len(sink.incidents) == 1


def test_records_spread_wider_than_the_window_never_fire() -> None:
    trail = Trail()
    for n in range(20):
        trail.add(T0 + timedelta(minutes=3 * n))  # at most 4 in any 10 minutes
    detections, _ = run([rule_of(COUNT_RULE)], trail.records)
    assert detections == []


def test_groups_are_counted_apart() -> None:
    trail = Trail()
    for n in range(8):
        trail.add(T0 + timedelta(seconds=30 * n), target=f"u-{n % 2}")
    detections, _ = run([rule_of(COUNT_RULE)], trail.records)
    assert [d.dedup_key for d in detections] == []  # 4 each
    trail.add(T0 + timedelta(minutes=5), target="u-0")
    detections, _ = run([rule_of(COUNT_RULE)], trail.records)
    assert [d.dedup_key for d in detections] == ["many-failures:u-0"]


def test_later_matches_are_attached_to_the_open_incident() -> None:
    trail = Trail()
    for n in range(30):
        trail.add(T0 + timedelta(seconds=20 * n))
    detections, sink = run([rule_of(COUNT_RULE)], trail.records)
    assert len(detections) == 26  # the firing, then each further attempt
    [incident] = sink.incidents.values()
    assert [e.seq for e in incident.evidence] == list(range(30))


def test_after_the_incident_is_resolved_a_new_attack_opens_a_new_one() -> None:
    rule = rule_of(COUNT_RULE)
    trail = Trail()
    for n in range(6):
        trail.add(T0 + timedelta(minutes=n))
    _, sink = run([rule], trail.records)
    [first] = sink.incidents
    sink.resolve(first)
    for n in range(6):
        trail.add(T0 + timedelta(hours=2, minutes=n))
    detections, sink = run([rule], trail.records[6:], sink)
    assert len(sink.incidents) == 2
    second = next(i for i in sink.incidents.values() if i.id != first)
    assert [e.seq for e in second.evidence] == list(range(6, 12))
    assert detections[0].incident_id == second.id


def test_distinct_values_are_counted_once_each() -> None:
    rule = rule_of(
        """
        id: spray
        title: Spraying
        level: medium
        detection:
          failed: {action: auth.login, outcome: failure}
          condition: failed
        correlation:
          type: value_count
          field: target.id
          group_by: actor.ip
          timespan: 10m
          condition: {gte: 3}
        """
    )
    trail = Trail()
    for n in range(6):
        trail.add(T0 + timedelta(seconds=n), target="u-1")  # the same account again and again
    assert run([rule], trail.records)[0] == []
    trail.add(T0 + timedelta(seconds=10), target="u-2")
    trail.add(T0 + timedelta(seconds=11), target="u-3")
    [detection] = run([rule], trail.records)[0]
    assert detection.dedup_key == "spray:203.0.113.7"
    assert detection.matched == 3
    assert [e.seq for e in detection.evidence] == [5, 6, 7]


def test_a_burst_of_late_records_is_counted_on_its_own_clock() -> None:
    trail = Trail()
    trail.add(T0 + timedelta(hours=5))  # the newest record of the group comes first
    for n in range(5):
        trail.add(T0 + timedelta(minutes=n))
    [detection] = run([rule_of(COUNT_RULE)], trail.records)[0]
    assert [e.seq for e in detection.evidence] == [1, 2, 3, 4, 5]


def test_replaying_in_pages_of_any_size_gives_the_same_incidents() -> None:
    rules = [rule_of(COUNT_RULE)]
    rng = random.Random(3)
    trail = Trail()
    at = T0
    for _ in range(400):
        at += timedelta(seconds=rng.uniform(1, 60))
        trail.add(
            at - timedelta(seconds=rng.choice((0, 0, 0, 900))),  # some arrive late
            target=f"u-{rng.randrange(4)}",
            outcome=rng.choice(("failure", "failure", "success")),
        )
    whole, whole_sink = run(rules, trail.records)
    assert whole, "the trail must hold some detections to compare"
    for _ in range(3):
        sink = MemoryIncidentSink()
        paged: list[Detection] = []
        start = 0
        while start < len(trail.records):
            size = rng.randrange(1, 50)
            # A new engine each page: only the state written with the page carries over.
            detector = Detector(rules, sink.load_state())
            found = detector.process(trail.records[start : start + size])
            sink.open_or_attach(found, detector.take_changes(), Tracking("t", start + size))
            paged += found
            start += size
        assert paged == whole
        assert sink.incidents.keys() == whole_sink.incidents.keys()
        assert sink.state == whole_sink.state


def test_the_incident_modules_own_records_never_feed_a_rule(sqlite_store: SQLiteStore) -> None:
    rule = rule_of(
        """
        id: anything-about-incidents
        title: Anything about incidents
        level: low
        detection:
          incidents: {action|startswith: incident.}
          condition: incidents
        """
    )
    ledger = sqlite_store.open_ledger()
    incidents = Incidents(sqlite_store.settings().ledger_env(), ledger)
    try:
        incidents.open("acme", "Opened by hand", "SEV3")
    finally:
        incidents.close()
    own = ledger.read("acme")
    assert own, "opening an incident records an audit event"
    assert all(r["action"].startswith("incident.") for r in own)
    assert run([rule], own)[0] == []
    # The same action recorded by a person's console is theirs: rules see it.
    content = client_content(own[0])
    by_a_person = {**content, "id": "client-1", "source": "console", "actor": {"id": "u-1"}}
    [theirs] = ledger.record("acme", [by_a_person])
    assert len(run([rule], [theirs])[0]) == 1


NEW_NETWORK_RULE = """
    id: new-network
    title: Token used from a new network
    level: high
    detection:
      token: {actor.type: integration}
      condition: token
    correlation:
      type: new_value
      field: actor.ip
      network: {ipv4: 24}
      group_by: actor.id
      learning: 1d
"""


def test_a_new_network_fires_only_after_learning_and_not_for_a_known_one() -> None:
    rule = rule_of(NEW_NETWORK_RULE)
    trail = Trail()

    def use(at: datetime, ip: str) -> dict[str, Any]:
        return trail.add(at, "contact.sync", actor="int-1", actor_type="integration", ip=ip)

    use(T0, "52.16.40.11")
    use(T0 + timedelta(hours=3), "34.1.1.1")  # still learning: a second egress network
    use(T0 + timedelta(days=1, hours=1), "52.16.40.99")  # same /24 as before
    use(T0 + timedelta(days=1, hours=2), "34.1.1.7")
    attack = use(T0 + timedelta(days=1, hours=3), "91.219.236.77")
    follow_up = use(T0 + timedelta(days=1, hours=4), "91.219.236.78")
    detections, sink = run([rule], trail.records)
    assert [d.evidence[0].seq for d in detections] == [attack["seq"], follow_up["seq"]]
    assert detections[0].summary == (
        "actor.ip 91.219.236.77 (91.219.236.0/24) never seen before for actor.id=int-1"
    )
    [incident] = sink.incidents.values()
    assert [e.seq for e in incident.evidence] == [attack["seq"], follow_up["seq"]]


CLAIM_RULE = """
    id: claim
    title: Identity attribute claimed
    level: critical
    detection:
      change: {action: [user.create, profile.update], target.type: user}
      self: {actor.id|fieldref: target.id}
      condition: change and self
    correlation:
      type: value_claimed
      owner: target.id
      values:
        email: changes.email.to
      learn_from: change
"""


def test_claiming_a_value_another_user_holds_fires_and_leaves_it_with_its_holder() -> None:
    rule = rule_of(CLAIM_RULE)
    trail = Trail()

    def set_email(at: datetime, actor: str, user: str, email: str | None) -> dict[str, Any]:
        return trail.add(
            at,
            "profile.update" if actor == user else "user.create",
            actor=actor,
            target=user,
            outcome="success",
            changes={"email": {"from": None, "to": email}},
        )

    set_email(T0, "admin", "u-1", "alice@example.com")
    set_email(T0, "admin", "u-2", "bob@example.com")
    set_email(T0 + timedelta(hours=1), "u-2", "u-2", "bob@example.com")  # their own again
    claim = set_email(T0 + timedelta(hours=2), "u-2", "u-2", " Alice@Example.com")
    set_email(T0 + timedelta(hours=3), "u-3", "u-3", "alice@example.com")
    detections, _ = run([rule], trail.records)
    assert [(d.evidence[0].seq, d.dedup_key) for d in detections] == [
        (claim["seq"], "claim:u-2"),
        (claim["seq"] + 1, "claim:u-3"),
    ]
    assert detections[0].summary == ("u-2 set email of u-2 to a value that belongs to u-1")


def test_a_value_its_holder_gave_up_may_be_taken() -> None:
    rule = rule_of(CLAIM_RULE)
    trail = Trail()
    trail.add(
        T0,
        "user.create",
        actor="admin",
        target="u-1",
        outcome="success",
        changes={"email": {"from": None, "to": "old@example.com"}},
    )
    trail.add(
        T0,
        "profile.update",
        actor="u-1",
        target="u-1",
        outcome="success",
        changes={"email": {"from": "old@example.com", "to": "new@example.com"}},
    )
    trail.add(
        T0,
        "profile.update",
        actor="u-2",
        target="u-2",
        outcome="success",
        changes={"email": {"from": None, "to": "old@example.com"}},
    )
    assert run([rule], trail.records)[0] == []


def test_an_incident_id_is_derived_from_what_opened_it() -> None:
    trail = Trail()
    for n in range(5):
        trail.add(T0 + timedelta(minutes=n))
    [one] = run([rule_of(COUNT_RULE)], trail.records)[0]
    [again] = run([rule_of(COUNT_RULE)], trail.records)[0]
    assert one.incident_id == again.incident_id
    other = Trail("globex")
    for n in range(5):
        other.add(T0 + timedelta(minutes=n))
    [elsewhere] = run([rule_of(COUNT_RULE)], other.records)[0]
    assert elsewhere.incident_id != one.incident_id


def test_groups_whose_window_has_passed_are_forgotten() -> None:
    rule = rule_of(COUNT_RULE)
    trail = Trail()
    for n in range(100):
        trail.add(T0, target=f"u-{n}")  # a hundred accounts, one failure each
    detector = Detector([rule])
    detector.process(trail.records)
    assert sum(1 for key in detector.state if key[0] == "many-failures") == 100
    later = Trail()
    for n in range(SWEEP_EVERY):
        later.add(T0 + timedelta(hours=1, seconds=n), "auth.logout", target="u-0")
    detector.process(later.records)
    assert [key for key in detector.state if key[0] == "many-failures"] == []
    removed = [key for key, value in detector.take_changes().values.items() if value is None]
    assert len(removed) == 100, "the forgotten groups are deleted from the database too"


def test_a_rule_whose_correlation_changed_starts_again_and_a_removed_rule_is_forgotten() -> None:
    trail = Trail()
    for n in range(4):
        trail.add(T0 + timedelta(minutes=n))
    sink = MemoryIncidentSink()
    run([rule_of(COUNT_RULE), rule_of(NEW_NETWORK_RULE)], trail.records, sink)
    assert any(key[0] == "many-failures" for key in sink.state)
    assert ("", "", "rule\x1fnew-network") in sink.state
    # The same id, now counting distinct addresses: the old counts do not fit.
    changed = rule_of(COUNT_RULE.replace("count >= 5", "distinct actor.ip >= 2"))
    more = Trail()
    more.records = [dict(r) for r in trail.records]
    late = more.add(T0 + timedelta(minutes=5), ip="198.51.100.9")
    detections, sink = run([changed], [late], sink)
    # Kept, the four earlier records' address and this one would make two already.
    assert detections == []
    assert not any("new-network" in key[0] + key[2] for key in sink.state)
    another = more.add(T0 + timedelta(minutes=6), ip="198.51.100.10")
    [detection] = run([changed], [another], sink)[0]
    assert [e.seq for e in detection.evidence] == [late["seq"], another["seq"]]
