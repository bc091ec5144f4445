"""``vigil keys signing-generate``, ``vigil checkpoint``, ``vigil verify`` with the tree
checks and ``--checkpoint``, and ``vigil evidence export|verify`` (verify as a real
process with no configuration and no database)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from api.cli import app
from audit_core.transparency import Signer, open_checkpoint
from tests.stores import Store
from tests.transparency.conftest import ORIGIN, OpenedLog
from tests.transparency.test_tamper import rewrite_tail

VIGIL = Path(sys.executable).with_name("vigil")


class Cli:
    def __init__(self, store: Store, key_file: Path):
        self.store = store
        self.key_file = key_file
        self.runner = CliRunner()

    def __call__(self, *args: str) -> Result:
        return self.runner.invoke(
            app,
            list(args),
            env={
                "VIGIL_DATABASE_URL": self.store.url,
                "VIGIL_SIGNING_KEY_FILE": str(self.key_file),
                "VIGIL_LOG_ORIGIN": ORIGIN,
            },
            catch_exceptions=False,
        )


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "signing.key"
    result = CliRunner().invoke(app, ["keys", "signing-generate", str(path), "--name", ORIGIN])
    assert result.exit_code == 0, result.output
    return path


@pytest.fixture
def logged(store: Store, key_file: Path) -> OpenedLog:
    opened = OpenedLog(store, signer=Signer.from_file(key_file))
    opened.record("acme", 12)
    opened.follow()
    return opened


def test_signing_generate_writes_a_private_key_and_prints_its_verifier_key(
    key_file: Path, tmp_path: Path
) -> None:
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert Signer.from_file(key_file).name == ORIGIN
    again = CliRunner().invoke(app, ["keys", "signing-generate", str(key_file)])
    assert again.exit_code == 2
    assert "never overwritten" in again.output
    fresh = CliRunner().invoke(app, ["keys", "signing-generate", str(tmp_path / "new.key")])
    assert fresh.stdout.strip() == Signer.from_file(tmp_path / "new.key").verifier.vkey


def test_checkpoint_prints_the_latest_signed_note(
    logged: OpenedLog, store: Store, key_file: Path
) -> None:
    cli = Cli(store, key_file)
    logged.record("acme", 3, prefix="more")
    logged.runner.drain()
    result = cli("checkpoint", "--tenant", "acme", "--sign")
    assert result.exit_code == 0, result.output
    checkpoint = open_checkpoint(result.stdout, [logged.signer.verifier])
    assert checkpoint.size == 15
    missing = cli("checkpoint", "--tenant", "nobody")
    assert missing.exit_code == 3


def test_verify_checks_every_tree_and_names_a_consistent_rewrite(
    logged: OpenedLog, store: Store, key_file: Path
) -> None:
    cli = Cli(store, key_file)
    result = cli("verify")
    assert result.exit_code == 0, result.output
    assert "acme: tree of 12 records matches 1 signed checkpoint(s), latest size 12" in (
        result.stdout
    )
    rewrite_tail(store, "acme", 8, 11)
    broken = cli("verify")
    assert broken.exit_code == 1
    assert "BROKEN  acme: checkpoint 12, first bad seq 8, (root_mismatch)" in broken.stdout


def test_verify_against_a_kept_checkpoint_when_the_stored_ones_are_gone(
    logged: OpenedLog, store: Store, key_file: Path, tmp_path: Path
) -> None:
    cli = Cli(store, key_file)
    kept = tmp_path / "kept.checkpoint"
    kept.write_text(cli("checkpoint", "--tenant", "acme").stdout)
    assert cli("verify", "--checkpoint", str(kept)).exit_code == 0
    rewrite_tail(store, "acme", 10, 11)
    schema = getattr(store, "schema", None)
    store._run(f"DELETE FROM {f'{chr(34)}{schema}{chr(34)}.' if schema else ''}tlog_checkpoints")
    result = cli("verify", "--checkpoint", str(kept), "--json")
    assert result.exit_code == 1
    assert '"first_bad_seq":10' in result.stdout
    assert "kept checkpoint 1" in result.stdout


def test_an_evidence_bundle_exported_verifies_offline_in_a_bare_process(
    logged: OpenedLog, store: Store, key_file: Path, tmp_path: Path
) -> None:
    cli = Cli(store, key_file)
    bundle = tmp_path / "evidence.zip"
    result = cli("evidence", "export", "-t", "acme", "--from-seq", "2", "--to-seq", "9",
                 "-o", str(bundle))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("sha256 ")
    vkey = logged.signer.verifier.named(f"{ORIGIN}/acme").vkey
    bare = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)}
    verified = subprocess.run(
        [str(VIGIL), "evidence", "verify", str(bundle), "--key", vkey],
        env=bare, cwd=tmp_path, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert verified.returncode == 0, verified.stderr
    assert "seq 2 to 9 is complete" in verified.stdout
    assert not (tmp_path / "vigil.db").exists()  # no database was opened
    other = Signer.generate(ORIGIN).verifier.vkey
    refused = subprocess.run(
        [str(VIGIL), "evidence", "verify", str(bundle), "--key", other],
        env=bare, cwd=tmp_path, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert refused.returncode == 1
    assert "no signature by a trusted key" in refused.stderr
    trail = logged.ledger.read("acme", limit=100)
    exported = [r for r in trail if r["action"] == "audit.evidence_export"]
    assert exported[-1]["metadata"]["records"] == 8


def test_after_a_key_rotation_earlier_checkpoints_verify_with_the_old_key_kept(
    logged: OpenedLog, store: Store, tmp_path: Path, key_file: Path
) -> None:
    old_vkey = Signer.from_file(key_file).verifier.vkey
    new_key = tmp_path / "new.key"
    CliRunner().invoke(app, ["keys", "signing-generate", str(new_key), "--name", ORIGIN])
    logged.record("acme", 2, prefix="after")
    logged.runner.drain()
    rotated = Cli(store, new_key)
    env = {"VIGIL_VERIFIER_KEYS": old_vkey}
    signed = rotated.runner.invoke(
        app, ["checkpoint", "-t", "acme", "--sign"], env={**_env(rotated), **env}
    )
    assert signed.exit_code == 0, signed.output
    verified = rotated.runner.invoke(app, ["verify"], env={**_env(rotated), **env})
    assert verified.exit_code == 0, verified.output
    assert "matches 2 signed checkpoint(s), latest size 14" in verified.stdout
    forgotten = rotated("verify")
    assert forgotten.exit_code == 1
    assert "checkpoint 12, (bad_signature)" in forgotten.stdout


def _env(cli: Cli) -> dict[str, str]:
    return {
        "VIGIL_DATABASE_URL": cli.store.url,
        "VIGIL_SIGNING_KEY_FILE": str(cli.key_file),
        "VIGIL_LOG_ORIGIN": ORIGIN,
    }
