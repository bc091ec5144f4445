"""RFC 6962 / RFC 9162 Merkle trees over a tenant's records: hashes, proofs, checks.

A leaf is the canonical bytes of a record (exactly what its chain ``hash`` covers):
leaf hash = SHA-256(0x00 ‖ leaf), node hash = SHA-256(0x01 ‖ left ‖ right).

Proofs are built from a :data:`HashReader`, which answers the hash of a *complete*
subtree: ``read(height, index)`` is the root of the 2**height leaves that start at
leaf ``index * 2**height``. Every hash that an RFC 9162 §2.1 proof holds is of a range
``D[start:end]`` whose start is a multiple of the largest power of two below its
length, so it is a fold of at most log2(n) complete subtrees, and a proof reads
O(log n) stored hashes (the tile store, :mod:`audit_core.transparency.tiles`, keeps
complete subtrees in 256-hash tiles). Proof hashes are ordered as RFC 9162 orders
them: from the leaf (or the old tree) up to the root.

The two ``verify_*`` functions are RFC 9162 §2.1.3.2 and §2.1.4.2 step by step; they
raise :class:`ProofError` saying which check failed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from audit_core.canonical import canonical_bytes
from audit_core.transparency.exceptions import ProofError, SizeError

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()
"""MTH of the empty tree (RFC 9162 §2.1.1)."""

HashReader = Callable[[int, int], bytes]
"""``read(height, index)``: the hash of the complete subtree of 2**height leaves that
starts at leaf ``index * 2**height``."""

_sha256 = hashlib.sha256


def leaf_hash(leaf: bytes) -> bytes:
    return _sha256(b"\x00" + leaf).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return _sha256(b"\x01" + left + right).digest()


def record_leaf(record: Mapping[str, Any]) -> bytes:
    """A record's leaf: its canonical bytes without ``hash``, the bytes its chain hash covers."""
    if "hash" in record:
        record = {key: value for key, value in record.items() if key != "hash"}
    return canonical_bytes(record)


def record_leaf_hash(record: Mapping[str, Any]) -> bytes:
    return leaf_hash(record_leaf(record))


def _split(length: int) -> int:
    """The largest power of two smaller than ``length`` (which is at least 2)."""
    return 1 << ((length - 1).bit_length() - 1)


def perfect_root(hashes: Sequence[bytes]) -> bytes:
    """Root of a complete subtree over ``hashes`` (a power of two of them)."""
    level = list(hashes)
    while len(level) > 1:
        level = [node_hash(level[i], level[i + 1]) for i in range(0, len(level), 2)]
    return level[0]


def range_hash(start: int, end: int, read: HashReader) -> bytes:
    """MTH(D[start:end]) for a range as proofs have them (``start`` aligned to the
    largest power of two below ``end - start``), from its complete subtrees."""
    if start >= end:
        raise ValueError(f"empty range {start}:{end}")
    pieces: list[bytes] = []
    while start < end:
        fits = (end - start).bit_length() - 1
        aligned = (start & -start).bit_length() - 1 if start else fits
        height = min(fits, aligned)
        pieces.append(read(height, start >> height))
        start += 1 << height
    result = pieces.pop()
    while pieces:
        result = node_hash(pieces.pop(), result)
    return result


def tree_hash(size: int, read: HashReader) -> bytes:
    """MTH of the first ``size`` leaves."""
    return EMPTY_ROOT if size == 0 else range_hash(0, size, read)


def inclusion_proof(
    index: int, size: int, read: HashReader, memo: dict[tuple[int, int], bytes] | None = None
) -> list[bytes]:
    """PATH(index, D[0:size]) of RFC 9162 §2.1.3.1, leaf to root. ``memo`` keeps range
    hashes between calls: proofs of neighbouring leaves share most of them."""
    if not 0 <= index < size:
        raise SizeError(f"leaf index {index} is not in a tree of size {size}")
    proof: list[bytes] = []
    start, end = 0, size
    while end - start > 1:
        k = _split(end - start)
        if index < start + k:
            span = (start + k, end)
            end = start + k
        else:
            span = (start, start + k)
            start += k
        if memo is None:
            proof.append(range_hash(span[0], span[1], read))
            continue
        value = memo.get(span)
        if value is None:
            value = memo[span] = range_hash(span[0], span[1], read)
        proof.append(value)
    proof.reverse()
    return proof


def consistency_proof(old_size: int, new_size: int, read: HashReader) -> list[bytes]:
    """PROOF(old_size, D[0:new_size]) of RFC 9162 §2.1.4.1; empty when the old tree is
    empty or the same size (any tree extends the empty one)."""
    if not 0 <= old_size <= new_size:
        raise SizeError(f"no consistency proof from size {old_size} to size {new_size}")
    if old_size in (0, new_size):
        return []
    proof: list[bytes] = []
    start, end, m, whole = 0, new_size, old_size, True
    while True:
        if m == end - start:
            if not whole:
                proof.append(range_hash(start, end, read))
            break
        k = _split(end - start)
        if m <= k:
            proof.append(range_hash(start + k, end, read))
            end = start + k
        else:
            proof.append(range_hash(start, start + k, read))
            start += k
            m -= k
            whole = False
    proof.reverse()
    return proof


