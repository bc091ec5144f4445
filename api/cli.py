"""The ``vigil`` command line: a thin layer over the ledger's application methods.

Exit codes: 0 done, 1 a chain failed verification, 2 bad input or usage,
3 not found, 4 refused (an event id reused with other content), 5 storage unavailable.
"""

from __future__ import annotations

import base64
import getpass
import os
import secrets
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, NoReturn

import orjson
import typer
from eventsourcing.domain import EventSourcingError, OriginatorVersionError
from eventsourcing.persistence import MapperDeserialisationError, PersistenceError
from pydantic import SecretStr, ValidationError
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from api.settings import Settings
from audit_core import (
    DamagedLogError,
    DuplicateEventIdError,
    EventNotFoundError,
    InvalidEventError,
    Ledger,
    LedgerError,
    TenantNotFoundError,
    verify_tenant,
)
from audit_core.application import StoredLog
from audit_core.domain import tenant_log_id
from audit_core.schema import TENANT_PATTERN, format_timestamp, normalise_batch, parse_json
from audit_core.verify import unnamed_log_report

app = typer.Typer(
    name="vigil",
    help="Vigil: hash-chained audit trails you can verify without trusting the server.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

TenantOption = Annotated[
    str, typer.Option("--tenant", "-t", help=f"Tenant whose log to use ({escape(TENANT_PATTERN)}).")
]


def fail(message: str, code: int) -> NoReturn:
    err.print(f"[bold red]error:[/] {escape(message)}")
    raise typer.Exit(code)


def load_settings() -> Settings:
    """``VIGIL_*`` settings, or exit 2 naming every variable at fault."""
    try:
        return Settings()
    except ValidationError as error:
        problems = "; ".join(
            f"VIGIL_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in error.errors()
        )
        fail(f"bad configuration: {problems}", 2)


@contextmanager
def open_ledger(settings: Settings | None = None, *, read_only: bool = False) -> Iterator[Ledger]:
    """Build the ledger from ``VIGIL_*`` settings; turn its errors into exit codes.

    ``read_only``: the command only reads, so a store that does not exist is refused
    (exit 3) instead of created empty."""
    from api.database import DatabaseUnusableError, check_database

    settings = settings or load_settings()
    try:
        check_database(settings, must_exist=read_only)
    except DatabaseUnusableError as error:
        fail(str(error), error.exit_code)
    try:
        ledger = Ledger(settings.ledger_env(), settings.limits())
    except OSError as error:
        fail(f"cannot use VIGIL_DATABASE_URL {settings.redacted_database_url()}: {error}", 2)
    except PersistenceError as error:
        fail(f"cannot open the database at {settings.redacted_database_url()}: {error}", 5)
    try:
        yield ledger
    except InvalidEventError as error:
        fail(str(error), 2)
    except DuplicateEventIdError as error:
        fail(str(error), 4)
    except (EventNotFoundError, TenantNotFoundError) as error:
        fail(str(error), 3)
    except OriginatorVersionError as error:
        fail(f"a tenant's stored log is damaged ({error}); run `vigil verify` to locate it", 1)
    except DamagedLogError as error:
        fail(str(error), 1)
    except MapperDeserialisationError as error:
        fail(
            f"cannot read the stored events ({error}); is VIGIL_ENCRYPTION_KEY the key "
            "they were written with?",
            2,
        )
    except PersistenceError as error:
        fail(f"storage error: {error}", 5)
    finally:
        ledger.close()


def parse_events(text: str, source: str) -> list[tuple[str, Any]]:
    """(where, event) pairs from a JSON object, a JSON array, or JSON Lines."""
    stripped = text.lstrip()
    if not stripped:
        fail(f"{source}: no events", 2)
    if stripped[0] in "[{":
        try:
            whole = parse_json(text)
        except ValueError as error:
            if "duplicate key" in str(error):  # JSON Lines would not make it valid
                fail(f"{source}: not I-JSON: {error}", 2)
            whole = None  # more than one value: JSON Lines
        if isinstance(whole, list):
            return [(f"{source}: element {i}", event) for i, event in enumerate(whole)]
        if isinstance(whole, dict):
            return [(f"{source}: line 1", whole)]
    events: list[tuple[str, Any]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            events.append((f"{source}: line {number}", parse_json(line)))
        except ValueError as error:
            fail(f"{source}: line {number}: not valid JSON: {error}", 2)
    return events


def _located(error: InvalidEventError, where: list[str], offset: int) -> str:
    return "\n".join(
        f"{where[offset + p.index]}"
        + (f", field '{p.field}'" if p.field else "")
        + f": {p.message}"
        for p in error.problems[:20]
    ) + (f"\n... and {len(error.problems) - 20} more" if len(error.problems) > 20 else "")


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    )


def _by_tenant(located: list[tuple[str, Any]], tenant: str | None) -> dict[str, list[int]]:
    """The positions of the events of each tenant, in the order tenants first appear:
    ``--tenant`` for all of them, else the tenant each event names."""
    groups: dict[str, list[int]] = {}
    for index, (where, event) in enumerate(located):
        named = event.get("tenant") if isinstance(event, dict) else None
        if tenant is None and not isinstance(named, str):
            fail(
                f'{where}: the event names no tenant; give --tenant T, or a "tenant" field '
                "in each event; nothing recorded",
                2,
            )
        groups.setdefault(tenant or named, []).append(index)  # type: ignore[arg-type]
    return groups


@app.command()
def record(
    path: Annotated[
        str, typer.Argument(help="File of events (JSON object, array or JSON Lines); - for stdin.")
    ] = "-",
    tenant: Annotated[
        str | None,
        typer.Option(
            "--tenant",
            "-t",
            help='Tenant of every event; without it, each event\'s own "tenant" field.',
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Events per atomic batch.")] = 500,
) -> None:
    """Record audit events. The whole input is validated before anything is recorded;
    each batch (of one tenant) is atomic."""
    source = "stdin" if path == "-" else path
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        fail(f"cannot read {source}: {error}", 2)
    located = parse_events(text, source)
    groups = _by_tenant(located, tenant)
    from api.auth_audit import SYSTEM_TENANT

    if SYSTEM_TENANT in groups:
        fail(f"tenant {SYSTEM_TENANT!r} is Vigil's own log; nothing recorded", 2)
    with open_ledger() as ledger:
        batch_size = min(batch_size, ledger.limits.max_batch_events)
        batches = [
            (name, indexes[start : start + batch_size])
            for name, indexes in groups.items()
            for start in range(0, len(indexes), batch_size)
        ]
        for name, indexes in batches:
            try:
                normalise_batch(
                    [located[i][1] for i in indexes], name, datetime.now(UTC), ledger.limits
                )
            except InvalidEventError as error:
                where = [located[i][0] for i in indexes]
                fail(f"nothing recorded:\n{_located(error, where, 0)}", 2)
        before = {name: ledger.size(name) for name in groups}
        new = dict.fromkeys(groups, 0)
        last: dict[str, dict[str, Any]] = {}
        with _progress() as progress:
            task = progress.add_task(f"recording to {', '.join(groups)}", total=len(located))
            for name, indexes in batches:
                try:
                    records = ledger.record(name, [located[i][1] for i in indexes])
                except DuplicateEventIdError as error:
                    fail(f"{located[indexes[error.index]][0]}: {error}", 4)
                new[name] += sum(1 for r in records if r["seq"] >= before[name])
                last[name] = records[-1]
                progress.advance(task, len(records))
        for name, indexes in groups.items():
            out.print(
                f"recorded {new[name]} new event(s), {len(indexes) - new[name]} already "
                f"present; tenant {name} last seq {last[name]['seq']} hash {last[name]['hash']}"
            )


def _print_record(record: dict[str, Any]) -> None:
    out.print(orjson.dumps(record).decode(), markup=False)


@app.command()
def tail(
    tenant: TenantOption = "default",
    lines: Annotated[int, typer.Option("-n", "--lines", min=1, max=10_000)] = 20,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new records.")
    ] = False,
    interval: Annotated[float, typer.Option(help="Seconds between polls with --follow.")] = 1.0,
) -> None:
    """Print the newest records of a tenant's log as JSON Lines."""
    with open_ledger(read_only=True) as ledger:
        records = ledger.latest(tenant, lines)
        for item in records:
            _print_record(item)
        next_seq = records[-1]["seq"] + 1 if records else 0
        while follow:
            time.sleep(interval)
            for item in ledger.read(tenant, from_seq=next_seq, limit=1000):
                _print_record(item)
                next_seq = item["seq"] + 1


@app.command()
def show(
    event_id: Annotated[str | None, typer.Argument(help="Event id.")] = None,
    tenant: TenantOption = "default",
    seq: Annotated[int | None, typer.Option(min=0, help="Show by position instead of id.")] = None,
) -> None:
    """Print one record, with its seq, prev_hash and hash."""
    if (event_id is None) == (seq is None):
        fail("give either an event id or --seq", 2)
    with open_ledger(read_only=True) as ledger:
        found = (
            ledger.get(tenant, event_id)
            if event_id is not None
            else ledger.get_seq(tenant, seq or 0)
        )
        out.print(orjson.dumps(found, option=orjson.OPT_INDENT_2).decode(), markup=False)


@app.command()
def tenants() -> None:
    """List tenants with their log size and head hash."""
    with open_ledger(read_only=True) as ledger:
        for log in ledger.stored_logs():
            try:
                size, head = ledger.head(log.tenant or "")
                shown = f"{size}\t{head}"
            except (LedgerError, EventSourcingError, PersistenceError):
                # Listed all the same, so that damage cannot hide a tenant.
                shown = "?\tdamaged: run `vigil verify` to locate it"
            typer.echo(f"{log.tenant or f'log:{log.log_id}'}\t{shown}")


@app.command()
def verify(
    tenant: Annotated[
        list[str] | None, typer.Option("--tenant", "-t", help="Only these tenants (repeatable).")
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="One JSON report per tenant.")
    ] = False,
    checkpoint: Annotated[
        list[Path] | None,
        typer.Option(
            "--checkpoint", help="A signed checkpoint kept from earlier: the log must extend it."
        ),
    ] = None,
    jobs: Annotated[
        int,
        typer.Option(
            "--jobs",
            "-j",
            min=1,
            help="Processes reading each long log in ranges at once (a break found is "
            "then located by one process).",
        ),
    ] = 1,
) -> None:
    """Recompute every chain from storage; report the first bad seq of each tenant.
    With a transparency log, also recompute each tenant's tree and check it against
    every signed checkpoint (and the --checkpoint files)."""
    from api.commands.transparency import print_tree_reports, tree_checks

    settings = load_settings()
    with open_ledger(settings, read_only=True) as ledger:
        logs = _logs_to_verify(ledger, tenant)
        total = sum(_size_for_progress(ledger, log.tenant) for log in logs if log.tenant)
        reports = []
        with (
            tree_checks(settings, ledger, tenant, checkpoint or []) as checks,
            _progress() as progress,
        ):
            task = progress.add_task("verifying", total=total)
            for log in logs:
                if log.tenant is None:
                    reports.append(unnamed_log_report(ledger, log))
                    continue
                check = checks.get(log.tenant)
                # The tree is recomputed from the leaves the chain check reads: one pass.
                leaves = check if check is not None and check.needs_records else None
                reports.append(
                    verify_tenant(
                        ledger, log.tenant, lambda n: progress.advance(task, n), leaves, jobs
                    )
                )
            trees = [check.finish() for check in checks.values()]
    for report in reports:
        if json_output:
            out.print(orjson.dumps(report.as_dict()).decode(), markup=False)
        elif report.problem is None:
            out.print(f"ok      {report.tenant}: {report.records} records, head {report.head_hash}")
        else:
            out.print(
                f"BROKEN  {report.tenant}: first bad seq {report.problem.seq} "
                f"({report.problem.reason.value}): {report.problem.detail}",
                markup=False,
            )
    trees_ok = print_tree_reports(trees, json_output)
    if not reports and not trees:
        err.print("no tenant logs to verify")
    if any(not r.ok for r in reports) or not trees_ok:
        raise typer.Exit(1)


def _size_for_progress(ledger: Ledger, tenant: str) -> int:
    """The log's size if it can be loaded; a damaged log is verify's to report, not ours."""
    try:
        return ledger.size(tenant)
    except (EventSourcingError, LedgerError, PersistenceError):
        return 0


def _logs_to_verify(ledger: Ledger, tenants: list[str] | None) -> list[StoredLog]:
    """The named tenants' logs (exit 3 naming those storage holds nothing of), or every
    log storage holds, found from its rows (those no row names included)."""
    if not tenants:
        return ledger.stored_logs()
    unknown = [name for name in tenants if not ledger.has_log(name)]
    if unknown:
        fail(
            f"no audit log for tenant {', '.join(map(repr, unknown))}; `vigil tenants` "
            "lists those there are",
            3,
        )
    return [StoredLog(tenant_log_id(name), name, None) for name in tenants]


@app.command("config")
def config(
    reference: Annotated[
        bool, typer.Option("--reference", help="Every setting with its default and meaning.")
    ] = False,
) -> None:
    """Print the VIGIL_* settings in effect (secrets masked)."""
    from api.settings import settings_reference

    if reference:
        out.print(settings_reference(), markup=False, end="")
        return
    settings = load_settings()
    for name, value in settings.model_dump().items():
        if name == "database_url":
            value = settings.redacted_database_url()
        elif isinstance(getattr(settings, name), SecretStr):
            value = "***"
        out.print(f"VIGIL_{name.upper()}={'' if value is None else value}", markup=False)


@app.command("new-encryption-key")
def new_encryption_key() -> None:
    """Print a fresh AES-256 key for VIGIL_ENCRYPTION_KEY."""
    out.print(base64.b64encode(secrets.token_bytes(32)).decode())


def main() -> None:
    app()


# -- HTTP API (issue 3): serve, keys ------------------------------------------------------


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on (VIGIL_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (VIGIL_PORT).")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes (VIGIL_WORKERS).")] = None,
) -> None:
    """Run the HTTP API (uvicorn) on the configured database, and the followers."""
    import uvicorn

    from api.app import configure_logging, proxy_options
    from api.commands.followers import WorkerSupervisor

    settings = load_settings()
    configure_logging(settings.log_level)
    _refuse_to_serve_unless_usable(
        settings, host or settings.host, port if port is not None else settings.port
    )
    supervisor = None
    if settings.readmodel_follow:
        # The followers run in a process of their own: they neither compete with
        # request handling for the GIL nor race the other workers' followers.
        supervisor = WorkerSupervisor(os.getpid())
        supervisor.start()
    try:
        uvicorn.run(
            "api.app:create_serving_app" if supervisor is not None else "api.app:create_app",
            factory=True,
            host=host or settings.host,
            port=port if port is not None else settings.port,
            workers=workers or settings.workers,
            log_level=settings.log_level,
            access_log=False,
            **proxy_options(settings),
        )
    finally:
        if supervisor is not None:
            supervisor.stop()


