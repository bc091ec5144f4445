"""End to end: `vigil worker` (a real process) runs the archiver beside the transparency
log, from VIGIL_* settings alone; the digests name the transparency log's checkpoints;
`vigil status` and `vigil archive verify` see a complete archive."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson
from typer.testing import CliRunner

from api.cli import app
from audit_core.transparency.note import Signer
from tests.archive.harness import LOG_ORIGIN, record
from tests.stores import SQLiteStore

VIGIL = Path(sys.executable).with_name("vigil")


def archive_lag(cli: CliRunner, env: dict[str, str]) -> int | None:
    statuses = [
        orjson.loads(line)
        for line in cli.invoke(app, ["status", "--json"], env=env).output.splitlines()
        if line.startswith("{")
    ]
    lags = [s["lag_events"] for s in statuses if s["name"] == "archive" and s["position"]]
    return lags[0] if lags else None


def test_worker_archives_everything_with_transparency_checkpoints(
    s3_endpoint: str, sqlite_store: SQLiteStore, signer: Signer, tmp_path: Path
) -> None:
    key_file = tmp_path / "signing.key"
    signer.write(key_file)
    env = {
        "VIGIL_DATABASE_URL": sqlite_store.url,
        "VIGIL_ARCHIVE_BUCKET": f"vigil-worker-{uuid.uuid4().hex[:12]}",
        "VIGIL_ARCHIVE_ENDPOINT_URL": s3_endpoint,
        "VIGIL_ARCHIVE_REGION": "eu-west-1",
        "VIGIL_ARCHIVE_ACCESS_KEY_ID": "archiver",
        "VIGIL_ARCHIVE_SECRET_ACCESS_KEY": "archiver-secret",
        "VIGIL_ARCHIVE_RETENTION_DAYS": "1",
        "VIGIL_ARCHIVE_SEGMENT_RECORDS": "100",
        "VIGIL_ARCHIVE_SEGMENT_SECONDS": "0.5",
        "VIGIL_SIGNING_KEY_FILE": str(key_file),
        "VIGIL_LOG_ORIGIN": LOG_ORIGIN,
    }
    cli = CliRunner()
    assert cli.invoke(app, ["archive", "init"], env=env).exit_code == 0
    ledger = sqlite_store.open_ledger()
    record(ledger, "acme", 250)

    worker = subprocess.Popen(
        [str(VIGIL), "worker", "--only", "archive", "--only", "transparency"],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        record(ledger, "acme", 30, prefix="live")
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and archive_lag(cli, env) != 0:
            time.sleep(0.3)
    finally:
        worker.send_signal(signal.SIGTERM)
        _, stderr = worker.communicate(timeout=30)
    assert worker.returncode == 0, stderr.decode()[-2000:]

    checked = cli.invoke(app, ["archive", "verify", "--ledger"], env=env)
    assert checked.exit_code == 0, checked.output
    assert "ok      acme: 3 segments, 280 records verified up to seq 279" in checked.output
    assert "newest checkpoint size 280" in checked.output