def _check_hashes(proof: Iterable[bytes]) -> list[bytes]:
    hashes = list(proof)
    for position, value in enumerate(hashes):
        if len(value) != HASH_SIZE:
            raise ProofError(f"proof hash {position} is {len(value)} bytes, not {HASH_SIZE}")
    return hashes


def root_from_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes]) -> bytes:
    """The root that ``proof`` leads to from leaf hash ``leaf`` (RFC 9162 §2.1.3.2 steps
    1 to 5, before the comparison); raises if its shape does not fit the tree."""
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is not in a tree of size {size}")
    hashes = _check_hashes(proof)
    fn, sn, r = index, size - 1, leaf
    for p in hashes:
        if sn == 0:
            raise ProofError(f"the proof has more hashes than a tree of size {size} calls for")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError(f"the proof has fewer hashes than a tree of size {size} calls for")
    return r


def verify_inclusion(
    index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that leaf hash ``leaf`` is at ``index`` of the tree of ``size`` with ``root``."""
    if root_from_inclusion(index, size, leaf, proof) != root:
        raise ProofError(
            f"the inclusion proof of leaf {index} does not lead to the root of the tree "
            f"of size {size}"
        )


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Check that the tree of ``new_size`` with ``new_root`` extends the tree of
    ``old_size`` with ``old_root`` (RFC 9162 §2.1.4.2)."""
    hashes = _check_hashes(proof)
    if not 0 <= old_size <= new_size:
        raise ProofError(f"a tree of size {new_size} cannot extend one of size {old_size}")
    if old_size == new_size:
        if hashes:
            raise ProofError("a proof between trees of the same size must be empty")
        if old_root != new_root:
            raise ProofError(f"two different roots for the same tree size {old_size}")
        return
    if old_size == 0:
        if hashes:
            raise ProofError("a proof from the empty tree must be empty")
        if old_root != EMPTY_ROOT:
            raise ProofError("the root given for the empty tree is not SHA-256 of nothing")
        return
    if not hashes:
        raise ProofError(f"the consistency proof from size {old_size} to {new_size} is empty")
    if old_size & (old_size - 1) == 0:
        hashes.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = hashes[0]
    for c in hashes[1:]:
        if sn == 0:
            raise ProofError(
                f"the consistency proof has more hashes than sizes {old_size} and "
                f"{new_size} call for"
            )
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError(
            f"the consistency proof has fewer hashes than sizes {old_size} and {new_size} call for"
        )
    if fr != old_root:
        raise ProofError(f"the consistency proof does not lead to the root of size {old_size}")
    if sr != new_root:
        raise ProofError(f"the consistency proof does not lead to the root of size {new_size}")


class MemoryTree:
    """A whole tree held in memory (every level), for bundles, tests and benchmarks."""

    def __init__(self, leaf_hashes: Iterable[bytes] = ()):
        self.levels: list[list[bytes]] = [[]]
        for value in leaf_hashes:
            self.append(value)

    @property
    def size(self) -> int:
        return len(self.levels[0])

    def append(self, value: bytes) -> None:
        height = 0
        self.levels[0].append(value)
        while len(self.levels[height]) % 2 == 0:
            level = self.levels[height]
            parent = node_hash(level[-2], level[-1])
            height += 1
            if height == len(self.levels):
                self.levels.append([])
            self.levels[height].append(parent)

    def read(self, height: int, index: int) -> bytes:
        return self.levels[height][index]

    def root(self, size: int | None = None) -> bytes:
        return tree_hash(self.size if size is None else size, self.read)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        return inclusion_proof(index, self.size if size is None else size, self.read)

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        return consistency_proof(old_size, self.size if new_size is None else new_size, self.read)


class Frontier:
    """The roots of the complete subtrees along a growing tree's right edge, largest
    first: the tree's root at every size from O(log n) hashes, for checking a log
    against checkpoints in one pass and for resuming an archive's tree."""

    def __init__(self, size: int = 0, hashes: Sequence[bytes] = ()):
        self.size = size
        self.hashes = list(hashes)

    def append(self, value: bytes) -> None:
        """Add a leaf hash."""
        self.extend((value,))

    def extend(self, values: Iterable[bytes]) -> None:
        """Add leaf hashes."""
        hashes, size, sha256 = self.hashes, self.size, _sha256
        for value in values:
            size += 1
            hashes.append(value)
            # One merge per trailing zero bit of the new size.
            merges = size
            while not merges & 1:
                right = hashes.pop()
                hashes[-1] = sha256(b"\x01" + hashes[-1] + right).digest()
                merges >>= 1
        self.size = size

    def extend_leaves(self, leaves: Iterable[bytes]) -> None:
        """Add leaves (records' canonical bytes)."""
        self.extend([leaf_hash(leaf) for leaf in leaves])

    def root(self) -> bytes:
        if not self.hashes:
            return EMPTY_ROOT
        result = self.hashes[-1]
        for value in reversed(self.hashes[:-1]):
            result = node_hash(value, result)
        return result
