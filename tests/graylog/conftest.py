"""Fixtures of the Graylog shipper's tests: records from a real ledger, TLS material made
by a test CA, and GELF inputs listening on loopback."""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme

from audit_core import Ledger
from audit_core.graylog import Destination, Transport, open_transport, parse_destinations
from tests.events import audit_event
from tests.graylog.receivers import HttpReceiver, TcpReceiver, UdpReceiver
from tests.stores import SQLiteStore


@dataclass(frozen=True)
class Tls:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as files."""

    ca: trustme.CA
    ca_file: Path
    client_file: Path
    """The client's key and certificate chain in one PEM file."""
    server: trustme.LeafCert

    def server_context(self, *, require_client_cert: bool = False) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.server.configure_cert(context)
        if require_client_cert:
            context.verify_mode = ssl.CERT_REQUIRED
            self.ca.configure_trust(context)
        return context


@pytest.fixture
def tls(tmp_path: Path) -> Tls:
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    client_file = tmp_path / "client.pem"
    ca.issue_cert("vigil-shipper@example.org").private_key_and_cert_chain_pem.write_to_path(
        str(client_file)
    )
    return Tls(ca, ca_file, client_file, ca.issue_cert("127.0.0.1", "graylog.test"))


def destination(url: str, **options: Any) -> Destination:
    """The one destination that ``VIGIL_GRAYLOG_DESTINATIONS`` would configure."""
    import orjson

    return parse_destinations(orjson.dumps({"test": {"url": url, **options}}).decode())[0]


Connect = Callable[..., Transport]


@pytest.fixture
def connect() -> Iterator[Connect]:
    """``connect(url, **options)``: the transport of that destination, closed at the end."""
    opened: list[Transport] = []

    def connect(url: str, **options: Any) -> Transport:
        opened.append(open_transport(destination(url, **options)))
        return opened[-1]

    yield connect
    for transport in opened:
        transport.close()


@pytest.fixture
def records(tmp_path: Path) -> Iterator[list[dict[str, Any]]]:
    """Twenty recorded events with varied outcomes, targets and metadata."""
    store = SQLiteStore(tmp_path / "records.db")
    ledger: Ledger = store.open_ledger()
    events = [
        audit_event(
            f"evt-{index}",
            outcome=("success", "failure", "denied")[index % 3],
            metadata={"workspace": "support-emea", "index": index, "email": f"u{index}@ex.org"},
        )
        for index in range(20)
    ]
    yield ledger.record("acme", events)
    store.close()


@pytest.fixture
def tcp_receiver() -> Iterator[TcpReceiver]:
    receiver = TcpReceiver().start()
    yield receiver
    receiver.stop()


@pytest.fixture
def http_receiver() -> Iterator[HttpReceiver]:
    receiver = HttpReceiver().start()
    yield receiver
    receiver.stop()


@pytest.fixture
def udp_receiver() -> Iterator[UdpReceiver]:
    receiver = UdpReceiver().start()
    yield receiver
    receiver.stop()
