"""VIGIL_* settings become the ledger's configuration, or a clear error naming the setting."""

from __future__ import annotations

import base64
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from api.settings import Settings

KEY = base64.b64encode(b"\x01" * 32).decode()


def test_a_sqlite_url_names_a_database_file_whose_folder_is_created(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "ledger.db"
    env = Settings(database_url=f"sqlite:///{path}").ledger_env()
    assert env == {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(path)}
    assert path.parent.is_dir()


def test_a_relative_sqlite_url_is_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    env = Settings(database_url="sqlite:///data/vigil.db").ledger_env()
    assert env["SQLITE_DBNAME"] == "data/vigil.db"
    assert (tmp_path / "data").is_dir()


def test_an_in_memory_sqlite_url_is_passed_through() -> None:
    assert Settings(database_url="sqlite:///:memory:").ledger_env()["SQLITE_DBNAME"] == ":memory:"


def test_a_postgres_url_gives_every_connection_setting() -> None:
    settings = Settings(
        database_url="postgresql://vigil:p%40ss%2Fword@db.internal:6543/audit?schema=ledger_a",
        postgres_pool_size=7,
        postgres_lock_timeout_seconds=3,
        postgres_connect_timeout_seconds=9,
    )
    assert settings.ledger_env() == {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": "audit",
        "POSTGRES_HOST": "db.internal",
        "POSTGRES_PORT": "6543",
        "POSTGRES_USER": "vigil",
        "POSTGRES_PASSWORD": "p@ss/word",
        "POSTGRES_POOL_SIZE": "7",
        "POSTGRES_LOCK_TIMEOUT": "3",
        "POSTGRES_CONNECT_TIMEOUT": "9",
        "POSTGRES_SCHEMA": "ledger_a",
    }


def test_messages_show_the_database_url_without_its_password() -> None:
    settings = Settings(database_url="postgresql://vigil:s3cret@db.internal/audit")
    assert settings.redacted_database_url() == "postgresql://vigil:***@db.internal/audit"
    assert "s3cret" not in settings.redacted_database_url()


def test_a_short_postgres_url_falls_back_to_local_defaults() -> None:
    env = Settings(database_url="postgres://localhost/vigil").ledger_env()
    assert (env["POSTGRES_DBNAME"], env["POSTGRES_PORT"], env["POSTGRES_USER"]) == (
        "vigil",
        "5432",
        "postgres",
    )
    assert "POSTGRES_SCHEMA" not in env


@pytest.mark.parametrize("url", ["postgres://localhost", "postgresql://u@db:5432/"])
def test_a_postgres_url_without_a_database_is_refused_not_sent_to_postgres(url: str) -> None:
    with pytest.raises(ValidationError, match="names no database"):
        Settings(database_url=url)


@pytest.mark.parametrize("url", ["mysql://db/vigil", "vigil.db", "http://example.com"])
def test_an_unsupported_database_url_is_refused_naming_the_setting(url: str) -> None:
    with pytest.raises(ValidationError, match="VIGIL_DATABASE_URL scheme"):
        Settings(database_url=url)


def test_an_encryption_key_turns_on_aes_encryption() -> None:
    env = Settings(database_url="sqlite:///:memory:", encryption_key=KEY).ledger_env()
    assert env["CIPHER_TOPIC"] == "eventsourcing.cryptography:AESCipher"
    assert env["CIPHER_KEY"] == KEY


@pytest.mark.parametrize("key", [None, ""])
def test_no_encryption_key_means_no_cipher(key: str | None) -> None:
    env = Settings(database_url="sqlite:///:memory:", encryption_key=key).ledger_env()
    assert "CIPHER_TOPIC" not in env
    assert "CIPHER_KEY" not in env


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("not base64!", "not valid base64"),
        (base64.b64encode(b"\x01" * 16).decode(), "decodes to 16 bytes; AES-256 needs 32"),
    ],
)
def test_a_malformed_encryption_key_is_refused_with_the_reason(key: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(encryption_key=key)


def test_settings_are_read_from_vigil_environment_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("VIGIL_DATABASE_URL", "postgresql://u@h/d")
    monkeypatch.setenv("VIGIL_ENCRYPTION_KEY", KEY)
    monkeypatch.setenv("VIGIL_MAX_BATCH_EVENTS", "25")
    monkeypatch.setenv("VIGIL_MAX_FUTURE_SKEW_SECONDS", "60")
    settings = Settings()
    assert settings.database_url == "postgresql://u@h/d"
    assert settings.ledger_env()["CIPHER_KEY"] == KEY
    limits = settings.limits()
    assert (limits.max_batch_events, limits.max_future_skew) == (25, timedelta(seconds=60))


def test_limits_below_their_floor_are_refused() -> None:
    with pytest.raises(ValidationError, match="max_event_bytes"):
        Settings(max_event_bytes=10)


def test_trusted_proxies_must_be_addresses_or_networks() -> None:
    assert Settings(trusted_proxies=" 10.0.0.0/8 ,127.0.0.1,").trusted_proxies == (
        "10.0.0.0/8,127.0.0.1"
    )
    with pytest.raises(ValueError, match=r"'proxy\.internal' is not an IP address or network"):
        Settings(trusted_proxies="10.0.0.1,proxy.internal")


def test_the_configuration_reference_in_docs_is_the_one_the_settings_make() -> None:
    from pathlib import Path

    from api.settings import settings_reference

    documented = Path(__file__).parents[2] / "docs" / "configuration.md"
    assert documented.read_text(encoding="utf-8") == settings_reference(), (
        "docs/configuration.md is stale: run `vigil config --reference > docs/configuration.md`"
    )


def test_vigil_config_prints_the_settings_in_effect_with_secrets_masked() -> None:
    from typer.testing import CliRunner

    from api.cli import app

    key = "c2VjcmV0LWtleS1vZi0zMi1ieXRlcy0tLS0tLS0tLS0="
    result = CliRunner().invoke(
        app,
        ["config"],
        env={
            "VIGIL_DATABASE_URL": "postgresql://vigil:hunter2@db.example/vigil",
            "VIGIL_ENCRYPTION_KEY": key,
        },
    )
    assert result.exit_code == 0, result.output
    assert "VIGIL_DATABASE_URL=postgresql://vigil:***@db.example/vigil" in result.stdout
    assert "VIGIL_ENCRYPTION_KEY=***" in result.stdout
    assert "hunter2" not in result.stdout
    assert key not in result.stdout


def test_every_setting_says_what_it_means() -> None:
    from api.settings import Settings

    undocumented = [name for name, field in Settings.model_fields.items() if not field.description]
    assert undocumented == [], "describe them: docs/configuration.md is made from the descriptions"
