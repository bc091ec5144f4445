"""Notifications of escalation steps: signed webhooks (optionally in Slack's message
shape) and e-mail over SMTP with STARTTLS.

Webhook signature (what a receiver checks, see :func:`verify_signature`)::

    X-Vigil-Timestamp: <unix seconds>
    X-Vigil-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>." + body)>
    X-Vigil-Delivery:  <id, the same on every retry of one notification>

The timestamp is signed with the body, so a receiver that refuses timestamps older than
its replay window (five minutes, say) and delivery ids it has seen cannot be replayed
to. Each retry is signed afresh, with its own timestamp.
"""

from __future__ import annotations

import hashlib
import hmac
import smtplib
import ssl
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

import httpx
import orjson

from incident.escalation import Step
from incident.exceptions import ConfigurationError

SIGNATURE_HEADER = "X-Vigil-Signature"
TIMESTAMP_HEADER = "X-Vigil-Timestamp"
DELIVERY_HEADER = "X-Vigil-Delivery"


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"v1={digest}"


def verify_signature(
    secret: bytes,
    body: bytes,
    timestamp: str,
    signature: str,
    *,
    now: float | None = None,
    window_seconds: int = 300,
) -> bool:
    """What a receiver runs: the signature matches and the timestamp is within the
    replay window (either side, for clock skew)."""
    try:
        stamp = int(timestamp)
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - stamp) > window_seconds:
        return False
    return hmac.compare_digest(sign(secret, stamp, body), signature)


@dataclass(frozen=True)
class Webhook:
    name: str
    url: str
    slack: bool = False


def parse_webhooks(text: str) -> list[Webhook]:
    """``name=url`` entries, comma-separated; ``name=slack:url`` for Slack's shape."""
    hooks = []
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        name, sep, url = entry.partition("=")
        slack = url.startswith("slack:")
        url = url.removeprefix("slack:")
        if not sep or not name.strip() or not url.startswith(("https://", "http://")):
            raise ConfigurationError(
                "VIGIL_WEBHOOK_URLS", f"{entry.split('=')[0]!r}: give name=https://... entries"
            )
        hooks.append(Webhook(name.strip(), url, slack))
    return hooks


@dataclass(frozen=True)
class SmtpConfig:
    host: str
    port: int = 587
    username: str = ""
    password: str | None = None
    starttls: bool = True
    sender: str = "vigil@localhost"
    timeout: float = 10.0
    tls_context: ssl.SSLContext | None = None
    """Trust for the server's certificate; the system's when None."""


def _message(incident: Mapping[str, Any], step: Step) -> str:
    level = f"level {step.level + 1}" + (f", repeat {step.round}" if step.round else "")
    return (
        f"[{incident['severity']}] {incident['ref']} {incident['title']} "
        f"({incident['status']}, tenant {incident['tenant']}): paging {level}: "
        f"{', '.join(step.targets)}"
    )


def payload(incident: Mapping[str, Any], step: Step, slack: bool = False) -> dict[str, Any]:
    """The JSON a webhook receives: Vigil's own shape, or Slack's (text and blocks)."""
    if slack:
        text = _message(incident, step)
        return {
            "text": text,
            "blocks": [
                {"type": "section", "text": {"type": "mrkdwn", "text": f"*{text}*"}},
                {
                    "type": "context",
                    "elements": [
                        {"type": "mrkdwn", "text": f"rule {incident.get('rule') or '-'}"},
                        {"type": "mrkdwn", "text": f"incident {incident['id']}"},
                    ],
                },
            ],
        }
    return {
        "type": "incident.escalation",
        "incident": {
            k: incident.get(k)
            for k in ("id", "ref", "tenant", "title", "severity", "status", "rule", "triggered_at")
        },
        "step": {
            "number": step.number,
            "level": step.level,
            "round": step.round,
            "targets": list(step.targets),
            "ack_by": step.next_at.isoformat() if step.next_at else None,
        },
    }


