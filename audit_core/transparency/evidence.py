"""Evidence bundles: selected records with everything needed to check them offline.

A bundle is one ZIP file (format ``vigil-evidence/1``) holding:

- ``records.jsonl``: the records, one JSON object per line, exactly as stored (with
  ``seq``, ``prev_hash`` and ``hash``), in ascending ``seq`` order;
- ``proofs.jsonl``: per record, in the same order, ``{"seq", "leaf_hash", "hashes"}``:
  its RFC 9162 inclusion proof in the tree of the checkpoint's size (base64 hashes,
  leaf to root);
- ``checkpoint.txt``: the tenant's signed checkpoint (C2SP tlog-checkpoint as a C2SP
  signed note) that every proof leads to;
- ``keys.txt``: the log's verifier keys as published when exporting (information only:
  an auditor checks the checkpoint with a key obtained separately);
- ``manifest.json``: format, tenant, origin, selection (query or seq range), count,
  ordering, first/last seq and times, the checkpoint's size and root, and the SHA-256
  of every other part.

:func:`verify_bundle` is the algorithm ``docs/transparency.md`` spells out step by step;
it needs nothing but the file and the verifier key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import orjson

from audit_core.canonical import GENESIS_HASH
from audit_core.transparency.checkpoint import Checkpoint
from audit_core.transparency.exceptions import (
    CheckpointError,
    EvidenceError,
    NoteError,
    ProofError,
)
from audit_core.transparency.merkle import leaf_hash, record_leaf, verify_inclusion
from audit_core.transparency.note import Verifier, parse_note, verify_note
from audit_core.transparency.proofs import InclusionProof, TreeReader

if TYPE_CHECKING:
    from audit_core.application import Ledger

FORMAT = "vigil-evidence/1"
PARTS = ("records.jsonl", "proofs.jsonl", "checkpoint.txt", "keys.txt")
_STAMP = (1980, 1, 1, 0, 0, 0)
"""Every entry's time in the ZIP: the same selection gives the same bytes."""


def _b64(value: bytes) -> str:
    return binascii.b2a_base64(value, newline=False).decode()


@dataclass(frozen=True)
class ExportedBundle:
    manifest: dict[str, Any]
    sha256: str
    """SHA-256 of the whole bundle file, for the auditor's own records."""


def write_bundle(
    out: IO[bytes],
    *,
    tenant: str,
    origin: str,
    selection: Mapping[str, Any],
    records: Sequence[Mapping[str, Any]],
    proofs: Sequence[InclusionProof],
    checkpoint_note: str,
    verifier_keys: Sequence[str],
    excluded: int = 0,
) -> dict[str, Any]:
    """Write a bundle of ``records`` (ascending seq) and their ``proofs``; return its
    manifest. ``excluded`` counts selected records newer than the checkpoint, left out."""
    if len(records) != len(proofs):
        raise EvidenceError("every record needs its inclusion proof")
    checkpoint = Checkpoint.parse(checkpoint_note)
    parts: dict[str, bytes] = {
        "records.jsonl": b"".join(orjson.dumps(dict(record)) + b"\n" for record in records),
        "proofs.jsonl": b"".join(
            orjson.dumps(
                {
                    "seq": proof.seq,
                    "leaf_hash": _b64(proof.leaf_hash),
                    "hashes": [_b64(h) for h in proof.hashes],
                }
            )
            + b"\n"
            for proof in proofs
        ),
        "checkpoint.txt": checkpoint_note.encode(),
        "keys.txt": "".join(f"{key}\n" for key in verifier_keys).encode(),
    }
    first, last = (records[0], records[-1]) if records else ({}, {})
    occurred = sorted(str(r.get("occurred_at")) for r in records)
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "tenant": tenant,
        "origin": origin,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "selection": dict(selection),
        "ordering": "seq ascending",
        "count": len(records),
        "excluded_after_checkpoint": excluded,
        "first_seq": first.get("seq"),
        "last_seq": last.get("seq"),
        "received_from": first.get("received_at"),
        "received_to": last.get("received_at"),
        "occurred_from": occurred[0] if occurred else None,
        "occurred_to": occurred[-1] if occurred else None,
        "tree_size": checkpoint.size,
        "root_hash": checkpoint.root_b64,
        "sha256": {name: hashlib.sha256(data).hexdigest() for name, data in parts.items()},
    }
    parts["manifest.json"] = orjson.dumps(manifest, option=orjson.OPT_INDENT_2) + b"\n"
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
        for name in ("manifest.json", *PARTS):
            info = zipfile.ZipInfo(name, date_time=_STAMP)
            info.compress_type = zipfile.ZIP_DEFLATED
            bundle.writestr(info, parts[name])
    return manifest


