"""``vigil archive init|verify|restore``: the S3 archive's bucket, its verification from
S3 alone, and a ledger rebuilt from it (docs/archive.md)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import orjson
import typer
from rich.markup import escape

from api.archive import bucket_settings, log_keys
from api.cli import _progress, err, fail, load_settings, open_ledger, out
from audit_core.archive.exceptions import (
    ArchiveConfigError,
    ArchiveError,
    ArchiveUnavailableError,
    RestoreError,
)
from audit_core.archive.restore import Restorer
from audit_core.archive.s3 import ArchiveBucket, BucketSettings
from audit_core.archive.verify import WARNINGS, ArchiveVerifier
from audit_core.transparency.exceptions import TransparencyError

archive_app = typer.Typer(
    help="The S3 archive: set up its bucket, verify it from S3 alone, restore from it.",
    no_args_is_help=True,
)


@contextmanager
def archive_errors() -> Iterator[None]:
    """The archive's errors as exit codes: 2 configuration, 4 refused, 5 S3 unavailable."""
    try:
        yield
    except ArchiveConfigError as error:
        fail(str(error), 2)
    except ArchiveUnavailableError as error:
        fail(str(error), 5)
    except RestoreError as error:
        fail(f"restore refused: {error}", 4)
    except (ArchiveError, TransparencyError) as error:
        fail(str(error), 2)
    except OSError as error:
        fail(str(error), 2)


def _where(settings: BucketSettings) -> str:
    return f"s3://{settings.bucket}/{settings.prefix.strip('/')}"


@archive_app.command("init")
def init(
    fix: Annotated[
        bool, typer.Option("--fix", help="Correct what is wrong with an existing bucket.")
    ] = False,
) -> None:
    """Create the bucket (versioning, Object Lock with default retention, encryption,
    public access blocked), or check an existing one and say what is wrong with it."""
    with archive_errors():
        config = bucket_settings(load_settings())
        bucket = ArchiveBucket(config)
        lock = (
            f"Object Lock {config.lock_mode} {config.retention_days} days"
            if config.lock_mode != "OFF"
            else "no Object Lock"
        )
        if not bucket.exists():
            bucket.create()
            out.print(
                f"created bucket {config.bucket}: versioning, {lock} by default, "
                f"{config.encryption} encryption, public access blocked"
            )
            return
        problems = bucket.problems()
        if problems and fix:
            bucket.configure()
            problems = bucket.problems()
        if problems:
            for problem in problems:
                err.print(f"[bold red]problem:[/] {escape(problem)}")
            raise typer.Exit(1)
        out.print(f"bucket {config.bucket} is ready: versioning, {lock}, {config.encryption}")


BucketOption = Annotated[
    str | None,
    typer.Option("--bucket", help="The archive's bucket (default: VIGIL_ARCHIVE_BUCKET)."),
]
PrefixOption = Annotated[
    str | None,
    typer.Option("--prefix", help="Its key prefix (default: VIGIL_ARCHIVE_PREFIX)."),
]


@archive_app.command("verify")
def verify(
    bucket: BucketOption = None,
    prefix: PrefixOption = None,
    tenant: Annotated[
        list[str] | None, typer.Option("--tenant", "-t", help="Only these tenants (repeatable).")
    ] = None,
    key: Annotated[
        list[str] | None,
        typer.Option("--key", help="Trusted verifier key (vkey, or a file of them); repeatable."),
    ] = None,
    ledger_too: Annotated[
        bool,
        typer.Option("--ledger", help="Also compare with the ledger in VIGIL_DATABASE_URL."),
    ] = False,
    json_output: Annotated[
        bool, typer.Option("--json", help="One JSON report per tenant.")
    ] = False,
) -> None:
    """Check the archive from S3 alone: each digest chain, signature and checkpoint, and
    every segment re-hashed here. Exit 1 if anything is missing, invalid or absent."""
    settings = load_settings()
    with archive_errors():
        config = bucket_settings(settings, bucket, prefix)
        keys = log_keys(settings, key)
        if not keys.verifiers:
            fail(
                "no key to check signatures with: give --key VKEY (or a file of vkeys) or "
                "set VIGIL_SIGNING_KEY_FILE",
                2,
            )
        # A record may wait a segment interval to be archived, and the archiver a while
        # longer for S3; beyond that its absence is a problem, not a delay.
        grace = settings.archive_segment_seconds + 600
        verifier = ArchiveVerifier(ArchiveBucket(config), keys, grace_seconds=grace)
        names = tenant or verifier.tenants()
        with _progress() as progress:
            task = progress.add_task(f"verifying {_where(config)}", total=verifier.planned(names))

            def advance(count: int) -> None:
                progress.advance(task, count)

            if ledger_too:
                with open_ledger(settings) as ledger:
                    reports = verifier.verify(tenant, ledger, advance)
            else:
                reports = verifier.verify(names, None, advance)
    if not reports:
        fail(f"no tenant archive under {_where(config)}", 3)
    for report in reports:
        if json_output:
            out.print(orjson.dumps(report.as_dict()).decode(), markup=False)
            continue
        state = "ok     " if report.ok else "BROKEN "
        out.print(
            f"{state} {report.tenant}: {report.segments} segments, {report.records} records "
            f"verified up to seq {report.next_seq - 1}, newest checkpoint size "
            f"{report.checkpoint_size if report.checkpoint_size is not None else '-'}",
            markup=False,
        )
        for finding in report.findings:
            label = "  note   " if finding.kind in WARNINGS else "  PROBLEM"
            out.print(f"{label} {finding}", markup=False)
    if not all(report.ok for report in reports):
        raise typer.Exit(1)


@archive_app.command("restore")
def restore(
    bucket: BucketOption = None,
    prefix: PrefixOption = None,
    tenant: Annotated[
        list[str] | None,
        typer.Option("--tenant", "-t", help="Only these tenants (default: every one)."),
    ] = None,
    key: Annotated[
        list[str] | None,
        typer.Option("--key", help="Trusted verifier key (vkey, or a file of them); repeatable."),
    ] = None,
) -> None:
    """Rebuild tenants' ledgers into the EMPTY database of VIGIL_DATABASE_URL from the
    archive, then prove them against the archived checkpoints."""
    settings = load_settings()
    with archive_errors():
        config = bucket_settings(settings, bucket, prefix)
        keys = log_keys(settings, key)
        if not keys.verifiers:
            fail("no key to check signatures with: give --key or set VIGIL_SIGNING_KEY_FILE", 2)
        restorer = Restorer(ArchiveBucket(config), keys)
        with open_ledger(settings) as ledger, _progress() as progress:
            total = restorer.verifier.planned(tenant or restorer.verifier.tenants())
            checking = progress.add_task("verifying the archive", total=total)
            writing = progress.add_task("restoring", total=total)
            reports = restorer.restore(
                ledger,
                tenant,
                progress=lambda n: progress.advance(writing, n),
                verify_progress=lambda n: progress.advance(checking, n),
            )
    for report in reports:
        out.print(
            f"restored {report.tenant}: {report.records} records from {report.segments} "
            f"segments; tree size {report.tree_size} root {report.root} matches the archived "
            f"digests (newest checkpoint size {report.checkpoint_size})",
            markup=False,
        )
    err.print("next: `vigil verify`, then start the followers to rebuild their views")


def register(app: typer.Typer) -> None:
    app.add_typer(archive_app, name="archive")
