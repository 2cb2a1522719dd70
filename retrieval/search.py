"""Nearest-neighbour search by inner product (cosine for L2-normalised descriptors), and ASMK search
over local descriptors.

Every search function returns ``ranks`` (k, n_q) int64 db indices, best first (the layout
:func:`retrieval.metrics.compute_map` takes) and ``scores`` (k, n_q) float32.

ASMK (aggregated selective match kernel; Tolias, Avrithis & Jégou, ICCV 2013, in the HOW variant)
through the ``asmk`` package: a k-means codebook learned on training-split local descriptors (e.g.
:func:`retrieval.models.local.extract_local`), per image and visual word the sum of residuals
binarised, similarity = Σ over shared words of ``σ(u) = u^α`` for ``u ≥ τ`` (normalised Hamming
similarity u; α = 3, τ = 0), idf off.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import torch

from .config import resolve_device
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


BACKENDS = ("auto", "torch", "faiss")


@functools.lru_cache(maxsize=1)
def _has_faiss() -> bool:
    """Whether the faiss package imports (it is optional for exact search: torch answers without it)."""
    try:
        import faiss  # lazy: optional package
    except ImportError:
        return False
    return True


def faiss_faster(n_q: int, n_db: int, dim: int, k: int = 100) -> bool:
    """Whether ``faiss.knn`` beats the torch path for an exact top-k of this shape on the CPU, as
    measured on a 2-core AMD EPYC (AVX-512; top-100, D 512 / 2048, 8-1,000 queries, 5k-200k db):
    1.2-3.8x faster from 256 queries and 10⁹ multiply-adds on, 1.0-1.4x at D >= 1024 from 32 queries
    and 5·10⁸ multiply-adds; but 2.5-3x slower at 70 queries of 512-d (where torch stays), and equal
    with a handful of queries. faiss keeps a heap per query: at k = 1,000 it was 2.9x slower than
    torch (70 q x 100k x 1,280, AVX2 EPYC), so it is used up to k = 128 only. The synthetic demo's
    searches (70 q x 1,570 x 1,280) stay on torch."""
    work = float(n_q) * n_db * dim
    return k <= 128 and ((n_q >= 256 and work >= 1e9) or (dim >= 1024 and n_q >= 32 and work >= 5e8))


def _faiss_topk(query: np.ndarray, db: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k by ``faiss.knn`` with :func:`exact_search`'s tie rule: k + 1 are fetched, each row is
    ordered by (score desc, index asc), and rows whose k-th and (k+1)-th scores tie (where faiss may
    have kept a higher index) are searched again by the torch path. Returns (n_q, k) ids and scores."""
    import faiss  # lazy: optional package

    n_db = db.shape[0]
    kk = min(k + 1, n_db)
    scores, ids = faiss.knn(np.ascontiguousarray(query), np.ascontiguousarray(db), kk,
                            metric=faiss.METRIC_INNER_PRODUCT)
    s, i = scores, ids
    tie = np.flatnonzero((s[:, 1:] == s[:, :-1]).any(1))    # rows with equal scores: order them by index
    if tie.size:
        st, it = _stable_order(torch.from_numpy(s[tie]), torch.from_numpy(i[tie]))
        s[tie], i[tie] = st.numpy(), it.numpy()
    if kk > k:
        tied = np.flatnonzero(s[:, k - 1] == s[:, k])
        if tied.size:
            r, sc = exact_search(query[tied], db, k, device="cpu", backend="torch")
            i[tied, :k], s[tied, :k] = r.T, sc.T
    return i[:, :k], s[:, :k]


CHUNK_BYTES = 1 << 25  # db bytes (float32) per matmul chunk of the torch path: 32 MB, measured fastest