def export_bundle(
    path: str | Path,
    **parts: Any,
) -> ExportedBundle:
    """:func:`write_bundle` to a new file at ``path``; refuses to overwrite one."""
    buffer = io.BytesIO()
    manifest = write_bundle(buffer, **parts)
    data = buffer.getvalue()
    with open(path, "xb") as file:
        file.write(data)
    return ExportedBundle(manifest, hashlib.sha256(data).hexdigest())


# -- verification, offline ---------------------------------------------------------------


@dataclass
class BundleReport:
    """What a bundle proved."""

    tenant: str
    origin: str
    count: int
    tree_size: int
    root_hash: str
    key: str
    """The verifier key (``name+id``) whose signature on the checkpoint verified."""
    first_seq: int | None
    last_seq: int | None
    contiguous: bool
    """The records are every seq from first to last, each linked to the one before."""
    selection: dict[str, Any] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """What was proved, in sentences."""
        lines = [
            f"checkpoint: {self.origin} size {self.tree_size} root {self.root_hash}, "
            f"signed by {self.key}",
            f"{self.count} record(s) of tenant {self.tenant} are in that tree, each at its seq",
        ]
        if self.count and self.contiguous:
            lines.append(
                f"seq {self.first_seq} to {self.last_seq} is complete: no record of that range "
                "is missing, and each links to the one before it"
            )
        elif self.count:
            lines.append(
                f"seqs from {self.first_seq} to {self.last_seq}, not contiguous: the bundle "
                "proves these records are in the log, not that no other record matches "
                "its selection"
            )
        lines.append(
            f"selection (as the exporter states it): {orjson.dumps(self.selection).decode()}"
        )
        return lines


def _fail(message: str) -> EvidenceError:
    return EvidenceError(f"evidence bundle refused: {message}")


def _read_parts(source: str | Path | IO[bytes]) -> dict[str, bytes]:
    try:
        with zipfile.ZipFile(source) as bundle:
            names = set(bundle.namelist())
            missing = [n for n in ("manifest.json", *PARTS) if n not in names]
            if missing:
                raise _fail(f"it lacks {', '.join(missing)}")
            return {name: bundle.read(name) for name in ("manifest.json", *PARTS)}
    except (zipfile.BadZipFile, EOFError, OSError, zipfile.LargeZipFile) as error:
        raise _fail(f"it is not a readable ZIP file ({error}); truncated or damaged?") from None


