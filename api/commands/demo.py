"""``vigil demo``: a trail, an incident and its post-mortem, within a minute.

On the configured database (the embedded SQLite by default) it records two days of a
simulated tenant's console and app activity with five attacks in it, runs the shipped
detection rules over it, pages the escalation policy (on a simulated clock) to a signed
webhook receiver it starts on loopback, runs an automated runbook step against a
stand-in identity provider it also starts on loopback, resolves the incident and writes
its post-mortem. The shipped runbooks are used as they are, except that their hosts are
pointed at the stand-in (a copy in a temporary directory): that, and the demo's own
network allowance for 127.0.0.1, is what lets it call loopback at all.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from datetime import time as clock_time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Annotated, Any

import typer

from api.cli import err, fail, load_settings, open_ledger, out
from api.commands.incidents import show_incident
from api.incident_desk import build_incidents
from api.settings import SHIPPED_RUNBOOKS, Settings
from audit_core import Ledger, verify_tenant
from incident import Actor, Evidence, IncidentError, Incidents
from incident.escalation import ManualClock
from incident.notify import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify_signature
from incident.postmortem import duration, publish
from incident.simulation import Tenant

_HOSTS = re.compile(r"https://(?:edge|idp|auth)\.example\.com")
_ALLOWLIST = re.compile(r"^allowlist: \[.*\]$", re.MULTILINE)

POSTMORTEM = {
    "summary": "A leaked credential list was replayed against 40 accounts from one address.",
    "impact": "No login succeeded; 40 users were asked to reset their password.",
    "root_cause": "Passwords reused from a third-party breach; no rate limit per source address.",
    "lessons": "Rate-limit failed logins per address at the edge; offer passkeys.",
}
ACTION_ITEM = "Rate-limit failed logins per source address"

Handler = Callable[[str, str, dict[str, str], bytes], tuple[int, Any]]


@contextmanager
def loopback_server(handle: Handler) -> Iterator[str]:
    """An HTTP server on 127.0.0.1 answering JSON from ``handle``; yields its base URL."""

    class Request(BaseHTTPRequestHandler):
        def _any(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            status, answer = handle(self.command, self.path, dict(self.headers.items()), body)
            payload = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = _any  # noqa: N815 (http.server's names)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Request)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def stand_in_identity_provider(
    method: str, path: str, headers: dict[str, str], body: bytes
) -> tuple[int, Any]:
    """Answers as the runbooks' edge and identity provider APIs would."""
    if path.startswith("/oauth2/token"):
        return 200, {"access_token": "demo-access-token", "token_type": "Bearer", "expires_in": 300}
    if path.startswith("/v1/blocklist"):
        return 201, {"id": "blk-demo-1", "status": "active"}
    if path.endswith("/roles/revoke"):
        return 200, {"user": path.split("/")[3], "roles": ["agent"]}
    if path.startswith("/v1/sessions/revoke"):
        return 200, {"revoked": 3}
    if path.startswith("/v1/tokens/revoke"):
        return 200, {"revoked": True}
    if path.endswith("/lock"):
        return 200, {"user": path.split("/")[3], "locked": True}
    return 404, {"error": "not found"}


def demo_runbooks(directory: Path, base_url: str) -> None:
    """The shipped runbooks and policies, their hosts pointed at the stand-in."""
    for source in SHIPPED_RUNBOOKS.glob("*"):
        if source.suffix in (".yaml", ".yml", ".md"):
            text = _HOSTS.sub(base_url, source.read_text(encoding="utf-8"))
            (directory / source.name).write_text(_ALLOWLIST.sub("allowlist: [127.0.0.1]", text))
    shutil.copytree(SHIPPED_RUNBOOKS / "policies", directory / "policies")


def seed(tenant: str, now: datetime) -> list[dict[str, Any]]:
    """Two ordinary days of a 60-person tenant, then five attacks on the evening of the
    second, all in the past, in time order."""
    sim = Tenant.make(tenant, users=60, seed=7)
    first, second = (now - timedelta(days=2)).date(), (now - timedelta(days=1)).date()
    events = sim.directory(datetime.combine(first, clock_time(6), UTC))
    events += sim.ordinary_day(first) + sim.ordinary_day(second)
    evening = datetime.combine(second, clock_time(22, 30), UTC)
    users = sim.users
    events += sim.credential_stuffing(evening, accounts=40)
    events += sim.privilege_escalation(evening + timedelta(minutes=12), users[1], users[12])
    events += sim.bulk_export(evening + timedelta(minutes=20), users[20], objects=80)
    events += sim.leaked_token(evening + timedelta(minutes=31), sim.integrations[0])
    events += sim.identity_takeover(evening + timedelta(minutes=40), users[30], users[31])
    return sorted(events, key=lambda e: str(e["occurred_at"]))


