"""RFC 6962 / RFC 9162 trees: known answers, and every proof of every tree of 1 to 300
leaves against a direct reading of the RFC's recursive definitions."""

from __future__ import annotations

import functools
import hashlib

import pytest

from audit_core.transparency import (
    EMPTY_ROOT,
    Frontier,
    MemoryTree,
    ProofError,
    SizeError,
    leaf_hash,
    record_leaf,
    record_leaf_hash,
    verify_consistency,
    verify_inclusion,
)
from audit_core.transparency.merkle import root_from_inclusion

h = bytes.fromhex

# RFC 6962's reference test vectors (certificate-transparency merkle_tree_test): eight
# leaves and the root of each prefix of them.
VECTOR_LEAVES = [
    "", "00", "10", "2021", "3031", "40414243", "5051525354555657",
    "606162636465666768696a6b6c6d6e6f",
]  # fmt: skip
VECTOR_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]


def vector_tree() -> MemoryTree:
    return MemoryTree(leaf_hash(h(leaf)) for leaf in VECTOR_LEAVES)


def test_the_empty_tree_hashes_to_sha256_of_nothing() -> None:
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert MemoryTree().root() == EMPTY_ROOT
    assert Frontier().root() == EMPTY_ROOT


@pytest.mark.parametrize("size", range(1, 9))
def test_roots_match_rfc_6962_reference_vectors(size: int) -> None:
    tree = vector_tree()
    assert tree.root(size).hex() == VECTOR_ROOTS[size - 1]
    frontier = Frontier()
    for value in tree.levels[0][:size]:
        frontier.append(value)
    assert frontier.root().hex() == VECTOR_ROOTS[size - 1]


def test_inclusion_proofs_match_reference_vectors() -> None:
    tree = vector_tree()
    proof = tree.inclusion_proof(5, 8)
    assert [p.hex() for p in proof] == [
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ]
    verify_inclusion(5, 8, leaf_hash(h(VECTOR_LEAVES[5])), proof, h(VECTOR_ROOTS[7]))
    assert tree.inclusion_proof(2, 3) == [h(VECTOR_ROOTS[1])]
    assert tree.inclusion_proof(0, 1) == []


