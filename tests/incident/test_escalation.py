"""Escalation with a clock the test moves: a level's timeout passes and the next level
is paged, an acknowledgement stops it, repeats are honoured, duplicate, late and
concurrent ticks page once, a restarted worker resumes; notifications reach a webhook
receiver and an SMTP server on loopback."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from incident import Actor, ConfigurationError, Incidents
from incident.escalation import EscalationPolicy, ManualClock, Rotation, load_policies
from incident.notify import Notifier, SmtpConfig, Webhook, verify_signature
from tests.events import audit_event
from tests.incident.conftest import START, OpenIncidents
from tests.incident.peers import Received, http_peer, json_answer, smtp_peer
from tests.stores import Store

POLICY = {
    "name": "payments",
    "repeat": 1,
    "levels": [
        {"targets": ["alice@example.com"], "ack_timeout": "5m"},
        {
            "targets": [
                {
                    "rotation": {
                        "users": ["bob@example.com", "carol@example.com"],
                        "start": "2026-11-30T00:00:00Z",
                        "handoff_every": "1d",
                        "overrides": [
                            {
                                "user": "dave@example.com",
                                "start": "2026-11-30T09:00:00Z",
                                "end": "2026-11-30T09:07:00Z",
                            }
                        ],
                    }
                }
            ],
            "ack_timeout": "10m",
        },
    ],
}


def _paged(incidents: Incidents, incident_id: Any) -> list[list[str]]:
    shown = incidents.get("acme", incident_id)
    return [
        e["detail"]["targets"]
        for e in shown["timeline"]
        if e["kind"] == "escalation" and "targets" in e["detail"]
    ]


def test_pages_each_level_when_the_previous_one_times_out(
    incidents: Incidents, clock: ManualClock
) -> None:
    opened = incidents.open("acme", "Card payments failing", "SEV1", policy=POLICY)
    assert [s["targets"] for s in incidents.tick()] == [["alice@example.com"]]
    clock.advance(timedelta(minutes=4, seconds=59))
    assert incidents.tick() == []
    clock.advance(timedelta(seconds=1))
    # Level 2's rotation has an override on call until 09:07.
    assert [s["targets"] for s in incidents.tick()] == [["dave@example.com"]]
    clock.advance(timedelta(minutes=10))
    # Repeat 1: from the first level again.
    assert [(s["level"], s["round"]) for s in incidents.tick()] == [(0, 1)]
    clock.advance(timedelta(minutes=5))
    # The override is over: the rotation's own turn (bob, on 30 November).
    assert [s["targets"] for s in incidents.tick()] == [["bob@example.com"]]
    clock.advance(timedelta(minutes=10))
    assert [s["exhausted"] for s in incidents.tick()] == [True]
    clock.advance(timedelta(hours=1))
    assert incidents.tick() == []
    assert _paged(incidents, opened.incident_id) == [
        ["alice@example.com"], ["dave@example.com"], ["alice@example.com"], ["bob@example.com"],
    ]  # fmt: skip
    shown = incidents.get("acme", opened.incident_id)
    assert shown["escalation"]["exhausted"]


def test_an_acknowledgement_stops_escalation(incidents: Incidents, clock: ManualClock) -> None:
    opened = incidents.open("acme", "x", "SEV2", policy=POLICY)
    incidents.tick()
    clock.advance(timedelta(minutes=2))
    incidents.acknowledge("acme", opened.incident_id, Actor("alice@example.com"))
    clock.advance(timedelta(hours=2))
    assert incidents.tick() == []
    assert _paged(incidents, opened.incident_id) == [["alice@example.com"]]


def test_duplicate_late_and_concurrent_ticks_page_once(
    open_incidents: OpenIncidents, clock: ManualClock
) -> None:
    one = open_incidents()
    two = open_incidents(one.ledger)
    opened = one.open("acme", "x", "SEV2", policy=POLICY)
    assert len(one.tick()) == 1
    assert one.tick() == []
    assert two.tick() == []  # another worker, same moment
    clock.advance(timedelta(hours=3))  # a worker that was down for hours
    late = two.tick()
    assert [(s["level"], s["round"]) for s in late] == [(1, 0)]  # one step, not a burst
    assert one.tick() == []
    assert len(_paged(one, opened.incident_id)) == 2
    audited = [r for r in one.ledger.read("acme", limit=100) if r["action"] == "incident.escalate"]
    assert len(audited) == 2


def test_a_restarted_worker_resumes_mid_escalation(
    open_incidents: OpenIncidents, clock: ManualClock
) -> None:
    first = open_incidents()
    opened = first.open("acme", "x", "SEV2", policy=POLICY)
    first.tick()
    first.close()
    clock.advance(timedelta(minutes=5))
    restarted = open_incidents()
    assert [s["level"] for s in restarted.tick()] == [1]
    assert len(_paged(restarted, opened.incident_id)) == 2


def test_a_reopened_incident_escalates_again(incidents: Incidents, clock: ManualClock) -> None:
    opened = incidents.open("acme", "x", "SEV2", policy=POLICY)
    incidents.tick()
    incidents.acknowledge("acme", opened.incident_id, Actor("alice"))
    incidents.resolve("acme", opened.incident_id, Actor("alice"))
    clock.advance(timedelta(hours=1))
    incidents.reopen("acme", opened.incident_id, Actor("alice"), "errors are back")
    assert [s["level"] for s in incidents.tick()] == [0]


def test_a_responder_escalates_by_hand(incidents: Incidents) -> None:
    opened = incidents.open("acme", "x", "SEV2", policy=POLICY)
    incidents.tick()
    incidents.acknowledge("acme", opened.incident_id, Actor("alice"))
    shown = incidents.escalate("acme", opened.incident_id, Actor("alice"))
    assert shown["timeline"][-1]["text"].startswith("escalated by alice: level 2")


def test_rotation_hands_off_and_honours_overrides() -> None:
    policy = EscalationPolicy.from_dict(POLICY)
    rotation: Rotation = policy.levels[1].rotations[0]
    assert rotation.on_call(START - timedelta(hours=9)) == "bob@example.com"
    assert rotation.on_call(START + timedelta(minutes=3)) == "dave@example.com"
    assert rotation.on_call(START + timedelta(days=1)) == "carol@example.com"
    assert rotation.on_call(START + timedelta(days=2)) == "bob@example.com"


def test_a_bad_policy_file_is_refused_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "oncall.yaml").write_text("name: x\nlevels:\n  - targets: []\n")
    with pytest.raises(ConfigurationError, match=r"oncall\.yaml: levels\[0\]: targets"):
        load_policies(tmp_path)
    (tmp_path / "oncall.yaml").write_text("name: x\nlevels: [\n")
    with pytest.raises(ConfigurationError, match=r"oncall\.yaml:3: not valid YAML"):
        load_policies(tmp_path)


def test_signed_notifications_reach_a_webhook_receiver_with_retries(
    open_incidents: OpenIncidents,
) -> None:
    secret = b"whsec-test"
    answers = iter([json_answer(503, {}), json_answer(200, {"ok": True})])

    def respond(request: Received) -> Any:
        return next(answers, json_answer(200, {}))

    with http_peer(respond) as receiver, http_peer(lambda r: json_answer(200, {})) as slack:
        notifier = Notifier(
            [Webhook("ops", receiver.url + "/hook"), Webhook("chat", slack.url, slack=True)],
            secret,
            retries=2,
            sleep=lambda _: None,
        )
        incidents = open_incidents(notifier=notifier)
        opened = incidents.open("acme", "Checkout down", "SEV1", policy=POLICY)
        incidents.tick()
    first, retried = receiver.received
    for request in (first, retried):
        assert verify_signature(
            secret, request.body, request.headers["x-vigil-timestamp"],
            request.headers["x-vigil-signature"],
        )  # fmt: skip
    assert first.headers["x-vigil-delivery"] == retried.headers["x-vigil-delivery"]
    assert not verify_signature(
        b"other", retried.body, retried.headers["x-vigil-timestamp"],
        retried.headers["x-vigil-signature"],
    )  # fmt: skip
    stale = int(retried.headers["x-vigil-timestamp"]) + 301
    assert not verify_signature(
        secret, retried.body, retried.headers["x-vigil-timestamp"],
        retried.headers["x-vigil-signature"], now=stale,
    )  # fmt: skip
    body = retried.json()
    assert body["incident"]["id"] == str(opened.incident_id)
    assert body["step"]["targets"] == ["alice@example.com"]
    [chat] = slack.received
    assert "Checkout down" in chat.json()["text"]
    shown = incidents.get("acme", opened.incident_id)
    assert shown["timeline"][-1]["text"] == "2 notification(s) delivered"


def test_a_refused_notification_is_recorded_as_failed(open_incidents: OpenIncidents) -> None:
    with http_peer(lambda r: json_answer(401, {})) as receiver:
        notifier = Notifier([Webhook("ops", receiver.url)], b"k", retries=3, sleep=lambda _: None)
        incidents = open_incidents(notifier=notifier)
        opened = incidents.open("acme", "x", "SEV1", policy=POLICY)
        incidents.tick()
    assert len(receiver.received) == 1  # a 4xx is not retried
    shown = incidents.get("acme", opened.incident_id)
    assert "1 failed: webhook:ops answered 401" in shown["timeline"][-1]["text"]
    [record] = [
        r for r in incidents.ledger.read("acme", limit=100) if r["action"] == "incident.notify"
    ]
    assert record["outcome"] == "failure"


def test_e_mail_goes_out_over_starttls_with_credentials(open_incidents: OpenIncidents) -> None:
    with smtp_peer("vigil", "s3cret-pass") as server:
        config = SmtpConfig(
            "127.0.0.1", server.port, "vigil", "s3cret-pass", sender="vigil@example.com",
            tls_context=server.client_context,
        )  # fmt: skip
        incidents = open_incidents(notifier=Notifier(smtp=config))
        opened = incidents.open("acme", "Privilege escalation", "SEV1", policy=POLICY)
        incidents.tick()
    [message] = server.messages
    assert server.tls_used == [True]
    assert message["To"] == "alice@example.com"
    assert message["Subject"].startswith("[SEV1] INC-")
    assert str(opened.incident_id) in message.get_payload()
    shown = incidents.get("acme", opened.incident_id)
    assert shown["timeline"][-1]["text"] == "1 notification(s) delivered"


def test_a_wrong_smtp_password_is_reported_without_the_password(
    open_incidents: OpenIncidents,
) -> None:
    with smtp_peer("vigil", "right") as server:
        config = SmtpConfig(
            "127.0.0.1", server.port, "vigil", "wrong-secret-value",
            tls_context=server.client_context,
        )  # fmt: skip
        incidents = open_incidents(notifier=Notifier(smtp=config))
        opened = incidents.open("acme", "x", "SEV1", policy=POLICY)
        incidents.tick()
    assert server.messages == []
    shown = incidents.get("acme", opened.incident_id)
    assert "0 notification(s) delivered, 1 failed: email SMTP" in shown["timeline"][-1]["text"]
    trail = b"".join(str(r).encode() for r in incidents.ledger.read("acme", limit=100))
    assert b"wrong-secret-value" not in trail


def test_vigil_worker_runs_the_scheduler_as_a_follower(
    store: Store, open_incidents: OpenIncidents, clock: ManualClock
) -> None:
    from api.followers import build_followers
    from audit_core.followers import FollowerRunner, open_store
    from incident.scheduler import EscalationScheduler

    incidents = open_incidents()
    incidents.ledger.record("acme", [audit_event("before")])
    opened = incidents.open("acme", "x", "SEV2", policy=POLICY)
    followers = open_store(store.settings().ledger_env())
    try:
        registered = build_followers(store.settings(), incidents.ledger, followers)
        assert "incident-escalation" in [f.name for f in registered]
        for follower in registered:
            follower.close()
        scheduler = EscalationScheduler(incidents, followers.positions, every_seconds=0)
        # It consumes no records: it starts at the ledger's head, not at its beginning.
        assert scheduler.position() == incidents.ledger.recorder.max_notification_id()
        runner = FollowerRunner(incidents.ledger, scheduler, followers)
        runner.run_once()
        clock.advance(timedelta(minutes=5))
        runner.run_once()
        runner.run_once()
    finally:
        followers.close()
    assert len(_paged(incidents, opened.incident_id)) == 2


def test_escalating_an_incident_without_a_policy_is_refused(incidents: Incidents) -> None:
    from incident import InvalidIncidentError

    opened = incidents.open("acme", "x", "SEV3")
    with pytest.raises(InvalidIncidentError, match="no escalation policy to page"):
        incidents.escalate("acme", opened.incident_id, Actor("alice"))
