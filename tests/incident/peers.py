"""Real peers on loopback for the incident tests: an HTTP server that records what it
receives and answers as told, and an SMTP server with STARTTLS and a login."""

from __future__ import annotations

import json
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


Answer = tuple[int, dict[str, str], bytes]
Responder = Callable[[Received], Answer]


@dataclass
class HttpPeer:
    url: str
    port: int
    received: list[Received] = field(default_factory=list)


@contextmanager
def http_peer(respond: Responder) -> Iterator[HttpPeer]:
    """An HTTP server on 127.0.0.1 that records every request and answers ``respond``."""
    peer: HttpPeer

    class Handler(BaseHTTPRequestHandler):
        def _any(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            request = Received(
                self.command, self.path, {k.lower(): v for k, v in self.headers.items()},
                self.rfile.read(length),
            )  # fmt: skip
            peer.received.append(request)
            status, headers, body = respond(request)
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _any  # noqa: N815 (http.server names)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port = server.server_address[1]
    peer = HttpPeer(f"http://127.0.0.1:{port}", port)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield peer
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def json_answer(status: int, value: Any) -> Answer:
    return status, {"Content-Type": "application/json"}, json.dumps(value).encode()


@dataclass
class SmtpPeer:
    port: int
    client_context: ssl.SSLContext
    messages: list[Message] = field(default_factory=list)
    logins: list[tuple[str, str]] = field(default_factory=list)
    tls_used: list[bool] = field(default_factory=list)


@contextmanager
def smtp_peer(username: str, password: str) -> Iterator[SmtpPeer]:
    """aiosmtpd on 127.0.0.1 requiring STARTTLS before AUTH, with one account."""
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    peer = SmtpPeer(0, client_context)

    class Handler:
        async def handle_DATA(  # noqa: N802 (aiosmtpd names)
            self, server: SMTP, session: Session, envelope: Envelope
        ) -> str:
            assert isinstance(envelope.content, bytes)
            peer.messages.append(message_from_bytes(envelope.content))
            peer.tls_used.append(session.ssl is not None)
            return "250 OK"

    def authenticate(
        server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        assert isinstance(data, LoginPassword)
        login = (data.login.decode(), data.password.decode())
        peer.logins.append(login)
        return AuthResult(success=login == (username, password))

    with socket.socket() as probe:  # aiosmtpd checks its server by connecting to the port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(
        Handler(),
        hostname="127.0.0.1",
        port=port,
        tls_context=server_context,
        require_starttls=True,
        authenticator=authenticate,
        auth_require_tls=True,
        auth_required=True,
    )
    controller.start()
    peer.port = port
    try:
        yield peer
    finally:
        controller.stop()