def test_consistency_proofs_match_reference_vectors() -> None:
    tree = vector_tree()
    assert [p.hex() for p in tree.consistency_proof(6, 8)] == [
        "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ]
    assert [p.hex() for p in tree.consistency_proof(2, 5)] == [
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
    ]
    assert tree.consistency_proof(1, 1) == []
    verify_consistency(6, 8, h(VECTOR_ROOTS[5]), h(VECTOR_ROOTS[7]), tree.consistency_proof(6, 8))
    with pytest.raises(ProofError, match="root of size 6"):
        verify_consistency(
            6, 8, h(VECTOR_ROOTS[4]), h(VECTOR_ROOTS[7]), tree.consistency_proof(6, 8)
        )


# -- every tree of 1 to 300 leaves, against the RFC's definitions ------------------------

MAX = 300
LEAVES = [hashlib.sha256(str(i).encode()).digest()[: i % 40] for i in range(MAX)]


@functools.cache
def mth(start: int, end: int) -> bytes:
    """MTH(D[start:end]) as RFC 9162 §2.1.1 defines it, recursively."""
    if end - start == 1:
        return hashlib.sha256(b"\x00" + LEAVES[start]).digest()
    k = 1
    while k * 2 < end - start:
        k *= 2
    return hashlib.sha256(b"\x01" + mth(start, start + k) + mth(start + k, end)).digest()


def path(m: int, start: int, end: int) -> list[bytes]:
    """PATH(m, D[start:end]) of RFC 9162 §2.1.3.1."""
    if end - start == 1:
        return []
    k = 1
    while k * 2 < end - start:
        k *= 2
    if m < k:
        return [*path(m, start, start + k), mth(start + k, end)]
    return [*path(m - k, start + k, end), mth(start, start + k)]


def subproof(m: int, start: int, end: int, whole: bool) -> list[bytes]:
    """SUBPROOF(m, D[start:end], b) of RFC 9162 §2.1.4.1."""
    if m == end - start:
        return [] if whole else [mth(start, end)]
    k = 1
    while k * 2 < end - start:
        k *= 2
    if m <= k:
        return [*subproof(m, start, start + k, whole), mth(start + k, end)]
    return [*subproof(m - k, start + k, end, False), mth(start, start + k)]


@pytest.fixture(scope="module")
def big_tree() -> MemoryTree:
    return MemoryTree(leaf_hash(leaf) for leaf in LEAVES)


def flipped(proof: list[bytes], position: int) -> list[bytes]:
    changed = bytearray(proof[position])
    changed[position % 32] ^= 0x01
    return [*proof[:position], bytes(changed), *proof[position + 1 :]]


@pytest.mark.parametrize("size", range(1, MAX + 1))
def test_every_inclusion_proof_verifies_and_no_altered_one_does(
    big_tree: MemoryTree, size: int
) -> None:
    root = big_tree.root(size)
    assert root == mth(0, size)
    for index in range(size):
        leaf = big_tree.levels[0][index]
        proof = big_tree.inclusion_proof(index, size)
        assert proof == path(index, 0, size)
        verify_inclusion(index, size, leaf, proof, root)
        if proof:
            with pytest.raises(ProofError):
                verify_inclusion(index, size, leaf, flipped(proof, index % len(proof)), root)
            with pytest.raises(ProofError):
                verify_inclusion(index, size, leaf, proof[:-1], root)
        if size < MAX:
            with pytest.raises(ProofError):
                verify_inclusion(index, size + 1, leaf, proof, mth(0, size + 1))
        if size > 1:
            with pytest.raises(ProofError):
                verify_inclusion((index + 1) % size, size, leaf, proof, root)
        with pytest.raises(ProofError):
            verify_inclusion(index, size, hashlib.sha256(b"other").digest(), proof, root)


@pytest.mark.parametrize("new", range(1, MAX + 1))
def test_every_consistency_proof_verifies_and_no_altered_one_does(
    big_tree: MemoryTree, new: int
) -> None:
    new_root = big_tree.root(new)
    for old in range(1, new + 1):
        old_root = mth(0, old)
        proof = big_tree.consistency_proof(old, new)
        assert proof == ([] if old == new else subproof(old, 0, new, True))
        verify_consistency(old, new, old_root, new_root, proof)
        if old == new:
            continue
        with pytest.raises(ProofError):
            verify_consistency(old, new, old_root, new_root, flipped(proof, old % len(proof)))
        with pytest.raises(ProofError):
            verify_consistency(old, new, old_root, new_root, proof[:-1])
        if new < MAX:
            with pytest.raises(ProofError):
                verify_consistency(old, new + 1, old_root, mth(0, new + 1), proof)
        if old > 1:
            with pytest.raises(ProofError):
                verify_consistency(old - 1, new, mth(0, old - 1), new_root, proof)
        with pytest.raises(ProofError):
            verify_consistency(old, new, new_root, new_root, proof)


def test_the_frontier_gives_the_root_at_every_size(big_tree: MemoryTree) -> None:
    frontier = Frontier()
    for size, value in enumerate(big_tree.levels[0], start=1):
        frontier.append(value)
        assert frontier.root() == mth(0, size)


def test_proofs_refuse_sizes_they_cannot_cover(big_tree: MemoryTree) -> None:
    with pytest.raises(SizeError, match="leaf index 10 is not in a tree of size 10"):
        big_tree.inclusion_proof(10, 10)
    with pytest.raises(SizeError):
        big_tree.consistency_proof(11, 10)
    with pytest.raises(ProofError, match="cannot extend"):
        verify_consistency(11, 10, EMPTY_ROOT, EMPTY_ROOT, [])
    with pytest.raises(ProofError, match="not 32"):
        root_from_inclusion(0, 2, EMPTY_ROOT, [b"short"])


def test_an_empty_tree_is_consistent_with_every_tree_and_its_proof_is_empty(
    big_tree: MemoryTree,
) -> None:
    assert big_tree.consistency_proof(0, 5) == []
    verify_consistency(0, 5, EMPTY_ROOT, big_tree.root(5), [])
    with pytest.raises(ProofError, match="empty"):
        verify_consistency(0, 5, EMPTY_ROOT, big_tree.root(5), [EMPTY_ROOT])


def test_a_record_leaf_is_the_bytes_its_chain_hash_covers() -> None:
    record = {"seq": 0, "tenant": "acme", "action": "a.b", "metadata": {"x": 1.5}}
    chained = {**record, "hash": hashlib.sha256(record_leaf(record)).hexdigest()}
    assert record_leaf(chained) == record_leaf(record)
    assert record_leaf(record) == b'{"action":"a.b","metadata":{"x":1.5},"seq":0,"tenant":"acme"}'
    assert record_leaf_hash(chained) == hashlib.sha256(b"\x00" + record_leaf(record)).digest()
