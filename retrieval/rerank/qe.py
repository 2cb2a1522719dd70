"""Query expansion (AQE, Chum et al. ICCV 2007; αQE, Radenović et al. TPAMI 2018) and
database-side augmentation (DBA, Arandjelović & Zisserman CVPR 2012; αDBA). Conventions:
:mod:`retrieval.rerank`."""

from __future__ import annotations

import numpy as np
import torch

from ..models.functional import l2n
from ..search import exact_search
from .base import (COL_CHUNK, ROW_CHUNK, checked_db, checked_features, checked_int, checked_nonneg, checked_top,
                   db_neighbours, first_ranks, given_neighbours, power_weights)


@torch.no_grad()
def qe_vectors(query: np.ndarray, db: np.ndarray, ranks: np.ndarray, k: int, alpha: float = 0.0,
               q_chunk: int = 4096) -> np.ndarray:
    """Expanded queries L2(q + Σ_{j<k} w_j d_{r_j}), w_j = max(qᵀd_{r_j}, 0)^α (query weight 1).

    query (n_q, D), db (n_db, D), ranks (>= k, n_q) first-stage db indices → (n_q, D) float32.
    α = 0: average query expansion (Chum et al., ICCV 2007); α > 0: αQE (Radenović et al.,
    TPAMI 2018). k = 0 returns the queries unchanged.
    """
    query, db = checked_features(query, db, "qe_vectors")
    n_q, n_db = query.shape[0], db.shape[0]
    k = checked_int("k", k, 0, n_db, f" (n_db={n_db})")
    alpha = checked_nonneg("alpha", alpha)
    ranks = first_ranks(ranks, n_q, n_db, k)
    if k == 0:
        return query.copy()
    out = np.empty_like(query)
    dbt = torch.from_numpy(db)
    for q0 in range(0, n_q, q_chunk):
        q = torch.from_numpy(query[q0:q0 + q_chunk])                      # (b, D)
        nb = dbt[torch.from_numpy(ranks[:k, q0:q0 + q_chunk].T.copy())]    # (b, k, D)
        w = power_weights(torch.einsum("bd,bkd->bk", q, nb), alpha)
        out[q0:q0 + q_chunk] = l2n(q + torch.einsum("bk,bkd->bd", w, nb)).numpy()
    return out


