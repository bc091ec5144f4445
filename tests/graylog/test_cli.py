"""``vigil graylog``: the destinations as an operator checks them, and the HMAC an
analyst searches Graylog for."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from api.cli import app
from api.followers import REGISTRY
from audit_core.followers import FollowerRunner, open_store
from audit_core.graylog import MessageBuilder, MessageOptions
from tests.events import audit_event, audit_events
from tests.graylog.receivers import TcpReceiver
from tests.stores import SQLiteStore

KEY = "a-long-shared-secret-key"


def test_destinations_are_listed_with_what_delivery_means_and_no_secret() -> None:
    env = {
        "VIGIL_GRAYLOG_DESTINATIONS": orjson.dumps(
            {
                "siem": "tls://graylog.internal:12201",
                "web": {
                    "url": "https://svc:hunter2@graylog.internal/gelf",
                    "headers": {"X-Token": "s3cr3t"},
                },
                "lan": "udp://10.0.0.5",
            }
        ).decode(),
        "VIGIL_GRAYLOG_HOST": "vigil-eu-1",
    }
    result = CliRunner().invoke(app, ["graylog", "destinations"], env=env)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:2] == ["graylog:siem", "tls://graylog.internal:12201"]
    assert "written to the socket and the connection still open" in lines[0]
    assert "accepted by Graylog (HTTP 202)" in lines[1]
    assert "best-effort" in lines[2]
    assert "GELF host vigil-eu-1" in lines[3]
    assert "hunter2" not in result.output
    assert "s3cr3t" not in result.output


def test_a_wrong_destination_exits_2_naming_it() -> None:
    env = {"VIGIL_GRAYLOG_DESTINATIONS": "main=tcp://graylog:12201,dr=smtp://x"}
    result = CliRunner().invoke(app, ["graylog", "destinations"], env=env)
    assert result.exit_code == 2
    assert "destination 'dr': URL scheme 'smtp'" in result.output


def test_hmac_prints_what_the_shipper_sends_for_a_value(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "hmac.db")
    try:
        record = store.open_ledger().record(
            "acme", [audit_event("e1", metadata={"email": "alice@example.org", "pin": 1234})]
        )[0]
    finally:
        store.close()
    options = MessageOptions(host="h", hmac_key=KEY.encode(), hmac_fields=("email", "pin"))
    shipped = MessageBuilder(options).message(record)
    env = {"VIGIL_GRAYLOG_HMAC_KEY": KEY}
    text = CliRunner().invoke(app, ["graylog", "hmac", "alice@example.org"], env=env)
    number = CliRunner().invoke(app, ["graylog", "hmac", "--json", "1234"], env=env)
    assert text.output.strip() == shipped["_meta_email"]
    assert number.output.strip() == shipped["_meta_pin"]


@pytest.mark.parametrize(
    ("arguments", "env", "complaint"),
    [
        (["hmac", "x"], {}, "VIGIL_GRAYLOG_HMAC_KEY is not set"),
        (["hmac", "--json", "{oops"], {"VIGIL_GRAYLOG_HMAC_KEY": KEY}, "is not JSON"),
    ],
)
def test_hmac_without_what_it_needs_exits_2(
    arguments: list[str], env: dict[str, str], complaint: str
) -> None:
    result = CliRunner().invoke(app, ["graylog", *arguments], env=env)
    assert result.exit_code == 2
    assert complaint in result.output


def test_rebuild_and_replay_send_again_what_graylog_lost(
    tmp_path: Path, tcp_receiver: TcpReceiver
) -> None:
    store = SQLiteStore(tmp_path / "replay.db")
    try:
        records = store.open_ledger().record("acme", audit_events(10))
        env = {
            "VIGIL_DATABASE_URL": store.url,
            "VIGIL_GRAYLOG_DESTINATIONS": f"main=tcp://127.0.0.1:{tcp_receiver.port}",
        }
        runner = CliRunner()
        rebuilt = runner.invoke(app, ["rebuild", "graylog:main"], env=env)
        assert rebuilt.exit_code == 0, rebuilt.output
        assert [m["_event_id"] for m in tcp_receiver.wait_for(10)] == [r["id"] for r in records]
        # The whole ledger again, as after Graylog lost its index...
        again = runner.invoke(app, ["rebuild", "graylog:main"], env=env)
        assert again.exit_code == 0, again.output
        tcp_receiver.wait_for(20)
        # ...or what follows a position (here: after the tenant's third record).
        third = 4  # notification 1 opens the tenant's log; records follow
        replayed = runner.invoke(
            app, ["followers", "replay", "graylog:main", "--from", str(third)], env=env
        )
        assert replayed.exit_code == 0, replayed.output
        assert "will deliver again every record after notification 4" in replayed.output
        # The worker does the delivering.
        settings = store.settings(graylog_destinations=env["VIGIL_GRAYLOG_DESTINATIONS"])
        followers = open_store(settings.ledger_env())
        (spec,) = [spec for spec in REGISTRY if spec.name == "graylog"]
        ledger = store.open_ledger()
        (shipper,) = spec.build(settings, ledger, followers)
        try:
            assert FollowerRunner(ledger, shipper, followers).drain() == 7
        finally:
            shipper.close()
            followers.close()
        messages = tcp_receiver.wait_for(27)
    finally:
        store.close()
    copies = Counter(m["_event_id"] for m in messages)
    assert copies == {r["id"]: 2 if r["seq"] < 3 else 3 for r in records}
