"""Training-split augmentation on encoded ids: what it may change and what it must keep."""

from __future__ import annotations

from collections import Counter

import numpy as np

from quantflow.core.augment import augment_ids, delete_chars, swap_neighbours


def batch() -> np.ndarray:
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 30, size=200)
    ids = np.zeros((200, 32), dtype=np.int64)
    for i, n in enumerate(lengths):
        ids[i, :n] = rng.integers(2, 500, size=n)
    return ids


def real(row: np.ndarray) -> list[int]:
    return [int(t) for t in row if t != 0]


def test_deletion_keeps_order_and_padding_and_never_empties_a_text() -> None:
    ids = batch()
    out = delete_chars(ids, 0.3, np.random.default_rng(1))
    assert out.shape == ids.shape
    dropped = 0
    for before, after in zip(ids, out, strict=True):
        kept = real(after)
        assert kept, "a text lost every token"
        assert (after[len(kept) :] == 0).all(), "kept tokens must stay left-aligned before the padding"
        it = iter(real(before))
        assert all(t in it for t in kept), "deletion must keep the survivors in their order"
        dropped += len(real(before)) - len(kept)
    share = dropped / sum(len(real(r)) for r in ids)
    assert 0.2 < share < 0.4


def test_swap_keeps_the_multiset_and_moves_tokens_by_one_at_most() -> None:
    ids = batch()
    out = swap_neighbours(ids, 0.2, np.random.default_rng(2))
    assert (out != ids).any()
    for before, after in zip(ids, out, strict=True):
        assert Counter(real(before)) == Counter(real(after))
        assert ((before == 0) == (after == 0)).all()
        for pos in np.nonzero(before != after)[0]:
            assert after[pos] in (before[max(pos - 1, 0)], before[min(pos + 1, len(before) - 1)])


def test_zero_shares_return_the_input_and_the_input_is_never_modified() -> None:
    ids = batch()
    copy = ids.copy()
    assert augment_ids(ids, 0.0, 0.0, np.random.default_rng(3)) is ids
    augment_ids(ids, 0.2, 0.2, np.random.default_rng(3))
    assert (ids == copy).all()


def test_same_seed_same_copy() -> None:
    ids = batch()
    a = augment_ids(ids, 0.1, 0.05, np.random.default_rng(4))
    b = augment_ids(ids, 0.1, 0.05, np.random.default_rng(4))
    assert (a == b).all()


def test_fixed_ids_are_never_dropped_nor_moved() -> None:
    """A char+word row keeps its one ``<sep>`` (id 2) with every surviving token still on its side of it."""
    rng = np.random.default_rng(5)
    ids = np.zeros((200, 24), dtype=np.int64)
    for i in range(200):
        chars, words = rng.integers(3, 100, size=rng.integers(0, 10)), rng.integers(100, 200, size=5)
        row = [*chars, 2, *words]
        ids[i, : len(row)] = row
    out = augment_ids(ids, 0.3, 0.3, np.random.default_rng(6), fixed=(2,))
    assert (out != ids).any()
    for after in out:
        kept = real(after)
        sep = kept.index(2)
        assert kept.count(2) == 1
        assert all(t < 100 for t in kept[:sep]) and all(t >= 100 for t in kept[sep + 1 :])
        assert len(kept) > 1  # the text's own tokens never all vanish behind the sep
    moved = augment_ids(ids, 0.3, 0.3, np.random.default_rng(6))
    assert any(real(row).count(2) != 1 for row in moved)  # without ``fixed`` the sep is fair game