def record(ledger: Ledger, tenant: str, events: list[dict[str, Any]]) -> int:
    for start in range(0, len(events), 1000):
        ledger.record(tenant, events[start : start + 1000])
    return len(events)


def detect(settings: Settings, ledger: Ledger, tenant: str) -> str:
    """Run the detector follower over the ledger until it has caught up; say how."""
    try:
        from api.detection import build_detector
        from audit_core.followers import FollowerRunner, open_store
    except ImportError as error:  # the detector is another part of Vigil
        return f"detection did not run (not installed: {error})"
    store = open_store(settings.ledger_env())
    try:
        followers = build_detector(settings, ledger, store)
        if not followers:
            return "detection did not run (VIGIL_INCIDENT_DETECTOR is off)"
        [detector] = followers
        try:
            if not store.leadership.try_lead(detector.name):
                return "a running worker leads the detector: it is detecting in the background"
            processed = FollowerRunner(ledger, detector, store).drain()
        finally:
            detector.close()
        return f"the shipped rules read {processed} new record(s) of the ledger"
    finally:
        store.close()


def demo(
    tenant: Annotated[
        str | None,
        typer.Option("--tenant", "-t", help="Tenant to seed (default: a new demo-<time>)."),
    ] = None,
    output_dir: Annotated[Path, typer.Option(help="Where to write the post-mortem.")] = Path("."),
) -> None:
    """Seed a tenant with activity and attacks, detect them, escalate, run an automated
    runbook step and write the post-mortem, on the configured database."""
    started = time.monotonic()
    base = load_settings()
    now = datetime.now(UTC)
    tenant = tenant or f"demo-{now:%Y%m%d-%H%M%S}"
    secret = base64.b64encode(os.urandom(32)).decode()
    received: list[tuple[bool, dict[str, Any]]] = []

    def webhook(method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, Any]:
        ok = verify_signature(
            secret.encode(),
            body,
            headers.get(TIMESTAMP_HEADER, ""),
            headers.get(SIGNATURE_HEADER, ""),
        )
        received.append((ok, json.loads(body)))
        return (200, {"ok": True}) if ok else (401, {"error": "bad signature"})

    with (
        tempfile.TemporaryDirectory(prefix="vigil-demo-") as scratch,
        loopback_server(stand_in_identity_provider) as idp,
        loopback_server(webhook) as hooks,
    ):
        runbooks = Path(scratch)
        demo_runbooks(runbooks, idp)
        settings = base.model_copy(
            update={
                "incident_detector": True,
                "incident_runbooks_dir": str(runbooks),
                "incident_rules_dir": str(SHIPPED_RUNBOOKS / "rules"),
                "incident_default_policy": "default",
                "incident_allowed_networks": "127.0.0.1/32",
                "webhook_urls": f"on-call={hooks}/hook",
                "webhook_secret": _secret(secret),
                "smtp_host": "",
            }
        )
        if settings.incident_secrets_key is None and settings.encryption_key is None:
            # A key for this run only: what it seals is tagged with the key's id and
            # left alone by any other key.
            settings = settings.model_copy(
                update={"incident_secrets_key": _secret(base64.b64encode(os.urandom(32)).decode())}
            )
        with open_ledger(settings) as ledger:
            events = seed(tenant, now)
            record(ledger, tenant, events)
            out.print(
                f"1. recorded {len(events)} console and app events in tenant {tenant} "
                f"({settings.redacted_database_url()})",
                markup=False,
            )
            try:
                how = detect(settings, ledger, tenant)
            except IncidentError as error:
                how = f"detection did not run ({error})"
            out.print(f"2. {how}", markup=False)
            clock = ManualClock(datetime.now(UTC))
            try:
                desk = build_incidents(settings, ledger, clock=clock)
            except IncidentError as error:
                fail(str(error), 2)
            try:
                background = how.startswith("a running worker")
                _respond(
                    desk, ledger, tenant, events, clock, received, output_dir, settings, background
                )
            except IncidentError as error:
                fail(f"the demo stopped: {error}", 2)
            finally:
                desk.close()
            report = verify_tenant(ledger, tenant)
    out.print(
        f"8. vigil verify: {'ok' if report.ok else 'BROKEN'} ({report.records} records of "
        f"{tenant}, incident actions included), in {time.monotonic() - started:.1f} s in all",
        markup=False,
    )
    out.print(f"\nNext: vigil incidents list --tenant {tenant}", markup=False)


def _secret(value: str) -> Any:
    from pydantic import SecretStr

    return SecretStr(value)


