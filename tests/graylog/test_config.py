"""VIGIL_GRAYLOG_DESTINATIONS: each spelling, and errors that say what to fix."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from audit_core.graylog import GraylogConfigError, parse_destinations


def test_one_url_is_the_default_destination() -> None:
    (only,) = parse_destinations("tcp://graylog.internal")
    assert (only.name, only.scheme, only.host, only.port) == (
        "default",
        "tcp",
        "graylog.internal",
        12201,
    )
    assert only.follower_name == "graylog:default"


def test_name_url_pairs_configure_several_destinations() -> None:
    main, dr, bulk = parse_destinations(
        "main=tcp://gl-a:12201, dr=udp://[2001:db8::1]:12209,bulk=https://gl-b/custom"
    )
    assert [d.follower_name for d in (main, dr, bulk)] == [
        "graylog:main",
        "graylog:dr",
        "graylog:bulk",
    ]
    assert dr.address == "udp://[2001:db8::1]:12209"
    assert dr.compression == "gzip"
    assert bulk.address == "https://gl-b:12201/custom"


def test_json_configures_options_per_destination(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("pem")
    configured = {
        "secure": {"url": "tls://gl:12201", "ca_file": str(ca), "timeout_seconds": 3},
        "web": {
            "url": "https://svc:s%40cret@gl/gelf",
            "batch": 200,
            "headers": {"Authorization": "Bearer t0ken"},
        },
    }
    secure, web = parse_destinations(orjson.dumps(configured).decode())
    assert secure.ca_file == str(ca)
    assert secure.timeout_seconds == 3
    assert web.batch == 200
    assert web.headers == (("Authorization", "Bearer t0ken"),)
    # Credentials stay out of what is shown.
    assert "cret" not in web.address
    assert "t0ken" not in repr(web)
    assert "cret" not in repr(web)


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("ftp://gl", "URL scheme 'ftp' is not one of tcp, tls, http, https, udp"),
        ("tcp://gl:99999", "the URL's port is not a port number"),
        ("main=", "'main=' is not name=URL"),
        ("a=tcp://x,a=tcp://y", "destination 'a' appears twice"),
        ('{"Main": "tcp://gl"}', "the name must match"),
        ('{"m": {"url": "tcp://gl", "compresion": "gzip"}}', "unknown option 'compresion'"),
        ('{"m": {"url": "tcp://gl", "compression": "gzip"}}', "null-byte framing forbids it"),
        ('{"m": {"url": "tcp://gl", "ca_file": "/x"}}', "ca_file applies to tls and https only"),
        ('{"m": {"url": "tls://gl", "ca_file": "/no/such.pem"}}', "'/no/such.pem' is not a file"),
        ('{"m": {"url": "udp://gl", "chunk_size": 100}}', "chunk_size must be a whole number"),
        ('{"m": {"url": "http://gl", "batch": 0}}', "batch must be a whole number from 1"),
        ('{"m": {"url": "tcp://gl/path"}}', "a tcp URL is only scheme://host:port"),
        ('{"m": {}}', "'url' is missing"),
        ("{not json", "is not valid JSON"),
    ],
)
def test_a_wrong_destination_is_named_with_what_to_fix(text: str, complaint: str) -> None:
    with pytest.raises(GraylogConfigError) as error:
        parse_destinations(text)
    assert complaint in str(error.value)
    assert str(error.value).startswith("VIGIL_GRAYLOG_DESTINATIONS")


def test_nothing_configured_ships_nowhere() -> None:
    assert parse_destinations("  ") == []
