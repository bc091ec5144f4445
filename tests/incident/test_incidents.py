"""The incident lifecycle through the Incidents application, on SQLite and PostgreSQL:
what a responder sees, what is refused, and what lands in the tenant's audit ledger."""

from __future__ import annotations

from datetime import timedelta

import pytest

from audit_core import verify_tenant
from incident import (
    Actor,
    IllegalTransitionError,
    IncidentNotFoundError,
    Incidents,
    InvalidIncidentError,
    is_incident_record,
)
from incident.escalation import ManualClock
from tests.incident.conftest import OpenIncidents, record_attack

ALICE = Actor("alice", "user")


def test_opens_an_incident_linked_to_the_records_that_caused_it(incidents: Incidents) -> None:
    evidence = record_attack(incidents.ledger)
    opened = incidents.open(
        "acme", "Credential stuffing against u-1001", "sev2",
        rule="credential-stuffing", dedup_key="cs:u-1001", evidence=evidence,
    )  # fmt: skip
    assert opened.opened
    assert opened.attached == 3
    shown = incidents.get("acme", opened.incident_id)
    assert shown["status"] == "triggered"
    assert shown["severity"] == "SEV2"
    assert [(e["seq"], e["hash"]) for e in shown["evidence"]] == [(e.seq, e.hash) for e in evidence]
    assert shown["timeline"][0]["kind"] == "triggered"
    # Detected when the first attack record happened, not when the incident opened.
    assert shown["detected_at"] == "2024-05-01T12:00:00+00:00"


def test_a_second_match_of_an_open_dedup_key_is_attached_not_opened(incidents: Incidents) -> None:
    first, second = record_attack(incidents.ledger, count=2)
    one = incidents.open("acme", "Stuffing", "SEV3", dedup_key="k", evidence=[first])
    two = incidents.open("acme", "Stuffing again", "SEV3", dedup_key="k", evidence=[first, second])
    assert not two.opened
    assert two.incident_id == one.incident_id
    assert two.attached == 1
    assert incidents.find_open("acme", "k") == one.incident_id
    assert len(incidents.list_incidents("acme")) == 1
    assert incidents.get("acme", one.incident_id)["evidence_count"] == 2


def test_a_resolved_incident_frees_its_dedup_key(incidents: Incidents) -> None:
    one = incidents.open("acme", "Stuffing", "SEV3", dedup_key="k")
    incidents.acknowledge("acme", one.incident_id, ALICE)
    incidents.resolve("acme", one.incident_id, ALICE)
    assert incidents.find_open("acme", "k") is None
    two = incidents.open("acme", "Stuffing", "SEV3", dedup_key="k")
    assert two.opened
    assert two.incident_id != one.incident_id


def test_walks_the_lifecycle_and_measures_each_phase(
    incidents: Incidents, clock: ManualClock
) -> None:
    opened = incidents.open("acme", "Bulk export", "SEV1")
    clock.advance(timedelta(minutes=3))
    shown = incidents.acknowledge("acme", opened.incident_id, ALICE)
    assert shown["status"] == "acknowledged"
    assert shown["commander"] == "alice"
    clock.advance(timedelta(minutes=7))
    incidents.start_mitigation("acme", opened.incident_id, ALICE, "revoking the token")
    clock.advance(timedelta(minutes=20))
    incidents.resolve("acme", opened.incident_id, ALICE, "token revoked")
    shown = incidents.close_incident("acme", opened.incident_id, ALICE)
    assert shown["status"] == "closed"
    assert shown["durations"]["tta"] == 180
    assert shown["durations"]["ttr"] == 30 * 60
    assert [e["kind"] for e in shown["timeline"]] == [
        "triggered", "acknowledged", "mitigating", "resolved", "closed",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("action", "message"),
    [
        ("resolve", "cannot resolve incident INC-"),
        ("close_incident", "resolve it first"),
        ("start_mitigation", "acknowledge it first"),
    ],
)
def test_an_illegal_transition_is_refused_with_what_to_do(
    incidents: Incidents, action: str, message: str
) -> None:
    opened = incidents.open("acme", "Privilege escalation", "SEV2")
    with pytest.raises(IllegalTransitionError, match=message):
        getattr(incidents, action)("acme", opened.incident_id, ALICE)
    assert incidents.get("acme", opened.incident_id)["status"] == "triggered"


def test_acknowledging_twice_is_refused(incidents: Incidents) -> None:
    opened = incidents.open("acme", "x", "SEV4")
    incidents.acknowledge("acme", opened.incident_id, ALICE)
    with pytest.raises(IllegalTransitionError, match="already acknowledged"):
        incidents.acknowledge("acme", opened.incident_id, Actor("bob"))


def test_reopen_decline_and_merge(incidents: Incidents) -> None:
    one = incidents.open("acme", "one", "SEV3", dedup_key="a")
    two = incidents.open(
        "acme", "two", "SEV3", dedup_key="b", evidence=record_attack(incidents.ledger)
    )
    merged = incidents.merge("acme", two.incident_id, one.incident_id, ALICE)
    assert merged["status"] == "merged"
    assert merged["merged_into"] == str(one.incident_id)
    assert incidents.get("acme", one.incident_id)["evidence_count"] == 3
    with pytest.raises(IllegalTransitionError):
        incidents.acknowledge("acme", two.incident_id, ALICE)
    incidents.acknowledge("acme", one.incident_id, ALICE)
    incidents.resolve("acme", one.incident_id, ALICE)
    with pytest.raises(InvalidIncidentError, match="reason"):
        incidents.reopen("acme", one.incident_id, ALICE, " ")
    shown = incidents.reopen("acme", one.incident_id, ALICE, "it came back")
    assert shown["status"] == "triggered"
    assert shown["resolved_at"] is None
    assert incidents.find_open("acme", "a") == one.incident_id
    three = incidents.open("acme", "three", "SEV4")
    assert incidents.decline("acme", three.incident_id, ALICE, "a pen test")["status"] == "declined"