def _decode_lines(data: bytes, part: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for number, line in enumerate(data.splitlines(), start=1):
        try:
            item = orjson.loads(line)
        except orjson.JSONDecodeError as error:
            raise _fail(f"{part} line {number} is not JSON ({error})") from None
        if not isinstance(item, dict):
            raise _fail(f"{part} line {number} is not a JSON object")
        items.append(item)
    return items


def _b64decode(value: Any, where: str) -> bytes:
    try:
        if not isinstance(value, str):
            raise ValueError
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise _fail(f"{where} is not base64") from None


def _check_range(selection: dict[str, Any], records: list[dict[str, Any]], size: int) -> None:
    """A bundle of a seq range holds every seq of it that the checkpoint covers."""
    first = selection["from_seq"]
    last = selection.get("to_seq")
    last = min(last if isinstance(last, int) else size - 1, size - 1)
    present = {record["seq"] for record in records}
    for seq in range(first, last + 1):
        if seq not in present:
            raise _fail(f"the selected range is seq {first} to {last}, but seq {seq} is missing")
    outside = sorted(seq for seq in present if not first <= seq <= last)
    if outside:
        raise _fail(f"seq {outside[0]} is outside the selected range {first} to {last}")


def verify_bundle(
    source: str | Path | IO[bytes],
    keys: Iterable[Verifier],
    progress: Callable[[int], None] | None = None,
) -> BundleReport:
    """Check a bundle with the given trusted verifier keys; raise :class:`EvidenceError`
    naming the first thing that does not hold."""
    parts = _read_parts(source)
    # 1. The manifest: its format and the SHA-256 of every part.
    try:
        manifest = orjson.loads(parts["manifest.json"])
    except orjson.JSONDecodeError as error:
        raise _fail(f"manifest.json is not JSON ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise _fail(f"manifest.json does not declare format {FORMAT!r}")
    digests = manifest.get("sha256")
    if not isinstance(digests, dict):
        raise _fail("manifest.json has no sha256 of the parts")
    for name in PARTS:
        actual = hashlib.sha256(parts[name]).hexdigest()
        if digests.get(name) != actual:
            raise _fail(f"{name} does not have the SHA-256 the manifest gives (it was altered)")
    # 2. The checkpoint: signed by a trusted key under its origin, the tenant's.
    note = parts["checkpoint.txt"].decode("utf-8", errors="replace")
    trusted = list(keys)
    try:
        checkpoint = Checkpoint.parse(parse_note(note).text)
        verified = verify_note(note, [key.named(checkpoint.origin) for key in trusted])
    except (NoteError, CheckpointError) as error:
        raise _fail(f"checkpoint.txt: {error}") from None
    signed_by = ", ".join(f"{v.name}+{v.key_id.hex()}" for v in verified.verified_by)
    tenant = manifest.get("tenant")
    if not isinstance(tenant, str) or not checkpoint.origin.endswith(f"/{tenant}"):
        raise _fail(
            f"the checkpoint's origin {checkpoint.origin!r} is not the log of tenant {tenant!r}"
        )
    if manifest.get("origin") not in (None, checkpoint.origin):
        raise _fail("the manifest names another origin than the checkpoint")
    # 3. Every record: its hash, its link to the one before, its leaf in the tree.
    records = _decode_lines(parts["records.jsonl"], "records.jsonl")
    proofs = _decode_lines(parts["proofs.jsonl"], "proofs.jsonl")
    if len(records) != manifest.get("count"):
        raise _fail(
            f"the manifest counts {manifest.get('count')} records; the bundle holds {len(records)}"
        )
    if len(proofs) != len(records):
        raise _fail(f"{len(records)} records but {len(proofs)} proofs")
    contiguous = True
    previous: dict[str, Any] | None = None
    for number, (record, proof) in enumerate(zip(records, proofs, strict=True), start=1):
        seq = record.get("seq")
        where = f"record {number} (seq {seq})"
        if not isinstance(seq, int) or proof.get("seq") != seq:
            raise _fail(f"{where}: its proof is for seq {proof.get('seq')!r}")
        if record.get("tenant") != tenant:
            raise _fail(f"{where}: it belongs to tenant {record.get('tenant')!r}")
        if previous is not None and seq <= previous["seq"]:
            raise _fail(f"{where}: records are not in ascending seq order")
        leaf = record_leaf(record)
        if hashlib.sha256(leaf).hexdigest() != record.get("hash"):
            raise _fail(f"{where}: its content does not hash to its hash (it was altered)")
        if seq == 0 and record.get("prev_hash") != GENESIS_HASH:
            raise _fail(f"{where}: the first record's prev_hash is not the genesis hash")
        if previous is not None:
            if seq == previous["seq"] + 1:
                if record.get("prev_hash") != previous["hash"]:
                    raise _fail(f"{where}: its prev_hash is not the hash of seq {seq - 1}")
            else:
                contiguous = False
        hashes = proof.get("hashes")
        if not isinstance(hashes, list):
            raise _fail(f"{where}: its proof has no hashes")
        decoded = [_b64decode(h, f"{where}: proof hash") for h in hashes]
        computed_leaf = leaf_hash(leaf)
        try:
            verify_inclusion(seq, checkpoint.size, computed_leaf, decoded, checkpoint.root)
        except ProofError as error:
            raise _fail(f"{where}: not in the checkpoint's tree: {error}") from None
        if _b64decode(proof.get("leaf_hash"), f"{where}: leaf_hash") != computed_leaf:
            raise _fail(f"{where}: the proof's leaf hash is not the record's")
        previous = record
        if progress is not None and number % 1000 == 0:
            progress(1000)
    selection = manifest.get("selection")
    if isinstance(selection, dict) and isinstance(selection.get("from_seq"), int):
        _check_range(selection, records, checkpoint.size)
    return BundleReport(
        tenant=tenant,
        origin=checkpoint.origin,
        count=len(records),
        tree_size=checkpoint.size,
        root_hash=checkpoint.root_b64,
        key=signed_by,
        first_seq=records[0]["seq"] if records else None,
        last_seq=records[-1]["seq"] if records else None,
        contiguous=contiguous,
        selection=selection if isinstance(selection, dict) else {},
        manifest=manifest,
    )


# -- gathering, from a ledger and its tree -------------------------------------------------


def _read(ledger: Ledger, tenant: str, seqs: Sequence[int]) -> list[dict[str, Any]]:
    """The records at ``seqs`` (ascending), consecutive runs read as ranges of the log
    (an index range scan) and scattered ones by seq."""
    records: list[dict[str, Any]] = []
    scattered: list[int] = []
    start = 0
    while start < len(seqs):
        end = start
        while end + 1 < len(seqs) and seqs[end + 1] == seqs[end] + 1:
            end += 1
        if end - start >= 16:
            records += _flush(ledger, tenant, scattered)
            for first in range(seqs[start], seqs[end] + 1, 1000):
                count = min(1000, seqs[end] + 1 - first)
                records += ledger.read(tenant, from_seq=first, limit=count)
        else:
            scattered += seqs[start : end + 1]
        start = end + 1
    records += _flush(ledger, tenant, scattered)
    if [record["seq"] for record in records] != list(seqs):
        raise EvidenceError(f"records of tenant {tenant!r} are missing from the ledger")
    return records


def _flush(ledger: Ledger, tenant: str, seqs: list[int]) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    for start in range(0, len(seqs), 1000):
        records += ledger.records_at(tenant, seqs[start : start + 1000])
    seqs.clear()
    return records


def gather(
    ledger: Ledger,
    reader: TreeReader,
    tenant: str,
    seqs: Iterable[int],
    *,
    origin: str,
    selection: Mapping[str, Any],
    verifier_keys: Sequence[str],
) -> dict[str, Any]:
    """The parts of a bundle (keyword arguments of :func:`write_bundle`) for the records
    at ``seqs``, proved against the tenant's latest checkpoint. Records newer than it
    are left out and counted."""
    latest = reader.latest(tenant)
    wanted = sorted(set(seqs))
    inside = [seq for seq in wanted if seq < latest.size]
    records = _read(ledger, tenant, inside)
    proofs = list(reader.inclusions(tenant, inside, latest.size))
    for record, proof in zip(records, proofs, strict=True):
        if leaf_hash(record_leaf(record)) != proof.leaf_hash:
            raise EvidenceError(
                f"the stored record at seq {record['seq']} of tenant {tenant!r} is not the "
                "one in the signed tree; run `vigil verify`"
            )
    return {
        "tenant": tenant,
        "origin": origin,
        "selection": selection,
        "records": records,
        "proofs": proofs,
        "checkpoint_note": latest.note,
        "verifier_keys": verifier_keys,
        "excluded": len(wanted) - len(inside),
    }
