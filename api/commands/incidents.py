"""``vigil incidents ...`` for responders, and ``vigil demo``.

The commands call the incidents application directly (not the HTTP API), with the
operator running the CLI as the responder (``cli:<user>``). Exit codes: 2 bad input or
configuration, 3 no such incident or step, 4 refused (an illegal transition).
"""

from __future__ import annotations

import getpass
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from api.cli import err, fail, load_settings, open_ledger, out
from api.incident_desk import build_incidents
from api.settings import Settings
from incident import (
    Actor,
    ConfigurationError,
    IllegalTransitionError,
    IncidentError,
    IncidentNotFoundError,
    Incidents,
    InvalidIncidentError,
    StepNotFoundError,
    StepRefusedError,
)
from incident.postmortem import duration, publish, render

incidents_app = typer.Typer(
    help="Respond to incidents: list, act, run runbook steps, write post-mortems."
)
secrets_app = typer.Typer(help="Runbook secrets (tokens), stored encrypted; values never shown.")
incidents_app.add_typer(secrets_app, name="secrets")


def register(app: typer.Typer) -> None:
    app.add_typer(incidents_app, name="incidents")
    from api.commands.demo import demo

    app.command("demo")(demo)


TenantOption = Annotated[str, typer.Option("--tenant", "-t", help="The incident's tenant.")]
RefArgument = Annotated[str, typer.Argument(help="Incident id, INC- reference or id prefix.")]
JsonOption = Annotated[bool, typer.Option("--json", help="JSON output.")]


def responder() -> Actor:
    try:
        user = getpass.getuser()
    except (OSError, KeyError):
        user = "unknown"
    return Actor(f"cli:{user}"[:256], "operator")


@contextmanager
def open_desk(settings: Settings | None = None) -> Iterator[Incidents]:
    """The incidents application on the configured database; its errors as exit codes."""
    settings = settings or load_settings()
    with open_ledger(settings) as ledger:
        try:
            desk = build_incidents(settings, ledger)
        except ConfigurationError as error:
            fail(str(error), 2)
        try:
            yield desk
        except (IncidentNotFoundError, StepNotFoundError) as error:
            fail(str(error), 3)
        except IllegalTransitionError as error:
            fail(str(error), 4)
        except (InvalidIncidentError, ConfigurationError, StepRefusedError) as error:
            fail(str(error), 2)
        except IncidentError as error:
            fail(str(error), 2)
        finally:
            desk.close()


def _print(value: Any) -> None:
    out.print(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode(), markup=False)


def _line(item: dict[str, Any]) -> str:
    return (
        f"{item['ref']}  {item['severity']}  {item['status']:<12}  {item['triggered_at'][:19]}  "
        f"{item['rule'] or '-':<36}  {item['title']}"
    )


def show_incident(details: dict[str, Any]) -> None:
    """An incident as a responder reads it in a terminal."""
    out.print(f"{details['ref']}  {details['title']}", markup=False)
    out.print(
        f"  {details['severity']}  {details['status']}  tenant {details['tenant']}  "
        f"rule {details['rule'] or '-'}  commander {details['commander'] or '-'}",
        markup=False,
    )
    d = details["durations"]
    out.print(
        f"  TTD {duration(d['ttd'])}  TTA {duration(d['tta'])}  TTM {duration(d['ttm'])}  "
        f"TTR {duration(d['ttr'])}  evidence {details['evidence_count']} record(s)",
        markup=False,
    )
    for step in details["runbook_steps"]:
        state = step["status"]["outcome"] if step["status"] else "to do"
        out.print(
            f"  step {step['id']:<20} {step['kind']:<6} {state:<9} {step['title']}", markup=False
        )
    for entry in details["timeline"]:
        out.print(f"  {entry['at'][:19]}  {entry['actor']['id']:<24} {entry['text']}", markup=False)


