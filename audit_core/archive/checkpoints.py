"""Where a digest's signed checkpoint comes from.

- :class:`TransparencyAttestor` (the default when the transparency log runs): the
  smallest checkpoint the transparency follower has signed whose tree covers the
  segment, with the consistency proof computed from its stored tiles. The archiver
  checks the proof against the tree it computed itself before naming the checkpoint,
  so a checkpoint of another tree is never written into a digest.
- :class:`SelfAttestor`: the archiver signs a checkpoint of exactly its tree with the
  log's key (same origin, same C2SP format): for deployments without the transparency
  follower.
"""

from __future__ import annotations

from audit_core.archive.digests import Attestation, LogKeys
from audit_core.archive.exceptions import ArchiveError
from audit_core.transparency.exceptions import TransparencyError
from audit_core.transparency.merkle import verify_consistency
from audit_core.transparency.proofs import TreeReader
from audit_core.transparency.store import TreeStore


class SelfAttestor:
    def __init__(self, keys: LogKeys):
        self.keys = keys

    def attest(self, tenant: str, size: int, root: bytes) -> Attestation:
        return Attestation(self.keys.sign_checkpoint(tenant, size, root), [])


class CheckpointMismatchError(ArchiveError):
    """The transparency log's checkpoint is not of the tree the archiver computed."""


class TransparencyAttestor:
    def __init__(self, store: TreeStore):
        self.store = store
        self.reader = TreeReader(store)

    def attest(self, tenant: str, size: int, root: bytes) -> Attestation | None:
        checkpoint = self.store.checkpoint_covering(tenant, size)
        if checkpoint is None:
            return None  # the transparency follower signs one shortly
        try:
            proof = self.reader.consistency(tenant, size, checkpoint.size).hashes
            verify_consistency(size, checkpoint.size, root, checkpoint.root, proof)
        except TransparencyError as error:
            raise CheckpointMismatchError(
                f"tenant {tenant!r}: the transparency log's checkpoint of size "
                f"{checkpoint.size} does not extend the archived tree of size {size} "
                f"({error}); the ledger or the tree store was altered: run `vigil verify`"
            ) from error
        return Attestation(checkpoint.note, proof)