class Notifier:
    """Sends a step's notifications to every configured channel; never raises for a
    delivery that failed: it reports it, and the incident records it."""

    def __init__(
        self,
        webhooks: Sequence[Webhook] = (),
        secret: bytes | None = None,
        *,
        retries: int = 3,
        timeout: float = 5.0,
        smtp: SmtpConfig | None = None,
        sleep: Callable[[float], None] = time.sleep,
        transport: httpx.BaseTransport | None = None,
    ):
        if webhooks and not secret:
            raise ConfigurationError(
                "VIGIL_WEBHOOK_SECRET", "webhooks are configured: set the key that signs them"
            )
        self.webhooks = list(webhooks)
        self.secret = secret or b""
        self.retries = retries
        self.timeout = timeout
        self.smtp = smtp
        self.sleep = sleep
        self.transport = transport

    def notify(self, incident: Mapping[str, Any], step: Step) -> list[dict[str, Any]]:
        reports = [self._webhook(hook, incident, step) for hook in self.webhooks]
        emails = [t for t in step.targets if "@" in t]
        if self.smtp is not None and emails:
            reports.append(self._email(emails, incident, step))
        return reports

    def _webhook(self, hook: Webhook, incident: Mapping[str, Any], step: Step) -> dict[str, Any]:
        body = orjson.dumps(payload(incident, step, hook.slack))
        delivery = str(uuid.uuid4())
        report: dict[str, Any] = {"channel": f"webhook:{hook.name}", "target": hook.name}
        reason = ""
        with httpx.Client(timeout=self.timeout, transport=self.transport) as client:
            for attempt in range(self.retries + 1):
                if attempt:
                    self.sleep(min(0.5 * 2 ** (attempt - 1), 8.0))
                stamp = int(time.time())
                headers = {
                    "Content-Type": "application/json",
                    TIMESTAMP_HEADER: str(stamp),
                    SIGNATURE_HEADER: sign(self.secret, stamp, body),
                    DELIVERY_HEADER: delivery,
                    "User-Agent": "vigil-incident/1",
                }
                try:
                    response = client.post(hook.url, content=body, headers=headers)
                except httpx.HTTPError as error:
                    reason = f"{type(error).__name__}"
                    continue
                if 200 <= response.status_code < 300:
                    return {**report, "ok": True, "attempts": attempt + 1}
                reason = f"answered {response.status_code}"
                if response.status_code < 500 and response.status_code != 429:
                    break  # the receiver refuses it; asking again will not help
        return {**report, "ok": False, "reason": reason}

    def _email(
        self, recipients: list[str], incident: Mapping[str, Any], step: Step
    ) -> dict[str, Any]:
        assert self.smtp is not None
        config = self.smtp
        report: dict[str, Any] = {"channel": "email", "target": ", ".join(recipients)}
        message = EmailMessage()
        message["From"] = config.sender
        message["To"] = ", ".join(recipients)
        message["Subject"] = f"[{incident['severity']}] {incident['ref']}: {incident['title']}"
        message.set_content(_message(incident, step) + f"\n\nIncident id: {incident['id']}\n")
        try:
            with smtplib.SMTP(config.host, config.port, timeout=config.timeout) as smtp:
                smtp.ehlo()
                if config.starttls:
                    if not smtp.has_extn("starttls"):
                        return {**report, "ok": False, "reason": "server offers no STARTTLS"}
                    smtp.starttls(context=config.tls_context or ssl.create_default_context())
                    smtp.ehlo()
                if config.username:
                    smtp.login(config.username, config.password or "")
                smtp.send_message(message)
        except (smtplib.SMTPException, OSError) as error:
            # The error's class only: an SMTP error's text can quote the credentials.
            return {**report, "ok": False, "reason": type(error).__name__}
        return {**report, "ok": True}


def build_notifier(config: Mapping[str, Any]) -> Notifier | None:
    """A notifier from plain settings values (``api.incident_desk``); None when no
    channel is configured."""
    webhooks = parse_webhooks(str(config.get("webhooks") or ""))
    smtp = None
    if config.get("smtp_host"):
        smtp = SmtpConfig(
            host=str(config["smtp_host"]),
            port=int(config.get("smtp_port") or 587),
            username=str(config.get("smtp_username") or ""),
            password=config.get("smtp_password"),
            starttls=bool(config.get("smtp_starttls", True)),
            sender=str(config.get("smtp_from") or "vigil@localhost"),
            timeout=float(config.get("smtp_timeout") or 10.0),
        )
    if not webhooks and smtp is None:
        return None
    secret = config.get("webhook_secret")
    return Notifier(
        webhooks,
        secret.encode() if isinstance(secret, str) else None,
        retries=int(config.get("webhook_retries") or 0),
        timeout=float(config.get("webhook_timeout") or 5.0),
        smtp=smtp,
    )