def test_bad_input_names_the_field(incidents: Incidents) -> None:
    with pytest.raises(InvalidIncidentError, match="severity"):
        incidents.open("acme", "x", "SEV5")
    with pytest.raises(InvalidIncidentError, match="title"):
        incidents.open("acme", "  ", "SEV1")
    with pytest.raises(InvalidIncidentError, match=r"evidence\.hash"):
        incidents.open("acme", "x", "SEV1", evidence=[{"seq": 1, "hash": "abc"}])
    with pytest.raises(InvalidIncidentError, match=r"evidence\.tenant"):
        incidents.open(
            "acme", "x", "SEV1", evidence=[{"tenant": "other", "seq": 1, "hash": "a" * 64}]
        )
    opened = incidents.open("acme", "x", "SEV1")
    with pytest.raises(InvalidIncidentError, match="note holds"):
        incidents.note("acme", opened.incident_id, "", ALICE)
    with pytest.raises(InvalidIncidentError, match=r"action_items\[0\]"):
        incidents.write_postmortem(
            "acme", opened.incident_id, {"action_items": [{"owner": "x"}]}, ALICE
        )


def test_another_tenants_incident_is_not_found(incidents: Incidents) -> None:
    opened = incidents.open("acme", "x", "SEV1")
    with pytest.raises(IncidentNotFoundError):
        incidents.get("globex", opened.incident_id)
    with pytest.raises(IncidentNotFoundError):
        incidents.acknowledge("globex", opened.incident_id, ALICE)
    assert incidents.list_incidents("globex") == []


def test_every_action_is_an_audit_record_and_the_chain_verifies(incidents: Incidents) -> None:
    evidence = record_attack(incidents.ledger)
    opened = incidents.open("acme", "Stuffing", "SEV2", evidence=evidence, rule="cs")
    incidents.acknowledge("acme", opened.incident_id, ALICE)
    incidents.note("acme", opened.incident_id, "blocking 203.0.113.10", ALICE)
    incidents.assign("acme", opened.incident_id, "bob", ALICE)
    incidents.resolve("acme", opened.incident_id, ALICE)
    trail = incidents.ledger.read("acme", limit=1000)
    own = [r for r in trail if is_incident_record(r)]
    assert [r["action"] for r in own] == [
        "incident.open", "incident.acknowledge", "incident.note", "incident.assign",
        "incident.resolve",
    ]  # fmt: skip
    note = own[2]
    assert (
        note["actor"]
        == {"id": "alice", "type": "user", "ip": None, "user_agent": None, "session_id": None}
        or note["actor"]["id"] == "alice"
    )
    assert note["source"] == "system"
    assert note["target"]["id"] == str(opened.incident_id)
    assert note["metadata"]["text"] == "blocking 203.0.113.10"
    assert own[0]["metadata"]["evidence"] == [{"seq": e.seq, "hash": e.hash} for e in evidence]
    assert not any(is_incident_record(r) for r in trail[:3])
    assert verify_tenant(incidents.ledger, "acme").ok


def test_sync_audit_records_what_a_crash_left_out_and_nothing_twice(
    open_incidents: OpenIncidents,
) -> None:
    incidents = open_incidents()
    opened = incidents.open("acme", "x", "SEV3")
    # A process that saved an incident event but died before auditing it.
    lost = incidents.repository.get(opened.incident_id)
    lost.note("written before the crash", incidents.clock(), ALICE)
    incidents.save(lost)
    before = incidents.ledger.size("acme")
    again = open_incidents(incidents.ledger)
    assert again.sync_audit() == 2
    trail = incidents.ledger.read("acme", limit=100)
    assert len(trail) == before + 1
    assert trail[-1]["action"] == "incident.note"
    assert again.sync_audit() == 0


def test_filters_the_list_and_computes_mean_times(incidents: Incidents, clock: ManualClock) -> None:
    for index, severity in enumerate(["SEV1", "SEV1", "SEV3"]):
        opened = incidents.open("acme", f"i{index}", severity, rule="r1" if index else "r2")
        clock.advance(timedelta(minutes=index + 1))
        incidents.acknowledge("acme", opened.incident_id, ALICE)
    assert [i["title"] for i in incidents.list_incidents("acme", severity=["SEV1"])] == ["i1", "i0"]
    assert [i["title"] for i in incidents.list_incidents("acme", rule="r2")] == ["i0"]
    assert incidents.list_incidents("acme", status=["resolved"]) == []
    metrics = incidents.metrics("acme")
    assert metrics["by_severity"]["SEV1"]["mtta"] == 90
    assert metrics["by_rule"]["r1"]["count"] == 2
    assert metrics["by_rule"]["r1"]["mttr"] is None


def test_the_detector_saves_incidents_and_its_position_together(incidents: Incidents) -> None:
    from eventsourcing.persistence import Tracking

    from incident import Detection

    evidence = record_attack(incidents.ledger)
    results = incidents.apply_detections(
        [
            Detection("acme", "a", "SEV2", rule="r", dedup_key="d", evidence=evidence[:1]),
            Detection("acme", "a", "SEV2", rule="r", dedup_key="d", evidence=evidence[1:]),
        ],
        tracking=Tracking("detector", 42),
    )
    assert [r.opened for r in results] == [True, False]
    assert incidents.process_recorder.max_tracking_id("detector") == 42
    incidents.apply_detections([], tracking=Tracking("detector", 43))
    assert incidents.process_recorder.max_tracking_id("detector") == 43
    assert incidents.get("acme", results[0].incident_id)["evidence_count"] == 3
