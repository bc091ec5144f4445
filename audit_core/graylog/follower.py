"""The Graylog shipper: a sink follower of the ledger, one per destination.

Its position advances only once the destination confirmed a page (see
:mod:`audit_core.graylog.transports` for what each transport can confirm), so a crash or
an outage resends from the last confirmed page: Graylog may receive a message twice,
always with the same ``_event_id``, and never misses one.
"""

from __future__ import annotations

from eventsourcing.persistence import TrackingRecorder

from audit_core.followers.follower import Page, PoisonRecordError, Sink
from audit_core.graylog.config import Destination
from audit_core.graylog.exceptions import MessageRefusedError
from audit_core.graylog.gelf import MessageBuilder
from audit_core.graylog.transports import Transport, open_transport


class GraylogShipper(Sink):
    """Ships every audit record to one GELF destination."""

    def __init__(
        self,
        destination: Destination,
        builder: MessageBuilder,
        tracking: TrackingRecorder,
        transport: Transport | None = None,
    ):
        self.destination = destination
        self.name = destination.follower_name
        self.tracking = tracking
        self.builder = builder
        self.transport = transport or open_transport(destination)

    def deliver(self, page: Page) -> int | None:
        records = page.records
        messages: list[bytes] = []
        for index, record in enumerate(records):
            try:
                messages.append(self.builder.pack(record))
            except (KeyError, TypeError, ValueError) as error:
                raise PoisonRecordError(
                    f"record {record.get('tenant')}/{record.get('seq')} cannot be written as "
                    f"GELF: {type(error).__name__}: {error}",
                    index,
                ) from error
        try:
            self.transport.send(messages)
        except MessageRefusedError as refused:
            record = records[refused.index]
            raise PoisonRecordError(
                f"event {record['id']!r} (tenant {record['tenant']}, seq {record['seq']}): "
                f"{refused.reason}",
                refused.index,
            ) from refused
        return None

    def clear(self) -> None:
        """Ship everything again from the ledger's first event (Graylog keeps what it
        has: searches by ``_event_id`` then show each event twice)."""
        rewind = getattr(self.tracking, "rewind", None)
        if rewind is None:
            raise TypeError(f"{type(self.tracking).__name__} cannot set a position back")
        rewind(self.name, 0)

    def close(self) -> None:
        self.transport.close()
