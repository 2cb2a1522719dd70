"""Nearest-neighbour search by inner product (cosine for L2-normalised descriptors).

Every function returns ``ranks`` (k, n_q) int64 db indices, best first (the layout
:func:`retrieval.metrics.compute_map` takes) and ``scores`` (k, n_q) float32.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from .io import check_features

INDEXES = ("exact", "flat", "pq", "ivfpq")


def _stable_order(scores: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort (n_q, m) candidates by score, descending; ties by ascending db index."""
    o = torch.argsort(idx, dim=1)
    scores, idx = scores.gather(1, o), idx.gather(1, o)
    o = torch.argsort(scores, dim=1, descending=True, stable=True)
    return scores.gather(1, o), idx.gather(1, o)


def _chunk_topk(s: torch.Tensor, kk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``kk`` of each row of ``s`` (n_q, m) with ties at the k-th score resolved by the lower
    index: a partial selection (topk of kk + 1: the set is unique unless the (kk+1)-th score equals
    the kk-th), and a stable full sort only when a row has such a tie."""
    if kk >= s.shape[1]:
        i = torch.argsort(s, dim=1, descending=True, stable=True)
        return s.gather(1, i), i
    vals, i = torch.topk(s, kk + 1, dim=1)
    if bool((vals[:, kk] == vals[:, kk - 1]).any()):  # topk may keep a higher index among ties
        i = torch.argsort(s, dim=1, descending=True, stable=True)[:, :kk]
        return s.gather(1, i), i
    return vals[:, :kk], i[:, :kk]


@torch.no_grad()
def exact_search(query: np.ndarray, db: np.ndarray, k: int | None = None, chunk_size: int = 65536,
                 device: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product; memory bounded by chunks of ``chunk_size`` db vectors.

    ``k=None`` ranks the whole db. Ties are broken by the lower db index. GPU when ``device`` is
    CUDA (``None``: CUDA if available).
    """
    query, db = np.asarray(query, np.float32), np.asarray(db, np.float32)
    check_features(query, db, name="search")
    n_db = db.shape[0]
    k = n_db if k is None else int(k)
    if not 1 <= k <= n_db:
        raise ValueError(f"k must be in [1, n_db={n_db}], got {k}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    q = torch.from_numpy(query).to(device)
    best_s = torch.empty((q.shape[0], 0), device=device)
    best_i = torch.empty((q.shape[0], 0), dtype=torch.long, device=device)
    for start in range(0, n_db, chunk_size):
        d = torch.from_numpy(db[start:start + chunk_size]).to(device)
        s = q @ d.T
        kk = min(k, s.shape[1])
        s, i = _chunk_topk(s, kk)
        s, i = torch.cat([best_s, s], 1), torch.cat([best_i, i + start], 1)
        s, i = _stable_order(s, i)
        best_s, best_i = s[:, :k], i[:, :k]
    return best_i.T.cpu().numpy(), best_s.T.float().cpu().numpy()


def faiss_index(db: np.ndarray, index: str = "flat", nlist: int | None = None, m: int | None = None,
                nbits: int = 8, nprobe: int = 16, gpu: bool | None = None, seed: int = 0,
                train: np.ndarray | None = None):
    """A faiss inner-product index over ``db`` (n_db, D): ``flat`` (exact), ``pq`` (exhaustive
    product quantisation, ``m`` sub-quantisers of ``nbits``; Jégou et al. TPAMI 2011) or ``ivfpq``
    (IVF with ``nlist`` cells + PQ of the residuals). ``train`` (n, D): the vectors the quantisers
    are trained on (default ``db``). GPU when faiss was built with it and a GPU is present
    (``gpu=None``); ``pq`` stays on the CPU (faiss has no GPU flat-PQ index)."""
    import faiss

    db = np.ascontiguousarray(db, np.float32)
    n, dim = db.shape
    train = db if train is None else np.ascontiguousarray(train, np.float32)
    if train.ndim != 2 or train.shape[1] != dim:
        raise ValueError(f"train must be (n, {dim}) like db, got shape {train.shape}")
    n_train = train.shape[0]
    if index == "flat":
        idx = faiss.IndexFlatIP(dim)
    elif index in ("pq", "ivfpq"):
        nlist = (nlist or max(1, min(4096, int(4 * np.sqrt(n_train))))) if index == "ivfpq" else 1
        m = m or next(c for c in (64, 32, 16, 8, 4, 2, 1) if dim % c == 0 and c <= dim)
        if dim % m:
            raise ValueError(f"{index}: m={m} must divide the dimension {dim}")
        if n_train < max(nlist, 2 ** nbits):
            raise ValueError(f"{index}: {n_train} training vectors are too few to train nlist={nlist} / "
                             f"2^{nbits} centroids")
        if index == "pq":
            idx = faiss.IndexPQ(dim, m, nbits, faiss.METRIC_INNER_PRODUCT)
        else:
            idx = faiss.IndexIVFPQ(faiss.IndexFlatIP(dim), dim, nlist, m, nbits, faiss.METRIC_INNER_PRODUCT)
            idx.cp.seed = seed
        idx.pq.cp.seed = seed
        idx.do_polysemous_training = False
        # one Python warning instead of faiss's line per sub-quantiser on stderr
        for cp in (idx.pq.cp, idx.cp) if index == "ivfpq" else (idx.pq.cp,):
            cp.min_points_per_centroid = 1
        if n_train < 39 * max(nlist, 2 ** nbits):
            warnings.warn(f"{index}: {n_train} training vectors for {2 ** nbits} centroids per sub-quantiser"
                          + (f" and {nlist} cells" if index == "ivfpq" else "")
                          + " (faiss recommends 39 per centroid); the codebooks are noisy", RuntimeWarning, stacklevel=3)
        idx.train(train)
        if index == "ivfpq":
            idx.nprobe = min(nprobe, nlist)
    else:
        raise ValueError(f"unknown index {index!r}; expected one of {INDEXES}")
    use_gpu = (faiss.get_num_gpus() > 0 if hasattr(faiss, "get_num_gpus") else False) if gpu is None else gpu
    if use_gpu and index != "pq":
        idx = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, idx)
    idx.add(db)
    return idx


def search(query: np.ndarray, db: np.ndarray, k: int | None = None, index: str = "exact",
           **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """Top-k db items for every query: ``index="exact"`` (torch, chunked), ``"flat"``, ``"pq"`` or
    ``"ivfpq"`` (faiss; ``kwargs`` go to :func:`faiss_index`). Returns ``(ranks (k, n_q), scores (k, n_q))``."""
    if index == "exact":
        return exact_search(query, db, k, **kwargs)
    if index not in INDEXES:
        raise ValueError(f"unknown index {index!r}; expected one of {INDEXES}")
    query, db = np.ascontiguousarray(query, np.float32), np.ascontiguousarray(db, np.float32)
    check_features(query, db, name="search")
    k = db.shape[0] if k is None else int(k)
    if not 1 <= k <= db.shape[0]:
        raise ValueError(f"k must be in [1, n_db={db.shape[0]}], got {k}")
    idx = faiss_index(db, index, **kwargs)
    scores, ranks = idx.search(query, k)
    if (ranks < 0).any():
        raise ValueError(f"index={index!r} found fewer than k={k} results for some queries (the probed "
                         "cells hold too few vectors): lower k or raise nprobe")
    return ranks.T.astype(np.int64), scores.T.astype(np.float32)
