"""Where the shipper sends: destinations parsed from ``VIGIL_GRAYLOG_DESTINATIONS``.

Three spellings, from the simplest:

- one URL, the destination named ``default``: ``tcp://graylog.internal:12201``;
- comma-separated ``name=URL`` pairs: ``main=tls://gl-a:12201,dr=https://gl-b/gelf``;
- a JSON object of name → URL, or name → object with ``url`` and options::

    {"main": {"url": "tls://graylog.internal:12201", "ca_file": "/etc/vigil/ca.pem"},
     "bulk": {"url": "https://graylog.internal:12202/gelf", "batch": 500}}

URL schemes: ``tcp``, ``tls``, ``http``, ``https``, ``udp``; the port defaults to 12201,
Graylog's GELF port. Each destination becomes a follower ``graylog:<name>`` with its own
position, so renaming one ships everything to it again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast, get_args
from urllib.parse import urlsplit

import orjson
from graypy.handler import LAN_CHUNK, WAN_CHUNK

from audit_core.graylog.exceptions import GraylogConfigError

Scheme = Literal["tcp", "tls", "http", "https", "udp"]
Compression = Literal["gzip", "zlib", "none"]
NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
DEFAULT_PORT = 12201
GELF_CHUNK_HEADER = 12
"""Bytes of a GELF chunk's header: magic (2), message id (8), sequence (1), count (1)."""
MAX_CHUNK_SIZE = 8192 - GELF_CHUNK_HEADER
"""Graylog's UDP inputs read datagrams of up to 8192 bytes by default."""

_NAME = re.compile(NAME_PATTERN)
_SETTING = "VIGIL_GRAYLOG_DESTINATIONS"
_OPTIONS = {
    "url": "tcp://, tls://, http://, https:// or udp:// address of a GELF input",
    "ca_file": "PEM file of the CAs that sign Graylog's certificate (tls, https)",
    "cert_file": "PEM client certificate, for inputs that require one (tls, https)",
    "key_file": "PEM private key of cert_file, if not inside it (tls, https)",
    "server_name": "name to check Graylog's certificate against, if not the URL's host",
    "timeout_seconds": "connect, write and response timeout (default 10)",
    "batch": "messages per HTTP request; above 1 the input needs bulk receiving enabled",
    "compression": "gzip, zlib or none (udp: default gzip; http: gzip or none)",
    "chunk_size": f"UDP chunk size: {WAN_CHUNK} (default, WAN) up to {MAX_CHUNK_SIZE}",
    "headers": "extra HTTP headers, e.g. the authorization header the input requires",
    "max_message_bytes": "largest message sent; a larger one stops the shipper (2 MiB)",
}


