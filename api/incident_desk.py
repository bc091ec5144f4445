"""Builds the incidents application from ``VIGIL_*`` settings, for the API, the CLI and
the worker alike: runbooks and escalation policies from files, notification channels,
the automated steps' network policy and the secrets key, handed down as plain values."""

from __future__ import annotations

import base64
import binascii

from api.settings import Settings
from audit_core import Ledger
from audit_core.followers import Follower, FollowerStore
from incident import ConfigurationError, Incidents
from incident.escalation import Clock, load_policies, system_clock
from incident.notify import build_notifier
from incident.runbooks import NetworkPolicy, RunbookCatalogue, StepRunner


def secrets_key(settings: Settings) -> bytes | None:
    """The runbook secrets' AES-256 key: VIGIL_INCIDENT_SECRETS_KEY, else
    VIGIL_ENCRYPTION_KEY, else none (then secrets cannot be stored)."""
    for name, value in (
        ("VIGIL_INCIDENT_SECRETS_KEY", settings.incident_secrets_key),
        ("VIGIL_ENCRYPTION_KEY", settings.encryption_key),
    ):
        if value is not None and value.get_secret_value():
            try:
                key = base64.b64decode(value.get_secret_value(), validate=True)
            except (binascii.Error, ValueError):
                raise ConfigurationError(name, "not valid base64") from None
            if len(key) != 32:
                raise ConfigurationError(name, f"decodes to {len(key)} bytes; AES-256 needs 32")
            return key
    return None


def build_incidents(
    settings: Settings,
    ledger: Ledger,
    *,
    clock: Clock = system_clock,
    network: NetworkPolicy | None = None,
) -> Incidents:
    """The incidents application on the ledger's database; raises ConfigurationError
    naming the file (and line) or the variable at fault."""
    directory = settings.runbooks_path()
    catalogue = RunbookCatalogue.load(directory)
    policies = load_policies(directory / "policies")
    default = settings.incident_default_policy or None
    if default is not None and default not in policies:
        known = ", ".join(sorted(policies)) or f"none in {directory / 'policies'}"
        raise ConfigurationError(
            "VIGIL_INCIDENT_DEFAULT_POLICY", f"no escalation policy {default!r} ({known})"
        )
    runner = StepRunner(
        network or NetworkPolicy.parse(settings.incident_allowed_networks),
        timeout_cap=settings.incident_http_timeout_seconds,
    )
    return Incidents(
        settings.ledger_env(),
        ledger,
        clock=clock,
        policies=policies,
        default_policy=default,
        runbooks=catalogue,
        notifier=build_notifier(settings_notifications(settings)),
        step_runner=runner,
        secrets_key=secrets_key(settings),
    )


def settings_notifications(settings: Settings) -> dict[str, object]:
    """The notification channels' configuration as plain values."""
    return {
        "webhooks": settings.webhook_urls,
        "webhook_secret": settings.webhook_secret.get_secret_value()
        if settings.webhook_secret
        else None,
        "webhook_retries": settings.webhook_retries,
        "webhook_timeout": settings.webhook_timeout_seconds,
        "smtp_host": settings.smtp_host,
        "smtp_port": settings.smtp_port,
        "smtp_username": settings.smtp_username,
        "smtp_password": settings.smtp_password.get_secret_value()
        if settings.smtp_password
        else None,
        "smtp_starttls": settings.smtp_starttls,
        "smtp_from": settings.smtp_from,
        "smtp_timeout": settings.smtp_timeout_seconds,
    }


def build_escalation(settings: Settings, ledger: Ledger, store: FollowerStore) -> list[Follower]:
    """The escalation scheduler for the follower registry (``vigil worker``)."""
    from incident.scheduler import EscalationScheduler

    return [
        EscalationScheduler(
            build_incidents(settings, ledger),
            store.positions,
            every_seconds=settings.incident_tick_seconds,
        )
    ]
