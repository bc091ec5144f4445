"""Commands of the transparency log: ``vigil keys signing-generate``, ``vigil checkpoint``,
``vigil evidence export|verify``, and the tree checks that ``vigil verify`` runs.

``vigil evidence verify`` needs no database and no ``VIGIL_*`` settings: an auditor runs
it on their own machine with the bundle and the verifier key.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from api.cli import (
    TenantOption,
    _cli_actor,
    err,
    fail,
    load_settings,
    open_ledger,
    out,
)
from api.settings import Settings
from api.transparency import NOT_CONFIGURED, build_log, tree_store, trusted_keys
from audit_core import Ledger
from audit_core.followers import FollowerStore, open_store
from audit_core.readmodel import InvalidQueryError, TrailQuery, trail_view_class
from audit_core.schema import format_timestamp
from audit_core.transparency import (
    NoteError,
    Signer,
    TransparencyError,
    Verifier,
    parse_vkeys,
    tenant_origin,
)
from audit_core.transparency.evidence import export_bundle, gather, verify_bundle
from audit_core.transparency.proofs import TreeReader
from audit_core.transparency.verify import TreeCheck, TreeReport

evidence_app = typer.Typer(help="Evidence bundles that auditors verify offline.")


# -- keys ---------------------------------------------------------------------------------


def signing_generate(
    path: Annotated[Path, typer.Argument(help="File to write the signing key to (new).")],
    name: Annotated[str | None, typer.Option(help="Key name; default: VIGIL_LOG_ORIGIN.")] = None,
) -> None:
    """Write a new Ed25519 signing key for the transparency log (readable by its owner
    only), and print its verifier key. Point VIGIL_SIGNING_KEY_FILE at the file; after a
    rotation, keep the old verifier key in VIGIL_VERIFIER_KEYS."""
    key_name = name or Settings().log_origin
    try:
        signer = Signer.generate(key_name)
        signer.write(path)
    except FileExistsError:
        fail(f"{path} exists; a signing key is never overwritten (choose another file)", 2)
    except (OSError, NoteError) as error:
        fail(f"cannot write a signing key to {path}: {error}", 2)
    err.print(f"wrote a signing key to {path}; set VIGIL_SIGNING_KEY_FILE={path}")
    err.print("verifier key (publish it; each tenant's is this key under its origin):")
    out.print(signer.verifier.vkey, markup=False)


# -- checkpoints --------------------------------------------------------------------------


def checkpoint(
    tenant: TenantOption = "default",
    sign: Annotated[
        bool, typer.Option("--sign", help="Sign a checkpoint of the tree as it is now.")
    ] = False,
) -> None:
    """Print the tenant's latest signed checkpoint (after signing one with --sign)."""
    settings = load_settings()
    with open_ledger(settings) as _:
        store = open_store(settings.ledger_env())
        try:
            log = build_log(settings, store)
            if log.signer is None:
                fail(NOT_CONFIGURED, 2)
            if sign:
                log.sign_due(force=True, tenant=tenant)
            latest = log.store.latest_checkpoint(tenant)
            if latest is None:
                fail(
                    f"tenant {tenant!r} has no signed checkpoint (is the tree follower "
                    "running? `vigil status`)",
                    3,
                )
            out.print(latest.note, end="", markup=False)
        finally:
            store.close()


# -- vigil verify: the tree checks --------------------------------------------------------


