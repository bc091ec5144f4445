"""Post-mortems rendered from an incident's events with Jinja2, as Markdown and HTML.

Templates run in a sandboxed environment with ``StrictUndefined`` (a typo in a template
is an error, not a silently empty section). A user's directory of templates, when
configured, is searched before the shipped ones, so any of ``postmortem.md.j2`` and
``postmortem.html.j2`` can be overridden. Publishing records the SHA-256 of each
rendering in the incident, and so, as an audit record, in the tenant's hash chain.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any
from uuid import UUID

from jinja2 import (
    ChoiceLoader,
    FileSystemLoader,
    StrictUndefined,
    TemplateError,
    TemplateNotFound,
    select_autoescape,
)
from jinja2.sandbox import SandboxedEnvironment

from audit_core import LedgerError
from incident.domain import Actor, Incident
from incident.exceptions import ConfigurationError

SHIPPED = Path(__file__).parent / "templates"
FORMATS = {"md": "postmortem.md.j2", "html": "postmortem.html.j2"}


def duration(seconds: float | None) -> str:
    """``1h 02m 05s`` style, or ``-`` when it has not happened."""
    if seconds is None:
        return "-"
    whole = round(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h {minutes:02d}m"
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def environment(templates_dir: str | Path | None = None) -> SandboxedEnvironment:
    loaders = [FileSystemLoader(str(templates_dir))] if templates_dir else []
    loaders.append(FileSystemLoader(str(SHIPPED)))
    env = SandboxedEnvironment(
        loader=ChoiceLoader(loaders),
        undefined=StrictUndefined,
        autoescape=select_autoescape(enabled_extensions=("html.j2", "html"), default=False),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["duration"] = duration
    env.filters["md_cell"] = lambda text: str(text).replace("|", "\\|").replace("\n", " ")
    return env


def context(incident: Incident, ledger: Any = None) -> dict[str, Any]:
    """What templates see: the incident's details, its durations and evidence. With the
    ``ledger``, each evidence link is checked against the record now at its seq (its
    hash must still match) and completed with the record's action and time."""
    details = incident.details()
    evidence = details["evidence"]
    if ledger is not None and evidence:
        try:
            records = ledger.records_at(incident.tenant, [e["seq"] for e in evidence[:1000]])
        except LedgerError:
            records = []
        for link, found in zip(evidence, records, strict=False):
            link["matches_ledger"] = found["hash"] == link["hash"]
            link["action"] = link.get("action") or found.get("action")
            link["occurred_at"] = link.get("occurred_at") or found.get("occurred_at")
            link["event_id"] = link.get("event_id") or found.get("id")
    return {
        "incident": details,
        "durations": details["durations"],
        "timeline": details["timeline"],
        "evidence": evidence,
        "steps": details["runbook_steps"],
        "postmortem": details["postmortem"],
        "escalations": [e for e in details["timeline"] if e["kind"] == "escalation"],
    }


def render(
    incident: Incident,
    format: str = "md",
    templates_dir: str | Path | None = None,
    ledger: Any = None,
) -> str:
    """The post-mortem as Markdown (``md``) or HTML (``html``); with the ``ledger``, the
    evidence is checked against it and completed (see :func:`context`)."""
    if format not in FORMATS:
        raise ConfigurationError("format", f"{format!r} is not md or html")
    env = environment(templates_dir)
    try:
        template = env.get_template(FORMATS[format])
    except TemplateNotFound as missing:
        raise ConfigurationError(str(missing), "post-mortem template not found") from None
    except TemplateError as error:
        where = getattr(error, "filename", None) or FORMATS[format]
        raise ConfigurationError(
            f"{where}:{getattr(error, 'lineno', 1)}", f"template error: {error.message}"
        ) from None
    try:
        return template.render(context(incident, ledger))
    except TemplateError as error:
        where = template.filename or FORMATS[format]
        line = _template_line(error, where)
        raise ConfigurationError(
            f"{where}:{line}" if line else where, f"template error: {error.message}"
        ) from None


def _template_line(error: BaseException, filename: str) -> int | None:
    """The template's line where rendering failed: Jinja puts the template's own frames
    in the traceback, with its file name and line."""
    line = None
    tb = error.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == filename:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def publish(
    incidents: Any,
    tenant: str,
    incident_id: UUID,
    actor: Actor,
    templates_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Render both formats, record their SHA-256 in the incident (and the ledger), and
    return the texts with their digests."""
    incident = incidents.incident(tenant, incident_id)
    texts = {fmt: render(incident, fmt, templates_dir, incidents.ledger) for fmt in FORMATS}
    digests = {fmt: hashlib.sha256(text.encode()).hexdigest() for fmt, text in texts.items()}
    incidents.record_publication(tenant, incident_id, digests, actor)
    return {"incident": str(incident_id), "sha256": digests, "texts": texts}
