"""Every audit event streamed to Graylog over GELF, nothing lost (a sink follower)."""

from audit_core.graylog.config import Destination, parse_destinations
from audit_core.graylog.exceptions import (
    DeliveryError,
    GraylogConfigError,
    GraylogError,
    MessageRefusedError,
)
from audit_core.graylog.follower import GraylogShipper
from audit_core.graylog.gelf import MessageBuilder, MessageOptions, hmac_value
from audit_core.graylog.transports import Transport, open_transport

__all__ = [
    "DeliveryError",
    "Destination",
    "GraylogConfigError",
    "GraylogError",
    "GraylogShipper",
    "MessageBuilder",
    "MessageOptions",
    "MessageRefusedError",
    "Transport",
    "hmac_value",
    "open_transport",
    "parse_destinations",
]
