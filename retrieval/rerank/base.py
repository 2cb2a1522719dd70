"""What the re-rankers share: the conventions' checks (with the messages they raise) and the
k-NN lists of the db (:func:`db_neighbours`). Conventions: :mod:`retrieval.rerank`."""

from __future__ import annotations

import math

import numpy as np
import torch

from ..io import check_features
from ..search import exact_search

ROW_CHUNK = 1024     # db rows per neighbour-search chunk
COL_CHUNK = None     # db rows per matmul chunk inside exact_search (None: its 32 MB default)


def checked_features(query, db, name: str) -> tuple[np.ndarray, np.ndarray]:
    """``query`` (n_q, D) and ``db`` (n_db, D) as float32 arrays: finite, 2-D, same D, db not empty."""
    query, db = np.asarray(query, np.float32), np.asarray(db, np.float32)
    check_features(query, db, name=name)
    if db.shape[0] == 0:
        raise ValueError(f"{name}: db is empty")
    return query, db


def checked_db(db, name: str) -> np.ndarray:
    """``db`` (n_db, D) as a float32 array: finite, 2-D, not empty."""
    db = np.asarray(db, np.float32)
    if db.ndim != 2:
        raise ValueError(f"{name}: db must be 2-D (n_db, D), got shape {db.shape}")
    if not np.isfinite(db).all():
        raise ValueError(f"{name}: db contains NaN or Inf")
    if db.shape[0] == 0:
        raise ValueError(f"{name}: db is empty")
    return db


def checked_int(name: str, v, lo: int, hi: int, what: str = "") -> int:
    """``v`` as an int in [lo, hi] (bools rejected); ``what`` is appended to the range message."""
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {v!r}")
    if not lo <= int(v) <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}]{what}, got {v}")
    return int(v)


def checked_nonneg(name: str, v) -> float:
    """``v`` as a finite float >= 0."""
    v = float(v)
    if not (math.isfinite(v) and v >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {v}")
    return v


def checked_top(top, n_db: int) -> int:
    """The ranking length: ``top`` in [1, n_db], or n_db when None."""
    return n_db if top is None else checked_int("top", top, 1, n_db, f" (n_db={n_db})")


def first_ranks(ranks, n_q: int, n_db: int, k: int) -> np.ndarray:
    """First-stage ``ranks`` (>= k, n_q) of db indices, validated, as int64."""
    ranks = np.asarray(ranks)
    if ranks.ndim != 2 or ranks.dtype.kind not in "iu":
        raise ValueError(f"ranks must be a 2-D integer array (n_ranked, n_q), got shape {ranks.shape} "
                         f"dtype {ranks.dtype}")
    if ranks.shape[1] != n_q:
        raise ValueError(f"ranks has {ranks.shape[1]} columns but there are {n_q} queries")
    if ranks.shape[0] < k:
        raise ValueError(f"ranks has {ranks.shape[0]} rows, fewer than k={k}")
    if ranks.size and (ranks.min() < 0 or ranks.max() >= n_db):
        raise ValueError(f"ranks must hold db indices in [0, {n_db})")
    return ranks.astype(np.int64, copy=False)


def power_weights(s: torch.Tensor, alpha: float) -> torch.Tensor:
    """max(s, 0)^α with 0^0 = 1 (torch.pow already does so)."""
    return torch.pow(s.clamp_min(0), alpha)


@torch.no_grad()
def db_neighbours(db: np.ndarray, k: int, row_chunk: int = ROW_CHUNK, chunk_size: int | None = COL_CHUNK,
                  device: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """k nearest db items of every db item, itself excluded.

    db (n_db, D) → ``nbr`` (n_db, k) int64 and ``sim`` (n_db, k) float32, best first, ties by the
    lower index (as :func:`exact_search`). Searches ``row_chunk`` rows at a time for k + 1 items and
    drops the item itself (or, if an exact duplicate with a lower index pushed it out, the last one).
    """
    db = checked_db(db, "db_neighbours")
    n = db.shape[0]
    k = checked_int("k", k, 0, n - 1, f" (n_db - 1 = {n - 1})")
    checked_int("row_chunk", row_chunk, 1, 2 ** 62)
    nbr, sim = np.empty((n, k), np.int64), np.empty((n, k), np.float32)
    if k == 0:
        return nbr, sim
    for r0 in range(0, n, row_chunk):
        rows = np.arange(r0, min(r0 + row_chunk, n))
        r, s = exact_search(db[rows], db, k + 1, chunk_size=chunk_size, device=device)
        r, s = r.T, s.T                                     # (rows, k + 1)
        drop = r == rows[:, None]
        drop[~drop.any(1), -1] = True                       # exactly one dropped per row
        nbr[rows] = r[~drop].reshape(len(rows), k)
        sim[rows] = s[~drop].reshape(len(rows), k)
    return nbr, sim


def given_neighbours(neighbours, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(nbr, sim)`` lists computed elsewhere (e.g. :func:`~retrieval.rerank.graph.cached_neighbours`)
    checked against the db (n rows) and cut to their first ``k`` columns."""
    nbr, sim = (np.asarray(a) for a in neighbours)
    if nbr.ndim != 2 or nbr.shape != sim.shape or nbr.shape[0] != n or nbr.shape[1] < k:
        raise ValueError(f"neighbours: expected (nbr, sim) of shape (n_db={n}, >= k={k}), got {nbr.shape} and "
                         f"{sim.shape}")
    return nbr[:, :k].astype(np.int64, copy=False), sim[:, :k].astype(np.float32, copy=False)
