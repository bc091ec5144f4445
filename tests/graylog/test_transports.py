"""Each transport against a real GELF input on loopback: what arrives, and what a
returned ``send`` can promise."""

from __future__ import annotations

import base64
import os
import random
import string
from pathlib import Path
from typing import Any

import orjson
import pytest

from audit_core.graylog import (
    DeliveryError,
    MessageBuilder,
    MessageOptions,
    MessageRefusedError,
)
from audit_core.graylog.transports import HttpTransport, StreamTransport, UdpTransport
from tests.events import audit_event
from tests.graylog.conftest import Connect, Tls
from tests.graylog.receivers import HttpReceiver, TcpReceiver, UdpReceiver
from tests.stores import SQLiteStore

BUILDER = MessageBuilder(MessageOptions(host="vigil-test"))


def packed(records: list[dict[str, Any]]) -> list[bytes]:
    return [BUILDER.pack(record) for record in records]


def assert_all_arrived(messages: list[dict[str, Any]], records: list[dict[str, Any]]) -> None:
    assert [m["_event_id"] for m in messages] == [r["id"] for r in records]
    assert [m["_hash"] for m in messages] == [r["hash"] for r in records]
    assert all(m["version"] == "1.1" and m["host"] == "vigil-test" for m in messages)


# -- TCP and TLS ---------------------------------------------------------------------


def test_tcp_frames_every_message_with_a_null_byte(
    connect: Connect, tcp_receiver: TcpReceiver, records: list[dict[str, Any]]
) -> None:
    transport = connect(f"tcp://127.0.0.1:{tcp_receiver.port}")
    assert isinstance(transport, StreamTransport)
    transport.send(packed(records[:5]))
    transport.send(packed(records[5:]))
    assert_all_arrived(tcp_receiver.wait_for(20), records)
    assert tcp_receiver.wire.count(b"\x00") == 20
    assert tcp_receiver.connections_accepted == 1  # one connection, kept
    transport.close()


def test_tcp_reports_an_outage_and_delivers_once_the_input_is_back(
    connect: Connect, tcp_receiver: TcpReceiver, records: list[dict[str, Any]]
) -> None:
    transport = connect(f"tcp://127.0.0.1:{tcp_receiver.port}")
    transport.send(packed(records[:10]))
    tcp_receiver.wait_for(10)
    tcp_receiver.stop()
    # The closed connection is noticed before anything is claimed as written.
    with pytest.raises(DeliveryError, match=f"127.0.0.1:{tcp_receiver.port}"):
        transport.send(packed(records[10:]))
    with pytest.raises(DeliveryError, match="cannot connect"):
        transport.send(packed(records[10:]))
    tcp_receiver.start()
    transport.send(packed(records[10:]))
    assert_all_arrived(tcp_receiver.wait_for(20), records)
    transport.close()


def test_tcp_works_in_a_process_holding_more_than_1024_descriptors(
    connect: Connect, tcp_receiver: TcpReceiver, records: list[dict[str, Any]]
) -> None:
    # A busy server's sockets get descriptors beyond what select() can watch.
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        transport = connect(f"tcp://127.0.0.1:{tcp_receiver.port}")
        transport.send(packed(records[:10]))
        transport.send(packed(records[10:]))
        assert_all_arrived(tcp_receiver.wait_for(20), records)
        assert tcp_receiver.connections_accepted == 1
    finally:
        for descriptor in held:
            os.close(descriptor)


def test_tls_verifies_the_input_and_presents_a_client_certificate(
    connect: Connect, tls: Tls, records: list[dict[str, Any]]
) -> None:
    receiver = TcpReceiver(tls.server_context(require_client_cert=True)).start()
    try:
        transport = connect(
            f"tls://127.0.0.1:{receiver.port}",
            ca_file=str(tls.ca_file),
            cert_file=str(tls.client_file),
        )
        transport.send(packed(records))
        assert_all_arrived(receiver.wait_for(20), records)
        transport.close()
    finally:
        receiver.stop()


def test_tls_checks_the_name_given_as_server_name(
    connect: Connect, tls: Tls, records: list[dict[str, Any]]
) -> None:
    receiver = TcpReceiver(tls.server_context()).start()
    try:
        right = connect(
            f"tls://127.0.0.1:{receiver.port}",
            ca_file=str(tls.ca_file),
            server_name="graylog.test",
        )
        right.send(packed(records[:1]))
        receiver.wait_for(1)
        right.close()
        wrong = connect(
            f"tls://127.0.0.1:{receiver.port}",
            ca_file=str(tls.ca_file),
            server_name="elsewhere.test",
        )
        with pytest.raises(DeliveryError, match=r"TLS with .* failed"):
            wrong.send(packed(records[:1]))
    finally:
        receiver.stop()