def _read_kept(paths: list[Path]) -> list[str]:
    notes: list[str] = []
    for path in paths:
        try:
            notes.append(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as error:
            fail(f"cannot read checkpoint file {path}: {error}", 2)
    return notes


@contextmanager
def tree_checks(
    settings: Settings, ledger: Ledger, tenants: list[str] | None, kept_files: list[Path]
) -> Iterator[dict[str, TreeCheck]]:
    """A tree check per tenant with signed checkpoints (or kept ones), to be given the
    chain's leaves; none without a verifier key or a kept checkpoint."""
    keys = _keys_or_fail(settings)
    kept = _read_kept(kept_files)
    if not keys and not kept:
        yield {}
        return
    store = open_store(settings.ledger_env())
    try:
        trees = tree_store(store, settings)
        names = list(tenants or dict.fromkeys([*ledger.tenants(), *trees.checkpoint_tenants()]))
        kept_by_tenant = _kept_by_tenant(kept, settings, names)
        if tenants is None:
            names += [name for name in kept_by_tenant if name not in names]
        for name in kept_by_tenant:
            if name not in names:
                fail(f"a --checkpoint file is of tenant {name!r}, which --tenant leaves out", 2)
        if not keys:
            fail(
                "--checkpoint needs a verifier key: set VIGIL_SIGNING_KEY_FILE or "
                "VIGIL_VERIFIER_KEYS",
                2,
            )
        yield {name: TreeCheck(trees, name, keys, kept_by_tenant.get(name, [])) for name in names}
    finally:
        store.close()


def _keys_or_fail(settings: Settings) -> list[Verifier]:
    try:
        return trusted_keys(settings)
    except NoteError as error:
        fail(f"VIGIL_SIGNING_KEY_FILE / VIGIL_VERIFIER_KEYS: {error}", 2)


def _kept_by_tenant(kept: list[str], settings: Settings, names: list[str]) -> dict[str, list[str]]:
    """Kept checkpoints by the tenant their origin names (the last path element)."""
    by_tenant: dict[str, list[str]] = {}
    for number, note in enumerate(kept, start=1):
        origin = note.split("\n", 1)[0]
        tenant = origin.rsplit("/", 1)[-1]
        if not origin.startswith(settings.log_origin.rstrip("/") + "/"):
            err.print(
                f"note: checkpoint file {number} has origin {origin!r}, outside "
                f"VIGIL_LOG_ORIGIN {settings.log_origin!r}; checking it as tenant {tenant!r}"
            )
        by_tenant.setdefault(tenant, []).append(note)
    return by_tenant


def print_tree_reports(reports: list[TreeReport], json_output: bool) -> bool:
    """Print the tree checks; True if all passed."""
    for report in reports:
        if json_output:
            out.print(orjson.dumps(report.as_dict()).decode(), markup=False)
        elif report.ok:
            if report.checkpoints:
                out.print(
                    f"ok      {report.tenant}: tree of {report.records} records matches "
                    f"{report.checkpoints} signed checkpoint(s), latest size {report.latest}",
                    markup=False,
                )
        else:
            for problem in report.problems:
                seq = f"first bad seq {problem.seq}, " if problem.seq is not None else ""
                at = f"checkpoint {problem.checkpoint}, " if problem.checkpoint is not None else ""
                out.print(
                    f"BROKEN  {report.tenant}: {at}{seq}({problem.reason}): {problem.detail}",
                    markup=False,
                )
    return all(report.ok for report in reports)


# -- evidence -----------------------------------------------------------------------------


@evidence_app.command("export")
def evidence_export(
    output: Annotated[Path, typer.Option("--output", "-o", help="Bundle file to write (new).")],
    tenant: TenantOption = "default",
    from_seq: Annotated[int | None, typer.Option(min=0, help="First seq of a range.")] = None,
    to_seq: Annotated[int | None, typer.Option(min=0, help="Last seq of a range.")] = None,
    action: Annotated[str | None, typer.Option(help="Exact action or prefix.*")] = None,
    actor_id: Annotated[str | None, typer.Option(help="Actor id.")] = None,
    target_type: Annotated[str | None, typer.Option()] = None,
    target_id: Annotated[str | None, typer.Option()] = None,
    since: Annotated[str | None, typer.Option(help="occurred_at at or after (RFC 3339).")] = None,
    until: Annotated[str | None, typer.Option(help="occurred_at before (RFC 3339).")] = None,
) -> None:
    """Write an evidence bundle: the records of a seq range, or those matching the
    filters, with an inclusion proof each, the signed checkpoint, the verifier keys and
    a manifest. Recorded in the tenant's log as audit.evidence_export."""
    settings = load_settings()
    keys = _keys_or_fail(settings)
    with open_ledger(settings) as ledger:
        store = open_store(settings.ledger_env())
        try:
            log = build_log(settings, store)
            if log.signer is None:
                fail(NOT_CONFIGURED, 2)
            filters = {
                "action": action, "actor_id": actor_id, "target_type": target_type,
                "target_id": target_id, "since": since, "until": until,
            }  # fmt: skip
            selection: dict[str, Any]
            if from_seq is not None or to_seq is not None:
                if any(filters.values()):
                    fail("give either a seq range or filters, not both", 2)
                last = to_seq if to_seq is not None else ledger.size(tenant) - 1
                first = from_seq or 0
                if last < first:
                    fail(f"--to-seq {last} is before --from-seq {first}", 2)
                seqs = list(range(first, last + 1))
                selection = {"from_seq": first, "to_seq": last}
            else:
                seqs, selection = _matching(settings, store, tenant, filters)
            log.sign_due(force=True, tenant=tenant)
            origin = tenant_origin(settings.log_origin, tenant)
            parts = gather(
                ledger,
                TreeReader(log.store),
                tenant,
                seqs,
                origin=origin,
                selection=selection,
                verifier_keys=[key.named(origin).vkey for key in keys],
            )
            try:
                exported = export_bundle(output, **parts)
            except FileExistsError:
                fail(f"{output} exists; choose another file", 2)
            _record_export(ledger, tenant, selection, exported.manifest["count"])
        except TransparencyError as error:
            fail(str(error), 1 if "vigil verify" in str(error) else 3)
        finally:
            store.close()
    manifest = exported.manifest
    err.print(
        f"wrote {output}: {manifest['count']} record(s) of {tenant}, proved against the "
        f"checkpoint of size {manifest['tree_size']}"
        + (
            f"; {manifest['excluded_after_checkpoint']} newer record(s) left out"
            if manifest["excluded_after_checkpoint"]
            else ""
        )
    )
    out.print(f"sha256 {exported.sha256}  {output}", markup=False)


def _matching(
    settings: Settings, store: FollowerStore, tenant: str, filters: dict[str, str | None]
) -> tuple[list[int], dict[str, Any]]:
    """The seqs of the records matching the filters, oldest first, from the read model."""
    from api.routers.events import trail_filters

    try:
        # The same validation and normalisation as the HTTP query's (a plain coroutine).
        query: TrailQuery = asyncio.run(trail_filters(**filters, order="asc"))  # type: ignore[arg-type]
    except InvalidQueryError as error:
        fail(str(error), 2)
    query = replace(query, tenant=tenant)
    view = store.view_recorder(trail_view_class(settings.ledger_env()))
    seqs = [seq for page in view.iter_seqs(query) for seq in page]
    return seqs, {"query": query.filters()}


def _record_export(ledger: Ledger, tenant: str, selection: dict[str, Any], count: int) -> None:
    ledger.record(
        tenant,
        [
            {
                "occurred_at": format_timestamp(datetime.now(UTC)),
                "actor": _cli_actor(),
                "action": "audit.evidence_export",
                "target": {"type": "audit_trail", "id": tenant},
                "outcome": "success",
                "source": "system",
                "metadata": {"selection": selection, "records": count},
            }
        ],
    )


@evidence_app.command("verify")
def evidence_verify(
    bundle: Annotated[Path, typer.Argument(help="The bundle file.")],
    key: Annotated[
        list[str],
        typer.Option(
            "--key",
            "-k",
            help="Trusted verifier key (vkey text, or a file of them); repeatable.",
        ),
    ],
    json_output: Annotated[bool, typer.Option("--json", help="The report as JSON.")] = False,
) -> None:
    """Check a bundle offline (no database, no configuration) and say what it proved."""
    keys: list[Verifier] = []
    for item in key:
        try:
            text = Path(item).read_text(encoding="utf-8") if Path(item).is_file() else item
            keys += parse_vkeys(text)
        except (OSError, UnicodeDecodeError, NoteError) as error:
            fail(f"--key {item[:80]!r}: {error}", 2)
    if not bundle.is_file():
        fail(f"no bundle at {bundle}", 3)
    try:
        report = verify_bundle(bundle, keys)
    except TransparencyError as error:
        if json_output:
            out.print(orjson.dumps({"ok": False, "reason": str(error)}).decode(), markup=False)
        fail(str(error), 1)
    if json_output:
        body = {"ok": True, **{k: v for k, v in report.__dict__.items() if k != "manifest"}}
        out.print(orjson.dumps(body).decode(), markup=False)
        return
    out.print(f"ok      {bundle}", markup=False)
    for line in report.lines():
        out.print(f"        {line}", markup=False)


def register(app: typer.Typer, keys_app: typer.Typer) -> None:
    keys_app.command("signing-generate")(signing_generate)
    app.command("checkpoint")(checkpoint)
    app.add_typer(evidence_app, name="evidence")
