"""The db's k-NN graph at scale: approximate neighbour lists from a faiss index, their recall against
exact search on a sample, and a cache keyed by the db's content, so that DBA, αDBA and diffusion build
it once and share it (``neighbours=`` of :func:`~retrieval.rerank.dba`,
:func:`~retrieval.rerank.rerank_dba`, :func:`~retrieval.rerank.diffusion`).

Exact lists (:func:`~retrieval.rerank.db_neighbours`) cost O(n_db² D): hours at R1M on a CPU. HNSW
(Malkov & Yashunin, TPAMI 2018) finds them in O(n_db log n_db) distance evaluations.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from ..io import fingerprint, load_arrays, save_arrays
from ..search import exact_search
from .base import checked_db, checked_int, db_neighbours

# per method, the parameters that define a graph (and key its cache); None: chosen from n_db
GRAPH_DEFAULTS = {"hnsw": dict(M=32, ef_construction=80, ef_search=128),
                  "ivf": dict(nlist=None, nprobe=16, train_size=None, seed=0),
                  "exact": {}}


def db_fingerprint(db: np.ndarray, block: int = 1 << 16) -> str:
    """SHA-1 of the db's shape and bytes, in row blocks (no full copy): the identity of a cached graph."""
    return fingerprint(f"{db.shape}{db.dtype}", db, block_rows=block)


def _graph_index(db: np.ndarray, k: int, method: str, params: dict):
    """A faiss index over ``db`` ready to search for ``k`` + 1 neighbours."""
    import faiss  # lazy: optional package

    n, dim = db.shape
    if method == "hnsw":
        index = faiss.IndexHNSWFlat(dim, int(params["M"]), faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = int(params["ef_construction"])
        index.add(db)
        index.hnsw.efSearch = max(int(params["ef_search"]), k + 1)
        return index
    nlist = int(params["nlist"] or max(1, min(n // 39, round(4 * np.sqrt(n)))))
    train_size = int(params["train_size"] or min(n, 64 * nlist))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed, index.cp.spherical = int(params["seed"]), True   # k-means on the sphere (cosine)
    rows = np.sort(np.random.default_rng(params["seed"]).choice(n, min(n, train_size), replace=False))
    index.train(db[rows])
    index.add(db)
    index.nprobe = min(int(params["nprobe"]), nlist)
    return index


def approximate_neighbours(db: np.ndarray, k: int, method: str = "hnsw", row_chunk: int = 65536,
                           **params) -> tuple[np.ndarray, np.ndarray]:
    """k nearest other db items of every db item by inner product, approximately, through faiss:

    - ``"hnsw"``: ``IndexHNSWFlat`` (Malkov & Yashunin, TPAMI 2018), ``M`` links per node,
      ``ef_construction`` / ``ef_search`` beam widths;
    - ``"ivf"``: ``IndexIVFFlat`` (Jégou et al., TPAMI 2011): spherical k-means into ``nlist`` cells
      (default 4√n_db) trained on ``train_size`` rows (default 64 per cell), each row's neighbours
      searched in its ``nprobe`` nearest cells: ~n_db² D · nprobe / nlist multiply-adds in all;
    - ``"exact"``: :func:`~retrieval.rerank.db_neighbours`.

    Defaults in :data:`GRAPH_DEFAULTS`. db (n_db, D) L2-normalised → ``nbr`` (n_db, k) int64 and
    ``sim`` (n_db, k) float32, best first, the item itself excluded."""
    db = checked_db(db, "approximate_neighbours")
    n = db.shape[0]
    k = checked_int("k", k, 1, n - 1, f" (n_db - 1 = {n - 1})")
    if method not in GRAPH_DEFAULTS:
        raise ValueError(f"method={method!r}: expected one of {sorted(GRAPH_DEFAULTS)}")
    unknown = set(params) - set(GRAPH_DEFAULTS[method])
    if unknown:
        raise ValueError(f"method={method!r} takes {sorted(GRAPH_DEFAULTS[method])}, not {sorted(unknown)}")
    if method == "exact":
        return db_neighbours(db, k)
    index = _graph_index(db, k, method, dict(GRAPH_DEFAULTS[method], **params))
    nbr, sim = np.empty((n, k), np.int64), np.empty((n, k), np.float32)
    for r0 in range(0, n, row_chunk):
        rows = np.arange(r0, min(r0 + row_chunk, n))
        s, r = index.search(db[rows], k + 1)
        drop = r == rows[:, None]
        drop[~drop.any(1), -1] = True                       # one dropped per row: itself, else the last
        nbr[rows] = r[~drop].reshape(len(rows), k)
        sim[rows] = s[~drop].reshape(len(rows), k)
    if (nbr < 0).any():
        raise ValueError(f"approximate_neighbours: the probed cells held fewer than k + 1 = {k + 1} items for "
                         f"some rows; raise nprobe or lower nlist")
    return nbr, sim


def neighbour_recall(db: np.ndarray, nbr: np.ndarray, sample: int = 1000, seed: int = 0) -> float:
    """Mean fraction of the exact k nearest other items found in ``nbr`` (n_db, k), over ``sample``
    random db rows (exact search of those rows against the whole db)."""

    n, k = nbr.shape
    rows = np.sort(np.random.default_rng(seed).choice(n, min(sample, n), replace=False))
    r, _ = exact_search(db[rows], db, k + 1, device="cpu")
    found = []
    for j, row in enumerate(rows):
        exact = [x for x in r[:, j] if x != row][:k]
        found.append(np.intersect1d(exact, nbr[row]).size / k)
    return float(np.mean(found))


def cached_neighbours(db: np.ndarray, k: int, path: str | os.PathLike, recall_sample: int = 1000,
                      method: str = "hnsw", **params) -> tuple[np.ndarray, np.ndarray, dict]:
    """:func:`approximate_neighbours` stored at ``path`` (.npz, e.g. :meth:`RunLayout.graph
    <retrieval.run.layout.RunLayout.graph>`) with its parameters, the db's fingerprint, the build time
    and the recall measured on ``recall_sample`` rows; a stored graph is reused only when all of them
    match (a graph with more neighbours serves a smaller k: its first k columns). Returns
    ``(nbr, sim, info)``."""

    if method not in GRAPH_DEFAULTS:
        raise ValueError(f"method={method!r}: expected one of {sorted(GRAPH_DEFAULTS)}")
    params = dict(GRAPH_DEFAULTS[method], **params)
    key = dict(params, method=method, n=int(db.shape[0]), dim=int(db.shape[1]), db_sha1=db_fingerprint(db))
    path = Path(path)
    if path.is_file():
        arrays, info = load_arrays(path, ("nbr", "sim"), key="info", what="k-NN graph file")
        if {x: info.get(x) for x in key} == key and info["k"] >= k:
            return arrays["nbr"][:, :k], arrays["sim"][:, :k], info
    t = time.perf_counter()
    nbr, sim = approximate_neighbours(db, k, method, **params)
    seconds = time.perf_counter() - t
    recall = neighbour_recall(db, nbr, recall_sample) if recall_sample else None
    info = dict(key, k=int(k), build_seconds=seconds, recall=recall, recall_sample=recall_sample)
    save_arrays(path, info, key="info", nbr=nbr, sim=sim)
    return nbr, sim, info
