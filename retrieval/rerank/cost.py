"""One cost definition for every row of a re-ranking table, and the shortlist control.

Cost (``../shared/protocol.md``): milliseconds per query of the **online** part, which includes the
first-stage search, measured after an untimed warm-up call; the db-side **offline** work (DBA's augmented
db, diffusion's k-NN graph of the db; CSA's training is timed by its notebook) in seconds, its own column.
The ranks are exactly those of :func:`retrieval.rerank.rerank` with the same settings.

Shortlist control: a re-ranker that moves the whole ranking (AQE, DBA, diffusion) mixes coverage with
scoring when compared with one that reorders the first stage's top K (CSA, SuperGlobal);
:func:`restrict_to_shortlist` keeps any method's order inside the first stage's top K only.
"""

from __future__ import annotations

import time

import numpy as np

from . import rerank
from .base import db_neighbours
from .diffusion import diffusion
from .qe import alpha_qe, dba
from ..search import exact_search

#: methods whose db side is computed once, offline (their online part searches the augmented db)
DB_SIDE = {"dba": (0.0, False), "alpha_dba": (None, False), "aqe+dba": (0.0, True), "alpha_qe+alpha_dba": (None, True)}


def timed_rerank(method: str, query: np.ndarray, db: np.ndarray, warmup: int = 2, device: str | None = None,
                 **params) -> tuple[np.ndarray, np.ndarray, float, float]:
    """``(ranks, scores, ms per query online, offline seconds)`` of ``method`` (``"first"``: the exact
    first-stage search, else a :data:`retrieval.rerank.METHODS` name with :func:`~retrieval.rerank.rerank`'s
    ``params``) on ``query`` (n_q, D) against ``db`` (n_db, D); the online call runs once, untimed, on the
    first ``warmup`` queries first."""
    query, db = np.asarray(query, np.float32), np.asarray(db, np.float32)
    n_db, offline = len(db), 0.0
    if method in DB_SIDE:
        alpha, with_qe = DB_SIDE[method]
        t = time.perf_counter()
        aug = dba(db, params.get("dba_k", 2), params.get("dba_alpha", 3.0) if alpha is None else alpha, device=device)
        offline = time.perf_counter() - t
        qe_k = params.get("qe_k", 2) if with_qe else 0
        qe_alpha = (0.0 if method == "aqe+dba" else params.get("qe_alpha", 3.0))

        def online(q):
            return (alpha_qe(q, aug, k=qe_k, alpha=qe_alpha, top=n_db, device=device) if qe_k
                    else exact_search(q, aug, n_db, device=device))
    elif method == "diffusion":
        k = params.get("diffusion_k", 50)
        t = time.perf_counter()
        nbrs = db_neighbours(db, k, device=device)
        offline = time.perf_counter() - t

        def online(q):
            return diffusion(q, db, k=k, truncate=params.get("truncate", 1000), device=device, neighbours=nbrs)
    elif method == "first":
        def online(q):
            return exact_search(q, db, n_db, device=device)
    else:
        def online(q):
            return rerank(method, q, db, device=device, **params)
    if warmup:
        online(query[:warmup])
    t = time.perf_counter()
    ranks, scores = online(query)
    return ranks, scores, 1000 * (time.perf_counter() - t) / max(1, len(query)), offline


def restrict_to_shortlist(ranks: np.ndarray, first: np.ndarray, K: int) -> np.ndarray:
    """``ranks`` (n, n_q) of any method, kept only inside the first stage's top ``K``: each query's
    first ``K`` first-stage items in the order ``ranks`` gives them, then the first stage's rest in its
    own order. ``first`` (n_first >= K, n_q). Returns (n_first, n_q) int64."""
    ranks, first = np.asarray(ranks), np.asarray(first)
    if K < 1 or K > first.shape[0]:
        raise ValueError(f"K={K}: expected 1 <= K <= {first.shape[0]} (the first stage's list length)")
    if ranks.shape[1] != first.shape[1]:
        raise ValueError(f"ranks has {ranks.shape[1]} queries, first {first.shape[1]}")
    out = first.astype(np.int64).copy()
    for q in range(first.shape[1]):
        short = first[:K, q]
        pos = np.full(max(int(ranks[:, q].max()), int(short.max())) + 1, np.iinfo(np.int64).max, np.int64)
        pos[ranks[:, q]] = np.arange(ranks.shape[0])
        out[:K, q] = short[np.argsort(pos[short], kind="stable")]  # items the method did not rank keep their order
    return out
