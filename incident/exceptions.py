"""Errors raised by the incident module. ``api/`` maps them to HTTP statuses and exit codes.

IncidentError
├── IncidentNotFoundError     no incident with that id in the tenant
├── IllegalTransitionError    the action is not allowed in the incident's state
├── InvalidIncidentError      bad input (severity, evidence, field); names the field
├── ConfigurationError        a policy, runbook or template file is wrong; names file, line
├── StepNotFoundError         the incident's runbook has no such step
├── StepRefusedError          an automated step was refused or failed; says why
└── NotificationError         a notification could not be delivered after its retries
"""

from __future__ import annotations


class IncidentError(Exception):
    """Base of every error the incident module raises on purpose."""


class IncidentNotFoundError(IncidentError):
    def __init__(self, tenant: str, incident_id: object):
        self.tenant = tenant
        self.incident_id = incident_id
        super().__init__(f"no incident {incident_id} in tenant {tenant!r}")


class IllegalTransitionError(IncidentError):
    def __init__(self, ref: str, status: str, action: str, hint: str = ""):
        self.status = status
        self.action = action
        message = f"cannot {action} incident {ref}: it is {status}"
        super().__init__(message + (f"; {hint}" if hint else ""))


class InvalidIncidentError(IncidentError):
    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


class ConfigurationError(IncidentError):
    """A policy, runbook or template that cannot be used; ``where`` is file[:line]."""

    def __init__(self, where: str, message: str):
        self.where = where
        super().__init__(f"{where}: {message}")


class StepNotFoundError(IncidentError):
    def __init__(self, ref: str, step: str):
        self.step = step
        super().__init__(f"incident {ref} has no runbook step {step!r}")


class StepRefusedError(IncidentError):
    """An automated step that was not run, or failed; ``reason`` is recorded as is."""

    def __init__(self, step: str, reason: str):
        self.step = step
        self.reason = reason
        super().__init__(f"step {step!r}: {reason}")


class NotificationError(IncidentError):
    def __init__(self, channel: str, reason: str):
        self.channel = channel
        self.reason = reason
        super().__init__(f"{channel}: {reason}")
