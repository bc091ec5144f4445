"""With ``VIGIL_ENCRYPTION_KEY`` set, the detector's correlation state holds none of what
the records hold (actor and target ids, addresses and networks, attribute values) in
clear, on SQLite and PostgreSQL, and the detector still opens the incidents it opens
without encryption. Whatever the state held in clear before the key is dropped."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from audit_core import Ledger
from audit_core.followers import FollowerRunner, FollowerStore, open_store
from audit_core.schema import format_timestamp
from incident.application import Incidents
from incident.detector import Detector, MemoryIncidentSink
from incident.follower import DetectorFollower
from incident.rules import Rule, load_rules
from tests.stores import PostgresStore, SQLiteStore, Store

RULES = Path(__file__).resolve().parents[2] / "runbooks" / "rules"
KEY = base64.b64encode(b"k" * 32).decode()
START = datetime(2026, 11, 10, 9, 0, tzinfo=UTC)

# What the records hold and the state would count or remember: none of it may be stored
# in clear. Each is long and odd enough never to turn up in ciphertext or a digest.
ATTACKER_IP = "198.18.47.201"
VICTIM = "victim-target-qx71"
STUFFED = "stuffed-target-zk"
SERVICE = "detservice-acct-9w"
SERVICE_HOME = "198.51.100.23"
SERVICE_NEW = "203.0.113.88"
HOLDER = "holder-user-mv52"
THIEF = "thief-user-pq83"
EMAIL = "holder.mail.rj@example.org"
MARKERS = [
    ATTACKER_IP,
    VICTIM,
    STUFFED,
    SERVICE,
    "198.51.100",
    "203.0.113",
    HOLDER,
    THIEF,
    "holder.mail.rj",
]


def attack() -> list[dict[str, Any]]:
    """Failed logins that brute-force one target (counted per target) and stuff twenty
    (distinct targets counted per address); a service acting from its home network for
    two days, then from a new one; a user claiming another's e-mail address."""
    events: list[dict[str, Any]] = []

    def add(
        at: datetime, actor: dict[str, Any], action: str, target: dict[str, Any], **more: Any
    ) -> None:
        events.append(
            {
                "id": f"enc-{len(events)}",
                "occurred_at": format_timestamp(at),
                "actor": actor,
                "action": action,
                "target": target,
                "outcome": more.pop("outcome", "success"),
                "source": "api",
                **more,
            }
        )

    attacker = {"id": "anon", "type": "user", "ip": ATTACKER_IP}
    for n in range(10):
        add(
            START + timedelta(seconds=n),
            attacker,
            "auth.login",
            {"type": "user", "id": VICTIM},
            outcome="failure",
            metadata={"client": f"{STUFFED}-meta"},
        )
    for n in range(20):
        add(
            START + timedelta(seconds=20 + n),
            attacker,
            "auth.login",
            {"type": "user", "id": f"{STUFFED}-{n}"},
            outcome="failure",
        )
    for hours, ip in ((1, SERVICE_HOME), (30, SERVICE_HOME), (52, SERVICE_NEW)):
        add(
            START + timedelta(hours=hours),
            {"id": SERVICE, "type": "service", "ip": ip},
            "contact.sync",
            {"type": "batch", "id": "b-1"},
        )
    for hours, owner, email in ((60, HOLDER, EMAIL), (61, THIEF, EMAIL.upper())):
        add(
            START + timedelta(hours=hours),
            {"id": owner, "type": "user"},
            "profile.update",
            {"type": "user", "id": owner},
            changes={"email": {"from": None, "to": email}},
        )
    return events


def whole_database(store: Store) -> bytes:
    """Every cell of every table of the store, as bytes."""
    if isinstance(store, PostgresStore):
        rows = store._run(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = ?",
            (store.schema,),
        )
        tables = [f'"{store.schema}"."{row[0]}"' for row in rows]
    else:
        assert isinstance(store, SQLiteStore)
        rows = store._run("SELECT name FROM sqlite_master WHERE type = 'table'")
        tables = [f'"{row[0]}"' for row in rows]
    return b"\x00".join(store.cells(table) for table in tables)


class Deployment:
    def __init__(self, store: Store, **settings: Any):
        self.env = store.settings(**settings).ledger_env()
        self.ledger: Ledger = store.open_ledger(**settings)
        self.store: FollowerStore = open_store(self.env)
        self.rules: list[Rule] = load_rules(RULES)
        self.follower = DetectorFollower.open(self.env, self.ledger, self.rules)
        self.incidents = Incidents(self.env, self.ledger)

    def close(self) -> None:
        self.follower.close()
        self.incidents.close()
        self.store.close()


@pytest.fixture
def encrypted(store: Store) -> Iterator[Deployment]:
    deployment = Deployment(store, encryption_key=KEY)
    yield deployment
    deployment.close()


def test_the_detector_state_holds_no_record_content_and_opens_the_same_incidents(
    store: Store, encrypted: Deployment
) -> None:
    records = encrypted.ledger.record("acme", attack())
    FollowerRunner(encrypted.ledger, encrypted.follower, encrypted.store, page_size=7).drain()

    # Without encryption the engine opens these, for each its first detection's incident.
    expected: dict[str, str] = {}
    for detection in Detector(encrypted.rules).process(records):
        expected.setdefault(detection.dedup_key, str(detection.incident_id))
    assert {key.split(":")[0] for key in expected} == {
        "brute-force-login",
        "credential-stuffing",
        "leaked-token-new-network",
        "identity-attribute-takeover",
    }
    listed = encrypted.incidents.list_incidents("acme")
    assert {i["dedup_key"]: i["id"] for i in listed} == expected

    state = encrypted.follower.sink.load_state()
    assert state, "the detector kept no state: the check below would prove nothing"
    dumped = whole_database(store)
    found = [marker for marker in MARKERS if marker.encode() in dumped]
    assert found == [], f"stored in clear with encryption on: {found}"


def test_state_written_in_clear_is_dropped_once_the_key_is_set() -> None:
    rules = load_rules(RULES)
    sink = MemoryIncidentSink()
    clear = Detector(rules)
    records = [
        {**event, "tenant": "acme", "seq": seq, "hash": f"h{seq}"}
        for seq, event in enumerate(attack()[:15])
    ]
    clear.process(records)
    sink.open_or_attach([], clear.take_changes(), None)
    assert VICTIM in repr(sink.state)

    blinded = Detector(rules, sink.load_state(), KEY.encode())
    sink.open_or_attach([], blinded.take_changes(), None)
    assert not any(marker in repr(sink.state) for marker in MARKERS)
    # And it counts again from scratch, by the digests: ten more failures fire.
    later = [
        {**record, "seq": 100 + n, "occurred_at": format_timestamp(START + timedelta(minutes=1))}
        for n, record in enumerate(records[:10])
    ]
    fired = blinded.process(later)
    assert [d.rule_id for d in fired] == ["brute-force-login"]
    sink.open_or_attach(fired, blinded.take_changes(), None)
    assert not any(marker in repr(sink.state) for marker in MARKERS)
