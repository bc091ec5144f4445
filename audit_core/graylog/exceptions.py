"""Errors of the Graylog shipper. ``api/`` maps configuration errors to exit code 2.

GraylogError
├── GraylogConfigError       a VIGIL_GRAYLOG_* setting that cannot work
├── DeliveryError            transient: Graylog unreachable, connection lost, 5xx;
│                            the runner backs off and sends the page again
└── MessageRefusedError      this message can never go: Graylog refuses it every time,
                             or it cannot be framed for the transport (too large)
"""

from __future__ import annotations


class GraylogError(Exception):
    """Base of every error the Graylog shipper raises on purpose."""


class GraylogConfigError(GraylogError, ValueError):
    """A ``VIGIL_GRAYLOG_*`` setting is wrong; the message names it, the destination
    when there is one, and a fix.

    A ``ValueError`` too, so that pydantic reports it as the setting's validation error.
    """


class DeliveryError(GraylogError):
    """Delivery was not confirmed; nothing says the message itself is at fault."""


class MessageRefusedError(GraylogError):
    """The message at ``index`` of what was sent can never be delivered."""

    def __init__(self, reason: str, index: int):
        self.reason = reason
        self.index = index
        super().__init__(reason)
