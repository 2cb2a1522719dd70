"""The db's k-NN graph at scale: approximate neighbour lists from a faiss index, their recall against
exact search on a sample, and a cache keyed by the db's content, so that DBA, αDBA and diffusion build
it once and share it (``neighbours=`` of :func:`~retrieval.rerank.dba`,
:func:`~retrieval.rerank.rerank_dba`, :func:`~retrieval.rerank.diffusion`).

Exact lists (:func:`~retrieval.rerank.db_neighbours`) cost O(n_db² D): hours at R1M on a CPU. HNSW
(Malkov & Yashunin, TPAMI 2018) finds them in O(n_db log n_db) distance evaluations.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from ..io import atomic_save_npz
from .base import checked_db, checked_int, db_neighbours

GRAPH_DEFAULTS = dict(method="hnsw", M=32, ef_construction=80, ef_search=128)


def db_fingerprint(db: np.ndarray, block: int = 1 << 16) -> str:
    """SHA-1 of the db's shape and bytes, in row blocks (no full copy): the identity of a cached graph."""
    h = hashlib.sha1(f"{db.shape}{db.dtype}".encode())
    for r0 in range(0, db.shape[0], block):
        h.update(np.ascontiguousarray(db[r0:r0 + block]).tobytes())
    return h.hexdigest()


def approximate_neighbours(db: np.ndarray, k: int, method: str = "hnsw", M: int = 32, ef_construction: int = 80,
                           ef_search: int = 128, row_chunk: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """k nearest other db items of every db item by inner product, approximately: ``method="hnsw"``
    (faiss ``IndexHNSWFlat``, ``M`` links per node, ``ef_construction`` / ``ef_search`` beam widths) or
    ``"exact"`` (:func:`~retrieval.rerank.db_neighbours`). db (n_db, D) L2-normalised → ``nbr`` (n_db, k)
    int64 and ``sim`` (n_db, k) float32, best first, the item itself excluded."""
    db = checked_db(db, "approximate_neighbours")
    n = db.shape[0]
    k = checked_int("k", k, 1, n - 1, f" (n_db - 1 = {n - 1})")
    if method == "exact":
        return db_neighbours(db, k)
    if method != "hnsw":
        raise ValueError(f"method={method!r}: expected 'hnsw' or 'exact'")
    import faiss

    index = faiss.IndexHNSWFlat(db.shape[1], int(M), faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = int(ef_construction)
    index.add(db)
    index.hnsw.efSearch = max(int(ef_search), k + 1)
    nbr, sim = np.empty((n, k), np.int64), np.empty((n, k), np.float32)
    for r0 in range(0, n, row_chunk):
        rows = np.arange(r0, min(r0 + row_chunk, n))
        s, r = index.search(db[rows], k + 1)
        drop = r == rows[:, None]
        drop[~drop.any(1), -1] = True                       # one dropped per row: itself, else the last
        nbr[rows] = r[~drop].reshape(len(rows), k)
        sim[rows] = s[~drop].reshape(len(rows), k)
    return nbr, sim


def neighbour_recall(db: np.ndarray, nbr: np.ndarray, sample: int = 1000, seed: int = 0) -> float:
    """Mean fraction of the exact k nearest other items found in ``nbr`` (n_db, k), over ``sample``
    random db rows (exact search of those rows against the whole db)."""
    from ..search import exact_search

    n, k = nbr.shape
    rows = np.sort(np.random.default_rng(seed).choice(n, min(sample, n), replace=False))
    r, _ = exact_search(db[rows], db, k + 1, device="cpu")
    found = []
    for j, row in enumerate(rows):
        exact = [x for x in r[:, j] if x != row][:k]
        found.append(np.intersect1d(exact, nbr[row]).size / k)
    return float(np.mean(found))


def cached_neighbours(db: np.ndarray, k: int, path: str | os.PathLike, recall_sample: int = 1000,
                      **params) -> tuple[np.ndarray, np.ndarray, dict]:
    """:func:`approximate_neighbours` stored at ``path`` (.npz, e.g. :meth:`RunLayout.graph
    <retrieval.layout.RunLayout.graph>`) with its parameters, the db's fingerprint, the build time
    and the recall measured on ``recall_sample`` rows; a stored graph is reused only when all of them
    match (a graph with more neighbours serves a smaller k: its first k columns). Returns
    ``(nbr, sim, info)``."""
    import time

    params = dict(GRAPH_DEFAULTS, **params)
    key = dict(params, n=int(db.shape[0]), dim=int(db.shape[1]), db_sha1=db_fingerprint(db))
    path = Path(path)
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            info = json.loads(str(z["info"]))
            if {x: info.get(x) for x in key} == key and info["k"] >= k:
                return z["nbr"][:, :k], z["sim"][:, :k], info
    t = time.perf_counter()
    nbr, sim = approximate_neighbours(db, k, **params)
    seconds = time.perf_counter() - t
    recall = neighbour_recall(db, nbr, recall_sample) if recall_sample else None
    info = dict(key, k=int(k), build_seconds=seconds, recall=recall, recall_sample=recall_sample)
    atomic_save_npz(path, nbr=nbr, sim=sim, info=np.array(json.dumps(info)))
    return nbr, sim, info
