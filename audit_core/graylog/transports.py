"""How GELF messages reach Graylog, and what each way can confirm.

=========  ===================================================  ==========================
transport  framing                                              delivered means
=========  ===================================================  ==========================
tcp, tls   JSON messages each ended by a null byte              written to the socket, and
                                                                the connection still open
http(s)    one message (or, with ``batch``, newline-separated   Graylog answered
           messages) per POST, on a kept-alive connection       ``202 Accepted``
udp        one datagram, or GELF chunks when larger than        the datagrams were sent
           ``chunk_size``; gzip or zlib compressed              (best-effort)
=========  ===================================================  ==========================

A transport raises :class:`DeliveryError` when delivery is not confirmed (the caller
sends the same messages again later: receivers see duplicates, never gaps) and
:class:`MessageRefusedError` for a message that can never go. It connects lazily and
reconnects on the next send after a failure.

graypy's TLS handler cannot be used: it calls ``ssl.wrap_socket``, removed in Python
3.12, and verifies nothing by default. TLS here is an ``ssl.SSLContext`` that always
verifies the certificate and the host name.
"""

from __future__ import annotations

import gzip
import logging
import math
import select
import socket
import ssl
import zlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar
from urllib.parse import unquote

import httpx
from graypy.handler import GELF_MAX_CHUNK_NUMBER, BaseGELFChunker

from audit_core.graylog.config import Destination
from audit_core.graylog.exceptions import (
    DeliveryError,
    GraylogConfigError,
    MessageRefusedError,
)

log = logging.getLogger(__name__)

REFUSED_STATUSES = frozenset((400, 413, 422))
"""HTTP answers that refuse a message for what it is; any other non-202 answer (5xx,
429, 401 while a token is being rotated...) is retried."""


class Transport(ABC):
    """Sends packed GELF messages (UTF-8 JSON) to one destination."""

    guarantee: ClassVar[str]
    """What a returned ``send`` means, for ``vigil status`` and the docs."""

    def __init__(self, destination: Destination):
        self.destination = destination

    def send(self, messages: Sequence[bytes]) -> None:
        """Send ``messages`` in order; return once their delivery is confirmed."""
        limit = self.destination.max_message_bytes
        for index, message in enumerate(messages):
            if len(message) > limit:
                raise MessageRefusedError(
                    f"the GELF message is {len(message)} bytes, more than max_message_bytes "
                    f"({limit}) of {self.destination.follower_name}; raise it if Graylog's "
                    "input accepts larger messages",
                    index,
                )
        if messages:
            self._send(messages)

    @abstractmethod
    def _send(self, messages: Sequence[bytes]) -> None: ...

    def close(self) -> None:  # noqa: B027  (optional hook)
        """Release the connection."""


def tls_context(destination: Destination) -> ssl.SSLContext:
    """Verifies the server against ``ca_file`` (or the system's CAs) and its host name;
    presents ``cert_file`` when the input asks for a client certificate."""
    where = f"VIGIL_GRAYLOG_DESTINATIONS, destination {destination.name!r}"
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=destination.ca_file)
    except (ssl.SSLError, OSError) as error:
        raise GraylogConfigError(
            f"{where}: ca_file {destination.ca_file!r} holds no usable PEM certificate: {error}"
        ) from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if destination.cert_file:
        try:
            context.load_cert_chain(destination.cert_file, destination.key_file)
        except (ssl.SSLError, OSError) as error:
            raise GraylogConfigError(
                f"{where}: cannot load the client certificate {destination.cert_file!r} "
                f"(key {destination.key_file or 'inside it'}): {error}"
            ) from None
    return context


