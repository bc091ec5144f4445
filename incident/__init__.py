"""Incident response: incidents as event-sourced aggregates, escalation, runbooks,
notifications and post-mortems, every action recorded in the tenant's audit ledger."""

from incident.application import (
    AUDIT_ACTION_PREFIX,
    AUDIT_ACTOR_TYPE,
    Detection,
    Incidents,
    Opened,
    is_incident_record,
)
from incident.domain import SEVERITIES, SYSTEM, Actor, Evidence, Incident, Status
from incident.exceptions import (
    ConfigurationError,
    IllegalTransitionError,
    IncidentError,
    IncidentNotFoundError,
    InvalidIncidentError,
    NotificationError,
    StepNotFoundError,
    StepRefusedError,
)

__all__ = [
    "AUDIT_ACTION_PREFIX",
    "AUDIT_ACTOR_TYPE",
    "SEVERITIES",
    "SYSTEM",
    "Actor",
    "ConfigurationError",
    "Detection",
    "Evidence",
    "IllegalTransitionError",
    "Incident",
    "IncidentError",
    "IncidentNotFoundError",
    "Incidents",
    "InvalidIncidentError",
    "NotificationError",
    "Opened",
    "Status",
    "StepNotFoundError",
    "StepRefusedError",
    "is_incident_record",
]
