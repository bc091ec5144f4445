"""The archiver SIGKILLed at its worst moments, then restarted: every record ends up in
exactly one segment, each segment written once, and the archive verifies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from audit_core.archive.digests import LogKeys
from audit_core.archive.s3 import ArchiveBucket
from audit_core.archive.verify import ArchiveVerifier
from audit_core.transparency.note import Signer
from tests.archive.harness import archived_lines, archived_objects, line_hashes, record
from tests.stores import Store

ROOT = Path(__file__).parents[2]


def run_archiver(store: Store, bucket: ArchiveBucket, key_file: Path, mode: str) -> int:
    env = {**os.environ, "VIGIL_DATABASE_URL": store.url}
    endpoint = bucket.settings.endpoint_url
    assert endpoint is not None
    command = [sys.executable, "-m", "tests.archive.archiver_process", endpoint]
    result = subprocess.run(
        [*command, bucket.bucket, str(key_file), mode],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=300,
        check=False,
    )
    assert result.returncode in (0, -signal.SIGKILL), result.stderr.decode()[-2000:]
    return result.returncode


@pytest.mark.parametrize("crash", ["before-digest:3", "after-pages:4"])
def test_killed_mid_segment_then_restarted_archives_each_record_once(
    store: Store,
    bucket: ArchiveBucket,
    signer: Signer,
    keys: LogKeys,
    tmp_path: Path,
    crash: str,
) -> None:
    key_file = tmp_path / "signing.key"
    signer.write(key_file)
    ledger = store.open_ledger()
    records = {"acme": record(ledger, "acme", 44), "globex": []}
    for round_ in range(3):  # interleave the tenants' notifications
        records["globex"] += record(ledger, "globex", 6, prefix=f"g{round_}")
        records["acme"] += record(ledger, "acme", 5, prefix=f"a{round_}")

    assert run_archiver(store, bucket, key_file, crash) == -signal.SIGKILL
    records["acme"] += record(ledger, "acme", 3, prefix="after-crash")
    assert run_archiver(store, bucket, key_file, crash) == -signal.SIGKILL
    assert run_archiver(store, bucket, key_file, "finish") == 0

    for tenant, expected in records.items():
        objects = archived_objects(bucket, tenant)
        ranges = sorted(objects["segment"])
        assert [first for first, _ in ranges] == [0, *[last + 1 for _, last in ranges[:-1]]]
        assert ranges[-1][1] == len(expected) - 1
        assert sorted(objects["digest"]) == ranges
        assert line_hashes(archived_lines(bucket, tenant)) == [r["hash"] for r in expected]
    versions = bucket.client.list_object_versions(Bucket=bucket.bucket)["Versions"]
    assert len(versions) == len({v["Key"] for v in versions}), "an object was written twice"
    reports = ArchiveVerifier(bucket, keys).verify(ledger=ledger)
    assert all(report.ok for report in reports), [r.findings for r in reports]
