"""Trail queries: filters, keyset cursors and the SQL condition they make."""

from __future__ import annotations

import base64
import binascii
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

from audit_core.exceptions import LedgerError
from audit_core.readmodel.blind import BlindIndex
from audit_core.readmodel.rows import packed_address, tenant_key

Order = Literal["desc", "asc"]


class InvalidQueryError(LedgerError):
    """A query parameter is malformed (a bad cursor, an inverted time range)."""

    def __init__(self, field_name: str, message: str):
        self.field = field_name
        super().__init__(f"{field_name}: {message}")


@dataclass(frozen=True)
class TrailQuery:
    """Filters of a trail query. ``action`` ending in ``.*`` matches a prefix."""

    tenant: str
    actor_id: str | None = None
    action: str | None = None
    target_type: str | None = None
    target_id: str | None = None
    outcome: str | None = None
    source: str | None = None
    since: str | None = None
    """occurred_at >= since (normalised RFC 3339, UTC ``Z``)."""
    until: str | None = None
    """occurred_at < until."""
    actor_ip: str | None = None
    """An address, or a network in CIDR notation (``network``)."""
    session_id: str | None = None
    request_id: str | None = None
    text: str | None = None
    """Case-insensitive substring of a metadata value; whole words when the read model
    is keyed (``blinded``)."""
    order: Order = "desc"
    after_seq: int | None = None
    """Keyset position: records beyond this seq in the query's order."""
    min_seq: int | None = None
    """Read-your-writes: the query is to see at least the tenant's records up to this
    seq (``TrailView.holds`` says when the read model does)."""
    limit: int = 100

    def filters(self) -> dict[str, Any]:
        """The filters as given, for the audit event that records the query."""
        names = (
            "actor_id", "action", "target_type", "target_id", "outcome", "source",
            "actor_ip", "session_id", "request_id",
        )  # fmt: skip
        shown: dict[str, Any] = {n: getattr(self, n) for n in names if getattr(self, n)}
        for name in ("since", "until", "text"):
            if getattr(self, name):
                shown[name] = getattr(self, name)
        shown["order"] = self.order
        return shown


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def network(value: str) -> Network:
    """The network an ``actor_ip`` filter names: an address alone is a network of one.
    Host bits after the prefix are ignored (``10.1.2.3/8`` is ``10.0.0.0/8``)."""
    try:
        return ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise InvalidQueryError(
            "actor_ip",
            f"{value!r} is not an IPv4 or IPv6 address or network (e.g. 203.0.113.7, "
            "203.0.113.0/24, 2001:db8::/32)",
        ) from None


def address_filter(value: str) -> str:
    """An ``actor_ip`` filter as the trail query holds it: an address, or a network
    (``network``), canonical; a bad one is refused naming ``actor_ip``."""
    net = network(value)
    return str(net.network_address) if net.num_addresses == 1 else str(net)


def blinded(query: TrailQuery, blind: BlindIndex) -> TrailQuery:
    """``query`` with its identifiers and words as the keyed read model holds them."""
    tenant = query.tenant
    changes: dict[str, Any] = {}
    for name in ("actor_id", "target_id", "session_id", "request_id"):
        value = getattr(query, name)
        if value is not None:
            changes[name] = blind.value(tenant, name, value)
    if query.actor_ip is not None:
        net = network(query.actor_ip)
        if net.num_addresses > 1:
            raise InvalidQueryError(
                "actor_ip",
                f"{query.actor_ip!r} is a network; with VIGIL_ENCRYPTION_KEY set, the read "
                "model holds a keyed hash of each address, not the address, so only a "
                "single address can be searched for",
            )
        packed = packed_address(str(net.network_address))
        changes["actor_ip"] = blind.value(tenant, "actor_ip", packed.hex())
    if query.text:
        phrase = blind.phrase(tenant, query.text)
        if phrase is None:
            raise InvalidQueryError(
                "q",
                "holds no word; with VIGIL_ENCRYPTION_KEY set, the free text search "
                "finds whole words (letters and digits), not other characters",
            )
        changes["text"] = phrase
    return replace(query, **changes) if changes else query


def encode_cursor(order: Order, seq: int) -> str:
    return base64.urlsafe_b64encode(f"{order}:{seq}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str, order: Order) -> int:
    """The seq a cursor continues after; it must come from a query in the same order."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        cursor_order, seq = text.split(":")
        position = int(seq)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidQueryError("cursor", "is not a cursor returned by this API") from None
    if cursor_order != order or position < 0:
        raise InvalidQueryError("cursor", f"was returned by a query in {cursor_order} order")
    return position


Address = Callable[[ipaddress.IPv4Address | ipaddress.IPv6Address], Any]
"""An address as a database compares it (``SQLiteTrailView``, ``PostgresTrailView``)."""


def _where(query: TrailQuery, address: Address | None = None) -> tuple[str, list[Any]]:
    """WHERE clause with ``?`` placeholders; wildcards travel as parameters, never as SQL.
    ``address`` puts the ``actor_ip`` filter in the database's form; without it, the
    filter is a keyed hash (``blinded``), compared as it is."""
    clauses = ["tenant_key = ?", "tenant = ?"]
    params: list[Any] = [tenant_key(query.tenant), query.tenant]
    for column in (
        "actor_id", "target_type", "target_id", "outcome", "source", "session_id", "request_id",
    ):  # fmt: skip
        value = getattr(query, column)
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    if query.actor_ip is not None:
        if address is None:
            clauses.append("actor_ip = ?")
            params.append(query.actor_ip)
        else:
            # A network is the range of its addresses, which the (tenant, address)
            # index serves; an address alone is a range of one.
            net = network(query.actor_ip)
            first, last = net.network_address, net.broadcast_address
            if first == last:
                clauses.append("actor_ip = ?")
                params.append(address(first))
            else:
                clauses.append("actor_ip BETWEEN ? AND ?")
                params += [address(first), address(last)]
    if query.action is not None:
        if query.action.endswith("*"):
            # On SQLite, the action's first segment has its own (action_ns) index,
            # which serves "newest first" directly however many records match; a
            # deeper prefix adds a range. (PostgresTrailView.query has its own plan.)
            prefix = query.action[:-1]
            namespace, dot, rest = prefix.partition(".")
            clauses.append("action_ns = ?")
            params.append(namespace)
            if dot and rest:
                upper = prefix[:-1] + chr(ord(prefix[-1]) + 1)
                clauses.append("action >= ? AND action < ?")
                params += [prefix, upper]
        else:
            clauses.append("action = ?")
            params.append(query.action)
    if query.since is not None:
        clauses.append("occurred_at >= ?")
        params.append(query.since)
    if query.until is not None:
        clauses.append("occurred_at < ?")
        params.append(query.until)
    if query.text:
        clauses.append("search LIKE ? ESCAPE '\\'")
        params.append(_like_pattern(query.text))
    if query.after_seq is not None:
        clauses.append("seq < ?" if query.order == "desc" else "seq > ?")
        params.append(query.after_seq)
    return " AND ".join(clauses), params


def _like_pattern(text: str) -> str:
    """A LIKE pattern for ``text`` anywhere; its wildcards travel escaped."""
    escaped = text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


@dataclass
class SeqPage:
    """The seqs of a page of matching records, in the query's order."""

    seqs: list[int]
    next_cursor: str | None


def _page(query: TrailQuery, seqs: list[int]) -> SeqPage:
    """A page of ``seqs`` read with one more than the query's limit."""
    more = len(seqs) > query.limit
    seqs = seqs[: query.limit]
    return SeqPage(seqs, encode_cursor(query.order, seqs[-1]) if more and seqs else None)
