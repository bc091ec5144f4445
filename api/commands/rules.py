"""``vigil rules check`` and ``vigil rules test``: validate detection rules, and run
them over the recorded trail without opening incidents."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from api.cli import _progress, err, fail, load_settings, open_ledger, out
from api.settings import Settings
from audit_core import Ledger
from incident.detector import Detection, Detector, MemoryIncidentSink
from incident.rules import (
    Rule,
    RuleError,
    RuleSetError,
    duration_seconds,
    load_rule,
    load_rules,
    parse_time,
)

rules_app = typer.Typer(help="Check detection rules and try them on the recorded trail.")


def register(app: typer.Typer) -> None:
    app.add_typer(rules_app, name="rules")


def _load(path: Path) -> list[Rule]:
    """A rule file, or every rule of a directory; exit 2 naming each bad file and line."""
    try:
        return load_rules(path) if path.is_dir() else [load_rule(path)]
    except RuleSetError as errors:
        for error in errors.errors:
            err.print(f"[bold red]refused:[/] {error}", markup=True, highlight=False)
        fail(f"{len(errors.errors)} rule file(s) refused", 2)
    except RuleError as error:
        fail(str(error), 2)


@rules_app.command("check")
def check(
    directory: Annotated[
        Path | None,
        typer.Argument(help="Rule file or directory (default VIGIL_INCIDENT_RULES_DIR)."),
    ] = None,
    runbooks: Annotated[
        bool,
        typer.Option(help="Also check that each rule's runbook is in VIGIL_INCIDENT_RUNBOOKS_DIR."),
    ] = True,
) -> None:
    """Validate rule files; print each rule, or each refusal with its file and line."""
    settings = load_settings()
    path = directory or settings.rules_path()
    if not path.exists():
        fail(f"{path}: no such file or directory", 3)
    rules = _load(path)
    if runbooks:
        _check_runbooks(settings, rules)
    for rule in rules:
        what = rule.correlation.describe() if rule.correlation else "every matching record"
        out.print(
            f"ok  {rule.path}  {rule.id}  {rule.severity}  {what}"
            + (f"  runbook {rule.runbook}" if rule.runbook else ""),
            markup=False,
        )
    out.print(f"{len(rules)} rule(s) valid", markup=False)


def _check_runbooks(settings: Settings, rules: list[Rule]) -> None:
    from api.detection import check_runbooks
    from incident.exceptions import ConfigurationError
    from incident.runbooks import RunbookCatalogue

    try:
        catalogue = RunbookCatalogue.load(settings.runbooks_path())
        check_runbooks(rules, catalogue)
    except ConfigurationError as error:
        fail(f"{error} (VIGIL_INCIDENT_RUNBOOKS_DIR={settings.incident_runbooks_dir})", 2)


def _moment(text: str, option: str) -> datetime:
    now = datetime.now(UTC)
    units = {"m": 60, "h": 3600, "d": 86400}
    if text[:-1].isdigit() and text[-1:] in units:
        return now - timedelta(seconds=int(text[:-1]) * units[text[-1]])
    try:
        moment = datetime.fromisoformat(text.upper().replace("Z", "+00:00"))
    except ValueError:
        fail(
            f"{option} {text!r}: give a time (2026-11-17, 2026-11-17T09:00Z) or an age (7d, 12h)", 2
        )
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _warm_up(text: str | None, rules: list[Rule]) -> timedelta:
    if text == "all":
        return timedelta(days=365 * 1000)
    if text is not None:
        try:
            return duration_seconds(text)
        except ValueError as error:
            fail(f"--warm-up: {error}, or 'all'", 2)
    longest = max(
        (max(r.correlation.timespan, r.correlation.learning) for r in rules if r.correlation),
        default=0.0,
    )
    return timedelta(seconds=longest)


def _first_seq_received_after(ledger: Ledger, tenant: str, moment: datetime) -> int:
    """The first seq recorded at or after ``moment`` (the ledger assigns received_at in
    seq order), by bisection; a record that occurred after ``moment`` cannot have been
    received much before it, the ledger refusing clocks ahead by more than its skew."""
    low, high = 0, ledger.size(tenant)
    stamp = moment.timestamp()
    while low < high:
        middle = (low + high) // 2
        [record] = ledger.read(tenant, from_seq=middle, limit=1)
        if parse_time(record["received_at"]) < stamp:
            low = middle + 1
        else:
            high = middle
    return low


def _records(
    ledger: Ledger, tenant: str, since: datetime, until: datetime | None
) -> Iterator[dict[str, Any]]:
    # A minute beyond the skew allows for two servers' clocks disagreeing a little.
    earliest = since - ledger.limits.max_future_skew - timedelta(minutes=1)
    seq = _first_seq_received_after(ledger, tenant, earliest)
    low, high = since.timestamp(), until.timestamp() if until else None
    while True:
        page = ledger.read(tenant, from_seq=seq, limit=1000)
        for record in page:
            moment = parse_time(record["occurred_at"])
            if moment >= low and (high is None or moment < high):
                yield record
        if len(page) < 1000:
            return
        seq = page[-1]["seq"] + 1


@rules_app.command("test")
def try_rules(
    path: Annotated[Path, typer.Argument(help="Rule file (or directory of rules) to try.")],
    since: Annotated[
        str, typer.Option(help="From this time (2026-11-17, 2026-11-17T09:00Z) or age (7d).")
    ],
    until: Annotated[str | None, typer.Option(help="Up to this time (excluded).")] = None,
    tenant: Annotated[
        list[str] | None,
        typer.Option("--tenant", "-t", help="Only these tenants (repeatable); default all."),
    ] = None,
    evidence: Annotated[
        int, typer.Option(min=0, help="Evidence records to print per incident.")
    ] = 5,
    json_output: Annotated[
        bool, typer.Option("--json", help="One JSON object per incident.")
    ] = False,
    warm_up: Annotated[
        str | None,
        typer.Option(
            help="Also read this long before --since (30m, 7d, or 'all') to fill windows "
            "and learnt values, reporting nothing from it; default: the rules' longest "
            "window or learning period."
        ),
    ] = None,
) -> None:
    """Run rules over the recorded trail and print the incidents they would open.

    Nothing is written: no incident, no state, no position. Records from --warm-up
    before --since only fill the rules' windows and what they learn (who holds an
    e-mail address, which networks a token uses)."""
    rules = _load(path)
    start = _moment(since, "--since")
    end = _moment(until, "--until") if until else None
    read_from = start - _warm_up(warm_up, rules)
    with open_ledger() as ledger:
        names = tenant or ledger.tenants()
        sink = MemoryIncidentSink()
        detector = Detector(rules)
        read = selected = 0
        per_rule: dict[str, int] = {}
        detections: list[Detection] = []
        reported = start.timestamp()

        def process(batch: list[dict[str, Any]]) -> None:
            found = detector.process(batch)
            detections.extend(d for d in found if parse_time(d.last_at) >= reported)

        with _progress() as progress:
            task = progress.add_task("reading the trail", total=None)
            for name in names:
                batch: list[dict[str, Any]] = []
                for record in _records(ledger, name, read_from, end):
                    if parse_time(record["occurred_at"]) >= reported:
                        read += 1
                        own = detector.is_own(record)  # which no rule is offered
                        hits = [r.id for r in rules if not own and r.matches(record)]
                        selected += bool(hits)
                        for rule_id in hits:
                            per_rule[rule_id] = per_rule.get(rule_id, 0) + 1
                    batch.append(record)
                    if len(batch) == 1000:
                        process(batch)
                        progress.advance(task, len(batch))
                        batch = []
                process(batch)
                progress.advance(task, len(batch))
        sink.open_or_attach(detections, detector.take_changes(), None)
        wanted: dict[str, set[int]] = {}
        for incident in sink.incidents.values():
            for item in incident.evidence[:evidence]:
                wanted.setdefault(item.tenant, set()).add(item.seq)
        shown = {
            (name, record["seq"]): record
            for name, seqs in wanted.items()
            for record in ledger.records_at(name, sorted(seqs))
        }
    incidents = sorted(sink.incidents.values(), key=lambda i: (i.detection.first_at, str(i.id)))
    for incident in incidents:
        d = incident.detection
        if json_output:
            out.print(
                orjson.dumps(
                    {
                        "incident": str(incident.id),
                        "rule": d.rule_id,
                        "severity": d.severity,
                        "tenant": d.tenant,
                        "dedup_key": d.dedup_key,
                        "title": d.title,
                        "summary": d.summary,
                        "first_at": d.first_at,
                        "runbook": d.runbook,
                        "evidence": [{"seq": e.seq, "hash": e.hash} for e in incident.evidence],
                    }
                ).decode(),
                markup=False,
            )
            continue
        out.print(
            f"{d.severity}  {d.rule_id}  tenant {d.tenant}  key {d.dedup_key}  "
            f"from {d.first_at}: {d.summary}; {len(incident.evidence)} record(s)",
            markup=False,
        )
        for item in incident.evidence[:evidence]:
            record = shown[(item.tenant, item.seq)]
            actor = record["actor"]
            target = record.get("target") or {}
            out.print(
                f"    seq {item.seq}  {record['occurred_at']}  {record['action']}  "
                f"{record['outcome']}  actor {actor['id']}"
                + (f" ({actor['ip']})" if actor.get("ip") else "")
                + (f"  target {target.get('type')} {target.get('id')}" if target else "")
                + f"  hash {item.hash[:16]}",
                markup=False,
            )
        if len(incident.evidence) > evidence:
            out.print(f"    ... and {len(incident.evidence) - evidence} more", markup=False)
    if len(rules) > 1:
        # Per rule, to tune one among many: what its condition let through, what it opened.
        for rule in rules:
            opened = sum(1 for i in incidents if i.detection.rule_id == rule.id)
            err.print(
                f"  {rule.id}: {per_rule.get(rule.id, 0)} matched, {opened} incident(s)",
                highlight=False,
            )
    err.print(
        f"{read} record(s) read from {len(names)} tenant(s); {selected} matched a rule's "
        f"condition; {len(incidents)} incident(s) would open (nothing was written)",
        highlight=False,
    )
