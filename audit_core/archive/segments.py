"""Segments: a tenant's consecutive records as gzip'd JSON Lines, and where they live.

A segment's uncompressed body is one line per record: the record's canonical bytes
(RFC 8785, without ``hash``), which are exactly what its chain ``hash`` and its Merkle
leaf cover, each followed by ``\\n``. Canonical JSON never holds a raw newline, so the
lines split unambiguously, and ``sha256(line)`` is the record's ``hash``.

Key layout (``<first>`` and ``<last>`` are the segment's first and last ``seq``, 20
digits so that keys sort as numbers do; the date is the UTC day of the first record's
``received_at``, so a record's day tells where to find its segment)::

    <prefix>/<tenant>/<yyyy>/<mm>/<dd>/<first>-<last>.jsonl.gz   the segment
    <prefix>/<tenant>/<yyyy>/<mm>/<dd>/<first>-<last>.digest     its signed digest

The gzip stream is written with a fixed mtime, no file name and a fixed level (by
zlib-ng: the same ratio as zlib's level 6 for two thirds of its CPU), so the same
records give the same bytes: a segment written again after a crash lands on the same key
with the same content. Should another build of the compressor spell it otherwise, the
rewrite is a new version of the key, and the digest names the version it covers.
"""

from __future__ import annotations

import gzip
import re
import zlib
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from zlib_ng import zlib_ng

from audit_core.archive.exceptions import ArchiveFormatError

SEGMENT_SUFFIX = ".jsonl.gz"
DIGEST_SUFFIX = ".digest"
GZIP_LEVEL = 6
_GZIP_WBITS = 16 + 15  # a gzip stream: a header with mtime 0 and no name, then deflate
_SEQ_DIGITS = 20

Kind = Literal["segment", "digest"]

_KEY = re.compile(
    r"^(?:(?P<prefix>.*)/)?(?P<tenant>[a-z0-9][a-z0-9_-]{0,62})"
    r"/(?P<yyyy>\d{4})/(?P<mm>\d{2})/(?P<dd>\d{2})"
    r"/(?P<first>\d{20})-(?P<last>\d{20})(?P<suffix>\.jsonl\.gz|\.digest)$"
)


def clean_prefix(prefix: str) -> str:
    """The prefix without leading or trailing slashes ("" for the bucket's root)."""
    return prefix.strip("/")


def tenant_prefix(prefix: str, tenant: str) -> str:
    """Where every object of a tenant's archive lives (ends with ``/``)."""
    prefix = clean_prefix(prefix)
    return f"{prefix}/{tenant}/" if prefix else f"{tenant}/"


def _day_path(received_at: str) -> str:
    # received_at is always ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (format_timestamp).
    return f"{received_at[0:4]}/{received_at[5:7]}/{received_at[8:10]}"


def object_key(
    prefix: str, tenant: str, first_seq: int, last_seq: int, first_received_at: str, kind: Kind
) -> str:
    suffix = SEGMENT_SUFFIX if kind == "segment" else DIGEST_SUFFIX
    return (
        f"{tenant_prefix(prefix, tenant)}{_day_path(first_received_at)}/"
        f"{first_seq:0{_SEQ_DIGITS}d}-{last_seq:0{_SEQ_DIGITS}d}{suffix}"
    )


def segment_start_prefix(prefix: str, tenant: str, first_seq: int, first_received_at: str) -> str:
    """The key prefix that every segment or digest starting at ``first_seq`` has."""
    return (
        f"{tenant_prefix(prefix, tenant)}{_day_path(first_received_at)}/"
        f"{first_seq:0{_SEQ_DIGITS}d}-"
    )


@dataclass(frozen=True)
class ObjectName:
    """What a key of the archive says about its object."""

    key: str
    tenant: str
    first_seq: int
    last_seq: int
    kind: Kind


def parse_key(key: str) -> ObjectName | None:
    """The segment or digest a key names, or None for anything else."""
    match = _KEY.match(key)
    if match is None:
        return None
    first, last = int(match["first"]), int(match["last"])
    kind: Kind = "segment" if match["suffix"] == SEGMENT_SUFFIX else "digest"
    return ObjectName(key, match["tenant"], first, last, kind)


@dataclass(frozen=True)
class Segment:
    """Consecutive records of one tenant, from ``first_seq`` to ``last_seq``."""

    tenant: str
    first_seq: int
    lines: tuple[bytes, ...]
    """Canonical bytes of each record, without a newline."""
    first_received_at: str
    last_received_at: str

    @property
    def last_seq(self) -> int:
        return self.first_seq + len(self.lines) - 1

    def body(self) -> bytes:
        """The uncompressed JSON Lines: what the digest's SHA-256 covers."""
        return b"\n".join(self.lines) + b"\n"

    def key(self, prefix: str, kind: Kind = "segment") -> str:
        return object_key(
            prefix, self.tenant, self.first_seq, self.last_seq, self.first_received_at, kind
        )


def compress(body: bytes) -> bytes:
    """gzip of ``body`` that depends on nothing but ``body`` (mtime 0, no name)."""
    return zlib_ng.compress(body, GZIP_LEVEL, wbits=_GZIP_WBITS)


def decompress(data: bytes, key: str) -> bytes:
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as error:
        raise ArchiveFormatError(f"{key}: not a whole gzip stream ({error})") from error


def split_lines(body: bytes, key: str) -> list[bytes]:
    """The lines of a segment body; refuses a body that does not end with a newline."""
    if not body.endswith(b"\n"):
        raise ArchiveFormatError(f"{key}: the segment does not end with a newline (truncated?)")
    return body[:-1].split(b"\n")


def parse_line(line: bytes, key: str, index: int) -> dict[str, Any]:
    """A record of a segment, as JSON."""
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError as error:
        raise ArchiveFormatError(f"{key}: line {index + 1} is not JSON ({error})") from None
    if not isinstance(record, dict):
        raise ArchiveFormatError(f"{key}: line {index + 1} is not a JSON object")
    return record
