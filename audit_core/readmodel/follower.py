"""The read model's follower: a view that writes each page's rows and position in one
transaction."""

from __future__ import annotations

import psycopg
from eventsourcing.persistence import MapperDeserialisationError

from audit_core.followers import Page, PoisonRecordError, View
from audit_core.readmodel.rows import rows_of
from audit_core.readmodel.store import TrailView


class ReadModel(View):
    name = "readmodel"

    def __init__(self, view: TrailView):
        self.view = view
        self.tracking = view

    def handle(self, page: Page) -> None:
        try:
            rows = rows_of(page.states, page.mapper, self.view.blind)
        except MapperDeserialisationError as error:
            raise PoisonRecordError(str(error), _undecodable(page)) from error
        try:
            self.view.project(rows, page.tracking)
        except psycopg.DataError as error:
            # A value the database cannot store (PostgreSQL refuses NUL in text) is
            # refused the same way on every try.
            raise PoisonRecordError(f"the read model cannot store it: {error}") from error

    def reload(self) -> None:
        # A position tracked for another shape of the read model (an earlier table, or
        # the table in clear before the ledger's key was set, or another key) says
        # nothing of this one; rows without a position (an index written under an
        # earlier follower name) would collide with the same rows written again: in
        # both cases, start from the beginning.
        stale = self.view.stored_shape(self.name) != self.view.shape
        if stale or (self.position() == 0 and self.view.has_rows()):
            self.view.clear(self.name)

    def clear(self) -> None:
        self.view.clear(self.name)


def _undecodable(page: Page) -> int | None:
    for index, state in enumerate(page.states):
        try:
            rows_of([state], page.mapper)
        except MapperDeserialisationError:
            return index
    return None