@torch.no_grad()
def exact_search(query: np.ndarray, db: np.ndarray, k: int | None = None, chunk_size: int | None = None,
                 device: str | None = None, backend: str = "auto",
                 check_finite: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product; memory bounded by chunks of ``chunk_size`` db vectors (``None``:
    32 MB of float32 db per chunk, e.g. 16,384 x 512 or 4,096 x 2,048).

    ``k=None`` ranks the whole db. Ties are broken by the lower db index. GPU when ``device`` is
    CUDA (``None``: CUDA if available). A float16 ``db`` (:func:`~retrieval.io.save_features` with
    ``dtype="float16"``) is scored in float32 one chunk at a time, never copied whole. ``backend``:
    ``"torch"`` (chunked matmul + top-k), ``"faiss"`` (``faiss.knn`` on the CPU, same tie rule) or
    ``"auto"``: faiss on the CPU for a top-k (k < n_db) of a shape where it was measured faster
    (:func:`faiss_faster`), torch otherwise.

    ``db`` may also be a float32 / float16 torch tensor, e.g. uploaded to the GPU once for many
    searches: its chunks are then views (no host-to-device copy per call; ``device`` defaults to the
    tensor's). ``faiss`` needs a numpy db; ``auto`` keeps torch when the faiss package is missing.

    ``check_finite``: refuse (ValueError) a query or db holding NaN or Inf, as scipy.linalg's option
    of that name. The torch path checks each db chunk's sum next to its matmul; the faiss path needs
    one extra read of the db (~1/5 of a 70-query search at 2,048-d), which a caller whose db was
    checked already (e.g. by :func:`~retrieval.io.load_features`) may skip with ``False``; faiss
    silently drops NaN rows from its results.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}: expected one of {BACKENDS}")
    query = np.asarray(query, np.float32)
    tensor_db = isinstance(db, torch.Tensor)
    if tensor_db:
        if db.dtype not in (torch.float32, torch.float16):
            raise ValueError(f"search: a tensor db must be float32 or float16, got {db.dtype}")
        half = db.dtype == torch.float16
    else:
        half = getattr(db, "dtype", None) == np.float16  # stored in half precision: converted chunk by chunk
        db = np.asarray(db, np.float16 if half else np.float32)
    check_features(query, db, name="search", finite=("query",) if check_finite else ())
    n_db = db.shape[0]
    k = n_db if k is None else int(k)
    if not 1 <= k <= n_db:
        raise ValueError(f"k must be in [1, n_db={n_db}], got {k}")
    device = resolve_device(device or (str(db.device) if tensor_db else "auto"))
    if backend == "faiss" or (backend == "auto" and device == "cpu" and k < n_db and not half and not tensor_db
                              and faiss_faster(query.shape[0], n_db, db.shape[1], k) and _has_faiss()):
        if not device.startswith("cpu"):
            raise ValueError(f"backend='faiss' searches on the CPU; device={device!r}")
        if tensor_db:
            raise ValueError("backend='faiss' needs a numpy db, got a torch tensor")
        check_features(query, db, name="search", finite=("db",) if check_finite else ())
        ids, scores = _faiss_topk(query, np.asarray(db, np.float32), k)
        return ids.T.astype(np.int64), scores.T.astype(np.float32)
    chunk_size = chunk_size or max(1024, CHUNK_BYTES // (4 * db.shape[1]))
    q = torch.from_numpy(query).to(device)
    best_s = torch.empty((q.shape[0], 0), device=device)
    best_i = torch.empty((q.shape[0], 0), dtype=torch.long, device=device)
    for start in range(0, n_db, chunk_size):
        d = db[start:start + chunk_size] if tensor_db else torch.from_numpy(db[start:start + chunk_size])
        d = d.to(device).float()                                 # no copy for a float32 db on the device
        if check_finite and not bool(torch.isfinite(d.sum())):   # NaN / Inf in the chunk (or an overflowing sum)
            check_features(query, d.cpu().numpy(), name="search", finite=("db",))
        s, i = _chunk_topk(q @ d.T, min(k, d.shape[0]))
        s, i = torch.cat([best_s, s], 1), torch.cat([best_i, i + start], 1)
        s, i = _stable_order(s, i)
        best_s, best_i = s[:, :k], i[:, :k]
    return best_i.T.cpu().numpy(), best_s.T.float().cpu().numpy()


def faiss_index(db: np.ndarray, index: str = "flat", nlist: int | None = None, m: int | None = None,
                nbits: int = 8, nprobe: int = 16, gpu: bool | None = None, seed: int = 0,
                train: np.ndarray | None = None, shard: bool = False):
    """A faiss inner-product index over ``db`` (n_db, D): ``flat`` (exact), ``pq`` (exhaustive
    product quantisation, ``m`` sub-quantisers of ``nbits``; Jégou et al. TPAMI 2011) or ``ivfpq``
    (IVF with ``nlist`` cells + PQ of the residuals). ``train`` (n, D): the vectors the quantisers
    are trained on (default ``db``). GPU when faiss was built with it and a GPU is present
    (``gpu=None``; ``make env-gpu``); ``pq`` stays on the CPU (faiss has no GPU flat-PQ
    index). With several GPUs, every GPU holds the index (faiss ``IndexReplicas``: queries split
    across GPUs) or, with ``shard=True``, a slice of the db (``IndexShards``: a db too large for one)."""
    import faiss  # lazy: optional package

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
        if faiss.get_num_gpus() > 1:
            co = faiss.GpuMultipleClonerOptions()
            co.shard = bool(shard)
            idx = faiss.index_cpu_to_all_gpus(idx, co)
        else:
            idx = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, idx)
    idx.add(db)
    return idx


GPU_K_MAX = 2048   # faiss GPU indexes return at most 2,048 neighbours (k) per query


def _on_gpu(index) -> bool:
    import faiss  # lazy: optional package

    gpu_types = tuple(getattr(faiss, t) for t in ("GpuIndex", "IndexShards", "IndexReplicas") if hasattr(faiss, t))
    return hasattr(faiss, "GpuIndex") and isinstance(index, gpu_types)


def index_search(index, query: np.ndarray, k: int, k_max: int = GPU_K_MAX) -> tuple[np.ndarray, np.ndarray]:
    """``index.search(query, k)`` → (scores (n_q, k), ids (n_q, k)), also past faiss GPU's limit on k:
    a GPU index asked for more than ``k_max`` neighbours is copied to the CPU and searched there
    (same index, same results; the k <= ``k_max`` case stays on the GPU)."""
    if k > k_max and _on_gpu(index):
        import faiss  # lazy: optional package

        index = faiss.index_gpu_to_cpu(index)
    return index.search(query, k)


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
    scores, ranks = index_search(idx, query, k)
    if (ranks < 0).any():
        raise ValueError(f"index={index!r} found fewer than k={k} results for some queries (the probed "
                         "cells hold too few vectors): lower k or raise nprobe")
    return ranks.T.astype(np.int64), scores.T.astype(np.float32)


# ----------------------------------------------------------------------------------------------
# ASMK over local descriptors (the asmk package, imported when an index is built)


def asmk_params(codebook_size: int = 65536, alpha: float = 3.0, threshold: float = 0.0, binary: bool = True,
                query_assignments: int = 5, use_idf: bool = False) -> dict:
    """Parameters of the ``asmk`` package's method (HOW, ECCV 2020 defaults: 64k words, binarised
    residuals, α = 3, τ = 0, multiple assignment 5 for queries and 1 for the db, no idf)."""
    if codebook_size < 2:
        raise ValueError(f"codebook_size must be >= 2, got {codebook_size}")
    return {"index": {"gpu_id": None},
            "train_codebook": {"codebook": {"size": int(codebook_size)}},
            "build_ivf": {"kernel": {"binary": bool(binary)}, "ivf": {"use_idf": bool(use_idf)},
                          "quantize": {"multiple_assignment": 1}, "aggregate": {}},
            "query_ivf": {"quantize": {"multiple_assignment": int(query_assignments)}, "aggregate": {},
                          "search": {"topk": None},
                          "similarity": {"similarity_threshold": float(threshold), "alpha": float(alpha)}}}


def _check_local(vecs, imids, what: str) -> tuple[np.ndarray, np.ndarray]:
    vecs, imids = np.ascontiguousarray(vecs, np.float32), np.asarray(imids, np.int64)
    if vecs.ndim != 2 or imids.shape != vecs.shape[:1]:
        raise ValueError(f"{what}: vecs (M, d) and imids (M,) expected, got {vecs.shape} and {imids.shape}")
    if imids.size and (np.any(np.diff(imids) < 0) or imids[0] < 0):
        raise ValueError(f"{what}: imids must be non-negative and ascending (one image after the other)")
    return vecs, imids


def asmk_index(train_vecs: np.ndarray, db_vecs: np.ndarray, db_imids: np.ndarray, params: dict | None = None):
    """Train the codebook on ``train_vecs`` (M, d) (training-split descriptors) and index the db's
    local descriptors ``db_vecs`` (M', d) with image ids ``db_imids`` (ascending, 0..n_db−1, every
    image present). Returns the ``asmk.ASMKMethod``."""
    from asmk import asmk_method  # lazy: optional package

    params = params or asmk_params()
    train_vecs = np.ascontiguousarray(train_vecs, np.float32)
    k = params["train_codebook"]["codebook"]["size"]
    if train_vecs.ndim != 2 or len(train_vecs) < k:
        raise ValueError(f"train_vecs must be (M, d) with M >= codebook size {k}, got {train_vecs.shape}")
    db_vecs, db_imids = _check_local(db_vecs, db_imids, "db")
    if db_vecs.shape[1] != train_vecs.shape[1]:
        raise ValueError(f"db descriptors have d={db_vecs.shape[1]}, training ones d={train_vecs.shape[1]}")
    n_db = int(db_imids.max()) + 1 if db_imids.size else 0
    if len(np.unique(db_imids)) != n_db:
        raise ValueError("every db image 0..n_db-1 needs at least one local descriptor")
    method = asmk_method.ASMKMethod.initialize_untrained(params)
    method = method.train_codebook(train_vecs)
    return method.build_ivf(db_vecs, db_imids.copy())  # the ivf shifts the ids in place


def asmk_search(method, query_vecs: np.ndarray, query_imids: np.ndarray, n_query: int) -> tuple[np.ndarray, np.ndarray]:
    """Rank the whole db for every query: ``ranks`` (n_db, n_query) db indices, best first, and
    ``scores`` (n_db, n_query) in that order. Every query 0..n_query−1 needs descriptors."""
    query_vecs, query_imids = _check_local(query_vecs, query_imids, "query")
    if len(np.unique(query_imids)) != n_query or (n_query and query_imids.max() != n_query - 1):
        raise ValueError(f"every query 0..{n_query - 1} needs at least one local descriptor")
    _, images, ranks, scores = method.query_ivf(query_vecs, query_imids)
    order = np.argsort(images)
    return ranks[order].T.astype(np.int64), scores[order].T


def asmk_bytes_per_image(method, dim: int, id_bytes: int = 4) -> float:
    """Memory of the db index per image: aggregated vectors per image × (d/8 bytes binarised, or 4d
    float32, + ``id_bytes`` for the image id stored with each in the inverted file)."""
    per_vec = dim / 8 if method.kernel.binary else 4 * dim
    return float(method.inverted_file.stats["vectors_per_image"]) * (per_vec + id_bytes)