def alpha_qe(query: np.ndarray, db: np.ndarray, ranks: np.ndarray | None = None, k: int = 2,
             alpha: float = 3.0, top: int | None = None, chunk_size: int | None = COL_CHUNK,
             device: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """α-weighted query expansion (Radenović, Tolias & Chum, TPAMI 2018): re-search with
    L2(q + Σ_{j<k} max(qᵀd_j, 0)^α d_j) over the first-stage top-k d_j (query weight 1).

    ``ranks`` (>= k, n_q): first-stage ranking (computed by exact search when None). α = 0 is AQE.
    Defaults k = 2, α = 3: α = 3 is the paper's value; k is the lab's choice (small k, as used with
    GeM descriptors), not a value checked against the paper. Returns (ranks, scores) (top, n_q).
    """
    query, db = checked_features(query, db, "alpha_qe")
    n_db = db.shape[0]
    k = checked_int("k", k, 0, n_db, f" (n_db={n_db})")
    alpha = checked_nonneg("alpha", alpha)
    top = checked_top(top, n_db)
    if ranks is None:
        ranks = exact_search(query, db, k, chunk_size=chunk_size, device=device)[0] if k else \
            np.zeros((0, query.shape[0]), np.int64)
    newq = qe_vectors(query, db, ranks, k, alpha)
    return exact_search(newq, db, top, chunk_size=chunk_size, device=device)


def aqe(query: np.ndarray, db: np.ndarray, ranks: np.ndarray | None = None, k: int = 2,
        top: int | None = None, chunk_size: int | None = COL_CHUNK,
        device: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Average query expansion (Chum et al., ICCV 2007), global-descriptor form: re-search with
    L2(q + Σ_{j<k} d_j), the query itself included, all k + 1 vectors unweighted.

    ``ranks`` (>= k, n_q): first-stage ranking (exact search when None). k = 2 by default: a small
    k, as usual with compact CNN descriptors (the lab's choice, not a value from one paper). Equals
    :func:`alpha_qe` with α = 0. Returns (ranks, scores) (top, n_q).
    """
    return alpha_qe(query, db, ranks, k=k, alpha=0.0, top=top, chunk_size=chunk_size, device=device)


@torch.no_grad()
def dba(db: np.ndarray, k: int = 2, alpha: float = 0.0, row_chunk: int = ROW_CHUNK,
        chunk_size: int | None = COL_CHUNK, device: str | None = None, neighbours=None) -> np.ndarray:
    """Database-side augmentation: x_i ← L2(x_i + Σ_{j∈N_k(i)} max(x_iᵀx_j, 0)^α x_j).

    N_k(i): the k nearest other db items (:func:`db_neighbours`). α = 0: DBA with uniform weights
    (Arandjelović & Zisserman, CVPR 2012); α > 0: αDBA (Radenović et al., TPAMI 2018). k = 0 is the
    identity. db (n_db, D) → float32 (n_db, D). ``neighbours``: the db's k-NN lists ``(nbr, sim)``
    computed once elsewhere (approximate at scale: :mod:`retrieval.rerank.graph`), else exact here.
    """
    db = checked_db(db, "dba")
    n = db.shape[0]
    k = checked_int("k", k, 0, n - 1, f" (n_db - 1 = {n - 1})")
    alpha = checked_nonneg("alpha", alpha)
    if k == 0:
        return db.copy()
    nbr, sim = (given_neighbours(neighbours, n, k) if neighbours is not None else
                db_neighbours(db, k, row_chunk=row_chunk, chunk_size=chunk_size, device=device))
    out = np.empty_like(db)
    dbt = torch.from_numpy(db)
    for r0 in range(0, n, row_chunk):
        sl = slice(r0, r0 + row_chunk)
        w = power_weights(torch.from_numpy(sim[sl]), alpha)                      # (b, k)
        agg = dbt[sl] + torch.einsum("bk,bkd->bd", w, dbt[torch.from_numpy(nbr[sl])])
        out[sl] = l2n(agg).numpy()
    return out


def rerank_dba(query: np.ndarray, db: np.ndarray, k: int = 2, alpha: float = 0.0,
               top: int | None = None, qe_k: int = 0, qe_alpha: float = 3.0,
               row_chunk: int = ROW_CHUNK, chunk_size: int | None = COL_CHUNK,
               device: str | None = None, neighbours=None) -> tuple[np.ndarray, np.ndarray]:
    """Search the DBA-augmented db (:func:`dba` with ``k``, ``alpha``, ``neighbours``).

    Common protocol (Gordo et al., IJCV 2017; Radenović et al., TPAMI 2018): the queries are NOT
    augmented by DBA; query expansion is a separate step on the augmented db, ``+αQE+DBA``:
    ``qe_k > 0`` applies :func:`alpha_qe` (``qe_k``, ``qe_alpha``) against the augmented db.
    Returns (ranks, scores) (top, n_q).
    """
    query, db = checked_features(query, db, "rerank_dba")
    n_db = db.shape[0]
    top = checked_top(top, n_db)
    qe_k = checked_int("qe_k", qe_k, 0, n_db, f" (n_db={n_db})")
    qe_alpha = checked_nonneg("qe_alpha", qe_alpha)
    aug = dba(db, k, alpha, row_chunk=row_chunk, chunk_size=chunk_size, device=device, neighbours=neighbours)
    if qe_k:
        return alpha_qe(query, aug, k=qe_k, alpha=qe_alpha, top=top, chunk_size=chunk_size,
                        device=device)
    return exact_search(query, aug, top, chunk_size=chunk_size, device=device)