def _refuse_to_serve_unless_usable(settings: Settings, host: str, port: int) -> None:
    """Exit 2 naming the setting when the port is taken or the database URL points at
    something that is no database (5 when the database is unreachable), before any
    process starts: uvicorn would exit 1 after the follower process had started."""
    import socket

    from api.database import DatabaseUnusableError, check_database

    if port:
        try:
            socket.create_server((host, port)).close()
        except OSError as error:
            fail(
                f"cannot listen on {host}:{port} ({error.strerror or error}); another process "
                "holds it: set VIGIL_PORT (or --port) to a free port, or stop that process",
                2,
            )
    try:
        check_database(settings, must_exist=False)
    except DatabaseUnusableError as error:
        fail(str(error), error.exit_code)


keys_app = typer.Typer(help="Manage API keys (tokens are shown once, stored hashed).")
app.add_typer(keys_app, name="keys")


def _cli_actor() -> dict[str, Any]:
    try:
        user = getpass.getuser()
    except (OSError, KeyError):
        user = "unknown"
    return {"id": f"cli:{user}"[:256], "type": "operator"}


def _record_key_change(ledger: Ledger, action: str, key: Any) -> None:
    ledger.record(
        key.tenant,
        [
            {
                "occurred_at": format_timestamp(datetime.now(UTC)),
                "actor": _cli_actor(),
                "action": action,
                "target": {"type": "api_key", "id": key.key_id},
                "outcome": "success",
                "source": "system",
                "metadata": key.audit_metadata(),
            }
        ],
    )


