"""Re-ranking after a first nearest-neighbour search: query expansion (AQE, αQE), database-side
augmentation (DBA, αDBA) and graph diffusion.

Conventions (as :mod:`retrieval.search`): ``query`` (n_q, D) and ``db`` (n_db, D) float32,
L2-normalised; every ranking function returns ``ranks`` (top, n_q) int64 db indices, best first,
and ``scores`` (top, n_q) float32. ``top=None`` ranks the whole db.

Memory: nothing (n_q × n_db) is held beyond one chunk when ``top`` is given, and nothing
(n_db × n_db) ever; db-side methods use k-NN lists of the db computed in row chunks with
:func:`retrieval.search.exact_search`.

Weights ``max(s, 0)^α`` use ``0^0 = 1``, so α = 0 gives uniform weights exactly (plain AQE / DBA).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from .io import check_features
from .models.functional import l2n
from .search import exact_search

__all__ = ["db_neighbours", "qe_vectors", "aqe", "alpha_qe", "dba", "rerank_dba",
           "reciprocal_knn_graph", "conjugate_gradient", "diffusion"]

ROW_CHUNK = 1024     # db rows per neighbour-search chunk
COL_CHUNK = 16384    # db columns per matmul chunk inside exact_search


# --------------------------------------------------------------------------- validation
def _features(query, db, name: str) -> tuple[np.ndarray, np.ndarray]:
    query, db = np.asarray(query, np.float32), np.asarray(db, np.float32)
    check_features(query, db, name=name)
    if db.shape[0] == 0:
        raise ValueError(f"{name}: db is empty")
    return query, db


def _db(db, name: str) -> np.ndarray:
    db = np.asarray(db, np.float32)
    if db.ndim != 2:
        raise ValueError(f"{name}: db must be 2-D (n_db, D), got shape {db.shape}")
    if not np.isfinite(db).all():
        raise ValueError(f"{name}: db contains NaN or Inf")
    if db.shape[0] == 0:
        raise ValueError(f"{name}: db is empty")
    return db


def _int(name: str, v, lo: int, hi: int, what: str = "") -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {v!r}")
    if not lo <= int(v) <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}]{what}, got {v}")
    return int(v)


def _nonneg(name: str, v) -> float:
    v = float(v)
    if not (math.isfinite(v) and v >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {v}")
    return v


def _top(top, n_db: int) -> int:
    return n_db if top is None else _int("top", top, 1, n_db, f" (n_db={n_db})")


def _first_ranks(ranks, n_q: int, n_db: int, k: int) -> np.ndarray:
    """Validate first-stage ``ranks`` (>= k, n_q) of db indices."""
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


def _weights(s: torch.Tensor, alpha: float) -> torch.Tensor:
    """max(s, 0)^α with 0^0 = 1 (torch.pow already does so)."""
    return torch.pow(s.clamp_min(0), alpha)


# --------------------------------------------------------------------------- db k-NN lists
@torch.no_grad()
def db_neighbours(db: np.ndarray, k: int, row_chunk: int = ROW_CHUNK, chunk_size: int = COL_CHUNK,
                  device: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """k nearest db items of every db item, itself excluded.

    db (n_db, D) → ``nbr`` (n_db, k) int64 and ``sim`` (n_db, k) float32, best first, ties by the
    lower index (as :func:`exact_search`). Searches ``row_chunk`` rows at a time for k + 1 items and
    drops the item itself (or, if an exact duplicate with a lower index pushed it out, the last one).
    """
    db = _db(db, "db_neighbours")
    n = db.shape[0]
    k = _int("k", k, 0, n - 1, f" (n_db - 1 = {n - 1})")
    _int("row_chunk", row_chunk, 1, 2 ** 62)
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


# --------------------------------------------------------------------------- query expansion
@torch.no_grad()
def qe_vectors(query: np.ndarray, db: np.ndarray, ranks: np.ndarray, k: int, alpha: float = 0.0,
               q_chunk: int = 4096) -> np.ndarray:
    """Expanded queries L2(q + Σ_{j<k} w_j d_{r_j}), w_j = max(qᵀd_{r_j}, 0)^α (query weight 1).

    query (n_q, D), db (n_db, D), ranks (>= k, n_q) first-stage db indices → (n_q, D) float32.
    α = 0: average query expansion (Chum et al., ICCV 2007); α > 0: αQE (Radenović et al.,
    TPAMI 2018). k = 0 returns the queries unchanged.
    """
    query, db = _features(query, db, "qe_vectors")
    n_q, n_db = query.shape[0], db.shape[0]
    k = _int("k", k, 0, n_db, f" (n_db={n_db})")
    alpha = _nonneg("alpha", alpha)
    ranks = _first_ranks(ranks, n_q, n_db, k)
    if k == 0:
        return query.copy()
    out = np.empty_like(query)
    dbt = torch.from_numpy(db)
    for q0 in range(0, n_q, q_chunk):
        q = torch.from_numpy(query[q0:q0 + q_chunk])                      # (b, D)
        nb = dbt[torch.from_numpy(ranks[:k, q0:q0 + q_chunk].T.copy())]    # (b, k, D)
        w = _weights(torch.einsum("bd,bkd->bk", q, nb), alpha)
        out[q0:q0 + q_chunk] = l2n(q + torch.einsum("bk,bkd->bd", w, nb)).numpy()
    return out


def alpha_qe(query: np.ndarray, db: np.ndarray, ranks: np.ndarray | None = None, k: int = 2,
             alpha: float = 3.0, top: int | None = None, chunk_size: int = COL_CHUNK,
             device: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """α-weighted query expansion (Radenović, Tolias & Chum, TPAMI 2018): re-search with
    L2(q + Σ_{j<k} max(qᵀd_j, 0)^α d_j) over the first-stage top-k d_j (query weight 1).

    ``ranks`` (>= k, n_q): first-stage ranking (computed by exact search when None). α = 0 is AQE.
    Defaults k = 2, α = 3: α = 3 is the paper's value; k is the lab's choice (small k, as used with
    GeM descriptors), not a value checked against the paper. Returns (ranks, scores) (top, n_q).
    """
    query, db = _features(query, db, "alpha_qe")
    n_db = db.shape[0]
    k = _int("k", k, 0, n_db, f" (n_db={n_db})")
    alpha = _nonneg("alpha", alpha)
    top = _top(top, n_db)
    if ranks is None:
        ranks = exact_search(query, db, k, chunk_size=chunk_size, device=device)[0] if k else \
            np.zeros((0, query.shape[0]), np.int64)
    newq = qe_vectors(query, db, ranks, k, alpha)
    return exact_search(newq, db, top, chunk_size=chunk_size, device=device)


def aqe(query: np.ndarray, db: np.ndarray, ranks: np.ndarray | None = None, k: int = 2,
        top: int | None = None, chunk_size: int = COL_CHUNK,
        device: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Average query expansion (Chum et al., ICCV 2007), global-descriptor form: re-search with
    L2(q + Σ_{j<k} d_j), the query itself included, all k + 1 vectors unweighted.

    ``ranks`` (>= k, n_q): first-stage ranking (exact search when None). k = 2 by default: a small
    k, as usual with compact CNN descriptors (the lab's choice, not a value from one paper). Equals
    :func:`alpha_qe` with α = 0. Returns (ranks, scores) (top, n_q).
    """
    return alpha_qe(query, db, ranks, k=k, alpha=0.0, top=top, chunk_size=chunk_size, device=device)


