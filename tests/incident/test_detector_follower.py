"""The detector follower end to end, through the follower runner, on SQLite and on
PostgreSQL: attack records recorded in the ledger become incidents (with the records as
evidence), and the detector's state, incidents and position move together."""

from __future__ import annotations

import select
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from eventsourcing.persistence import IntegrityError, Tracking
from psycopg import Cursor
from psycopg.rows import DictRow

from audit_core import Ledger
from audit_core.domain import client_content
from audit_core.followers import FollowerRunner, FollowerStore, Page, open_store
from incident.application import Incidents
from incident.detector import Detector
from incident.domain import Actor
from incident.follower import (
    FOLLOWER_NAME,
    STATE_TABLE,
    DetectorFollower,
    PostgresDetectorRecorder,
)
from incident.rules import Rule, load_rules
from incident.runbooks import RunbookCatalogue
from incident.simulation import Event, Tenant
from tests.stores import PostgresStore, Store

RULES = Path(__file__).resolve().parents[2] / "runbooks" / "rules"
ATTACK_AT = datetime(2026, 11, 17, 11, 0, tzinfo=UTC)


class Deployment:
    """A ledger, the runner's store and the detector follower, as `vigil worker` has them."""

    def __init__(self, store: Store):
        self.env = store.settings().ledger_env()
        self.ledger: Ledger = store.open_ledger()
        self.store: FollowerStore = open_store(self.env)
        self.rules: list[Rule] = load_rules(RULES)
        self.followers: list[DetectorFollower] = []
        self.incidents = Incidents(self.env, self.ledger)
        self.tenant = Tenant.make("acme", users=60)

    def follower(self) -> DetectorFollower:
        follower = DetectorFollower.open(self.env, self.ledger, self.rules)
        self.followers.append(follower)
        return follower

    def runner(self, follower: DetectorFollower, page_size: int = 1000) -> FollowerRunner:
        return FollowerRunner(self.ledger, follower, self.store, page_size=page_size)

    def record(self, events: list[Event]) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = []
        for start in range(0, len(events), 500):
            records += self.ledger.record("acme", events[start : start + 500])
        return records

    def brute_force(self, start: datetime = ATTACK_AT, attempts: int = 30) -> list[dict[str, Any]]:
        return self.record(self.tenant.brute_force(start, self.tenant.users[7], attempts))

    def listed(self) -> list[dict[str, Any]]:
        return self.incidents.list_incidents("acme")

    def close(self) -> None:
        for follower in self.followers:
            follower.close()
        self.incidents.close()
        self.store.close()


@pytest.fixture
def deployment(store: Store) -> Iterator[Deployment]:
    deployment = Deployment(store)
    yield deployment
    deployment.close()


def evidence_seqs(incidents: Incidents, incident_id: str) -> list[int]:
    details = incidents.get("acme", incidents.resolve_ref("acme", incident_id))
    return sorted(e["seq"] for e in details["evidence"])


def test_an_attack_in_the_ledger_becomes_one_incident_with_its_records_as_evidence(
    deployment: Deployment,
) -> None:
    attack = deployment.brute_force()
    runner = deployment.runner(deployment.follower())
    assert runner.drain() == len(attack)
    [incident] = deployment.listed()
    assert incident["rule"] == "brute-force-login"
    assert incident["severity"] == "SEV2"
    assert incident["status"] == "triggered"
    assert evidence_seqs(deployment.incidents, incident["id"]) == [r["seq"] for r in attack]
    # Opening it was audited in the ledger, once for the whole page of the attack; the
    # detector reads that record and ignores it.
    audit = [r for r in deployment.ledger.latest("acme", 100) if r["seq"] > attack[-1]["seq"]]
    assert [r["action"] for r in audit] == ["incident.open"]
    runner.drain()
    assert len(deployment.listed()) == 1
    assert runner.status().lag_events == 0


def test_the_attack_going_on_is_attached_to_the_open_incident(deployment: Deployment) -> None:
    runner = deployment.runner(deployment.follower())
    first = deployment.brute_force(attempts=12)
    runner.drain()
    more = deployment.brute_force(ATTACK_AT + timedelta(minutes=3), attempts=5)
    runner.drain()
    [incident] = deployment.listed()
    assert evidence_seqs(deployment.incidents, incident["id"]) == [r["seq"] for r in first + more]


