"""The follower runner that every consumer of the ledger plugs into."""

from audit_core.followers.follower import (
    Follower,
    FollowerError,
    Kind,
    Page,
    PoisonRecordError,
    Sink,
    View,
)
from audit_core.followers.runner import (
    Backoff,
    FollowerRunner,
    FollowerStatus,
    Worker,
    follower_status,
)
from audit_core.followers.store import FollowerState, FollowerStore, open_store

__all__ = [
    "Backoff",
    "Follower",
    "FollowerError",
    "FollowerRunner",
    "FollowerState",
    "FollowerStatus",
    "FollowerStore",
    "Kind",
    "Page",
    "PoisonRecordError",
    "Sink",
    "View",
    "Worker",
    "follower_status",
    "open_store",
]
