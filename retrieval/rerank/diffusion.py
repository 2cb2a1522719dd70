"""Diffusion on the db k-NN graph (Iscen et al., "Efficient diffusion on region manifolds", CVPR
2017), global-descriptor version, solved by conjugate gradient. Conventions: :mod:`retrieval.rerank`."""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from ..search import exact_search
from .base import (COL_CHUNK, ROW_CHUNK, checked_db, checked_features, checked_int, checked_nonneg, checked_top,
                   db_neighbours, given_neighbours, power_weights)


def reciprocal_knn_graph(db: np.ndarray, k: int, gamma: float = 3.0, row_chunk: int = ROW_CHUNK,
                         chunk_size: int | None = COL_CHUNK, device: str | None = None,
                         neighbours=None) -> tuple[np.ndarray, np.ndarray]:
    """Reciprocal k-NN affinity graph of Iscen et al. (CVPR 2017) as neighbour lists.

    db (n_db, D) → ``nbr`` (n_db, k) int64 and ``w`` (n_db, k) float32 with
    w[i, a] = max(s_ij, 0)^γ for j = nbr[i, a] when i and j are in each other's k-NN lists (self
    excluded), else 0. The dense affinity A_ij = w[i, a] is symmetric up to float rounding of s.
    """
    db = checked_db(db, "reciprocal_knn_graph")
    gamma = float(gamma)
    if not (math.isfinite(gamma) and gamma > 0):
        raise ValueError(f"gamma must be a finite number > 0, got {gamma}")
    n = db.shape[0]
    nbr, sim = (given_neighbours(neighbours, n, k) if neighbours is not None else  # computed once elsewhere
                db_neighbours(db, k, row_chunk=row_chunk, chunk_size=chunk_size, device=device))
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
    checked_int("iters", iters, 1, 2 ** 31)
    tol = checked_nonneg("tol", tol)
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
              chunk_size: int | None = COL_CHUNK, device: str | None = None,
              neighbours=None) -> tuple[np.ndarray, np.ndarray]:
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

    ``neighbours``: the db's k-NN lists ``(nbr, sim)`` computed once elsewhere (approximate at
    scale: :mod:`retrieval.rerank.graph`), else exact here.

    query (n_q, D), db (n_db, D) → ranks (top, n_q) int64, scores (top, n_q) float32 (f ≥ 0).
    """
    query, db = checked_features(query, db, "diffusion")
    n_q, n_db = query.shape[0], db.shape[0]
    if n_db < 2:
        raise ValueError("diffusion needs at least 2 db items")
    k = checked_int("k", k, 1, n_db - 1, f" (n_db - 1 = {n_db - 1})")
    t = n_db if truncate is None else min(checked_int("truncate", truncate, 1, 2 ** 62), n_db)
    kq = checked_int("kq", kq, 1, t, f" (truncation size {t})")
    gamma = float(gamma)
    if not (math.isfinite(gamma) and gamma > 0):
        raise ValueError(f"gamma must be a finite number > 0, got {gamma}")
    alpha = float(alpha)
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    iters = checked_int("iters", iters, 1, 2 ** 31)
    tol = checked_nonneg("tol", tol)
    top = checked_top(top, n_db)
    batch = checked_int("batch", batch, 1, 2 ** 31)

    nbr, w = reciprocal_knn_graph(db, k, gamma, row_chunk=row_chunk, chunk_size=chunk_size,
                                  device=device, neighbours=neighbours)
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
            y.scatter_(1, first[:, :kq], power_weights(s.gather(1, first[:, :kq]), gamma).double())
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
        y[:, :kq] = power_weights(torch.from_numpy(first_s[:kq, sl].T.copy()), gamma).double()
        f = conjugate_gradient(_sub_operator(sub, nbr_t, w_t, alpha), y, tol, iters)
        o = torch.argsort(f, dim=1, descending=True, stable=True)
        m = min(t, top)
        out_r[:m, sl] = sub.gather(1, o)[:, :m].T.numpy()
        out_s[:m, sl] = f.gather(1, o)[:, :m].clamp_min(0).T.float().numpy()
        out_r[m:, sl] = first_r[m:top, sl]
        out_s[m:, sl] = 0.0
    return out_r, out_s
