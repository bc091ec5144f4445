"""Real GELF inputs on loopback, as Graylog runs them, for the shipper to send to.

Each receiver keeps every message it decoded (``messages``) and every byte that came
over the wire (``wire``), can be stopped and started again on the same port (an
outage), and waits for a number of messages without any timed assertion.
"""

from __future__ import annotations

import contextlib
import gzip
import socket
import ssl
import threading
import time
import zlib
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson

WAIT_SECONDS = 30.0


class Receiver:
    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.wire = bytearray()
        self.port = 0
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)

    def _received(self, raw: bytes, messages: list[dict[str, Any]]) -> None:
        with self._changed:
            self.wire += raw
            self.messages.extend(messages)
            self._changed.notify_all()

    def wait_for(self, count: int, timeout: float = WAIT_SECONDS) -> list[dict[str, Any]]:
        """The messages, once there are at least ``count`` (fails after ``timeout``)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self.messages) < count:
                left = deadline - time.monotonic()
                assert left > 0, f"{len(self.messages)} messages arrived, expected {count}"
                self._changed.wait(left)
            return list(self.messages)

    def wait_until(self, condition: Callable[[], bool], timeout: float = WAIT_SECONDS) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, "the receiver never got there"
            time.sleep(0.01)

    def by_event_id(self) -> dict[str, list[dict[str, Any]]]:
        with self._lock:
            found: dict[str, list[dict[str, Any]]] = {}
            for message in self.messages:
                found.setdefault(message["_event_id"], []).append(message)
            return found


class TcpReceiver(Receiver):
    """A GELF TCP input (null-byte framed), with TLS when given a server context."""

    def __init__(self, tls: ssl.SSLContext | None = None, read_delay: float = 0.0):
        super().__init__()
        self.tls = tls
        self.read_delay = read_delay
        """Pause after each read of at most 4 KiB: a slow input, to throttle the sender."""
        self.connections_accepted = 0
        self.handshakes_refused = 0
        self._listener: socket.socket | None = None
        self._open: list[socket.socket] = []

    def start(self) -> TcpReceiver:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            self.connections_accepted += 1
            self._open.append(connection)
            threading.Thread(target=self._read, args=(connection,), daemon=True).start()

    def _read(self, connection: socket.socket) -> None:
        buffer = b""
        try:
            if self.tls is not None:
                try:
                    connection = self.tls.wrap_socket(connection, server_side=True)
                except ssl.SSLError:
                    self.handshakes_refused += 1
                    raise
                self._open.append(connection)
            size = 4096 if self.read_delay else 1 << 20
            while data := connection.recv(size):
                time.sleep(self.read_delay)
                frames = (buffer + data).split(b"\x00")
                buffer = frames.pop()
                self._received(data, [orjson.loads(frame) for frame in frames if frame])
        except (OSError, ValueError):
            pass
        finally:
            connection.close()

    def stop(self) -> None:
        """Graylog going down: the input stops listening and drops its connections."""
        if self._listener is not None:
            # shutdown, not just close: it wakes the thread blocked in accept() and
            # stops the port listening at once.
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        for connection in self._open:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
            connection.close()
        self._open.clear()


class HttpReceiver(Receiver):
    """A GELF HTTP input at ``/gelf``: 202 Accepted, or what ``answer`` says.

    ``answer(request_number, messages)`` → status; only a 202 keeps the messages.
    Newline-separated bodies are split as Graylog's bulk receiving does.
    """

    def __init__(
        self,
        answer: Callable[[int, list[dict[str, Any]]], int] | None = None,
        tls: ssl.SSLContext | None = None,
        authorization: str | None = None,
    ):
        super().__init__()
        self.answer = answer or (lambda number, messages: 202)
        self.tls = tls
        self.authorization = authorization
        """The Authorization header the input requires (401 without it), if any."""
        self.requests = 0
        self.client_ports: set[int] = set()
        self.statuses: list[int] = []
        self._server: ThreadingHTTPServer | None = None
        self._open: list[socket.socket] = []

    def start(self) -> HttpReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                receiver._open.append(self.connection)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                raw = gzip.decompress(body) if self.headers["Content-Encoding"] == "gzip" else body
                messages = [orjson.loads(line) for line in raw.split(b"\n") if line.strip()]
                with receiver._lock:
                    receiver.requests += 1
                    number = receiver.requests
                    receiver.client_ports.add(self.client_address[1])
                status = receiver.answer(number, messages) if self.path == "/gelf" else 404
                if receiver.authorization not in (None, self.headers["Authorization"]):
                    status = 401
                with receiver._lock:
                    receiver.statuses.append(status)
                if status == 202:
                    receiver._received(raw, messages)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        if self.tls is not None:
            server.socket = self.tls.wrap_socket(server.socket, server_side=True)
        self.port = server.server_address[1]
        self._server = server
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        # Kept-alive connections go down with the input, as when Graylog stops.
        for connection in self._open:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        self._open.clear()


class UdpReceiver(Receiver):
    """A GELF UDP input: reassembles chunks, then inflates gzip or zlib."""

    def __init__(self) -> None:
        super().__init__()
        self.datagrams = 0
        self.chunked_messages = 0
        self._chunks: dict[bytes, dict[int, bytes]] = {}
        self._socket: socket.socket | None = None

    def start(self) -> UdpReceiver:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        sock.bind(("127.0.0.1", self.port))
        self.port = sock.getsockname()[1]
        self._socket = sock
        threading.Thread(target=self._read, args=(sock,), daemon=True).start()
        return self

    def _read(self, sock: socket.socket) -> None:
        while True:
            try:
                datagram = sock.recv(65536)
            except OSError:
                return
            self.datagrams += 1
            if datagram[:2] != b"\x1e\x0f":
                self._decoded(datagram, datagram)
                continue
            message_id, number, count = datagram[2:10], datagram[10], datagram[11]
            parts = self._chunks.setdefault(message_id, {})
            parts[number] = datagram[12:]
            if len(parts) == count:
                del self._chunks[message_id]
                self.chunked_messages += 1
                self._decoded(datagram, b"".join(parts[index] for index in range(count)))

    def _decoded(self, datagram: bytes, data: bytes) -> None:
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        elif data[:1] == b"\x78":
            data = zlib.decompress(data)
        self._received(data, [orjson.loads(data)])

    def stop(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
