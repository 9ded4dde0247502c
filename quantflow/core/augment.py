"""Synthetic variants of the training texts: random character deletion and neighbour swaps on encoded ids.

Applied to the training split only, redrawn every epoch, so the model never sees the same corrupted copy twice
and validation and test texts stay untouched. Works on right-padded id arrays (N, T) with 0 as padding, the
format preprocess writes, so no re-tokenization is needed. ``fixed`` ids (the ``char+word`` tokenizer's
``<sep>``) are never dropped nor moved, so each part of such a text stays on its side. numpy only: no torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def delete_chars(
    ids: np.ndarray, share: float, rng: np.random.Generator, fixed: Sequence[int] = ()
) -> np.ndarray:
    """Drop each real token with probability ``share`` and close the gaps; every text keeps ≥ 1 token (besides
    its ``fixed`` ones, which always stay)."""
    if share <= 0:
        return ids
    real = ids != 0  # (N, T)
    pinned = np.isin(ids, fixed)  # (N, T)
    keep = real & ((rng.random(ids.shape) >= share) | pinned)
    content = real & ~pinned
    emptied = content.any(axis=1) & ~(keep & content).any(axis=1)
    keep[emptied] = real[emptied]  # a text that would vanish stays whole
    order = np.argsort(~keep, axis=1, kind="stable")  # kept tokens first, in their order
    return np.take_along_axis(np.where(keep, ids, 0), order, axis=1)


def swap_neighbours(
    ids: np.ndarray, share: float, rng: np.random.Generator, fixed: Sequence[int] = ()
) -> np.ndarray:
    """Swap a token with the next one with probability ``share`` per position (no overlapping swaps); ``fixed``
    ids never move."""
    if share <= 0:
        return ids
    movable = (ids != 0) & ~np.isin(ids, fixed)
    pair_ok = movable[:, :-1] & movable[:, 1:]  # (N, T - 1): both tokens of the pair are real and movable
    start = pair_ok & (rng.random(pair_ok.shape) < share)
    start[:, 1:] &= ~start[:, :-1]  # a token takes part in one swap at most
    out = ids.copy()
    rows, cols = np.nonzero(start)
    out[rows, cols], out[rows, cols + 1] = ids[rows, cols + 1], ids[rows, cols]
    return out


def augment_ids(
    ids: np.ndarray, delete: float, swap: float, rng: np.random.Generator, fixed: Sequence[int] = ()
) -> np.ndarray:
    """One epoch's corrupted copy of the training ids (the input is never modified)."""
    return swap_neighbours(delete_chars(ids, delete, rng, fixed), swap, rng, fixed)