@contextmanager
def open_key_store(*, read_only: bool = False) -> Iterator[tuple[Ledger, Any]]:
    from api.keys import ApiKeyError, KeyStore

    settings = load_settings()
    with open_ledger(settings, read_only=read_only) as ledger:
        store = KeyStore(settings.ledger_env())
        try:
            yield ledger, store
        except ApiKeyError as error:
            fail(str(error), 3 if "no API key" in str(error) else 2)
        finally:
            store.close()


def _parse_expiry(expires: str | None) -> datetime | None:
    if expires is None:
        return None
    units = {"m": 60, "h": 3600, "d": 86400}
    if expires[:-1].isdigit() and expires[-1] in units:
        return datetime.now(UTC) + timedelta(seconds=int(expires[:-1]) * units[expires[-1]])
    try:
        moment = datetime.fromisoformat(expires.upper())
    except ValueError:
        fail(f"--expires {expires!r}: give a duration (90d, 12h, 30m) or an RFC 3339 time", 2)
    if moment.tzinfo is None:
        fail(f"--expires {expires!r}: needs a time zone offset", 2)
    return moment


@keys_app.command("create")
def keys_create(
    tenant: TenantOption,
    role: Annotated[
        list[str], typer.Option("--role", "-r", help="ingest, analyst, responder, auditor, admin.")
    ],
    expires: Annotated[
        str | None, typer.Option(help="Expiry: a duration (90d, 12h) or an RFC 3339 time.")
    ] = None,
    network: Annotated[
        list[str] | None, typer.Option("--network", help="Allowed client CIDR (repeatable).")
    ] = None,
    description: Annotated[str, typer.Option(help="What the key is for.")] = "",
    all_tenants: Annotated[
        bool,
        typer.Option(
            "--all-tenants",
            help="An operator key: its roles apply to every tenant (--tenant is its home, "
            "where its own actions are recorded). Without it a key, admin included, "
            "reaches only its tenant.",
        ),
    ] = False,
) -> None:
    """Create an API key and print its token, once; only its hash is stored."""
    expires_at = _parse_expiry(expires)
    with open_key_store() as (ledger, store):
        key, token = store.create(
            tenant,
            role,
            expires_at=expires_at,
            networks=network or (),
            description=description,
            all_tenants=all_tenants,
        )
        _record_key_change(ledger, "api_key.create", key)
    scope = "every tenant (operator key)" if key.all_tenants else f"tenant {key.tenant}"
    err.print(
        f"created key {key.key_id} for {scope} ({', '.join(key.roles)}); "
        "the token below is not shown again:"
    )
    out.print(token, markup=False)