@incidents_app.command("list")
def list_(
    tenant: TenantOption = "default",
    status: Annotated[
        list[str] | None, typer.Option(help="Only these states (repeatable).")
    ] = None,
    severity: Annotated[list[str] | None, typer.Option(help="SEV1..SEV4 (repeatable).")] = None,
    rule: Annotated[str | None, typer.Option(help="Only incidents of this rule.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 50,
    as_json: JsonOption = False,
) -> None:
    """The tenant's incidents, newest first."""
    with open_desk() as desk:
        items = desk.list_incidents(
            tenant,
            status=status or (),
            severity=[s.upper() for s in severity or ()],
            rule=rule,
            limit=limit,
        )
    for item in items:
        out.print(orjson.dumps(item).decode() if as_json else _line(item), markup=False)
    if not items and not as_json:
        err.print(f"no incidents in tenant {tenant}")


@incidents_app.command("show")
def show(ref: RefArgument, tenant: TenantOption = "default", as_json: JsonOption = False) -> None:
    """One incident with its runbook steps and timeline."""
    with open_desk() as desk:
        details = desk.get(tenant, desk.resolve_ref(tenant, ref))
    _print(details) if as_json else show_incident(details)


@incidents_app.command("open")
def open_(
    title: Annotated[str, typer.Option(help="What is happening.")],
    severity: Annotated[str, typer.Option(help="SEV1 (worst) to SEV4.")],
    tenant: TenantOption = "default",
    runbook: Annotated[str | None, typer.Option(help="Runbook to follow.")] = None,
    policy: Annotated[str | None, typer.Option(help="Escalation policy.")] = None,
    evidence: Annotated[
        list[int] | None, typer.Option(help="seq of a record to link (repeatable).")
    ] = None,
) -> None:
    """Open an incident by hand."""
    from incident import Evidence

    with open_desk() as desk:
        records = desk.ledger.records_at(tenant, evidence) if evidence else []
        opened = desk.open(
            tenant, title, severity, runbook=runbook, policy=policy,
            evidence=[Evidence.of_record(r) for r in records], actor=responder(),
        )  # fmt: skip
    out.print(f"opened {opened.ref} ({opened.incident_id})", markup=False)


def _act(ref: str, tenant: str, verb: str, *args: Any) -> None:
    with open_desk() as desk:
        incident_id = desk.resolve_ref(tenant, ref)
        details = getattr(desk, verb)(tenant, incident_id, *args)
    last = details["timeline"][-1]
    out.print(f"{details['ref']} {details['status']}: {last['text']}", markup=False)


@incidents_app.command("ack")
def ack(ref: RefArgument, tenant: TenantOption = "default") -> None:
    """Acknowledge: you are on it; escalation stops."""
    _act(ref, tenant, "acknowledge", responder())


@incidents_app.command("escalate")
def escalate(ref: RefArgument, tenant: TenantOption = "default") -> None:
    """Page the next level of the escalation policy now."""
    _act(ref, tenant, "escalate", responder())


@incidents_app.command("assign")
def assign(
    ref: RefArgument,
    commander: Annotated[str, typer.Argument(help="The new incident commander.")],
    tenant: TenantOption = "default",
) -> None:
    """Make someone the incident commander."""
    _act(ref, tenant, "assign", commander, responder())


@incidents_app.command("note")
def note(
    ref: RefArgument,
    text: Annotated[str, typer.Argument(help="The note.")],
    tenant: TenantOption = "default",
) -> None:
    """Add a note to the timeline."""
    _act(ref, tenant, "note", text, responder())


@incidents_app.command("mitigate")
def mitigate(ref: RefArgument, tenant: TenantOption = "default", note: str = "") -> None:
    _act(ref, tenant, "start_mitigation", responder(), note)


@incidents_app.command("resolve")
def resolve(ref: RefArgument, tenant: TenantOption = "default", note: str = "") -> None:
    _act(ref, tenant, "resolve", responder(), note)


@incidents_app.command("close")
def close(ref: RefArgument, tenant: TenantOption = "default", note: str = "") -> None:
    _act(ref, tenant, "close_incident", responder(), note)


@incidents_app.command("reopen")
def reopen(
    ref: RefArgument,
    reason: Annotated[str, typer.Option(help="Why.")],
    tenant: TenantOption = "default",
) -> None:
    _act(ref, tenant, "reopen", responder(), reason)


@incidents_app.command("decline")
def decline(
    ref: RefArgument,
    reason: Annotated[str, typer.Option(help="Why.")],
    tenant: TenantOption = "default",
) -> None:
    """Not an incident (a false positive, a pen test)."""
    _act(ref, tenant, "decline", responder(), reason)


@incidents_app.command("run-step")
def run_step(
    ref: RefArgument,
    step: Annotated[str, typer.Argument(help="The automated step's id.")],
    tenant: TenantOption = "default",
) -> None:
    """Run an automated runbook step now; exit 1 if it failed (the reason is recorded)."""
    with open_desk() as desk:
        details = desk.run_step(tenant, desk.resolve_ref(tenant, ref), step, responder())
    outcome = details["step_outcome"]
    out.print(
        f"{details['ref']} step {step}: {'ok' if outcome['ok'] else 'FAILED'}: {outcome['reason']}",
        markup=False,
    )
    if not outcome["ok"]:
        raise typer.Exit(1)


@incidents_app.command("complete-step")
def complete_step(
    ref: RefArgument,
    step: Annotated[str, typer.Argument(help="The step's id.")],
    note: Annotated[str, typer.Option(help="What was done.")] = "",
    tenant: TenantOption = "default",
) -> None:
    """Mark a manual runbook step done."""
    _act(ref, tenant, "complete_step", step, responder(), note)


@incidents_app.command("postmortem")
def postmortem(
    ref: RefArgument,
    tenant: TenantOption = "default",
    format: Annotated[str, typer.Option(help="md or html.")] = "md",
    output: Annotated[Path | None, typer.Option(help="Write here instead of stdout.")] = None,
    publish_it: Annotated[
        bool, typer.Option("--publish", help="Record the SHA-256 of both renderings in the ledger.")
    ] = False,
    root_cause: Annotated[str | None, typer.Option(help="Set the root cause first.")] = None,
    lessons: Annotated[str | None, typer.Option(help="Set the lessons learned first.")] = None,
    summary: Annotated[str | None, typer.Option(help="Set the summary first.")] = None,
    impact: Annotated[str | None, typer.Option(help="Set the impact first.")] = None,
    action: Annotated[
        list[str] | None, typer.Option(help="Action item 'title|owner|YYYY-MM-DD' (repeatable).")
    ] = None,
) -> None:
    """Render the post-mortem (after setting the responders' fields given)."""
    settings = load_settings()
    with open_desk(settings) as desk:
        incident_id = desk.resolve_ref(tenant, ref)
        fields: dict[str, Any] = {
            k: v
            for k, v in {
                "root_cause": root_cause,
                "lessons": lessons,
                "summary": summary,
                "impact": impact,
            }.items()
            if v is not None
        }
        if action:
            items = []
            for entry in action:
                title, owner, due = ([*entry.split("|"), "", ""])[:3]
                items.append({"title": title, "owner": owner or None, "due": due or None})
            fields["action_items"] = items
        if fields:
            desk.write_postmortem(tenant, incident_id, fields, responder())
        templates = settings.incident_templates_dir or None
        if publish_it:
            result = publish(desk, tenant, incident_id, responder(), templates)
            text = result["texts"][format]
            err.print(f"published: sha256 {result['sha256']}")
        else:
            text = render(desk.incident(tenant, incident_id), format, templates, desk.ledger)
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text, encoding="utf-8")
        err.print(f"wrote {output}")


@incidents_app.command("metrics")
def metrics(tenant: TenantOption = "default", as_json: JsonOption = False) -> None:
    """Mean time to detect, acknowledge, mitigate and resolve, per severity and rule."""
    with open_desk() as desk:
        result = desk.metrics(tenant)
    if as_json:
        _print(result)
        return
    for group, values in (
        [("all", result["overall"])]
        + [(f"severity {k}", v) for k, v in result["by_severity"].items()]
        + [(f"rule {k}", v) for k, v in result["by_rule"].items()]
    ):
        out.print(
            f"{group:<48} n={values['count']:<4} MTTD {duration(values['mttd'])}  "
            f"MTTA {duration(values['mtta'])}  MTTM {duration(values['mttm'])}  "
            f"MTTR {duration(values['mttr'])}",
            markup=False,
        )


@incidents_app.command("tick")
def tick() -> None:
    """Take the escalation steps due now, once (`vigil worker` does it continuously)."""
    with open_desk() as desk:
        steps = desk.tick()
        desk.sync_audit()
    for step in steps:
        out.print(orjson.dumps(step).decode(), markup=False)


@secrets_app.command("set")
def secrets_set(
    name: Annotated[str, typer.Argument(help="Secret name, as runbooks use it.")],
) -> None:
    """Store a secret, read from stdin (or a hidden prompt); it is encrypted at rest."""
    value = (
        sys.stdin.readline().rstrip("\n")
        if not sys.stdin.isatty()
        else getpass.getpass(f"{name}: ")
    )
    if not value:
        fail("no value given (pipe it on stdin)", 2)
    with open_desk() as desk:
        if desk.vault is None:
            fail("set VIGIL_INCIDENT_SECRETS_KEY (or VIGIL_ENCRYPTION_KEY) to store secrets", 2)
        desk.vault.set(name, value)
    out.print(f"stored secret {name}", markup=False)


@secrets_app.command("list")
def secrets_list() -> None:
    """Secret names (never values), and whether the configured key opens each."""
    with open_desk() as desk:
        if desk.vault is None:
            fail("set VIGIL_INCIDENT_SECRETS_KEY (or VIGIL_ENCRYPTION_KEY) to use secrets", 2)
        listing = desk.vault.listing()
    for name, usable in listing.items():
        out.print(f"{name}\t{'ok' if usable else 'sealed under another key'}", markup=False)


@secrets_app.command("delete")
def secrets_delete(name: str) -> None:
    with open_desk() as desk:
        if desk.vault is None:
            fail("set VIGIL_INCIDENT_SECRETS_KEY (or VIGIL_ENCRYPTION_KEY) to use secrets", 2)
        desk.vault.delete(name)
    out.print(f"deleted secret {name}", markup=False)
