"""The transparency log's follower: grows each tenant's tree and signs its checkpoints.

A view: the tiles a page changes, the trees' sizes and the position are written in one
transaction. After each page and on every tick, a tenant whose tree has grown gets a
signed checkpoint once ``every_records`` leaves have been added since its last one, or
as soon as ``every_seconds`` have passed since this process last signed one for it,
whichever comes first: at most one per interval under a steady load (plus one per
``every_records``), and a commit after a quiet spell is signed at once. Before
signing, the new tree is proved consistent, from the stored tiles, with the tenant's
previous checkpoint: a tree that is not (stored tiles or records rewritten, a rebuild
over an altered ledger) is refused and reported, never signed.

Signing only writes the checkpoint table: it records nothing in the ledger, or every
checkpoint would call for another.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from audit_core.canonical import GENESIS_HASH
from audit_core.followers.follower import Page, PoisonRecordError, View
from audit_core.transparency.checkpoint import Checkpoint, sign_checkpoint, tenant_origin
from audit_core.transparency.exceptions import ProofError, TransparencyError
from audit_core.transparency.merkle import consistency_proof, leaf_hash, verify_consistency
from audit_core.transparency.note import Signer
from audit_core.transparency.proofs import RecentCheckpoints
from audit_core.transparency.store import StoredCheckpoint, TreeStore, TreeUpdate
from audit_core.transparency.tiles import GrowingTree, TileCache, TileHashes

log = logging.getLogger("vigil.transparency")

NAME = "transparency"


@dataclass
class _Tree:
    grown: GrowingTree
    head_hash: str
    signed_size: int | None = None
    signed_root: bytes | None = None


class TransparencyLog(View):
    """Keeps every tenant's Merkle tree in tiles and signs checkpoints of it."""

    name = NAME

    def __init__(
        self,
        store: TreeStore,
        signer: Signer | None,
        log_origin: str,
        *,
        every_records: int = 10_000,
        every_seconds: float = 0.5,
        on_refusal: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.store = store
        self.tracking = store
        self.signer = signer
        self.log_origin = log_origin
        self.every_records = every_records
        self.every_seconds = every_seconds
        self.on_refusal = on_refusal
        self.clock = clock
        self._trees: dict[str, _Tree] = {}
        self._scanned = False
        self._signed_at: dict[str, float] = {}
        """When this process last signed (or tried to sign) for each tenant (monotonic
        clock): kept across reloads, which re-read only what storage holds."""
        # The runner's thread follows while a request may ask for a checkpoint now.
        self._lock = threading.RLock()
        self.refusals: dict[str, str] = {}
        """Tenants whose new tree was refused a checkpoint, and why."""
        self.tile_cache = TileCache()
        """Tiles' levels, read once for every proof this process serves."""
        self.recent_checkpoints = RecentCheckpoints()

    # -- following ------------------------------------------------------------------------

    def _tree(self, tenant: str) -> _Tree:
        tree = self._trees.get(tenant)
        if tree is None:
            stored = self.store.tree(tenant)
            size, head = stored if stored else (0, GENESIS_HASH)
            grown = GrowingTree.load(size, lambda keys: self.store.read_tiles(tenant, keys))
            tree = self._trees[tenant] = _Tree(grown, head)
            latest = self.store.latest_checkpoint(tenant)
            if latest is not None:
                tree.signed_size, tree.signed_root = latest.size, latest.root
        return tree

    def handle(self, page: Page) -> None:
        with self._lock:
            self._handle(page)

    def _handle(self, page: Page) -> None:
        touched: dict[str, _Tree] = {}
        mapper = page.mapper
        try:
            for index, state in enumerate(page.states):
                try:
                    leaf, stored_hash, head = mapper.checked_record(state)
                except Exception as error:
                    raise PoisonRecordError(str(error), index) from error
                tenant = head.tenant
                tree = touched.get(tenant) or self._tree(tenant)
                touched[tenant] = tree
                seq = head.seq
                if seq != tree.grown.size:
                    raise PoisonRecordError(
                        f"record seq {seq} of tenant {tenant!r} comes when its tree holds "
                        f"{tree.grown.size} leaves: a record is missing or repeated; run "
                        "`vigil verify`",
                        index,
                    )
                if head.prev_hash != tree.head_hash:
                    raise PoisonRecordError(
                        f"seq {seq} of tenant {tenant!r}: prev_hash is not the hash of the "
                        "record before it; run `vigil verify`",
                        index,
                    )
                tree.grown.append(leaf_hash(leaf))
                tree.head_hash = stored_hash
            updates = [
                TreeUpdate(tenant, tree.grown.size, tree.head_hash, tree.grown.take_dirty())
                for tenant, tree in touched.items()
            ]
            self.store.write(updates, page.tracking)
        except BaseException:
            # The trees in memory went past what is stored: read them again.
            for tenant in touched:
                self._trees.pop(tenant, None)
            raise
        self.sign_due()

    def reload(self) -> None:
        with self._lock:
            self._trees.clear()
            self._scanned = False

    def tick(self) -> None:
        self.sign_due()

    def clear(self) -> None:
        with self._lock:
            self.store.clear(self.name)
            self.reload()

    # -- signing --------------------------------------------------------------------------

    def _scan(self) -> None:
        """Tenants whose stored tree is past their latest checkpoint (after a restart)."""
        self._scanned = True
        for tenant in self.store.trees():
            self._tree(tenant)

    def sign_due(self, *, force: bool = False, tenant: str | None = None) -> list[StoredCheckpoint]:
        """Sign a checkpoint for each tenant that is due one (all grown ones if
        ``force``, or only ``tenant``, as its tree is stored now); return the
        checkpoints signed."""
        if self.signer is None:
            return []
        with self._lock:
            if not self._scanned:
                self._scan()
            if tenant is not None:
                # As stored: this process may not be the one that follows.
                self._trees.pop(tenant, None)
                self._tree(tenant)
            return self._sign_due(force, tenant)

    def _sign_due(self, force: bool, tenant: str | None) -> list[StoredCheckpoint]:
        now = self.clock()
        signed: list[StoredCheckpoint] = []
        for name, tree in list(self._trees.items()):
            if tenant is not None and name != tenant:
                continue
            grown = tree.grown.size - (tree.signed_size or 0)
            if grown <= 0:
                continue
            due = (
                force
                or grown >= self.every_records
                or name not in self._signed_at
                or now - self._signed_at[name] >= self.every_seconds
            )
            if due:
                checkpoint = self._sign(name, tree)
                if checkpoint is not None:
                    signed.append(checkpoint)
        return signed

    def _sign(self, tenant: str, tree: _Tree) -> StoredCheckpoint | None:
        assert self.signer is not None
        self._signed_at[tenant] = self.clock()
        size, root = tree.grown.size, tree.grown.root()
        latest = self.store.latest_checkpoint(tenant)
        if latest is not None and latest.size >= size:
            # Another process signed meanwhile (or the tree shrank: verify reports it).
            tree.signed_size, tree.signed_root = latest.size, latest.root
            return None
        if latest is not None:
            hashes = TileHashes(lambda keys: self.store.read_stored_tiles(tenant, keys))
            try:
                proof = consistency_proof(latest.size, size, hashes.read)
                verify_consistency(latest.size, size, latest.root, root, proof)
            except (ProofError, TransparencyError) as error:
                self._refuse(tenant, latest.size, size, str(error))
                return None
        checkpoint = Checkpoint(tenant_origin(self.log_origin, tenant), size, root)
        stored = StoredCheckpoint(
            tenant,
            size,
            root,
            sign_checkpoint(checkpoint, self.signer),
            datetime.now(UTC).isoformat(timespec="milliseconds"),
        )
        self.store.add_checkpoint(stored)
        tree.signed_size, tree.signed_root = size, root
        self.refusals.pop(tenant, None)
        return stored

    def _refuse(self, tenant: str, old: int, new: int, reason: str) -> None:
        message = (
            f"refused to sign a checkpoint of tenant {tenant!r} at size {new}: the tree is "
            f"not consistent with its checkpoint at size {old} ({reason}); run `vigil verify`"
        )
        if self.refusals.get(tenant) != message:
            log.error(message)
            if self.on_refusal is not None:
                self.on_refusal(message)
        self.refusals[tenant] = message