def _respond(
    desk: Incidents,
    ledger: Ledger,
    tenant: str,
    events: list[dict[str, Any]],
    clock: ManualClock,
    received: list[tuple[bool, dict[str, Any]]],
    output_dir: Path,
    settings: Settings,
    background: bool,
) -> None:
    assert desk.vault is not None
    for name in ("edge_token", "idp_token", "idp_client_secret"):
        desk.vault.set(name, f"demo-{name}")
    incidents = desk.list_incidents(tenant)
    deadline = time.monotonic() + 20
    while not incidents and background and time.monotonic() < deadline:
        time.sleep(0.5)  # a running worker's detector is reading the new records
        incidents = desk.list_incidents(tenant)
    if not incidents:
        # Honest fallback: no detector ran, so open the stuffing incident by hand.
        attack = [e["id"] for e in events if e["actor"].get("ip") == "185.100.87.41"]
        records = [ledger.get(tenant, event_id) for event_id in attack]
        desk.open(
            tenant, "Credential stuffing from 185.100.87.41 (opened by the demo)", "SEV2",
            rule=None, runbook="credential-stuffing", policy="default",
            evidence=[Evidence.of_record(r) for r in records],
        )  # fmt: skip
        incidents = desk.list_incidents(tenant)
        out.print(
            "   no detector: the demo opened the credential stuffing incident itself", markup=False
        )
    for item in incidents:
        out.print(
            f"   {item['ref']} {item['severity']} {item['rule'] or '-'}: {item['title']}",
            markup=False,
        )
    main = next((i for i in incidents if (i["rule"] or "").startswith("credential")), incidents[-1])
    incident_id = desk.resolve_ref(tenant, main["id"])

    steps = desk.tick(tenants=[tenant])
    clock.advance(timedelta(minutes=5))
    steps += desk.tick(tenants=[tenant])
    signed = sum(1 for ok, _ in received if ok)
    out.print(
        f"3. escalation: {len(steps)} step(s) paged on a simulated clock (level 1 at once, "
        f"level 2 after 5 minutes unacknowledged); the webhook receiver got {len(received)} "
        f"notification(s), {signed} with a valid HMAC-SHA256 signature",
        markup=False,
    )
    clock.advance(timedelta(minutes=1))
    paged = [e for e in desk.get(tenant, incident_id)["timeline"] if e["kind"] == "escalation"]
    alice = Actor(paged[0]["detail"]["targets"][0] if paged else "alice@example.com")
    desk.acknowledge(tenant, incident_id, alice)
    out.print(f"4. {main['ref']} acknowledged by {alice.id}; its escalation stopped", markup=False)
    details = desk.get(tenant, incident_id)
    automated = [s for s in details["runbook_steps"] if s["kind"] == "http"]
    for step in automated[:1]:
        clock.advance(timedelta(minutes=2))
        ran = desk.run_step(tenant, incident_id, step["id"], alice)
        out.print(
            f"5. automated step {step['id']} ({step['title']}): "
            f"{'ok' if ran['step_outcome']['ok'] else 'FAILED'}: {ran['step_outcome']['reason']}",
            markup=False,
        )
    for step in details["runbook_steps"]:
        if step["kind"] == "manual":
            clock.advance(timedelta(minutes=3))
            desk.complete_step(tenant, incident_id, step["id"], alice, "done in the demo")
    clock.advance(timedelta(minutes=4))
    desk.resolve(tenant, incident_id, alice, "source blocked, accounts reset")
    due = (datetime.now(UTC) + timedelta(days=14)).date().isoformat()
    owner = alice.id
    desk.write_postmortem(
        tenant,
        incident_id,
        {**POSTMORTEM, "action_items": [{"title": ACTION_ITEM, "owner": owner, "due": due}]},
        alice,
    )
    out.print(
        f"6. {main['ref']} resolved; root cause, lessons and an action item written", markup=False
    )
    published = publish(desk, tenant, incident_id, alice, settings.incident_templates_dir or None)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt, text in published["texts"].items():
        path = output_dir / f"postmortem-{main['ref']}.{fmt}"
        path.write_text(text, encoding="utf-8")
        paths.append(str(path))
    final = desk.get(tenant, incident_id)
    d = final["durations"]
    out.print(
        f"7. post-mortem written to {' and '.join(paths)}; its SHA-256 recorded in the ledger "
        f"(TTD {duration(d['ttd'])}, TTA {duration(d['tta'])}, TTM {duration(d['ttm'])}, "
        f"TTR {duration(d['ttr'])})",
        markup=False,
    )
    if err.is_terminal:
        show_incident(final)
