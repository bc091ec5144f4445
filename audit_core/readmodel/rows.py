"""The read model's rows: what queries filter on, taken from each record."""

from __future__ import annotations

import functools
import hashlib
import socket
from collections.abc import Sequence
from typing import Any, Final

import msgspec
from eventsourcing.persistence import MapperDeserialisationError

from audit_core.application import Record
from audit_core.persistence import LedgerMapper
from audit_core.readmodel.blind import BlindIndex

_COLUMNS = (
    "tenant, seq, occurred_at, actor_id, action, action_ns, target_type, target_id, "
    "outcome, source, search, tenant_key, session_id, request_id, actor_ip"
)
_WIDTH = len(_COLUMNS.split(","))
Row = tuple[
    str, int, str, str, str, str, str | None, str | None, str, str, str, int,
    str | None, str | None, str | None,
]  # fmt: skip
"""The columns of ``_COLUMNS``. ``actor_ip`` comes last: each database stores it in a
form of its own (``packed_address``, ``inet``), put in its place as the row is written."""


@functools.lru_cache(maxsize=65_536)
def packed_address(address: str) -> bytes:
    """An address as 1 byte of family (4 or 6) and its bytes in network order: bytes
    compare as the addresses do, so a network is a range (how SQLite searches one)."""
    if ":" in address:
        return b"\x06" + socket.inet_pton(socket.AF_INET6, address)
    return b"\x04" + socket.inet_pton(socket.AF_INET, address)


@functools.lru_cache(maxsize=4096)
def tenant_key(tenant: str) -> int:
    """A 64-bit key of a tenant that leads the secondary indexes in its place: an
    integer is compared and stored more cheaply than a name, and inserting a row cost
    2 to 3 µs less of the database's time. Keys of two tenants may collide, so every
    query names the tenant too, and a collision would cost time, never a leak."""
    digest = hashlib.blake2b(tenant.encode(), digest_size=8, person=b"vigil-tenant").digest()
    return int.from_bytes(digest, "big", signed=True)


def to_row(record: Record, blind: BlindIndex | None = None) -> Row:
    """The index row of a record: what queries filter on, and its seq to fetch it by;
    with ``blind``, identifiers and words as its keyed hashes."""
    target = record.get("target") or {}
    return _row(
        blind,
        record["tenant"],
        record["seq"],
        record["occurred_at"],
        record["actor"]["id"],
        record["action"],
        target.get("type"),
        target.get("id"),
        record["outcome"],
        record["source"],
        record.get("metadata") or {},
        record["actor"].get("session_id"),
        record.get("request_id"),
        record["actor"].get("ip"),
    )


def _row(
    blind: BlindIndex | None,
    tenant: str,
    seq: int,
    occurred_at: str,
    actor_id: str,
    action: str,
    target_type: str | None,
    target_id: str | None,
    outcome: str,
    source: str,
    metadata: dict[str, Any],
    session_id: str | None,
    request_id: str | None,
    actor_ip: str | None,
) -> Row:
    namespace = action.split(".", 1)[0]
    search = search_text(metadata)
    if blind is not None:
        actor_id = blind.value(tenant, "actor_id", actor_id)
        if target_id is not None:
            target_id = blind.value(tenant, "target_id", target_id)
        search = blind.search(tenant, search)
        if session_id is not None:
            session_id = blind.value(tenant, "session_id", session_id)
        if request_id is not None:
            request_id = blind.value(tenant, "request_id", request_id)
        if actor_ip is not None:
            actor_ip = blind.value(tenant, "actor_ip", packed_address(actor_ip).hex())
    return (
        tenant,
        seq,
        occurred_at,
        actor_id,
        action,
        namespace,
        target_type,
        target_id,
        outcome,
        source,
        search,
        tenant_key(tenant),
        session_id,
        request_id,
        actor_ip,
    )


class _Actor(msgspec.Struct):
    id: str
    ip: str | None = None
    session_id: str | None = None


class _Target(msgspec.Struct):
    type: str
    id: str


class _Indexed(msgspec.Struct):
    """What the read model takes from a stored record. msgspec reads only these fields
    and skips the rest without building it: half the cost of decoding whole records."""

    tenant: str
    seq: int
    occurred_at: str
    actor: _Actor
    action: str
    outcome: str
    source: str
    target: _Target | None = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    request_id: str | None = None


class _StoredRecord(msgspec.Struct):
    record: _Indexed


_STORED_RECORD = msgspec.json.Decoder(_StoredRecord)


def rows_of(
    states: Sequence[bytes], mapper: LedgerMapper, blind: BlindIndex | None = None
) -> list[Row]:
    """The index rows of stored ``Recorded`` states (with ``blind``: see ``to_row``)."""
    rows: list[Row] = []
    for state in states:
        try:
            record = _STORED_RECORD.decode(mapper.recorded_json(state)).record
        except msgspec.DecodeError as error:
            raise MapperDeserialisationError(
                f"cannot decode a stored audit record: {error}"
            ) from error
        target = record.target
        rows.append(
            _row(
                blind,
                record.tenant,
                record.seq,
                record.occurred_at,
                record.actor.id,
                record.action,
                target.type if target else None,
                target.id if target else None,
                record.outcome,
                record.source,
                record.metadata,
                record.actor.session_id,
                record.request_id,
                record.actor.ip,
            )
        )
    return rows


def search_text(metadata: Any) -> str:
    """The metadata's values, lowercased, one per line: what free text searches.

    Values only: the keys repeat in every record, and indexing their trigrams would
    double the cost of the trigram index for words that find everything.
    """
    values: list[str] = []
    _collect_values(metadata, values)
    return "\n".join(values).lower()  # one lower() of the whole: a third of the time


def _collect_values(container: Any, values: list[str]) -> None:
    for item in container.values() if type(container) is dict else container:
        kind = type(item)
        if kind is str:
            values.append(item)
        elif kind is dict or kind is list:
            _collect_values(item, values)
        elif kind is bool:
            values.append("true" if item else "false")
        elif item is not None:
            values.append(str(item))


TextBlock = tuple[int, str, int, int, str]
"""tenant key, tenant, first seq, last seq, and the distinct search texts of the rows."""
_TENANT: Final = 0
_SEQ: Final = 1
_SEARCH: Final = 10
_KEY: Final = 11


def text_blocks(rows: Sequence[Row], rows_per_block: int) -> list[TextBlock]:
    """The rows of each tenant, in runs of ``rows_per_block``, each run with the
    distinct search texts of its rows; a run with no text has no block."""
    by_tenant: dict[str, list[Row]] = {}
    for row in rows:
        by_tenant.setdefault(row[_TENANT], []).append(row)
    blocks: list[TextBlock] = []
    for tenant, own in by_tenant.items():
        own.sort(key=lambda row: row[_SEQ])
        for start in range(0, len(own), rows_per_block):
            run = own[start : start + rows_per_block]
            text = "\n".join(dict.fromkeys(row[_SEARCH] for row in run if row[_SEARCH]))
            if text:
                blocks.append((run[0][_KEY], tenant, run[0][_SEQ], run[-1][_SEQ], text))
    return blocks