class StreamTransport(Transport):
    """GELF over TCP, optionally TLS: null-byte framed, uncompressed."""

    guarantee = "written to the socket and the connection still open"
    settle_seconds = 1.0
    """How long a new TLS 1.3 connection waits for the server to accept or refuse it."""

    def __init__(self, destination: Destination):
        super().__init__(destination)
        self._context = tls_context(destination) if destination.is_tls else None
        self._socket: socket.socket | None = None

    def _connect(self) -> socket.socket:
        destination = self.destination
        timeout = destination.timeout_seconds
        try:
            sock = socket.create_connection((destination.host, destination.port), timeout)
        except OSError as error:
            raise DeliveryError(f"cannot connect to {destination.address}: {error}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._context is None:
            return sock
        try:
            tls = self._context.wrap_socket(
                sock, server_hostname=destination.server_name or destination.host
            )
        except (ssl.SSLError, OSError) as error:
            sock.close()
            raise DeliveryError(f"TLS with {destination.address} failed: {error}") from None
        if tls.version() == "TLSv1.3" and not self._accepted(tls):
            tls.close()
            raise DeliveryError(
                f"TLS with {destination.address} failed: the input refused the handshake "
                "(does it require a client certificate? set cert_file)"
            )
        return tls

    def _accepted(self, tls: ssl.SSLSocket) -> bool:
        """In TLS 1.3 the client's handshake ends before the server has checked the
        client's certificate, so a refusal would only show after the first page was
        written and taken as delivered. The server's first records settle it: session
        tickets (accepted) or an alert and a close (refused)."""
        try:
            if not _readable(tls, min(self.settle_seconds, self.destination.timeout_seconds)):
                return True  # a server that sends no tickets: judged on the first write
        except (OSError, ValueError):
            return False
        return self._still_open(tls)

    def _send(self, messages: Sequence[bytes]) -> None:
        sock = self._socket
        if sock is not None and not self._still_open(sock):
            self._drop("the connection was closed by the peer")
            sock = None
        if sock is None:
            sock = self._socket = self._connect()
            log.info("connected to %s", self.destination.address)
        try:
            for start, end in _slices(messages, WRITE_BYTES):
                sock.sendall(b"\x00".join(messages[start:end]) + b"\x00")
        except OSError as error:
            self._drop(str(error))
            raise DeliveryError(
                f"writing to {self.destination.address} failed: {error}; the page is sent again"
            ) from None
        if not self._still_open(sock):
            self._drop("the connection was closed by the peer")
            raise DeliveryError(
                f"{self.destination.address} closed the connection while it was written to; "
                "the page is sent again"
            )

    def _still_open(self, sock: socket.socket) -> bool:
        """Whether the peer has neither closed nor reset the connection. A GELF input
        never writes, so anything readable is a close, a reset, or TLS housekeeping."""
        pending = isinstance(sock, ssl.SSLSocket) and sock.pending() > 0
        try:
            if not pending and not _readable(sock, 0):
                return True
            sock.setblocking(False)
            try:
                return bool(sock.recv(65536))
            finally:
                sock.settimeout(self.destination.timeout_seconds)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            return True  # only TLS records of its own (session tickets) had arrived
        except (OSError, ValueError):
            return False

    def _drop(self, why: str) -> None:
        if self._socket is not None:
            log.warning("connection to %s lost: %s", self.destination.address, why)
            self._socket.close()
            self._socket = None

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _readable(sock: socket.socket, timeout: float) -> bool:
    """Whether ``sock`` has something to read (or was closed) within ``timeout`` s.
    ``poll``, not ``select``: a busy server's descriptors go beyond select's 1024."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(timeout * 1000))


WRITE_BYTES = 1 << 20
"""About how much one write joins: few system calls, without a page of large events
copied into one buffer."""


def _slices(messages: Sequence[bytes], size: int) -> list[tuple[int, int]]:
    """Consecutive (start, end) ranges of ``messages`` of about ``size`` bytes each."""
    ranges: list[tuple[int, int]] = []
    start = total = 0
    for index, message in enumerate(messages):
        total += len(message)
        if total >= size:
            ranges.append((start, index + 1))
            start, total = index + 1, 0
    if start < len(messages):
        ranges.append((start, len(messages)))
    return ranges


class HttpTransport(Transport):
    """GELF over HTTP(S) to a GELF HTTP input, which answers ``202 Accepted``."""

    guarantee = "accepted by Graylog (HTTP 202)"

    def __init__(self, destination: Destination):
        super().__init__(destination)
        host = f"[{destination.host}]" if ":" in destination.host else destination.host
        self.url = f"{destination.scheme}://{host}:{destination.port}{destination.path}"
        headers = dict(destination.headers)
        if destination.compression == "gzip":
            headers["Content-Encoding"] = "gzip"
        auth = None
        if destination.userinfo:
            user, _, password = destination.userinfo.partition(":")
            auth = httpx.BasicAuth(unquote(user), unquote(password))
        self._extensions = (
            {"sni_hostname": destination.server_name} if destination.server_name else {}
        )
        self._client = httpx.Client(
            verify=tls_context(destination) if destination.is_tls else True,
            timeout=destination.timeout_seconds,
            headers={"Content-Type": "application/json", **headers},
            auth=auth,
        )

    def _send(self, messages: Sequence[bytes]) -> None:
        batch = self.destination.batch
        for start in range(0, len(messages), batch):
            part = messages[start : start + batch]
            status = self._post(part)
            if status in REFUSED_STATUSES:
                if len(part) == 1:
                    raise MessageRefusedError(
                        f"{self.destination.address} refuses the message with HTTP {status}",
                        start,
                    )
                # Which message of the batch is refused: each alone tells.
                for offset, message in enumerate(part):
                    if self._post([message]) in REFUSED_STATUSES:
                        raise MessageRefusedError(
                            f"{self.destination.address} refuses the message with HTTP {status}",
                            start + offset,
                        )
                continue
            if status != 202:
                raise DeliveryError(
                    f"{self.destination.address} answered HTTP {status} instead of "
                    "202 Accepted; the messages are sent again"
                )

    def _post(self, messages: Sequence[bytes]) -> int:
        body = b"\n".join(messages)
        if self.destination.compression == "gzip":
            body = gzip.compress(body, compresslevel=5, mtime=0)
        try:
            response = self._client.post(self.url, content=body, extensions=self._extensions)
        except httpx.HTTPError as error:
            raise DeliveryError(
                f"POST to {self.destination.address} failed: {type(error).__name__}: {error}"
            ) from None
        return response.status_code

    def close(self) -> None:
        self._client.close()


class UdpTransport(Transport):
    """GELF over UDP: compressed, chunked by graypy when larger than one datagram."""

    guarantee = "sent (best-effort: a lost datagram is not noticed)"

    def __init__(self, destination: Destination):
        super().__init__(destination)
        self._chunker = BaseGELFChunker(destination.chunk_size)
        self._socket: socket.socket | None = None

    def _connect(self) -> socket.socket:
        destination = self.destination
        try:
            family, kind, proto, _, address = socket.getaddrinfo(
                destination.host, destination.port, type=socket.SOCK_DGRAM
            )[0]
            sock = socket.socket(family, kind, proto)
            # Connected, so that the port-unreachable answer of a host with no input
            # listening comes back as an error on a later send instead of vanishing.
            sock.connect(address)
        except OSError as error:
            raise DeliveryError(f"cannot reach {destination.address}: {error}") from None
        return sock

    def compress(self, message: bytes) -> bytes:
        compression = self.destination.compression
        if compression == "gzip":
            return gzip.compress(message, compresslevel=5, mtime=0)
        if compression == "zlib":
            return zlib.compress(message, 5)
        return message

    def _send(self, messages: Sequence[bytes]) -> None:
        size = self.destination.chunk_size
        datagrams: list[bytes] = []
        for index, message in enumerate(messages):
            data = self.compress(message)
            if len(data) <= size:
                datagrams.append(data)
                continue
            if math.ceil(len(data) / size) > GELF_MAX_CHUNK_NUMBER:
                raise MessageRefusedError(
                    f"the GELF message is {len(data)} bytes {self.destination.compression}-"
                    f"compressed, more than {GELF_MAX_CHUNK_NUMBER} UDP chunks of {size} bytes; "
                    "raise chunk_size or ship this destination over tcp or http",
                    index,
                )
            datagrams.extend(self._chunker.chunk_message(data))
        if self._socket is None:
            self._socket = self._connect()
        try:
            for datagram in datagrams:
                self._socket.send(datagram)
        except OSError as error:
            self.close()
            raise DeliveryError(f"sending to {self.destination.address} failed: {error}") from None

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def open_transport(destination: Destination) -> Transport:
    """The transport of a destination's scheme; connects on its first send."""
    if destination.scheme in ("tcp", "tls"):
        return StreamTransport(destination)
    if destination.scheme in ("http", "https"):
        return HttpTransport(destination)
    return UdpTransport(destination)