def test_state_carries_over_a_restart_between_pages(deployment: Deployment) -> None:
    # Six failures, a restart (a new process: state only from the database), six more:
    # together they cross the threshold of ten inside the window.
    runner = deployment.runner(deployment.follower())
    first = deployment.brute_force(attempts=6)
    runner.drain()
    assert deployment.listed() == []
    restarted = deployment.runner(deployment.follower())
    second = deployment.brute_force(ATTACK_AT + timedelta(minutes=2), attempts=6)
    restarted.drain()
    [incident] = deployment.listed()
    assert evidence_seqs(deployment.incidents, incident["id"]) == [r["seq"] for r in first + second]


def test_pages_of_any_size_open_the_incidents_the_engine_finds_in_one_pass(
    deployment: Deployment,
) -> None:
    tenant = deployment.tenant
    users = tenant.users
    events = (
        tenant.directory(datetime(2026, 11, 1, tzinfo=UTC))
        + tenant.brute_force(ATTACK_AT, users[3])
        + tenant.credential_stuffing(ATTACK_AT + timedelta(hours=1), accounts=40)
        + tenant.identity_takeover(ATTACK_AT + timedelta(hours=2), users[10], users[11])
        + tenant.bulk_export(ATTACK_AT + timedelta(hours=3), users[12], objects=60)
    )
    records = deployment.record(events)
    expected = Detector(deployment.rules).process(records)
    expected_keys = {d.dedup_key for d in expected}
    assert len(expected_keys) == 4
    runner = deployment.runner(deployment.follower(), page_size=37)
    runner.drain()
    incidents = deployment.listed()
    assert {i["dedup_key"] for i in incidents} == expected_keys
    # Each incident is the one its key's first detection opens, whatever the pages.
    first: dict[str, str] = {}
    for detection in expected:
        first.setdefault(detection.dedup_key, str(detection.incident_id))
    assert {i["dedup_key"]: i["id"] for i in incidents} == first


def test_replaying_from_the_first_record_opens_no_second_incident(deployment: Deployment) -> None:
    deployment.brute_force()
    follower = deployment.follower()
    runner = deployment.runner(follower, page_size=7)
    runner.drain()
    before = deployment.listed()
    follower.clear()
    assert follower.position() == 0
    runner.drain()
    assert deployment.listed() == before


def test_a_page_written_twice_is_refused_whole(deployment: Deployment) -> None:
    """Two processes that both think they lead: the slower one's write of the same page
    fails on the position, and neither its incidents nor its state are kept."""
    deployment.brute_force(attempts=12)
    one, other = deployment.follower(), deployment.follower()
    notes = deployment.ledger.ledger_recorder.recorded_after(0, 1000)
    page = Page(FOLLOWER_NAME, notes.ids, notes.states, deployment.ledger.ledger_mapper)
    one.handle(page)
    state = one.sink.load_state()
    with pytest.raises(IntegrityError):
        other.handle(page)
    assert len(deployment.listed()) == 1
    assert other.sink.load_state() == state
    assert other.detector.state == state  # reloaded: memory never runs ahead of the database
    assert other.position() == page.position