# --------------------------------------------------------------------------- database-side augmentation
@torch.no_grad()
def dba(db: np.ndarray, k: int = 2, alpha: float = 0.0, row_chunk: int = ROW_CHUNK,
        chunk_size: int = COL_CHUNK, device: str | None = None) -> np.ndarray:
    """Database-side augmentation: x_i ← L2(x_i + Σ_{j∈N_k(i)} max(x_iᵀx_j, 0)^α x_j).

    N_k(i): the k nearest other db items (:func:`db_neighbours`). α = 0: DBA with uniform weights
    (Arandjelović & Zisserman, CVPR 2012); α > 0: αDBA (Radenović et al., TPAMI 2018). k = 0 is the
    identity. db (n_db, D) → float32 (n_db, D).
    """
    db = _db(db, "dba")
    n = db.shape[0]
    k = _int("k", k, 0, n - 1, f" (n_db - 1 = {n - 1})")
    alpha = _nonneg("alpha", alpha)
    if k == 0:
        return db.copy()
    nbr, sim = db_neighbours(db, k, row_chunk=row_chunk, chunk_size=chunk_size, device=device)
    out = np.empty_like(db)
    dbt = torch.from_numpy(db)
    for r0 in range(0, n, row_chunk):
        sl = slice(r0, r0 + row_chunk)
        w = _weights(torch.from_numpy(sim[sl]), alpha)                      # (b, k)
        agg = dbt[sl] + torch.einsum("bk,bkd->bd", w, dbt[torch.from_numpy(nbr[sl])])
        out[sl] = l2n(agg).numpy()
    return out


