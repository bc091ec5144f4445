"""Each shipped rule fires on the attack it targets, and none fires on ordinary days.

The trails are recorded in a real ledger (SQLite) and read back, so the rules see the
records exactly as the detector's follower does: normalised, with seq and hash.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from audit_core import Ledger
from incident.detector import Detection, Detector
from incident.rules import load_rules
from incident.simulation import Event, Tenant
from tests.stores import SQLiteStore

RULES = Path(__file__).resolve().parents[2] / "runbooks" / "rules"
MONDAY, TUESDAY = date(2026, 11, 16), date(2026, 11, 17)
"""Two working days; Tuesday holds a change window in which admins are granted."""
SATURDAY_NIGHT = datetime(2026, 11, 21, 2, 30, tzinfo=UTC)


def record_all(ledger: Ledger, tenant: str, events: list[Event]) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    for start in range(0, len(events), 1000):
        records += ledger.record(tenant, events[start : start + 1000])
    return records


def detect(records: list[dict[str, Any]]) -> list[Detection]:
    # What the follower's check of the incident module's records concludes here: no
    # record of these trails was written by it (``OwnRecords`` has its own tests).
    return Detector(load_rules(RULES), is_own=lambda record: False).process(records)


def ordinary(tenant: Tenant) -> list[Event]:
    directory = tenant.directory(datetime(2026, 11, 1, 6, 0, tzinfo=UTC))
    return directory + tenant.ordinary_day(MONDAY) + tenant.ordinary_day(TUESDAY)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SQLiteStore]:
    store = SQLiteStore(tmp_path_factory.mktemp("shipped") / "ledger.db")
    yield store
    store.close()


@pytest.fixture(scope="module")
def ordinary_days(store: SQLiteStore) -> list[dict[str, Any]]:
    return record_all(store.open_ledger(), "quiet", ordinary(Tenant.make("quiet")))


def test_no_rule_fires_on_ordinary_days(ordinary_days: list[dict[str, Any]]) -> None:
    actions = {record["action"] for record in ordinary_days}
    # The days hold what the rules look at, so their silence means something.
    assert {
        "auth.login",
        "role.grant",
        "report.export",
        "profile.update",
        "contact.sync",
    } <= actions
    assert sum(1 for r in ordinary_days if r["outcome"] == "failure") > 50
    assert any(r["changes"].get("role", {}).get("to") == "admin" for r in ordinary_days)
    assert len(ordinary_days) > 5000
    assert [(d.rule_id, d.summary) for d in detect(ordinary_days)] == []


class Attacked:
    """Ordinary days with every attack mixed in, in time order, recorded and detected."""

    def __init__(self, store: SQLiteStore):
        tenant = Tenant.make("acme")
        users = tenant.users
        at = datetime.fromisoformat
        self.attacks: dict[str, list[Event]] = {
            "brute-force-login": tenant.brute_force(at("2026-11-17T11:00:00+00:00"), users[40]),
            "credential-stuffing": tenant.credential_stuffing(at("2026-11-17T03:10:00+00:00")),
            "privilege-escalation-outside-change-window": tenant.privilege_escalation(
                SATURDAY_NIGHT, users[2], users[77]
            ),
            "bulk-export-many-objects": tenant.bulk_export(
                at("2026-11-17T14:00:00+00:00"), users[60]
            ),
            "bulk-export-large": tenant.large_export(at("2026-11-17T15:30:00+00:00"), users[61]),
            "leaked-token-new-network": tenant.leaked_token(
                at("2026-11-17T20:00:00+00:00"), tenant.integrations[0]
            ),
            "identity-attribute-takeover": tenant.identity_takeover(
                at("2026-11-17T16:45:00+00:00"), users[90], users[91]
            ),
            "forged-incident-record": tenant.forged_incident_record(
                at("2026-11-17T17:05:00+00:00"), users[33]
            ),
        }
        events = ordinary(tenant) + [e for attack in self.attacks.values() for e in attack]
        events.sort(key=lambda event: event["occurred_at"])
        records = record_all(store.open_ledger(), "acme", events)
        self.seq_of = {record["id"]: record["seq"] for record in records}
        self.detections = detect(records)

    def seqs(self, rule_id: str) -> set[int]:
        return {self.seq_of[event["id"]] for event in self.attacks[rule_id]}


@pytest.fixture(scope="module")
def attacked(store: SQLiteStore) -> Attacked:
    return Attacked(store)


@pytest.mark.parametrize(
    ("rule_id", "dedup_key", "severity"),
    [
        ("brute-force-login", "brute-force-login:u-0041", "SEV2"),
        ("credential-stuffing", "credential-stuffing:185.100.87.41", "SEV2"),
        (
            "privilege-escalation-outside-change-window",
            "privilege-escalation-outside-change-window:u-0078",
            "SEV2",
        ),
        ("bulk-export-many-objects", "bulk-export-many-objects:u-0061", "SEV2"),
        ("bulk-export-large", "bulk-export-large:u-0062", "SEV3"),
        ("leaked-token-new-network", "leaked-token-new-network:int-crm-sync", "SEV2"),
        ("identity-attribute-takeover", "identity-attribute-takeover:u-0091", "SEV1"),
        ("forged-incident-record", "forged-incident-record:vigil", "SEV2"),
    ],
)
def test_each_shipped_rule_fires_on_its_attack_and_only_on_it(
    attacked: Attacked, rule_id: str, dedup_key: str, severity: str
) -> None:
    mine = [d for d in attacked.detections if d.rule_id == rule_id]
    assert mine, f"{rule_id} did not fire on its attack"
    assert {d.dedup_key for d in mine} == {dedup_key}
    assert {d.severity for d in mine} == {severity}
    evidence = {e.seq for d in mine for e in d.evidence}
    attack = attacked.seqs(rule_id)
    assert evidence <= attack, "evidence outside the attack: ordinary activity matched"
    # Threshold rules are evidenced by every attack record from the one that crossed it.
    assert len(evidence) >= min(len(attack), 1)


def test_every_detection_on_the_attacked_tenant_belongs_to_an_attack(attacked: Attacked) -> None:
    attack_seqs = set().union(*(attacked.seqs(rule) for rule in attacked.attacks))
    stray = [d for d in attacked.detections if not {e.seq for e in d.evidence} <= attack_seqs]
    assert stray == []


def test_a_long_attack_is_evidenced_whole(attacked: Attacked) -> None:
    brute = [d for d in attacked.detections if d.rule_id == "brute-force-login"]
    assert {e.seq for d in brute for e in d.evidence} == attacked.seqs("brute-force-login")
    exports = [d for d in attacked.detections if d.rule_id == "bulk-export-many-objects"]
    assert {e.seq for d in exports for e in d.evidence} == attacked.seqs("bulk-export-many-objects")
