"""SuperGlobal re-ranking (Shao et al., "Global Features are All You Need for Image Retrieval and
Reranking", ICCV 2023): a training-free refinement of the first stage's top-M, from global descriptors
only, whose cost per query (~M² D multiply-adds) does not grow with the db.

For each query q and its first-stage shortlist x_1..x_M (db descriptors, L2-normalised):

1. each candidate is refined by its K nearest neighbours *inside the shortlist* (itself excluded),
   x'_i = (x_i + β Σ_{j∈N_K(i)} (x_i·x_j) x_j) / (1 + β Σ_{j∈N_K(i)} x_i·x_j), not renormalised;
2. s1_i = q·x'_i;
3. the refined query q' is the elementwise max of the x'_j of the 10 best candidates by s1 (q itself
   not among them);
4. the final score is (s1_i + q'·x'_i) / 2; the top-M is ordered by it (ties in first-stage order)
   and the items after M keep their first-stage order.

Defaults M = 400, K = 9, β = 0.15, 10 expansion items (the released configuration). Batched over queries
with the neighbour sums as one (B, M, M) @ (B, M, D) product: nothing of shape (n_q, M, K, D) is built.
"""

from __future__ import annotations

import numpy as np
import torch

from .base import checked_features, checked_int, checked_nonneg, first_ranks

SUPERGLOBAL_DEFAULTS = dict(M=400, K=9, beta=0.15, expand=10)


@torch.no_grad()
def _refine(q: torch.Tensor, x: torch.Tensor, K: int, beta: float, expand: int) -> torch.Tensor:
    """Final scores (B, M) of shortlists ``x`` (B, M, D) for queries ``q`` (B, D)."""
    B, M, _ = x.shape
    sim = x @ x.transpose(1, 2)                                   # (B, M, M)
    sim.diagonal(dim1=1, dim2=2).fill_(-float("inf"))              # a candidate is not its own neighbour
    k = min(K, M - 1)
    w = torch.zeros_like(sim)
    if k > 0:
        val, idx = torch.topk(sim, k, dim=2)                      # N_K(i): K nearest inside the shortlist
        w.scatter_(2, idx, beta * val)
    refined = (x + w @ x) / (1.0 + w.sum(2, keepdim=True))        # (B, M, D)
    s1 = torch.einsum("bd,bmd->bm", q, refined)
    e = min(expand, M)
    order = torch.argsort(s1, dim=1, descending=True, stable=True)[:, :e]
    q2 = refined.gather(1, order[:, :, None].expand(-1, -1, x.shape[2])).amax(1)   # (B, D)
    s2 = torch.einsum("bd,bmd->bm", q2, refined)
    return (s1 + s2) / 2


def superglobal_rerank(query, db, ranks, M: int = 400, K: int = 9, beta: float = 0.15, expand: int = 10,
                       batch: int = 16, device: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Re-rank the top-M of first-stage ``ranks`` (n_ranked >= M, n_q) with SuperGlobal (module
    docstring; Shao et al., ICCV 2023). query (n_q, D), db (n_db, D) L2-normalised; ``batch`` queries
    at a time. Returns ``ranks`` (n_ranked, n_q) int64 (the top-M reordered, rows M... unchanged) and
    ``scores`` (M, n_q) float32, descending."""
    query, db = checked_features(query, db, "superglobal_rerank")
    n_q, n_db = query.shape[0], db.shape[0]
    M = checked_int("M", M, 1, n_db, f" (n_db={n_db})")
    ranks = first_ranks(ranks, n_q, n_db, M)
    K = checked_int("K", K, 0, 2 ** 31)
    expand = checked_int("expand", expand, 1, 2 ** 31)
    beta = checked_nonneg("beta", beta)
    batch = checked_int("batch", batch, 1, 2 ** 31)
    device = device or "cpu"
    out_r, out_s = ranks.copy(), np.empty((M, n_q), np.float32)
    dbt = torch.from_numpy(db)
    for q0 in range(0, n_q, batch):
        sl = slice(q0, min(q0 + batch, n_q))
        short = torch.from_numpy(ranks[:M, sl].T.copy())                        # (B, M), first-stage order
        x = dbt[short].to(device)
        s = _refine(torch.from_numpy(query[sl]).to(device), x, K, float(beta), expand).cpu()
        o = torch.argsort(s, dim=1, descending=True, stable=True)
        out_r[:M, sl] = short.gather(1, o).T.numpy()
        out_s[:, sl] = s.gather(1, o).T.numpy()
    return out_r, out_s


def superglobal_rerank_loop(query, db, ranks, M: int = 400, K: int = 9, beta: float = 0.15, expand: int = 10,
                            device: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`superglobal_rerank` one query at a time (reference / benchmark baseline); same result."""
    return superglobal_rerank(query, db, ranks, M, K, beta, expand, batch=1, device=device)