@keys_app.command("list")
def keys_list(
    tenant: Annotated[str | None, typer.Option("--tenant", "-t", help="Only this tenant.")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="JSON Lines.")] = False,
) -> None:
    """List keys (ids, tenants, roles, expiry, networks, revocation), never tokens."""
    with open_key_store(read_only=True) as (_, store):
        keys = store.list(tenant)
    now = datetime.now(UTC)
    for key in keys:
        if json_output:
            out.print(orjson.dumps(key.public()).decode(), markup=False)
            continue
        state = "revoked" if key.revoked_at else "expired" if key.is_expired(now) else "active"
        expiry = key.expires_at.isoformat() if key.expires_at else "-"
        scope = "ALL-TENANTS" if key.all_tenants else "tenant-only"
        out.print(
            f"{key.key_id}\t{key.tenant}\t{scope}\t{','.join(key.roles)}\t{state}\t"
            f"expires {expiry}\t{','.join(key.networks) or 'any network'}\t{key.description}",
            markup=False,
        )


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="Key id (shown by keys list).")],
) -> None:
    """Revoke a key; requests with it are refused from now on."""
    with open_key_store() as (ledger, store):
        key, revoked = store.revoke(key_id)
        if revoked:  # a second revocation changes nothing, so it records nothing
            _record_key_change(ledger, "api_key.revoke", key)
    if not revoked:
        out.print(f"{key.key_id} ({key.tenant}) was already revoked at {key.revoked_at}")
        return
    out.print(f"revoked {key.key_id} ({key.tenant})")


# Sub-commands of each area, registered last: their modules import this one.
from api.commands import followers as _followers  # noqa: E402

_followers.register(app)
__import__("api.commands.archive", fromlist=["register"]).register(app)
__import__("api.commands.transparency", fromlist=["register"]).register(app, keys_app)
__import__("api.commands.rules", fromlist=["register"]).register(app)
__import__("api.commands.incidents", fromlist=["register"]).register(app)
__import__("api.commands.graylog", fromlist=["register"]).register(app)
