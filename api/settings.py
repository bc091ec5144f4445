"""Every ``VIGIL_*`` setting, read once here and handed down as plain values.

Nothing below ``api/`` reads the environment: the ledger gets an eventsourcing ``env``
mapping and a :class:`~audit_core.Limits` built from these settings.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import parse_qs, unquote, urlsplit

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from audit_core import Limits

if TYPE_CHECKING:
    from audit_core.graylog import Destination, MessageOptions


SHIPPED_RUNBOOKS = Path(__file__).resolve().parents[1] / "runbooks"
"""The runbooks, escalation policies and detection rules that ship with Vigil (installed
beside the packages)."""


class Settings(BaseSettings):
    """Vigil's configuration; each field is read from ``VIGIL_<FIELD NAME>``."""

    model_config = SettingsConfigDict(env_prefix="VIGIL_", extra="ignore")

    database_url: str = Field(
        default="sqlite:///vigil.db",
        description="sqlite:///relative.db, sqlite:////absolute.db or "
        "postgresql://user:password@host:port/dbname?schema=name",
    )
    encryption_key: SecretStr | None = Field(
        default=None,
        description="Base64 of 32 random bytes: stored events are then encrypted with "
        "AES-256-GCM. Make one with `vigil new-encryption-key`.",
    )
    postgres_pool_size: int = Field(
        description="PostgreSQL connections each store keeps open per process (up to 10 "
        "more are opened under load).",
        default=5,
        ge=1,
        le=100,
    )
    postgres_lock_timeout_seconds: int = Field(
        description="How long a writer waits for the table lock that keeps notification order.",
        default=10,
        ge=0,
    )
    postgres_connect_timeout_seconds: int = Field(
        description="How long to wait for a PostgreSQL connection.", default=5, ge=1
    )
    max_event_bytes: int = Field(description="Largest event, as JSON.", default=32 * 1024, ge=1024)
    max_metadata_bytes: int = Field(
        description="Largest metadata (and changes) of an event, as JSON.",
        default=16 * 1024,
        ge=256,
    )
    max_metadata_depth: int = Field(
        description="Deepest nesting in metadata and changes.", default=8, ge=1, le=64
    )
    max_batch_events: int = Field(
        description="Most events in one batch.", default=1000, ge=1, le=10_000
    )
    max_future_skew_seconds: int = Field(
        description="How far occurred_at may be ahead of the server clock.", default=300, ge=0
    )
    # -- HTTP API (issue 3) -------------------------------------------------------------
    host: str = Field(default="127.0.0.1", description="Address `vigil serve` listens on.")
    port: int = Field(description="Port `vigil serve` listens on.", default=8000, ge=0, le=65535)
    workers: int = Field(default=1, ge=1, le=64, description="uvicorn worker processes.")
    max_body_bytes: int = Field(
        default=8 * 1024 * 1024,
        ge=1024,
        description="Largest request body accepted; larger ones get 413 before parsing.",
    )
    max_page_size: int = Field(
        description="Most records in one query page.", default=1000, ge=1, le=10_000
    )
    group_commit_max_events: int = Field(
        default=2000,
        ge=1,
        le=10_000,
        description="Most events that concurrent requests combine into one ledger "
        "transaction (a larger batch request goes alone).",
    )
    one_cpu: bool = Field(
        default=False,
        description="Tuning: with one worker, keep the API's threads on one CPU (they "
        "share a GIL). The follower worker is never pinned.",
    )
    tune_collector: bool = Field(
        default=False,
        description="Tuning: freeze the startup heap out of the garbage collector and "
        "collect the youngest generation at 100,000 objects instead of 700.",
    )
    gil_switch_seconds: float | None = Field(
        default=None,
        gt=0,
        le=0.1,
        description="Tuning: the API's GIL switch interval (CPython's default: 0.005).",
    )
    readmodel_poll_seconds: float = Field(
        default=0.2,
        gt=0,
        description="How often followers poll the ledger for new records (SQLite; "
        "PostgreSQL also wakes them on each commit).",
    )
    read_your_writes_timeout_seconds: float = Field(
        default=5.0,
        ge=0,
        le=60,
        description="How long a query naming min_position waits for the read model to "
        "hold that record before answering 503.",
    )
    readmodel_follow: bool = Field(
        default=True,
        description="Run every follower inside the API process (tests, a laptop); "
        "`vigil serve` runs them in a process of their own instead.",
    )
    key_cache_seconds: float = Field(
        default=2.0,
        ge=0,
        description="How long a verified API key is trusted without reading it again; "
        "a revocation by another process takes effect within this time.",
    )
    auth_failure_audit_limit: int = Field(
        default=60,
        ge=0,
        description="Failed authentications (401) recorded one by one per log (the key's "
        "tenant, or vigil-system) per window; beyond it they are counted, and the count "
        "is recorded when the window ends.",
    )
    auth_failure_audit_window_seconds: float = Field(
        default=60.0, gt=0, le=86_400, description="The window of auth_failure_audit_limit."
    )
    trusted_proxies: str = Field(
        default="",
        description="Comma-separated addresses or networks of reverse proxies whose "
        "X-Forwarded-For and X-Forwarded-Proto are believed; empty: nobody's, and the "
        "peer's address is the client's (the one a key's network allowlist checks).",
    )
    log_level: str = Field(
        description="debug, info, warning or error; JSON lines on stderr with the request id.",
        default="info",
    )
    readyz_timeout_seconds: float = Field(
        description="How long /readyz waits for the database.", default=2.0, gt=0
    )
    write_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description="How long a write request waits for storage before answering 503; "
        "the write may still be recorded later, so clients retry with the same event ids.",
    )
    readyz_max_lag_seconds: float = Field(
        default=60.0,
        gt=0,
        description="/readyz answers 503 when a follower's oldest unprocessed record is "
        "older than this (a follower stopped, stuck or far behind).",
    )
    # -- incidents (issue 14): escalation, runbooks, notifications ---------------------
    incident_runbooks_dir: str = Field(
        default="",
        description="Runbooks (*.yaml, *.md with front matter); escalation policies are "
        "read from its policies/ directory. Empty: the runbooks shipped with Vigil.",
    )
    incident_default_policy: str = Field(
        default="", description="Escalation policy for incidents opened without one."
    )
    incident_templates_dir: str = Field(
        default="", description="Post-mortem templates overriding the shipped ones."
    )
    incident_secrets_key: SecretStr | None = Field(
        default=None,
        description="Base64 of 32 bytes: runbook secrets are encrypted with it "
        "(AES-256-GCM); VIGIL_ENCRYPTION_KEY when unset.",
    )
    incident_allowed_networks: str = Field(
        default="",
        description="Comma-separated CIDRs that automated steps may reach although "
        "loopback, private or link-local; empty: none.",
    )
    incident_http_timeout_seconds: float = Field(
        description="Timeout of a runbook's automated HTTP step (and its token request).",
        default=10.0,
        gt=0,
        le=120,
    )
    incident_tick_seconds: float = Field(
        default=5.0, gt=0, description="How often `vigil worker` looks for due escalations."
    )
    # -- detection rules (issue 14); docs/detection.md ---------------------------------
    incident_detector: bool = Field(
        default=True,
        description="Run the detection rules over the ledger (follower "
        "incident-detector), opening incidents; its runbooks must exist.",
    )
    incident_rules_dir: str = Field(
        default="",
        description="Detection rules (*.yaml), checked at start. Empty: the rules shipped "
        "with Vigil.",
    )
    webhook_urls: str = Field(
        default="",
        description="Comma-separated name=url webhooks for notifications; "
        "name=slack:url sends Slack's message shape.",
    )
    webhook_secret: SecretStr | None = Field(
        default=None, description="HMAC-SHA256 key signing webhook notifications."
    )
    webhook_retries: int = Field(
        description="Tries of a notification webhook before it is recorded as failed.",
        default=3,
        ge=0,
        le=10,
    )
    webhook_timeout_seconds: float = Field(
        description="Timeout of one webhook delivery.", default=5.0, gt=0, le=60
    )
    smtp_host: str = Field(default="", description="SMTP server for e-mail; empty: none.")
    smtp_port: int = Field(description="SMTP server port (STARTTLS).", default=587, ge=1, le=65535)
    smtp_username: str = Field(description="SMTP login; empty: no login.", default="")
    smtp_password: SecretStr | None = Field(description="SMTP password (a secret).", default=None)
    smtp_starttls: bool = Field(default=True, description="Upgrade with STARTTLS (required).")
    smtp_from: str = Field(
        description="Sender address of notification e-mail.", default="vigil@localhost"
    )
    smtp_timeout_seconds: float = Field(
        description="Timeout of one SMTP conversation.", default=10.0, gt=0, le=120
    )
    # -- S3 archive (issue 13); docs/archive.md ----------------------------------------
    archive_bucket: str = Field(default="", description="S3 bucket; empty: no archive.")
    archive_prefix: str = Field(default="vigil", description="Key prefix in the bucket.")
    archive_endpoint_url: str | None = Field(
        default=None, description="S3 endpoint (MinIO, Ceph...); unset: AWS."
    )
    archive_region: str | None = Field(
        description="S3 region; unset: boto3's default.", default=None
    )
    archive_access_key_id: str | None = Field(
        default=None, description="Unset: boto3's credential chain (env, profile, role)."
    )
    archive_secret_access_key: SecretStr | None = Field(
        description="S3 secret key, with VIGIL_ARCHIVE_ACCESS_KEY_ID (a secret).", default=None
    )
    archive_profile: str | None = Field(default=None, description="AWS shared-config profile.")
    archive_lock_mode: Literal["COMPLIANCE", "GOVERNANCE", "OFF"] = Field(
        description="Object Lock mode of archived objects: COMPLIANCE, GOVERNANCE or OFF.",
        default="COMPLIANCE",
    )
    archive_retention_days: int = Field(
        description="How long Object Lock keeps each archived object.", default=365, ge=1, le=36_500
    )
    archive_legal_hold: bool = Field(
        description="Also put a legal hold on every archived object.", default=False
    )
    archive_encryption: Literal["AES256", "aws:kms"] = Field(
        description="Server-side encryption: AES256 (SSE-S3) or aws:kms (SSE-KMS).",
        default="AES256",
    )
    archive_kms_key_id: str | None = Field(description="KMS key of SSE-KMS.", default=None)
    archive_segment_records: int = Field(
        description="Records per archive segment, at most.", default=10_000, ge=1, le=1_000_000
    )
    archive_segment_seconds: float = Field(
        default=30.0,
        gt=0,
        le=86_400,
        description="A segment closes once its first record is this old; keep it below "
        "VIGIL_READYZ_MAX_LAG_SECONDS, which the held records count against.",
    )
    archive_checkpoints: Literal["transparency", "archive"] = Field(
        default="transparency",
        description="Digests name the transparency log's checkpoints (waiting for one "
        "that covers the segment), or checkpoints the archiver signs itself.",
    )
    archive_timeout_seconds: float = Field(
        description="Timeout of one S3 request.", default=10.0, gt=0, le=300
    )
    # -- transparency log (issue 11); docs/transparency.md -------------------------------
    log_origin: str = Field(
        default="vigil.localhost/log",
        pattern=r"^[^\s+]+$",
        description="Checkpoint origin prefix (a schema-less URL, no spaces or '+'); each "
        "tenant's log is <origin>/<tenant>, and its checkpoints are signed under that name.",
    )
    signing_key_file: str = Field(
        default="",
        description="Ed25519 signing key written by `vigil keys signing-generate`; empty: "
        "no transparency log (no checkpoints, proofs or evidence bundles).",
    )
    verifier_keys: str = Field(
        default="",
        description="Earlier verifier keys (vkey format, comma-separated) still published "
        "and trusted after a key rotation, so older checkpoints keep verifying.",
    )
    checkpoint_every_records: int = Field(
        description="A grown tree gets a signed checkpoint once this many records are not "
        "yet covered.",
        default=10_000,
        ge=1,
        le=10_000_000,
    )
    checkpoint_every_seconds: float = Field(
        default=0.5,
        gt=0,
        le=86_400,
        description="A grown tree gets a checkpoint this long after its first new record, "
        "or after checkpoint_every_records records, whichever comes first.",
    )

    # -- Graylog (issue 12); docs/graylog.md ---------------------------------------------
    graylog_destinations: SecretStr = Field(
        default=SecretStr(""),
        description="Where every audit event is shipped as GELF: one URL (tcp://, tls://, "
        "http(s)://, udp://), name=URL pairs, or a JSON object of name -> options; each "
        "destination is the follower graylog:<name>. Secret: may hold credentials.",
    )
    graylog_host: str = Field(
        default="", description="GELF `host` of the messages; empty: this machine's name."
    )
    graylog_hmac_key: SecretStr | None = Field(
        default=None,
        description="Secret key of the HMAC-SHA256 that replaces sensitive metadata values.",
    )
    graylog_hmac_fields: str = Field(
        default="",
        description="Comma-separated metadata keys (any depth) or dotted paths whose values "
        "are shipped as their HMAC-SHA256, never in clear.",
    )
    graylog_max_meta_fields: int = Field(
        default=100,
        ge=0,
        le=1000,
        description="Most _meta_* fields per GELF message; further metadata is only in "
        "full_message (Elasticsearch caps an index at 1000 fields by default).",
    )

    @field_validator("graylog_destinations")
    @classmethod
    def _graylog_destinations(cls, value: SecretStr) -> SecretStr:
        from audit_core.graylog import parse_destinations

        try:
            parse_destinations(value.get_secret_value())
        except ValueError as error:  # reported under the variable's name already
            raise ValueError(str(error).removeprefix("VIGIL_GRAYLOG_DESTINATIONS, ")) from None
        return value

    @field_validator("graylog_hmac_fields")
    @classmethod
    def _graylog_hmac_fields(cls, value: str, info: ValidationInfo) -> str:
        fields = [field.strip() for field in value.split(",") if field.strip()]
        key = info.data.get("graylog_hmac_key")
        if fields and (key is None or len(key.get_secret_value()) < 16):
            raise ValueError(
                "VIGIL_GRAYLOG_HMAC_FIELDS needs VIGIL_GRAYLOG_HMAC_KEY, a secret of at "
                "least 16 characters (e.g. `python -c 'import secrets; "
                "print(secrets.token_urlsafe(32))'`)"
            )
        return ",".join(fields)

    def graylog(self) -> tuple[list[Destination], MessageOptions]:
        """The Graylog destinations and how their messages are built."""
        import socket

        from audit_core.graylog import MessageOptions, parse_destinations

        key = self.graylog_hmac_key
        options = MessageOptions(
            host=self.graylog_host or socket.gethostname(),
            hmac_key=key.get_secret_value().encode() if key is not None else None,
            hmac_fields=tuple(field for field in self.graylog_hmac_fields.split(",") if field),
            max_meta_fields=self.graylog_max_meta_fields,
        )
        return parse_destinations(self.graylog_destinations.get_secret_value()), options

    @model_validator(mode="after")
    def _archive_complete(self) -> Settings:
        """The archiver signs with the log's key, SSE-KMS needs a key, and S3 credentials
        come in pairs: say so at start-up rather than when the first segment closes."""
        if not self.archive_bucket:
            return self
        if not self.signing_key_file:
            raise ValueError(
                "VIGIL_ARCHIVE_BUCKET is set but VIGIL_SIGNING_KEY_FILE is not: the archiver "
                "signs its digests with the log's key (`vigil keys signing-generate`); to "
                "only verify an archive, leave the bucket unset and use `vigil archive "
                "verify --bucket NAME --key VKEY`"
            )
        if self.archive_encryption == "aws:kms" and not self.archive_kms_key_id:
            raise ValueError("VIGIL_ARCHIVE_ENCRYPTION=aws:kms needs VIGIL_ARCHIVE_KMS_KEY_ID")
        if (self.archive_access_key_id is None) != (self.archive_secret_access_key is None):
            raise ValueError(
                "set both VIGIL_ARCHIVE_ACCESS_KEY_ID and VIGIL_ARCHIVE_SECRET_ACCESS_KEY, or "
                "neither (boto3's credential chain is then used)"
            )
        return self

    @field_validator("database_url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        url = urlsplit(value)
        if url.scheme not in ("sqlite", "postgresql", "postgres"):
            raise ValueError(
                f"VIGIL_DATABASE_URL scheme {url.scheme!r} is not supported; "
                "use sqlite:///path.db or postgresql://user@host/dbname"
            )
        # sqlite://x.db would read as host "x.db" and an empty path; and a PostgreSQL
        # URL without a database must not fall back to the server's `postgres`.
        if url.scheme == "sqlite" and (url.netloc or len(url.path) < 2):
            raise ValueError(
                f"{value!r} names no file: use sqlite:///relative.db or sqlite:////absolute.db"
            )
        if url.scheme != "sqlite" and not unquote(url.path.lstrip("/")):
            raise ValueError("the URL names no database: use postgresql://user@host:port/dbname")
        return value

    @field_validator("encryption_key")
    @classmethod
    def _aes_256_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        try:
            key = base64.b64decode(value.get_secret_value(), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("VIGIL_ENCRYPTION_KEY is not valid base64") from None
        if len(key) != 32:
            raise ValueError(f"VIGIL_ENCRYPTION_KEY decodes to {len(key)} bytes; AES-256 needs 32")
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: str) -> str:
        entries = [entry.strip() for entry in value.split(",") if entry.strip()]
        for entry in entries:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(
                    f"VIGIL_TRUSTED_PROXIES: {entry!r} is not an IP address or network"
                ) from None
        return ",".join(entries)

    def runbooks_path(self) -> Path:
        return Path(self.incident_runbooks_dir) if self.incident_runbooks_dir else SHIPPED_RUNBOOKS

    def rules_path(self) -> Path:
        return (
            Path(self.incident_rules_dir) if self.incident_rules_dir else SHIPPED_RUNBOOKS / "rules"
        )

    def redacted_database_url(self) -> str:
        """The database URL with its password masked, for messages and logs."""
        url = urlsplit(self.database_url)
        if url.password is None:
            return self.database_url
        netloc = url.netloc.replace(f":{url.password}@", ":***@", 1)
        return url._replace(netloc=netloc).geturl()

    def limits(self) -> Limits:
        return Limits(
            max_event_bytes=self.max_event_bytes,
            max_metadata_bytes=self.max_metadata_bytes,
            max_metadata_depth=self.max_metadata_depth,
            max_batch_events=self.max_batch_events,
            max_future_skew=timedelta(seconds=self.max_future_skew_seconds),
        )

    def ledger_env(self, *, create: bool = True) -> dict[str, str]:
        """The eventsourcing environment for the ledger application; ``create``: make a
        SQLite file's missing directories (never for a command that only reads)."""
        url = urlsplit(self.database_url)
        env: dict[str, str]
        if url.scheme == "sqlite":
            path = unquote(url.path)[1:] or "vigil.db"
            if create and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": path}
        else:
            query = parse_qs(url.query)
            env = {
                "PERSISTENCE_MODULE": "eventsourcing.postgres",
                "POSTGRES_DBNAME": unquote(url.path.lstrip("/")),
                "POSTGRES_HOST": url.hostname or "127.0.0.1",
                "POSTGRES_PORT": str(url.port or 5432),
                "POSTGRES_USER": unquote(url.username or "postgres"),
                "POSTGRES_PASSWORD": unquote(url.password or ""),
                "POSTGRES_POOL_SIZE": str(self.postgres_pool_size),
                "POSTGRES_LOCK_TIMEOUT": str(self.postgres_lock_timeout_seconds),
                "POSTGRES_CONNECT_TIMEOUT": str(self.postgres_connect_timeout_seconds),
            }
            if "schema" in query:
                env["POSTGRES_SCHEMA"] = query["schema"][0]
        if self.encryption_key is not None:
            env["CIPHER_TOPIC"] = "eventsourcing.cryptography:AESCipher"
            env["CIPHER_KEY"] = self.encryption_key.get_secret_value()
        return env


@lru_cache
def get_settings() -> Settings:
    return Settings()


def settings_reference() -> str:
    """Every ``VIGIL_*`` setting as a Markdown table (docs/configuration.md is this)."""
    lines = [
        "# Configuration reference",
        "",
        "Every setting is an environment variable, read once when a command starts",
        "(`api/settings.py`; generated by `vigil config --reference`). `vigil config`",
        "prints the values in effect, secrets masked.",
        "",
        "| variable | default | meaning |",
        "|---|---|---|",
    ]
    for name, field in Settings.model_fields.items():
        default = "unset" if field.default is None else f"`{field.default}`"
        if field.default == "":
            default = "empty"
        meaning = (field.description or "").replace("|", "\\|").replace("\n", " ")
        lines.append(f"| `VIGIL_{name.upper()}` | {default} | {meaning} |")
    return "\n".join(lines) + "\n"