def rerank_dba(query: np.ndarray, db: np.ndarray, k: int = 2, alpha: float = 0.0,
               top: int | None = None, qe_k: int = 0, qe_alpha: float = 3.0,
               row_chunk: int = ROW_CHUNK, chunk_size: int = COL_CHUNK,
               device: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Search the DBA-augmented db (:func:`dba` with ``k``, ``alpha``).

    Common protocol (Gordo et al., IJCV 2017; Radenović et al., TPAMI 2018): the queries are NOT
    augmented by DBA; query expansion is a separate step on the augmented db, ``+αQE+DBA``:
    ``qe_k > 0`` applies :func:`alpha_qe` (``qe_k``, ``qe_alpha``) against the augmented db.
    Returns (ranks, scores) (top, n_q).
    """
    query, db = _features(query, db, "rerank_dba")
    n_db = db.shape[0]
    top = _top(top, n_db)
    qe_k = _int("qe_k", qe_k, 0, n_db, f" (n_db={n_db})")
    qe_alpha = _nonneg("qe_alpha", qe_alpha)
    aug = dba(db, k, alpha, row_chunk=row_chunk, chunk_size=chunk_size, device=device)
    if qe_k:
        return alpha_qe(query, aug, k=qe_k, alpha=qe_alpha, top=top, chunk_size=chunk_size,
                        device=device)
    return exact_search(query, aug, top, chunk_size=chunk_size, device=device)


# --------------------------------------------------------------------------- diffusion
def reciprocal_knn_graph(db: np.ndarray, k: int, gamma: float = 3.0, row_chunk: int = ROW_CHUNK,
                         chunk_size: int = COL_CHUNK,
                         device: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Reciprocal k-NN affinity graph of Iscen et al. (CVPR 2017) as neighbour lists.

    db (n_db, D) → ``nbr`` (n_db, k) int64 and ``w`` (n_db, k) float32 with
    w[i, a] = max(s_ij, 0)^γ for j = nbr[i, a] when i and j are in each other's k-NN lists (self
    excluded), else 0. The dense affinity A_ij = w[i, a] is symmetric up to float rounding of s.
    """
    db = _db(db, "reciprocal_knn_graph")
    gamma = float(gamma)
    if not (math.isfinite(gamma) and gamma > 0):
        raise ValueError(f"gamma must be a finite number > 0, got {gamma}")
    nbr, sim = db_neighbours(db, k, row_chunk=row_chunk, chunk_size=chunk_size, device=device)
    n = db.shape[0]
    w = np.maximum(sim, 0) ** np.float32(gamma)
    for r0 in range(0, n, row_chunk):
        rows = np.arange(r0, min(r0 + row_chunk, n))
        back = nbr[nbr[rows]]                                   # (b, k, k): lists of the neighbours
        mutual = (back == rows[:, None, None]).any(-1)
        w[rows] *= mutual
    return nbr, w.astype(np.float32)


@torch.no_grad()
def conjugate_gradient(matvec: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor,
                       tol: float = 1e-6, iters: int = 20) -> torch.Tensor:
    """Solve M x = b for a symmetric positive-definite M, batched: b (B, n), ``matvec`` maps
    (B, n) → (B, n). Starts at x = 0; a system stops once ‖r‖ <= tol·‖b‖ or after ``iters``
    iterations (Hestenes & Stiefel, 1952). Returns x (B, n)."""
    if b.ndim != 2:
        raise ValueError(f"b must be (B, n), got shape {tuple(b.shape)}")
    _int("iters", iters, 1, 2 ** 31)
    tol = _nonneg("tol", tol)
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rs = (r * r).sum(1)
    stop = tol * b.norm(dim=1)                                # per-system threshold
    done = rs.sqrt() <= stop
    for _ in range(iters):
        if bool(done.all()):
            break
        mp = matvec(p)
        pmp = (p * mp).sum(1)
        step = torch.where(done | (pmp <= 0), torch.zeros_like(rs), rs / pmp.clamp_min(1e-300))
        x = x + step[:, None] * p
        r = r - step[:, None] * mp
        rs_new = (r * r).sum(1)
        done = done | (rs_new.sqrt() <= stop) | (pmp <= 0)
        beta = torch.where(done, torch.zeros_like(rs), rs_new / rs.clamp_min(1e-300))
        p = r + beta[:, None] * p
        rs = rs_new
    return x


def _inv_sqrt_deg(deg: torch.Tensor) -> torch.Tensor:
    return torch.where(deg > 0, deg.clamp_min(1e-300).rsqrt(), torch.zeros_like(deg))


def _full_operator(nbr: np.ndarray, w: np.ndarray, alpha: float):
    """x ↦ x − α S x for S = D^{-1/2} A D^{-1/2} on the whole db graph (sparse); x (B, n_db)."""
    n, k = nbr.shape
    rows = torch.arange(n).repeat_interleave(k)
    cols = torch.from_numpy(nbr.ravel())
    vals = torch.from_numpy(w.ravel()).double()
    keep = vals > 0
    rows, cols, vals = rows[keep], cols[keep], vals[keep]
    # symmetrise: reciprocal edges appear in both lists, each direction gets the mean of the two
    idx = torch.stack([torch.cat([rows, cols]), torch.cat([cols, rows])])
    a = torch.sparse_coo_tensor(idx, torch.cat([vals, vals]) / 2, (n, n),
                                check_invariants=True).coalesce()
    i, v = a.indices(), a.values()
    dinv = _inv_sqrt_deg(torch.zeros(n, dtype=torch.float64).index_add_(0, i[0], v))
    s = torch.sparse_coo_tensor(i, dinv[i[0]] * v * dinv[i[1]], (n, n), is_coalesced=True,
                                check_invariants=True)
    return lambda x: x - alpha * torch.sparse.mm(s, x.T.contiguous()).T


def _sub_operator(sub: torch.Tensor, nbr_t: torch.Tensor, w_t: torch.Tensor, alpha: float):
    """x ↦ x − α S x on each query's truncated graph, S = D^{-1/2} A[sub, sub] D^{-1/2} with degrees
    inside the subgraph (dense); sub (B, T) db indices, x (B, T)."""
    bsz, t = sub.shape
    k = nbr_t.shape[1]
    srt, order = torch.sort(sub, dim=1)
    nb = nbr_t[sub].reshape(bsz, t * k)                        # neighbours of every item of sub
    pos = torch.searchsorted(srt, nb).clamp_max(t - 1)
    inside = srt.gather(1, pos) == nb
    col = order.gather(1, pos)                                 # position in sub of each neighbour
    row = torch.arange(t).repeat_interleave(k).expand(bsz, -1)
    vals = w_t[sub].reshape(bsz, t * k).double() * inside
    a = torch.zeros(bsz, t * t, dtype=torch.float64)
    # add, not set: a neighbour outside the subgraph maps to an arbitrary column with value 0, which
    # must not overwrite a real edge there (real (row, col) pairs are unique in a k-NN list)
    a.scatter_add_(1, row * t + col, vals)
    a = a.view(bsz, t, t)
    a = (a + a.transpose(1, 2)) / 2
    dinv = _inv_sqrt_deg(a.sum(2))
    s = dinv[:, :, None] * a * dinv[:, None, :]
    return lambda x: x - alpha * torch.bmm(s, x[:, :, None])[:, :, 0]


@torch.no_grad()
def diffusion(query: np.ndarray, db: np.ndarray, k: int = 50, truncate: int | None = 1000,
              gamma: float = 3.0, alpha: float = 0.99, iters: int = 20, tol: float = 1e-6,
              top: int | None = None, kq: int = 10, batch: int = 8, row_chunk: int = ROW_CHUNK,
              chunk_size: int = COL_CHUNK, device: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Diffusion on the db k-NN graph (Iscen et al., "Efficient diffusion on region manifolds",
    CVPR 2017), global-descriptor version.

    Graph: reciprocal k-NN affinity A_ij = max(s_ij, 0)^γ (:func:`reciprocal_knn_graph`),
    S = D^{-1/2} A D^{-1/2}. Per query, y_i = max(qᵀx_i, 0)^γ on its ``kq`` nearest db items (0
    elsewhere); f solves (I − αS) f = y by conjugate gradient (``iters``, relative ``tol``), and db
    items are ranked by f, ties by first-stage order. ``truncate=T``: the graph is restricted to the
    query's first-stage top-T items (A[sub, sub], degrees inside it), T clipped to n_db; items beyond
    T follow, in first-stage order, with score 0. ``truncate=None``: the whole graph (sparse).

    Defaults are those of the authors' release for global descriptors: k = 50, kq = 10, γ = 3,
    α = 0.99, 20 CG iterations, tol 1e-6; truncation to 1000 is the lab's choice (the release
    truncates only at 100k scale, to 10000 regional vectors). k-NN lists exclude the item itself
    (the release keeps it and then zeros the diagonal, i.e. k − 1 other items).

    query (n_q, D), db (n_db, D) → ranks (top, n_q) int64, scores (top, n_q) float32 (f ≥ 0).
    """
    query, db = _features(query, db, "diffusion")
    n_q, n_db = query.shape[0], db.shape[0]
    if n_db < 2:
        raise ValueError("diffusion needs at least 2 db items")
    k = _int("k", k, 1, n_db - 1, f" (n_db - 1 = {n_db - 1})")
    t = n_db if truncate is None else min(_int("truncate", truncate, 1, 2 ** 62), n_db)
    kq = _int("kq", kq, 1, t, f" (truncation size {t})")
    gamma = float(gamma)
    if not (math.isfinite(gamma) and gamma > 0):
        raise ValueError(f"gamma must be a finite number > 0, got {gamma}")
    alpha = float(alpha)
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    iters = _int("iters", iters, 1, 2 ** 31)
    tol = _nonneg("tol", tol)
    top = _top(top, n_db)
    batch = _int("batch", batch, 1, 2 ** 31)

    nbr, w = reciprocal_knn_graph(db, k, gamma, row_chunk=row_chunk, chunk_size=chunk_size,
                                  device=device)
    out_r = np.empty((top, n_q), np.int64)
    out_s = np.empty((top, n_q), np.float32)
    if truncate is None:
        op = _full_operator(nbr, w, alpha)
        dbt = torch.from_numpy(db)
        for q0 in range(0, n_q, batch):
            q = torch.from_numpy(query[q0:q0 + batch])
            s = q @ dbt.T                                            # (B, n_db): one chunk
            first = torch.argsort(s, dim=1, descending=True, stable=True)
            y = torch.zeros(q.shape[0], n_db, dtype=torch.float64)
            y.scatter_(1, first[:, :kq], _weights(s.gather(1, first[:, :kq]), gamma).double())
            f = conjugate_gradient(op, y, tol, iters).gather(1, first)  # in first-stage order
            o = torch.argsort(f, dim=1, descending=True, stable=True)[:, :top]
            out_r[:, q0:q0 + batch] = first.gather(1, o).T.numpy()
            out_s[:, q0:q0 + batch] = f.gather(1, o).clamp_min(0).T.float().numpy()
        return out_r, out_s

    first_r, first_s = exact_search(query, db, max(t, top), chunk_size=chunk_size, device=device)
    nbr_t, w_t = torch.from_numpy(nbr), torch.from_numpy(w)
    for q0 in range(0, n_q, batch):
        sl = slice(q0, q0 + batch)
        sub = torch.from_numpy(first_r[:t, sl].T.copy())             # (B, T), first-stage order
        y = torch.zeros(sub.shape, dtype=torch.float64)
        y[:, :kq] = _weights(torch.from_numpy(first_s[:kq, sl].T.copy()), gamma).double()
        f = conjugate_gradient(_sub_operator(sub, nbr_t, w_t, alpha), y, tol, iters)
        o = torch.argsort(f, dim=1, descending=True, stable=True)
        m = min(t, top)
        out_r[:m, sl] = sub.gather(1, o)[:, :m].T.numpy()
        out_s[:m, sl] = f.gather(1, o)[:, :m].clamp_min(0).T.float().numpy()
        out_r[m:, sl] = first_r[m:top, sl]
        out_s[m:, sl] = 0.0
    return out_r, out_s


METHODS = ("aqe", "alpha_qe", "dba", "alpha_dba", "aqe+dba", "alpha_qe+dba", "diffusion")


def rerank(method: str, query: np.ndarray, db: np.ndarray, qe_k: int = 2, qe_alpha: float = 3.0,
           dba_k: int = 2, dba_alpha: float = 3.0, diffusion_k: int = 50, truncate: int | None = 1000,
           top: int | None = None, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """One classic method by name (:data:`METHODS`), with the parameters the notebooks expose:
    ``aqe`` (k = qe_k), ``alpha_qe`` (qe_k, qe_alpha), ``dba`` (plain, k = dba_k), ``alpha_dba``
    (dba_k, dba_alpha), ``aqe+dba`` (AQE with qe_k on the plain-DBA db with dba_k: Gordo et al.'s
    R-MAC protocol, k = 1 and 20 there), ``alpha_qe+dba`` (αQE on the αDBA-augmented db) and
    ``diffusion`` (k = diffusion_k, truncate). Returns ``(ranks, scores)`` like :func:`retrieval.search.search`."""
    if method == "aqe":
        return aqe(query, db, k=qe_k, top=top, **kwargs)
    if method == "alpha_qe":
        return alpha_qe(query, db, k=qe_k, alpha=qe_alpha, top=top, **kwargs)
    if method == "dba":
        return rerank_dba(query, db, k=dba_k, alpha=0.0, top=top, **kwargs)
    if method == "alpha_dba":
        return rerank_dba(query, db, k=dba_k, alpha=dba_alpha, top=top, **kwargs)
    if method == "aqe+dba":  # AQE = αQE with α = 0 (every neighbour weighted 1)
        return rerank_dba(query, db, k=dba_k, alpha=0.0, qe_k=qe_k, qe_alpha=0.0, top=top, **kwargs)
    if method == "alpha_qe+dba":
        return rerank_dba(query, db, k=dba_k, alpha=dba_alpha, qe_k=qe_k, qe_alpha=qe_alpha, top=top, **kwargs)
    if method == "diffusion":
        return diffusion(query, db, k=diffusion_k, truncate=truncate, top=top, **kwargs)
    raise ValueError(f"unknown re-ranking method {method!r}; expected one of {METHODS}")
