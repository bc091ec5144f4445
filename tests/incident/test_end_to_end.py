"""From attack records to the rendered post-mortem: the shipped rules detect the attack,
escalation pages, a runbook step runs against a loopback stand-in, the responder
resolves and publishes; then ``vigil verify`` passes over a trail that holds the
incident's own audit records. And ``vigil demo`` does it all in a process of its own."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from datetime import time as clock_time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from api.cli import app
from api.commands.demo import demo_runbooks, loopback_server, stand_in_identity_provider
from api.detection import build_detector
from api.incident_desk import build_incidents
from audit_core.followers import FollowerRunner, open_store
from incident import Actor, is_incident_record
from incident.escalation import ManualClock
from incident.postmortem import render
from incident.simulation import Tenant
from tests.api.test_cli import run_vigil
from tests.stores import SQLiteStore, Store

SHIPPED = Path(__file__).parents[2] / "runbooks"


def test_attack_to_post_mortem_then_vigil_verify_passes(store: Store, tmp_path: Path) -> None:
    ledger = store.open_ledger()
    sim = Tenant.make("acme", users=40)
    now = datetime.now(UTC)
    day = (now - timedelta(days=1)).date()
    attack_at = datetime.combine(day, clock_time(23, 0), UTC)
    ordinary = sim.ordinary_day(day)
    for start in range(0, len(ordinary), 1000):
        ledger.record("acme", ordinary[start : start + 1000])
    attack = ledger.record("acme", sim.credential_stuffing(attack_at, accounts=30))

    with loopback_server(stand_in_identity_provider) as idp:
        runbooks = tmp_path / "runbooks"
        runbooks.mkdir()
        demo_runbooks(runbooks, idp)
        settings = store.settings(
            incident_detector=True,
            incident_rules_dir=str(SHIPPED / "rules"),
            incident_runbooks_dir=str(runbooks),
            incident_default_policy="default",
            incident_allowed_networks="127.0.0.1/32",
            incident_secrets_key="MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
        )
        followers = open_store(settings.ledger_env())
        [detector] = build_detector(settings, ledger, followers)
        FollowerRunner(ledger, detector, followers).drain()
        detector.close()
        followers.close()

        clock = ManualClock(now)
        desk = build_incidents(settings, ledger, clock=clock)
        [incident] = desk.list_incidents("acme")
        assert incident["rule"] == "credential-stuffing"
        incident_id = desk.resolve_ref("acme", incident["id"])
        clock.now = datetime.fromisoformat(incident["triggered_at"])  # the detector's moment
        assert [s["level"] for s in desk.tick()] == [0]
        clock.advance(timedelta(minutes=3))
        responder = Actor("carol@example.com")
        desk.acknowledge("acme", incident_id, responder)
        assert desk.vault is not None
        desk.vault.set("edge_token", "t")
        clock.advance(timedelta(minutes=2))
        ran = desk.run_step("acme", incident_id, "block-source", responder)
        assert ran["step_outcome"] == {"ok": True, "reason": "answered 201"}
        clock.advance(timedelta(minutes=10))
        desk.resolve("acme", incident_id, responder, "address blocked")
        desk.write_postmortem(
            "acme", incident_id, {"root_cause": "Reused passwords", "lessons": "Rate-limit"},
            responder,
        )  # fmt: skip
        markdown = render(desk.incident("acme", incident_id), "md", ledger=ledger)
        desk.close()

    assert "# Post-mortem: INC-" in markdown
    assert "| **Time to acknowledge** | 3m 00s |" in markdown
    assert "| **Time to resolve** | 15m 00s |" in markdown
    assert "paged: level 1 →" in markdown
    assert "step block-source (Block the source address at the edge for 24 hours) ran" in markdown
    assert "Reused passwords" in markdown
    # Every record the rule matched is cited with its seq and hash.
    for record in attack[:20]:
        assert f"| {record['seq']} | auth.login |" in markdown
        assert f"`{record['hash']}` | matches |" in markdown
    trail = ledger.read("acme", limit=100_000)
    actions = [r["action"] for r in trail if is_incident_record(r)]
    assert actions[:3] == ["incident.open", "incident.escalate", "incident.acknowledge"]
    assert "incident.run_step" in actions
    result = CliRunner().invoke(
        app, ["verify", "--tenant", "acme"], env={"VIGIL_DATABASE_URL": store.url}
    )
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"ok      acme: {len(trail)} records")


def test_vigil_demo_seeds_detects_escalates_and_writes_the_post_mortem(
    sqlite_store: SQLiteStore, tmp_path: Path
) -> None:
    result = run_vigil(sqlite_store, tmp_path, "demo", "--tenant", "newcomer")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert re.match(r"1\. recorded \d+ console and app events in tenant newcomer", lines[0])
    assert lines[1].startswith("2. the shipped rules read")
    detected = " ".join(lines)
    for rule in (
        "credential-stuffing", "privilege-escalation-outside-change-window",
        "bulk-export-many-objects", "leaked-token-new-network", "identity-attribute-takeover",
    ):  # fmt: skip
        assert rule in detected
    assert "with a valid HMAC-SHA256 signature" in detected
    assert (
        "automated step block-source (Block the source address at the edge for 24 hours): ok"
        in detected
    )
    assert "8. vigil verify: ok" in detected
    [markdown] = tmp_path.glob("postmortem-INC-*.md")
    assert "Credential stuffing from one address" in markdown.read_text()
    assert (tmp_path / markdown.name.replace(".md", ".html")).exists()
    assert run_vigil(sqlite_store, tmp_path, "verify").returncode == 0
    listed = run_vigil(sqlite_store, tmp_path, "incidents", "list", "--tenant", "newcomer")
    assert listed.stdout.count(" resolved ") == 1
    assert listed.stdout.count(" triggered ") == 4


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["incidents", "show", "INC-00000000"], 3, "no incident"),
        (["incidents", "close", "{ref}"], 4, "resolve it first"),
        (["incidents", "note", "{ref}", ""], 2, "a note holds"),
    ],
)
def test_incident_commands_exit_with_the_documented_codes(
    sqlite_store: SQLiteStore, args: list[str], code: int, message: str
) -> None:
    runner = CliRunner()
    env = {"VIGIL_DATABASE_URL": sqlite_store.url}
    opened = runner.invoke(
        app, ["incidents", "open", "--title", "x", "--severity", "SEV3"], env=env
    )
    assert opened.exit_code == 0, opened.output
    ref = opened.output.split()[1]
    result = runner.invoke(app, [a.replace("{ref}", ref) for a in args], env=env)
    assert result.exit_code == code
    assert message in result.output
