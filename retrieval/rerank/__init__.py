"""Re-ranking after a first nearest-neighbour search: query expansion (AQE, αQE), database-side
augmentation (DBA, αDBA), graph diffusion, SuperGlobal's training-free refinement of the top-M and
learned re-ranking (CSA).

Conventions (as :mod:`retrieval.search`): ``query`` (n_q, D) and ``db`` (n_db, D) float32,
L2-normalised; every ranking function returns ``ranks`` (top, n_q) int64 db indices, best first,
and ``scores`` (top, n_q) float32. ``top=None`` ranks the whole db.

Memory: nothing (n_q × n_db) is held beyond one chunk when ``top`` is given, and nothing
(n_db × n_db) ever; db-side methods use k-NN lists of the db computed in row chunks with
:func:`retrieval.search.exact_search`.

Weights ``max(s, 0)^α`` use ``0^0 = 1``, so α = 0 gives uniform weights exactly (plain AQE / DBA).

Modules: :mod:`~retrieval.rerank.qe` (AQE, αQE, DBA, αDBA), :mod:`~retrieval.rerank.diffusion`,
:mod:`~retrieval.rerank.superglobal`, :mod:`~retrieval.rerank.csa` (learned re-ranking with a CSA
model), :mod:`~retrieval.rerank.base`
(the shared checks and db k-NN lists); :func:`rerank` runs a classic method by name.
"""

from __future__ import annotations

import numpy as np

from .base import COL_CHUNK, ROW_CHUNK, db_neighbours, first_ranks
from .csa import affinity_features, csa_rerank, csa_rerank_loop
from .diffusion import conjugate_gradient, diffusion, reciprocal_knn_graph
from .graph import approximate_neighbours, cached_neighbours, neighbour_recall
from .qe import aqe, alpha_qe, dba, qe_vectors, rerank_dba
from .superglobal import SUPERGLOBAL_DEFAULTS, superglobal_rerank, superglobal_rerank_loop
from ..search import exact_search

__all__ = ["METHODS", "db_neighbours", "first_ranks", "qe_vectors", "aqe", "alpha_qe", "dba", "rerank_dba",
           "reciprocal_knn_graph", "conjugate_gradient", "diffusion", "rerank", "affinity_features", "csa_rerank",
           "csa_rerank_loop", "COL_CHUNK", "ROW_CHUNK", "approximate_neighbours", "cached_neighbours",
           "neighbour_recall", "superglobal_rerank", "superglobal_rerank_loop", "SUPERGLOBAL_DEFAULTS"]


METHODS = ("aqe", "alpha_qe", "dba", "alpha_dba", "aqe+dba", "alpha_qe+alpha_dba", "diffusion", "superglobal")


def rerank(method: str, query: np.ndarray, db: np.ndarray, qe_k: int = 2, qe_alpha: float = 3.0,
           dba_k: int = 2, dba_alpha: float = 3.0, diffusion_k: int = 50, truncate: int | None = 1000,
           top: int | None = None, superglobal_m: int = 400, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """One classic method by name (:data:`METHODS`), with the parameters the notebooks expose:
    ``aqe`` (k = qe_k), ``alpha_qe`` (qe_k, qe_alpha), ``dba`` (plain, k = dba_k), ``alpha_dba``
    (dba_k, dba_alpha), ``aqe+dba`` (AQE with qe_k on the plain-DBA db with dba_k: Gordo et al.'s
    R-MAC protocol, k = 1 and 20 there), ``alpha_qe+alpha_dba`` (αQE on the αDBA-augmented db) and
    ``diffusion`` (k = diffusion_k, truncate) and ``superglobal`` (:func:`superglobal_rerank` of the
    exact first stage's top ``superglobal_m``; rows after M keep the first-stage order, with their
    first-stage score − 3, below every re-ranked score). Returns ``(ranks, scores)`` like
    :func:`retrieval.search.search`."""
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
    if method == "alpha_qe+alpha_dba":
        return rerank_dba(query, db, k=dba_k, alpha=dba_alpha, qe_k=qe_k, qe_alpha=qe_alpha, top=top, **kwargs)
    if method == "diffusion":
        return diffusion(query, db, k=diffusion_k, truncate=truncate, top=top, **kwargs)
    if method == "superglobal":

        n_db = np.asarray(db).shape[0]
        m = min(int(superglobal_m), n_db)
        top = n_db if top is None else int(top)
        first_r, first_s = exact_search(query, db, max(top, m))
        r, s = superglobal_rerank(query, db, first_r, M=m, **kwargs)
        scores = np.concatenate([s, first_s[m:] - 3.0])[:top]
        return r[:top], scores.astype(np.float32)
    raise ValueError(f"unknown re-ranking method {method!r}; expected one of {METHODS}")
