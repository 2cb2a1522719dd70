"""Re-ranking with a trained CSA model (Contextual Similarity Aggregation; Ouyang et al.,
NeurIPS 2021; the model: :mod:`retrieval.models.csa`).

Each query and each of its top-K first-stage candidates is described by its *affinity feature*:
its cosine similarity to L anchors (the query itself, then the query's top L−1 db results). The
CSA transformer refines the K+1 affinity features jointly; candidates are re-ordered by the cosine
between the refined query token and each refined candidate token.

Conventions as :mod:`retrieval.search`: ``query`` (n_q, D), ``db`` (n_db, D) L2-normalised;
``ranks`` (n_ranked, n_q) int64 db indices, best first.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..models.csa import CSA, positive_int
from .base import first_ranks

__all__ = ["affinity_features", "check_list_sizes", "csa_rerank", "csa_rerank_loop", "feature_tensor"]


def feature_tensor(x, name: str) -> torch.Tensor:
    """``x`` (n, D), a tensor (detached) or an array, as a finite floating tensor."""
    t = x.detach() if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x, np.float32))
    if t.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n, D), got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        t = t.float()
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or Inf")
    return t


def _ranks(ranks, n_q: int, n_db: int, need: int) -> torch.Tensor:
    """First-stage ranks validated as in :mod:`retrieval.rerank` (>= max(K, L − 1) rows), as a tensor."""
    r = ranks.cpu().numpy() if isinstance(ranks, torch.Tensor) else ranks
    return torch.from_numpy(first_ranks(r, n_q, n_db, need))


def check_list_sizes(K, L, n_db: int) -> tuple[int, int]:
    """``K`` candidates and ``L`` anchors (the query + L − 1 results) as ints that fit a db of ``n_db``."""
    K, L = positive_int("K", K), positive_int("L", L)
    if K > n_db:
        raise ValueError(f"K={K} is larger than the db (n_db={n_db})")
    if L - 1 > n_db:
        raise ValueError(f"L - 1 = {L - 1} anchors is more than the db holds (n_db={n_db})")
    return K, L


def affinity_features(query, db, ranks, K: int, L: int) -> torch.Tensor:
    """Affinity features of the query and its top-K candidates to L anchors.

    query (B, D), db (n_db, D) L2-normalised (tensors or arrays); ranks (>= max(K, L−1), B)
    first-stage db indices. Items: [query, db[ranks[0, b]], …, db[ranks[K−1, b]]]; anchors:
    [query, db[ranks[0, b]], …, db[ranks[L−2, b]]]. Returns (B, K+1, L) float with
    ``[b, i, j] = <item_i, anchor_j>`` (one batched matmul), on ``query``'s device
    (``db`` is moved there if needed).
    """
    q, d = feature_tensor(query, "query"), feature_tensor(db, "db")
    if q.shape[1] != d.shape[1]:
        raise ValueError(f"query dimension {q.shape[1]} != db dimension {d.shape[1]}")
    K, L = check_list_sizes(K, L, d.shape[0])
    r = _ranks(ranks, q.shape[0], d.shape[0], max(K, L - 1))
    return _affinity(q, d, r, K, L)


def _affinity(q: torch.Tensor, d: torch.Tensor, r: torch.Tensor, K: int, L: int) -> torch.Tensor:
    """:func:`affinity_features` on validated tensors (no checks)."""
    r = r.to(q.device)
    d = d.to(device=q.device, dtype=q.dtype)
    n = max(K, L - 1)
    cand = d[r[:n].T]                                        # (B, n, D)
    items = torch.cat([q[:, None], cand[:, :K]], 1)          # (B, K+1, D)
    anchors = torch.cat([q[:, None], cand[:, :L - 1]], 1)    # (B, L, D)
    return torch.bmm(items, anchors.transpose(1, 2))         # (B, K+1, L)


def _rerank_inputs(model: CSA, query, db, ranks, K, L):
    q, d = feature_tensor(query, "query"), feature_tensor(db, "db")
    if q.shape[1] != d.shape[1]:
        raise ValueError(f"query dimension {q.shape[1]} != db dimension {d.shape[1]}")
    K, L = check_list_sizes(K, L, d.shape[0])
    if getattr(model, "L", L) != L:
        raise ValueError(f"the model takes L={model.L} anchors, got L={L}")
    r = _ranks(ranks, q.shape[0], d.shape[0], max(K, L - 1))
    return q, d, r, K, L


def _device(model: nn.Module, device) -> torch.device:
    if device is not None:
        return torch.device(device)
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def _rerank(model, query, db, ranks, K, L, batch, device) -> tuple[np.ndarray, np.ndarray]:
    batch = positive_int("batch", batch)
    q, d, r, K, L = _rerank_inputs(model, query, db, ranks, K, L)
    dev = _device(model, device)
    was_training = model.training
    model.eval()
    try:
        d = d.to(dev)
        top = r[:K].clone()
        scores = torch.empty((K, q.shape[0]), dtype=torch.float32)
        for b0 in range(0, q.shape[0], batch):
            sl = slice(b0, b0 + batch)
            aff = _affinity(q[sl].to(dev), d, r[:, sl], K, L)
            s = model.score(aff).float().cpu()                         # (B, K)
            o = torch.argsort(s, dim=1, descending=True, stable=True)  # ties: first-stage order
            top[:, sl] = r[:K, sl].gather(0, o.T)
            scores[:, sl] = s.gather(1, o).T
    finally:
        model.train(was_training)
    out = torch.cat([top, r[K:]], 0)
    return out.numpy().astype(np.int64, copy=False), scores.numpy()


def csa_rerank(model: CSA, query, db, ranks, K: int = 1024, L: int = 512, batch: int = 64,
               device=None) -> tuple[np.ndarray, np.ndarray]:
    """Re-rank the top-K of first-stage ``ranks`` with a CSA model (eval mode, no grad).

    query (n_q, D), db (n_db, D) L2-normalised; ranks (n_ranked >= max(K, L−1), n_q). ``batch``
    queries share one affinity build (:func:`affinity_features`) and one forward pass. Returns
    ``ranks`` (n_ranked, n_q) int64 — the top-K ordered by CSA score (ties in first-stage order),
    rows K… unchanged — and ``scores`` (K, n_q) float32, descending. ``device``: default the
    model's.
    """
    return _rerank(model, query, db, ranks, K, L, batch, device)


def csa_rerank_loop(model: CSA, query, db, ranks, K: int = 1024, L: int = 512,
                    device=None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`csa_rerank` one query at a time (reference / benchmark baseline); same result."""
    return _rerank(model, query, db, ranks, K, L, 1, device)