def test_tls_refuses_an_input_whose_certificate_another_ca_signed(
    connect: Connect, tls: Tls, tmp_path: Path, records: list[dict[str, Any]]
) -> None:
    import trustme

    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    receiver = TcpReceiver(tls.server_context()).start()
    try:
        transport = connect(f"tls://127.0.0.1:{receiver.port}", ca_file=str(other_ca))
        with pytest.raises(DeliveryError, match="CERTIFICATE_VERIFY_FAILED"):
            transport.send(packed(records))
        assert receiver.messages == []
    finally:
        receiver.stop()


def test_tls_without_the_client_certificate_the_input_requires_delivers_nothing(
    connect: Connect, tls: Tls, records: list[dict[str, Any]]
) -> None:
    receiver = TcpReceiver(tls.server_context(require_client_cert=True)).start()
    try:
        transport = connect(f"tls://127.0.0.1:{receiver.port}", ca_file=str(tls.ca_file))
        # In TLS 1.3 the server checks the client's certificate after the client's
        # handshake is over: the transport waits for its verdict before writing.
        with pytest.raises(DeliveryError, match="TLS with"):
            transport.send(packed(records))
        receiver.wait_until(lambda: receiver.handshakes_refused == 1)
        assert receiver.messages == []
    finally:
        receiver.stop()


def test_a_page_of_large_messages_arrives_whole_and_in_order(
    connect: Connect, tcp_receiver: TcpReceiver
) -> None:
    blob = "x" * 300_000
    page = [orjson.dumps({"_event_id": f"e-{index}", "blob": blob}) for index in range(12)]
    connect(f"tcp://127.0.0.1:{tcp_receiver.port}").send(page)
    messages = tcp_receiver.wait_for(12)
    assert [m["_event_id"] for m in messages] == [f"e-{index}" for index in range(12)]
    assert all(m["blob"] == blob for m in messages)


def test_a_message_larger_than_the_input_accepts_is_refused_by_index(
    connect: Connect, tcp_receiver: TcpReceiver, records: list[dict[str, Any]]
) -> None:
    transport = connect(f"tcp://127.0.0.1:{tcp_receiver.port}", max_message_bytes=2048)
    with pytest.raises(MessageRefusedError, match="more than max_message_bytes") as refused:
        transport.send([*packed(records[:1]), b"{" + b" " * 3000 + b"}"])
    assert refused.value.index == 1


# -- HTTP ----------------------------------------------------------------------------


def test_http_posts_each_message_on_one_kept_alive_connection(
    connect: Connect, http_receiver: HttpReceiver, records: list[dict[str, Any]]
) -> None:
    transport = connect(f"http://127.0.0.1:{http_receiver.port}/gelf")
    assert isinstance(transport, HttpTransport)
    transport.send(packed(records))
    assert_all_arrived(http_receiver.wait_for(20), records)
    assert http_receiver.requests == 20
    assert len(http_receiver.client_ports) == 1
    transport.close()


def test_http_batches_gzip_compressed_for_bulk_receiving(
    connect: Connect, http_receiver: HttpReceiver, records: list[dict[str, Any]]
) -> None:
    transport = connect(f"http://127.0.0.1:{http_receiver.port}/gelf", batch=8, compression="gzip")
    transport.send(packed(records))
    assert_all_arrived(http_receiver.wait_for(20), records)
    assert http_receiver.requests == 3
    transport.close()


def test_http_retries_until_graylog_accepts(
    connect: Connect, tmp_path: Path, records: list[dict[str, Any]]
) -> None:
    receiver = HttpReceiver(answer=lambda number, messages: 500 if number <= 2 else 202).start()
    try:
        transport = connect(f"http://127.0.0.1:{receiver.port}/gelf")
        for _ in range(2):
            with pytest.raises(DeliveryError, match="answered HTTP 500 instead of 202"):
                transport.send(packed(records[:1]))
        transport.send(packed(records[:1]))
        assert_all_arrived(receiver.wait_for(1), records[:1])
        assert receiver.statuses == [500, 500, 202]
    finally:
        receiver.stop()


def test_http_names_the_message_graylog_refuses_in_a_batch(
    connect: Connect,
    records: list[dict[str, Any]],
) -> None:
    def answer(number: int, messages: list[dict[str, Any]]) -> int:
        return 400 if any(m["_event_id"] == "evt-13" for m in messages) else 202

    receiver = HttpReceiver(answer=answer).start()
    try:
        transport = connect(f"http://127.0.0.1:{receiver.port}/gelf", batch=5)
        with pytest.raises(MessageRefusedError, match="HTTP 400") as refused:
            transport.send(packed(records))
        assert refused.value.index == 13
        # Everything before it was accepted.
        assert {m["_event_id"] for m in receiver.messages} == {f"evt-{i}" for i in range(13)}
    finally:
        receiver.stop()