def test_a_page_is_written_whole_when_postgres_answers_its_state_before_its_position_is_sent(
    postgres_store: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A page's writes go to PostgreSQL pipelined, in one transaction, and the library
    reads back the row of the position's insert. On a loaded machine the database's
    answers to the statements sent before it may have arrived by the time that insert
    is sent. When the state was written first, the read found the last state write's
    answer and the page failed ("the last operation didn't produce records (command
    status: INSERT 0 1)") until the runner retried it."""
    deployment = Deployment(postgres_store)
    try:
        follower = deployment.follower()
        recorder = follower.incidents.detector_recorder
        assert isinstance(recorder, PostgresDetectorRecorder)
        write_position = recorder._insert_tracking

        def answered_so_far(curs: Cursor[DictRow], tracking: Tracking) -> None:
            # As when the database is quicker than the detector's process: what it has
            # run so far is answered, and the answers are in before the insert is sent.
            pgconn = curs.connection.pgconn
            pgconn.send_flush_request()
            pgconn.flush()
            select.select([curs.connection.fileno()], [], [], 5)
            write_position(curs, tracking)

        monkeypatch.setattr(recorder, "_insert_tracking", answered_so_far)
        attack = deployment.brute_force(attempts=12)
        notes = deployment.ledger.ledger_recorder.recorded_after(0, 1000)
        page = Page(FOLLOWER_NAME, notes.ids, notes.states, deployment.ledger.ledger_mapper)
        follower.handle(page)
        [incident] = deployment.listed()
        assert evidence_seqs(deployment.incidents, incident["id"]) == [r["seq"] for r in attack]
        assert follower.position() == page.position
        state = follower.sink.load_state()
        assert state, "the page changed the detector's state"
        assert follower.detector.state == state
    finally:
        deployment.close()


def test_once_the_incident_is_resolved_the_next_attack_opens_a_new_one(
    deployment: Deployment,
) -> None:
    runner = deployment.runner(deployment.follower())
    first = deployment.brute_force(attempts=12)
    runner.drain()
    [opened] = deployment.listed()
    responder = Actor("u-oncall")
    deployment.incidents.acknowledge("acme", UUID(opened["id"]), responder)
    deployment.incidents.resolve("acme", UUID(opened["id"]), responder, "password reset")
    again = deployment.brute_force(ATTACK_AT + timedelta(hours=3), attempts=12)
    runner.drain()
    newest, resolved = deployment.listed()
    assert resolved["id"] == opened["id"]
    assert resolved["status"] == "resolved"
    assert newest["status"] == "triggered"
    assert newest["dedup_key"] == opened["dedup_key"]
    assert evidence_seqs(deployment.incidents, resolved["id"]) == [r["seq"] for r in first]
    assert evidence_seqs(deployment.incidents, newest["id"]) == [r["seq"] for r in again]


def test_a_detection_the_incidents_refuse_stops_the_detector_at_its_record(
    deployment: Deployment,
) -> None:
    """A rule naming a runbook that is not there (normally refused at start): no retry
    would help, so the runner stops the detector at the record, saying why."""
    quiet = deployment.record(deployment.tenant.ordinary_day(date(2026, 11, 16))[:50])
    attack = deployment.brute_force(attempts=10)
    follower = DetectorFollower.open(
        deployment.env, deployment.ledger, deployment.rules, runbooks=RunbookCatalogue({})
    )
    deployment.followers.append(follower)
    runner = deployment.runner(follower)
    runner.drain()
    status = runner.status()
    assert status.stopped
    assert "no runbook named 'credential-stuffing'" in (status.stopped_reason or "")
    # Everything before the tenth failed login was processed; that one was not.
    tenth = deployment.ledger.ledger_recorder.recorded_after(0, 1000).ids[len(quiet) + 9]
    assert status.stopped_at == tenth
    assert follower.position() == tenth - 1
    assert deployment.listed() == []
    assert attack


def test_the_state_table_keeps_no_attribute_value_in_clear(
    store: Store, deployment: Deployment
) -> None:
    tenant = deployment.tenant
    victim = tenant.users[11]
    deployment.record(tenant.directory(datetime(2026, 11, 1, tzinfo=UTC)))
    deployment.record(tenant.identity_takeover(ATTACK_AT, tenant.users[10], victim))
    deployment.runner(deployment.follower()).drain()
    [incident] = deployment.listed()
    assert incident["rule"] == "identity-attribute-takeover"
    table = STATE_TABLE if store.name == "sqlite" else f'"{store.schema}".{STATE_TABLE}'  # type: ignore[attr-defined]
    cells = store.cells(table)
    assert cells, "the detector keeps who holds what"
    for secret in (victim.email, victim.phone, victim.external_account_id):
        assert secret.encode() not in cells


def test_a_record_dressed_as_the_incident_modules_own_is_not_taken_for_it(
    deployment: Deployment,
) -> None:
    runner = deployment.runner(deployment.follower())
    deployment.brute_force(attempts=10)
    runner.drain()
    [genuine] = deployment.listed()
    # Copies of the genuine audit record, as a client with an ingest key may record
    # them: under an id naming no stored event, and in another tenant.
    [own] = [r for r in deployment.ledger.latest("acme", 5) if r["action"] == "incident.open"]
    forged = {**client_content(own), "id": f"incident-{genuine['id']}-7"}
    forged_elsewhere = {**client_content(own), "id": own["id"]}
    deployment.ledger.record("acme", [forged])
    deployment.ledger.record("globex", [forged_elsewhere])
    runner.drain()
    found = {(i["rule"], i["tenant"]) for i in deployment.listed()}
    assert ("forged-incident-record", "acme") in found
    elsewhere = deployment.incidents.list_incidents("globex")
    assert [i["rule"] for i in elsewhere] == ["forged-incident-record"]
    # The genuine records (the two openings just now included) opened nothing.
    assert len(deployment.listed()) == 2
