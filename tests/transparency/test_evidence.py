"""Evidence bundles: exported from a log, verified offline with only the verifier key,
and refused, with the reason, whatever was done to them."""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
import rfc8785

from audit_core.transparency import EvidenceError, Signer
from audit_core.transparency.evidence import export_bundle, gather, verify_bundle
from tests.transparency.conftest import ORIGIN, OpenedLog


@pytest.fixture
def bundle(opened: OpenedLog, tmp_path: Path) -> Path:
    opened.record("acme", 40)
    opened.follow()
    path = tmp_path / "bundle.zip"
    parts = gather(
        opened.ledger,
        opened.reader,
        "acme",
        range(5, 25),
        origin=f"{ORIGIN}/acme",
        selection={"from_seq": 5, "to_seq": 24},
        verifier_keys=[opened.signer.verifier.named(f"{ORIGIN}/acme").vkey],
    )
    export_bundle(path, **parts)
    return path


def test_a_bundle_proves_its_records_offline_with_the_verifier_key(
    bundle: Path, opened: OpenedLog
) -> None:
    report = verify_bundle(bundle, [opened.signer.verifier])
    assert (report.tenant, report.count, report.first_seq, report.last_seq) == ("acme", 20, 5, 24)
    assert report.contiguous
    assert report.tree_size == 40
    assert any("seq 5 to 24 is complete" in line for line in report.lines())
    with zipfile.ZipFile(bundle) as opened_zip:
        manifest = orjson.loads(opened_zip.read("manifest.json"))
    assert manifest["ordering"] == "seq ascending"
    assert set(manifest["sha256"]) == {
        "records.jsonl",
        "proofs.jsonl",
        "checkpoint.txt",
        "keys.txt",
    }


def test_records_newer_than_the_checkpoint_are_left_out_and_counted(opened: OpenedLog) -> None:
    opened.record("acme", 10)
    opened.follow()
    opened.record("acme", 3, prefix="new")
    parts = gather(
        opened.ledger, opened.reader, "acme", range(13), origin=f"{ORIGIN}/acme",
        selection={"from_seq": 0, "to_seq": 12}, verifier_keys=[],
    )  # fmt: skip
    assert (len(parts["records"]), parts["excluded"]) == (10, 3)


def _rewrite(
    path: Path, name: str, change: Callable[[bytes], bytes], *, fix_manifest: bool
) -> None:
    """Change one part; a careful forger also updates its SHA-256 in the manifest."""
    with zipfile.ZipFile(path) as source:
        parts = {item: source.read(item) for item in source.namelist()}
    parts[name] = change(parts[name])
    if fix_manifest and name != "manifest.json":
        manifest = orjson.loads(parts["manifest.json"])
        manifest["sha256"][name] = hashlib.sha256(parts[name]).hexdigest()
        if name == "records.jsonl":
            manifest["count"] = len(parts[name].splitlines())
        parts["manifest.json"] = orjson.dumps(manifest)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as target:
        for item, data in parts.items():
            target.writestr(item, data)
    path.write_bytes(buffer.getvalue())


def _lines(edit: Callable[[list[bytes]], list[bytes]]) -> Callable[[bytes], bytes]:
    return lambda data: b"".join(line + b"\n" for line in edit(data.splitlines()))


def _edit_record(lines: list[bytes]) -> list[bytes]:
    record = orjson.loads(lines[3])
    record["outcome"] = "failure"
    return [*lines[:3], orjson.dumps(record), *lines[4:]]


def _rehashed_record(lines: list[bytes]) -> list[bytes]:
    record = orjson.loads(lines[3])
    record["outcome"] = "failure"
    body = {k: v for k, v in record.items() if k != "hash"}
    record["hash"] = hashlib.sha256(rfc8785.dumps(body)).hexdigest()
    return [*lines[:3], orjson.dumps(record), *lines[4:]]


TAMPERS = [
    ("edited record, manifest left", "records.jsonl", _lines(_edit_record), False,
     "records.jsonl does not have the SHA-256"),
    ("edited record", "records.jsonl", _lines(_edit_record), True,
     "its content does not hash to its hash"),
    ("edited record with its hash recomputed", "records.jsonl", _lines(_rehashed_record), True,
     "not in the checkpoint's tree"),
    ("deleted record", "records.jsonl", _lines(lambda ls: [*ls[:4], *ls[5:]]), True,
     "records but"),
    ("reordered records", "records.jsonl", _lines(lambda ls: [ls[1], ls[0], *ls[2:]]), True,
     "proof is for seq"),
    ("forged checkpoint", "checkpoint.txt", lambda d: d.replace(b"\n40\n", b"\n41\n"), True,
     "does not verify"),
    ("edited manifest count", "manifest.json", lambda d: d.replace(b'"count": 20', b'"count": 19'),
     False, "the manifest counts 19"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("part", "change", "fix", "reason"), [t[1:] for t in TAMPERS], ids=[t[0] for t in TAMPERS]
)
def test_a_tampered_bundle_is_refused_with_the_reason(
    bundle: Path,
    opened: OpenedLog,
    part: str,
    change: Callable[[bytes], bytes],
    fix: bool,
    reason: str,
) -> None:
    _rewrite(bundle, part, change, fix_manifest=fix)
    with pytest.raises(EvidenceError, match=reason):
        verify_bundle(bundle, [opened.signer.verifier])


def test_a_bundle_with_records_and_proofs_both_removed_is_refused_as_incomplete(
    bundle: Path, opened: OpenedLog
) -> None:
    drop = _lines(lambda lines: [*lines[:4], *lines[5:]])
    _rewrite(bundle, "records.jsonl", drop, fix_manifest=True)
    _rewrite(bundle, "proofs.jsonl", drop, fix_manifest=True)
    with pytest.raises(EvidenceError, match="seq 9 is missing"):
        verify_bundle(bundle, [opened.signer.verifier])


def test_a_checkpoint_of_another_size_swapped_in_is_refused(
    bundle: Path, opened: OpenedLog
) -> None:
    opened.record("acme", 1, prefix="x")
    opened.follow()
    other = opened.trees.checkpoints("acme")
    assert [c.size for c in other] == [40, 41]
    _rewrite(bundle, "checkpoint.txt", lambda _: other[1].note.encode(), fix_manifest=True)
    with pytest.raises(EvidenceError, match="not in the checkpoint's tree"):
        verify_bundle(bundle, [opened.signer.verifier])


def test_the_wrong_key_is_refused(bundle: Path) -> None:
    with pytest.raises(EvidenceError, match="no signature by a trusted key"):
        verify_bundle(bundle, [Signer.generate(ORIGIN).verifier])


def test_a_truncated_bundle_is_refused(bundle: Path, opened: OpenedLog) -> None:
    data = bundle.read_bytes()
    bundle.write_bytes(data[: len(data) // 2])
    with pytest.raises(EvidenceError, match="not a readable ZIP file"):
        verify_bundle(bundle, [opened.signer.verifier])
