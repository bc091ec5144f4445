"""`vigil archive init|verify|restore` as an operator runs them, with the archiver run
by `vigil rebuild archive`; the restore round trip ends with `vigil verify` and
`vigil archive verify --ledger` on the restored database."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from api.cli import app
from audit_core.transparency.note import Signer
from tests.archive.harness import LOG_ORIGIN, record
from tests.stores import SQLiteStore, Store


class Operator:
    """Runs `vigil` in process with VIGIL_* pointing at moto and a signing key."""

    def __init__(self, s3_endpoint: str, tmp_path: Path, signer: Signer):
        key_file = tmp_path / "signing.key"
        signer.write(key_file)
        self.env = {
            "VIGIL_ARCHIVE_BUCKET": f"vigil-cli-{uuid.uuid4().hex[:16]}",
            "VIGIL_ARCHIVE_PREFIX": "evidence",
            "VIGIL_ARCHIVE_ENDPOINT_URL": s3_endpoint,
            "VIGIL_ARCHIVE_REGION": "eu-west-1",
            "VIGIL_ARCHIVE_ACCESS_KEY_ID": "archiver",
            "VIGIL_ARCHIVE_SECRET_ACCESS_KEY": "archiver-secret",
            "VIGIL_ARCHIVE_RETENTION_DAYS": "1",
            "VIGIL_ARCHIVE_SEGMENT_RECORDS": "500",
            "VIGIL_ARCHIVE_SEGMENT_SECONDS": "0.001",
            "VIGIL_ARCHIVE_CHECKPOINTS": "archive",
            "VIGIL_ARCHIVE_TIMEOUT_SECONDS": "2",
            "VIGIL_SIGNING_KEY_FILE": str(key_file),
            "VIGIL_LOG_ORIGIN": LOG_ORIGIN,
        }
        self.runner = CliRunner()

    def __call__(self, *args: str, database: Store | None = None, **env: str) -> Result:
        values = dict(self.env, **env)
        if database is not None:
            values["VIGIL_DATABASE_URL"] = database.url
        return self.runner.invoke(app, list(args), env=values, catch_exceptions=False)


@pytest.fixture
def vigil(s3_endpoint: str, tmp_path: Path, signer: Signer) -> Operator:
    return Operator(s3_endpoint, tmp_path, signer)


def test_init_creates_a_locked_bucket_then_finds_it_ready(vigil: Operator) -> None:
    created = vigil("archive", "init")
    assert created.exit_code == 0, created.output
    assert "created bucket" in created.output
    assert "Object Lock COMPLIANCE 1 days" in created.output

    again = vigil("archive", "init")
    assert again.exit_code == 0, again.output
    assert "is ready" in again.output


def test_init_says_what_is_wrong_with_an_existing_bucket(vigil: Operator) -> None:
    from api.archive import bucket_settings
    from api.settings import Settings
    from audit_core.archive.s3 import ArchiveBucket

    settings = Settings(**{k[6:].lower(): v for k, v in vigil.env.items()})  # type: ignore[arg-type]
    plain = ArchiveBucket(bucket_settings(settings))
    plain.client.create_bucket(
        Bucket=plain.bucket, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"}
    )

    checked = vigil("archive", "init")

    assert checked.exit_code == 1
    assert "versioning is off" in checked.output
    assert "no default encryption" in checked.output


@pytest.fixture
def source_store(tmp_path: Path) -> Iterator[SQLiteStore]:
    source = SQLiteStore(tmp_path / "source.db")
    yield source
    source.close()


def test_round_trip_archive_verify_restore_verify(
    vigil: Operator, source_store: SQLiteStore, store: Store
) -> None:
    """Archived from SQLite, restored into an empty SQLite file and an empty schema."""
    sqlite_store = source_store
    source = sqlite_store.open_ledger()
    originals = {"acme": record(source, "acme", 1234), "globex": record(source, "globex", 17)}
    assert vigil("archive", "init").exit_code == 0

    archived = vigil("rebuild", "archive", database=sqlite_store)
    assert archived.exit_code == 0, archived.output

    checked = vigil("archive", "verify")
    assert checked.exit_code == 0, checked.output
    assert "ok      acme: 3 segments, 1234 records verified up to seq 1233" in checked.output
    assert "ok      globex: 1 segments, 17 records" in checked.output

    restored = vigil("archive", "restore", database=store)
    assert restored.exit_code == 0, restored.output
    assert "restored acme: 1234 records from 3 segments; tree size 1234" in restored.output

    assert vigil("verify", database=store).exit_code == 0
    compared = vigil("archive", "verify", "--ledger", database=store)
    assert compared.exit_code == 0, compared.output
    ledger = store.open_ledger()
    for tenant, records in originals.items():
        assert ledger.read(tenant, limit=2000) == records

    again = vigil("archive", "restore", database=store)
    assert again.exit_code == 4
    assert "empty database" in again.output


def test_verify_exits_1_naming_a_missing_segment(
    vigil: Operator, sqlite_store: SQLiteStore
) -> None:
    record(sqlite_store.open_ledger(), "acme", 30)
    assert vigil("archive", "init", VIGIL_ARCHIVE_LOCK_MODE="OFF").exit_code == 0
    rebuilt = vigil(
        "rebuild",
        "archive",
        database=sqlite_store,
        VIGIL_ARCHIVE_LOCK_MODE="OFF",
        VIGIL_ARCHIVE_SEGMENT_RECORDS="10",
    )
    assert rebuilt.exit_code == 0, rebuilt.output
    from api.archive import bucket_settings
    from api.settings import Settings
    from audit_core.archive.s3 import ArchiveBucket

    settings = Settings(**{k[6:].lower(): v for k, v in vigil.env.items()})  # type: ignore[arg-type]
    bucket = ArchiveBucket(bucket_settings(settings))
    key = next(k for k in bucket.keys("evidence/acme/") if "000010-" in k and "jsonl" in k)
    for version in bucket.client.list_object_versions(Bucket=bucket.bucket)["Versions"]:
        if version["Key"] == key:
            bucket.delete_version(key, version["VersionId"])

    checked = vigil("archive", "verify", VIGIL_ARCHIVE_LOCK_MODE="OFF")

    assert checked.exit_code == 1
    assert f"missing_segment seq 10-19 ({key})" in checked.output


def test_verify_without_any_key_is_a_configuration_error(vigil: Operator) -> None:
    bucket = vigil.env["VIGIL_ARCHIVE_BUCKET"]
    result = vigil(
        "archive", "verify", "--bucket", bucket, VIGIL_SIGNING_KEY_FILE="", VIGIL_ARCHIVE_BUCKET=""
    )
    assert result.exit_code == 2
    assert "--key" in result.output


def test_an_archive_without_a_signing_key_is_refused_at_start_up(vigil: Operator) -> None:
    result = vigil("status", VIGIL_SIGNING_KEY_FILE="")
    assert result.exit_code == 2
    assert "VIGIL_SIGNING_KEY_FILE is not" in result.output


def test_s3_out_of_reach_is_exit_5(vigil: Operator) -> None:
    result = vigil("archive", "init", VIGIL_ARCHIVE_ENDPOINT_URL="http://127.0.0.1:9")
    assert result.exit_code == 5
    assert "S3 (http://127.0.0.1:9" in result.output
    assert "archiver-secret" not in result.output


def test_an_auditor_verifies_with_the_published_verifier_key_alone(
    vigil: Operator, source_store: SQLiteStore, signer: Signer, tmp_path: Path
) -> None:
    record(source_store.open_ledger(), "acme", 12)
    assert vigil("archive", "init").exit_code == 0
    assert vigil("rebuild", "archive", database=source_store).exit_code == 0
    vkey = tmp_path / "log.vkey"
    vkey.write_text(signer.verifier.vkey + "\n", encoding="utf-8")

    # The auditor's configuration: S3 access, no archive to run, no signing key.
    where = ("--bucket", vigil.env["VIGIL_ARCHIVE_BUCKET"], "--prefix", "evidence")

    def auditor(*args: str) -> Result:
        return vigil(*args, VIGIL_ARCHIVE_BUCKET="", VIGIL_SIGNING_KEY_FILE="")

    trusted = auditor("archive", "verify", *where, "--key", str(vkey))
    stranger = Signer.generate("someone-else").verifier.vkey
    untrusted = auditor("archive", "verify", *where, "--key", stranger)

    assert trusted.exit_code == 0, trusted.output
    assert "ok      acme: 1 segments, 12 records" in trusted.output
    assert untrusted.exit_code == 1
    assert "invalid_digest seq 0-11" in untrusted.output
    assert "no signature by a trusted key" in untrusted.output