@pytest.mark.parametrize(
    ("url", "options"),
    [
        ("http://127.0.0.1:{port}/gelf", {"headers": {"Authorization": "Bearer t0ken"}}),
        ("http://vigil:s%40cret@127.0.0.1:{port}/gelf", {}),
    ],
)
def test_http_presents_the_credentials_the_input_requires(
    connect: Connect, records: list[dict[str, Any]], url: str, options: dict[str, Any]
) -> None:
    required = "Bearer t0ken" if options else "Basic " + base64.b64encode(b"vigil:s@cret").decode()
    receiver = HttpReceiver(authorization=required).start()
    try:
        connect(url.format(port=receiver.port), **options).send(packed(records[:2]))
        assert_all_arrived(receiver.wait_for(2), records[:2])
        # Without them, Graylog's 401 is an error to retry (a token being rotated), and
        # the message it names holds no secret.
        anonymous = connect(f"http://127.0.0.1:{receiver.port}/gelf")
        with pytest.raises(DeliveryError, match="answered HTTP 401") as refused:
            anonymous.send(packed(records[:1]))
        assert "t0ken" not in str(refused.value)
    finally:
        receiver.stop()


def test_https_verifies_graylog_and_reports_a_refused_connection(
    connect: Connect, tls: Tls, records: list[dict[str, Any]]
) -> None:
    receiver = HttpReceiver(tls=tls.server_context()).start()
    try:
        transport = connect(f"https://127.0.0.1:{receiver.port}/gelf", ca_file=str(tls.ca_file))
        transport.send(packed(records))
        assert_all_arrived(receiver.wait_for(20), records)
        receiver.stop()
        with pytest.raises(DeliveryError, match=r"POST to https://127\.0\.0\.1"):
            transport.send(packed(records))
        transport.close()
    finally:
        receiver.stop()


def test_https_checks_the_name_given_as_server_name(
    connect: Connect, tls: Tls, records: list[dict[str, Any]]
) -> None:
    receiver = HttpReceiver(tls=tls.server_context()).start()
    try:
        url = f"https://127.0.0.1:{receiver.port}/gelf"
        right = connect(url, ca_file=str(tls.ca_file), server_name="graylog.test")
        right.send(packed(records[:1]))
        assert_all_arrived(receiver.wait_for(1), records[:1])
        wrong = connect(url, ca_file=str(tls.ca_file), server_name="elsewhere.test")
        with pytest.raises(DeliveryError, match="CERTIFICATE_VERIFY_FAILED"):
            wrong.send(packed(records[:1]))
    finally:
        receiver.stop()


# -- UDP -----------------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["gzip", "zlib", "none"])
def test_udp_sends_small_messages_in_one_datagram(
    connect: Connect, udp_receiver: UdpReceiver, records: list[dict[str, Any]], compression: str
) -> None:
    transport = connect(f"udp://127.0.0.1:{udp_receiver.port}", compression=compression)
    assert isinstance(transport, UdpTransport)
    transport.send(packed(records))
    assert_all_arrived(udp_receiver.wait_for(20), records)
    assert udp_receiver.datagrams == 20
    transport.close()


@pytest.mark.parametrize("compression", ["gzip", "zlib"])
def test_a_100_kb_event_arrives_whole_in_udp_chunks(
    connect: Connect, udp_receiver: UdpReceiver, tmp_path: Path, compression: str
) -> None:
    store = SQLiteStore(tmp_path / "big.db")
    try:
        ledger = store.open_ledger(max_event_bytes=200_000, max_metadata_bytes=150_000)
        # Random text, so compression leaves it many chunks long.
        rng = random.Random(7)
        blob = "".join(rng.choices(string.ascii_letters + string.digits, k=100_000))
        record = ledger.record("acme", [audit_event("evt-big", metadata={"blob": blob})])[0]
    finally:
        store.close()
    transport = connect(f"udp://127.0.0.1:{udp_receiver.port}", compression=compression)
    message = BUILDER.pack(record)
    assert len(transport.compress(message)) > 40 * 1420  # it does take many chunks
    transport.send([message])
    (arrived,) = udp_receiver.wait_for(1)
    assert udp_receiver.chunked_messages == 1
    assert udp_receiver.datagrams > 40
    assert arrived["_meta_blob"] == blob
    assert arrived["_hash"] == record["hash"]
    transport.close()


def test_udp_refuses_a_message_that_needs_more_than_128_chunks(
    connect: Connect,
    udp_receiver: UdpReceiver,
) -> None:
    transport = connect(f"udp://127.0.0.1:{udp_receiver.port}", compression="none")
    with pytest.raises(MessageRefusedError, match="more than 128 UDP chunks") as refused:
        transport.send([b"{}", b'{"x":"' + b"a" * 200_000 + b'"}'])
    assert refused.value.index == 1
    transport.close()
