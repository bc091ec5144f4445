"""The query read model: an index of every record, kept by a view follower.

The index holds what queries filter on and each record's seq, not the record: a query
finds seqs here and reads the records from the ledger, so a record is stored once, and
encrypted there when the ledger is; the indexed identifiers and metadata words are
then keyed hashes (``blind``).
"""

from audit_core.followers import FollowerStore
from audit_core.readmodel.blind import BlindIndex
from audit_core.readmodel.follower import ReadModel
from audit_core.readmodel.query import (
    InvalidQueryError,
    Order,
    SeqPage,
    TrailQuery,
    address_filter,
    decode_cursor,
    encode_cursor,
)
from audit_core.readmodel.rows import Row, rows_of, search_text, tenant_key, text_blocks, to_row
from audit_core.readmodel.store import (
    KEYED_TABLE,
    KEYED_TEXT_TABLE,
    SHAPE_TABLE,
    TABLE,
    TEXT_TABLE,
    PostgresTrailView,
    SQLiteTrailView,
    TrailView,
    trail_view_class,
)


def open_read_model(store: FollowerStore, env: dict[str, str]) -> ReadModel:
    """The read model's follower on the store's database."""
    return ReadModel(store.view_recorder(trail_view_class(env)))


__all__ = [
    "KEYED_TABLE",
    "KEYED_TEXT_TABLE",
    "SHAPE_TABLE",
    "TABLE",
    "TEXT_TABLE",
    "BlindIndex",
    "InvalidQueryError",
    "Order",
    "PostgresTrailView",
    "ReadModel",
    "Row",
    "SQLiteTrailView",
    "SeqPage",
    "TrailQuery",
    "TrailView",
    "address_filter",
    "decode_cursor",
    "encode_cursor",
    "open_read_model",
    "rows_of",
    "search_text",
    "tenant_key",
    "text_blocks",
    "to_row",
    "trail_view_class",
]