@dataclass(frozen=True)
class Destination:
    """One GELF input that every audit event is shipped to."""

    name: str
    scheme: Scheme
    host: str
    port: int
    path: str = "/gelf"
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    server_name: str | None = None
    timeout_seconds: float = 10.0
    batch: int = 1
    compression: Compression = "none"
    chunk_size: int = WAN_CHUNK
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    max_message_bytes: int = 2 * 1024 * 1024
    userinfo: str | None = field(default=None, repr=False)
    """``user:password`` of an HTTP(S) URL: basic authentication. A secret."""

    @property
    def follower_name(self) -> str:
        return f"graylog:{self.name}"

    @property
    def address(self) -> str:
        """The destination's URL without credentials: safe for logs and status."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        path = self.path if self.scheme in ("http", "https") else ""
        return f"{self.scheme}://{host}:{self.port}{path}"

    @property
    def is_tls(self) -> bool:
        return self.scheme in ("tls", "https")


def parse_destinations(text: str) -> list[Destination]:
    """The destinations ``text`` configures (empty: none); ``GraylogConfigError``
    names the destination, the option and what would be right."""
    text = text.strip()
    if not text:
        return []
    entries: dict[str, Any]
    if text.startswith("{"):
        try:
            entries = orjson.loads(text)
        except orjson.JSONDecodeError as error:
            raise GraylogConfigError(f"{_SETTING} is not valid JSON: {error}") from None
    elif "=" in text.split("://", 1)[0]:
        entries = {}
        for pair in text.split(","):
            name, sep, url = pair.strip().partition("=")
            if not sep or not url.strip():
                raise GraylogConfigError(
                    f"{_SETTING}: {pair.strip()!r} is not name=URL (e.g. main=tcp://graylog:12201)"
                )
            if name.strip() in entries:
                raise GraylogConfigError(f"{_SETTING}: destination {name!r} appears twice")
            entries[name.strip()] = url.strip()
    else:
        entries = {"default": text}
    destinations = [_destination(name, options) for name, options in entries.items()]
    if not destinations:
        raise GraylogConfigError(f"{_SETTING} is an empty JSON object; leave it unset")
    return destinations


def _destination(name: str, options: Any) -> Destination:
    where = f"{_SETTING}, destination {name!r}"
    if not _NAME.fullmatch(name):
        raise GraylogConfigError(f"{where}: the name must match {NAME_PATTERN}")
    if isinstance(options, str):
        options = {"url": options}
    if not isinstance(options, dict):
        raise GraylogConfigError(f"{where}: give a URL or an object with 'url'")
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        known = "; ".join(f"{key}: {meaning}" for key, meaning in _OPTIONS.items())
        raise GraylogConfigError(f"{where}: unknown option {unknown[0]!r}; known: {known}")
    if "url" not in options:
        raise GraylogConfigError(f"{where}: 'url' is missing (e.g. tcp://graylog:12201)")
    url = urlsplit(str(options["url"]))
    if url.scheme not in get_args(Scheme):
        raise GraylogConfigError(
            f"{where}: URL scheme {url.scheme!r} is not one of tcp, tls, http, https, udp"
        )
    scheme = cast(Scheme, url.scheme)
    try:
        port = url.port or DEFAULT_PORT
    except ValueError:
        raise GraylogConfigError(f"{where}: the URL's port is not a port number") from None
    if not url.hostname:
        raise GraylogConfigError(f"{where}: the URL has no host")
    http = scheme in ("http", "https")
    if not http and (url.path not in ("", "/") or url.username is not None):
        raise GraylogConfigError(
            f"{where}: a {scheme} URL is only scheme://host:port (no path, no user)"
        )
    is_tls = scheme in ("tls", "https")
    values: dict[str, Any] = {}
    for option in ("ca_file", "cert_file", "key_file"):
        if option in options:
            if not is_tls:
                raise GraylogConfigError(f"{where}: {option} applies to tls and https only")
            path = Path(str(options[option]))
            if not path.is_file():
                raise GraylogConfigError(f"{where}: {option} {str(path)!r} is not a file")
            values[option] = str(path)
    if "key_file" in values and "cert_file" not in values:
        raise GraylogConfigError(f"{where}: key_file needs cert_file beside it")
    if "server_name" in options:
        if not is_tls:
            raise GraylogConfigError(f"{where}: server_name applies to tls and https only")
        values["server_name"] = str(options["server_name"])
    if "timeout_seconds" in options:
        values["timeout_seconds"] = _number(where, options, "timeout_seconds", 0.1, 600.0)
    if "max_message_bytes" in options:
        values["max_message_bytes"] = int(
            _number(where, options, "max_message_bytes", 1024, 64 * 1024 * 1024, whole=True)
        )
    if "batch" in options:
        if not http:
            raise GraylogConfigError(f"{where}: batch applies to http and https only")
        values["batch"] = int(_number(where, options, "batch", 1, 10_000, whole=True))
    if "headers" in options:
        headers = options["headers"]
        if not http:
            raise GraylogConfigError(f"{where}: headers apply to http and https only")
        if not isinstance(headers, dict) or not all(
            isinstance(key, str) and isinstance(value, str) for key, value in headers.items()
        ):
            raise GraylogConfigError(f"{where}: headers must be an object of strings")
        values["headers"] = tuple(sorted(headers.items()))
    compression = options.get("compression", "gzip" if scheme == "udp" else "none")
    allowed = {"udp": ("gzip", "zlib", "none"), "http": ("gzip", "none")}.get(
        "http" if http else scheme, ("none",)
    )
    if compression not in allowed:
        raise GraylogConfigError(
            f"{where}: compression {compression!r} is not one of {', '.join(allowed)} "
            f"for {scheme}" + (" (null-byte framing forbids it)" if not http else "")
        )
    values["compression"] = compression
    if "chunk_size" in options:
        if scheme != "udp":
            raise GraylogConfigError(f"{where}: chunk_size applies to udp only")
        values["chunk_size"] = int(
            _number(where, options, "chunk_size", 512, MAX_CHUNK_SIZE, whole=True)
        )
    return Destination(
        name=name,
        scheme=scheme,
        host=url.hostname,
        port=port,
        path=(url.path or "/gelf") + (f"?{url.query}" if url.query else "") if http else "/gelf",
        userinfo=url.netloc.rpartition("@")[0] or None if http else None,
        **values,
    )


def _number(
    where: str, options: dict[str, Any], key: str, low: float, high: float, *, whole: bool = False
) -> float:
    value = options[key]
    kinds = (int,) if whole else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not low <= value <= high:
        kind = "a whole number" if whole else "a number"
        raise GraylogConfigError(f"{where}: {key} must be {kind} from {low:g} to {high:g}")
    return float(value)


__all__ = ["LAN_CHUNK", "WAN_CHUNK", "Destination", "parse_destinations"]
