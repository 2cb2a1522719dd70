"""Anchor points for SSP: the codebook of a product quantiser trained with faiss on gallery-network
descriptors (Jégou et al., "Product quantization for nearest neighbor search", TPAMI 2011; Wu et
al., SSP, IEEE TMM 2023).

A product quantiser splits a D-dimensional vector into M sub-vectors of D/M dimensions and
quantises each with its own k-means codebook of K = 2^nbits centroids. SSP uses the centroids,
``(M, K, D/M)`` L2-normalised per centroid, as anchor points: a descriptor is described by its
similarities to the anchors of each sub-space (:func:`retrieval.losses.ssp_loss`).

Files: ``<data>/anchors/<dataset>/<name>.npz`` (``centroids`` + JSON ``params``: M, nbits, the
k-means settings, the gallery network's name, the training vectors' count and the quantisation
error), written atomically; :func:`load_anchors` takes a name or a path.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .io import load_arrays, save_arrays
from .search import exact_search, search

MIN_POINTS_PER_CENTROID = 39  # faiss's own threshold for its "please provide more points" warning


def _faiss():
    import faiss  # lazy: optional package

    return faiss


def _gpu(gpu: bool | None) -> bool:
    """Use the GPU? ``None``: when faiss has GPU support and sees a GPU; ``True`` demands it."""
    faiss = _faiss()
    available = hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    if gpu and not available:
        raise ValueError("gpu=True but this faiss has no GPU support or sees no GPU (install faiss-gpu)")
    return available if gpu is None else bool(gpu)


def _vectors(X, name: str = "X", dim: int | None = None) -> np.ndarray:
    X = np.ascontiguousarray(X, dtype=np.float32)
    if X.ndim != 2 or X.shape[0] < 1:
        raise ValueError(f"{name} must be a non-empty 2-D array (n, D), got shape {X.shape}")
    if dim is not None and X.shape[1] != dim:
        raise ValueError(f"{name} has dimension {X.shape[1]}, the anchors {dim}")
    if not np.isfinite(X).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return X


def _check_pq_shape(dim: int, M: int, nbits: int) -> None:
    if isinstance(M, bool) or int(M) != M or M < 1 or dim % M:
        raise ValueError(f"M={M} sub-spaces must be a positive divisor of the dimension D={dim}")
    if isinstance(nbits, bool) or int(nbits) != nbits or not 1 <= nbits <= 16:
        raise ValueError(f"nbits={nbits} must be an integer in [1, 16] (K = 2^nbits centroids per sub-space)")


# --------------------------------------------------------------------------- training
def train_pq(X: np.ndarray, M: int = 32, nbits: int = 8, niter: int = 10, nredo: int = 2,
             max_points_per_centroid: int = 1000, seed: int = 0, gpu: bool | None = None):
    """A ``faiss.ProductQuantizer`` of M sub-spaces × 2^nbits centroids trained on ``X`` (n, D).

    Defaults of the SSP authors' anchor script: M = 32, nbits = 8, ``niter`` = 10 k-means
    iterations, best of ``nredo`` = 2 runs, at most ``max_points_per_centroid`` = 1000 sampled
    points per centroid. Needs n >= 2^nbits; fewer than 39 points per centroid gives one warning
    (faiss would print its own per sub-space). The k-means assignment runs on the GPU when faiss
    has GPU support and a GPU is present (``gpu=None``), through the quantiser's ``assign_index``.
    """
    faiss = _faiss()
    X = _vectors(X)
    n, dim = X.shape
    _check_pq_shape(dim, M, nbits)
    K = 2 ** int(nbits)
    if n < K:
        raise ValueError(f"{n} training vectors are too few for nbits={nbits} (K = {K} centroids per "
                         "sub-space): lower nbits or add training vectors")
    if n < MIN_POINTS_PER_CENTROID * K:
        warnings.warn(f"train_pq: {n} training vectors for {K} centroids per sub-space (faiss recommends "
                      f">= {MIN_POINTS_PER_CENTROID * K}); the centroids are noisy", RuntimeWarning, stacklevel=2)
    pq = faiss.ProductQuantizer(dim, int(M), int(nbits))
    pq.cp.niter, pq.cp.nredo, pq.cp.seed = int(niter), int(nredo), int(seed)
    pq.cp.max_points_per_centroid = int(max_points_per_centroid)
    pq.cp.min_points_per_centroid = 1  # warned once above instead of M times on stderr
    pq.verbose = False
    if _gpu(gpu):
        res = faiss.StandardGpuResources()
        pq.assign_index = faiss.GpuIndexFlatL2(res, pq.dsub)
        try:
            pq.train(X)
        finally:
            pq.assign_index = None
    else:
        pq.train(X)
    return pq


def pq_centroids(pq) -> np.ndarray:
    """The centroids of a trained ``faiss.ProductQuantizer``, (M, K, D/M) float32."""
    faiss = _faiss()
    return faiss.vector_to_array(pq.centroids).reshape(pq.M, pq.ksub, pq.dsub).astype(np.float32)


def normalize_anchors(centroids: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Centroids (M, K, d) → anchors, every centroid L2-normalised within its sub-space."""
    c = np.asarray(centroids, dtype=np.float32)
    if c.ndim != 3:
        raise ValueError(f"centroids must be (M, K, D/M), got shape {c.shape}")
    return c / np.maximum(np.linalg.norm(c, axis=-1, keepdims=True), eps)


def pq_from_centroids(centroids: np.ndarray):
    """A ``faiss.ProductQuantizer`` whose codebook is ``centroids`` (M, K, d), K a power of 2."""
    faiss = _faiss()
    c = np.ascontiguousarray(centroids, dtype=np.float32)
    if c.ndim != 3:
        raise ValueError(f"centroids must be (M, K, D/M), got shape {c.shape}")
    M, K, d = c.shape
    nbits = int(K).bit_length() - 1
    if K < 2 or 2 ** nbits != K:
        raise ValueError(f"centroids have K={K} per sub-space; a product quantiser needs a power of 2 (>= 2)")
    pq = faiss.ProductQuantizer(M * d, M, nbits)
    faiss.copy_array_to_vector(c.ravel(), pq.centroids)
    if hasattr(pq, "sync_transposed_centroids"):
        pq.sync_transposed_centroids()
    return pq


# --------------------------------------------------------------------------- what the codebook captures
def pq_codes(pq, X: np.ndarray) -> np.ndarray:
    """Centroid index of every sub-vector: (n, M) int64 (faiss encodes, then unpacks the bits)."""
    faiss = _faiss()
    X = _vectors(X, dim=pq.d)
    codes = pq.compute_codes(X)
    if pq.nbits == 8:
        return codes.astype(np.int64)
    return faiss.unpack_bitstrings(codes, pq.M, pq.nbits).astype(np.int64)


def quantization_error(pq, X: np.ndarray) -> dict:
    """Reconstruction error of ``X`` (n, D) by the quantiser: ``mse`` = mean ‖x − x̂‖² and
    ``relative`` = mse / mean ‖x‖² (the fraction of the energy the codebook loses)."""
    X = _vectors(X, dim=pq.d)
    rec = pq.decode(pq.compute_codes(X))
    mse = float(np.mean(np.sum((X.astype(np.float64) - rec) ** 2, axis=1)))
    energy = float(np.mean(np.sum(X.astype(np.float64) ** 2, axis=1)))
    return {"mse": mse, "relative": mse / energy if energy > 0 else float("nan")}


def centroid_usage(pq, X: np.ndarray) -> np.ndarray:
    """How many vectors of ``X`` each centroid quantises: (M, K) int64 counts."""
    codes = pq_codes(pq, X)
    M, K = pq.M, pq.ksub
    return np.bincount((codes + K * np.arange(M)).ravel(), minlength=M * K).reshape(M, K)


def recall_at_k(ranks: np.ndarray, exact: np.ndarray, k: int) -> float:
    """Mean over queries of |top-k(ranks) ∩ top-k(exact)| / k (faiss's intersection measure);
    ``ranks`` and ``exact`` (≥ k, n_q) db indices as :mod:`retrieval.search` returns them."""
    from faiss.contrib.evaluation import knn_intersection_measure  # lazy: optional package

    ranks, exact = np.asarray(ranks), np.asarray(exact)
    if ranks.ndim != 2 or exact.ndim != 2 or ranks.shape[1] != exact.shape[1]:
        raise ValueError(f"ranks {ranks.shape} and exact {exact.shape} must be (k, n_q) for the same queries")
    if k < 1 or min(ranks.shape[0], exact.shape[0]) < k:
        raise ValueError(f"k={k} must be in [1, {min(ranks.shape[0], exact.shape[0])}] (what the ranks hold)")
    return float(knn_intersection_measure(ranks[:k].T, exact[:k].T))


def search_recall(query: np.ndarray, db: np.ndarray, k: int = 10, index: str = "ivfpq", **kwargs) -> float:
    """Recall@k (:func:`recall_at_k`) of a faiss ``index`` ("pq" or "ivfpq", :func:`retrieval.search.faiss_index`
    keyword arguments: ``m``, ``nbits``, ``nlist``, ``nprobe``, ``train``, ``seed``, ``gpu``) against
    exact search of the same ``query`` (n_q, D) in the same ``db`` (n_db, D)."""

    exact, _ = exact_search(query, db, k)
    ranks, _ = search(query, db, k, index=index, **kwargs)
    return recall_at_k(ranks, exact, k)


def code_size_sweep(train: np.ndarray, query: np.ndarray, db: np.ndarray, Ms=(8, 16, 32, 64), nbits: int = 8,
                    k: int = 10, nlist: int = 16, nprobe: int = 4, niter: int = 10, nredo: int = 2, seed: int = 0,
                    progress: bool = True) -> list[dict]:
    """What a codebook of each size keeps: for every M of ``Ms`` (code size M·nbits/8 bytes), the
    relative quantisation error of ``db`` by a quantiser trained on ``train``, and the recall@k
    against exact search of ``query`` in ``db`` of exhaustive PQ (``recall_pq``) and of IVF-PQ with
    ``nlist`` cells, ``nprobe`` visited (``recall_ivfpq``), both trained on ``train``."""

    rows = []
    for M in tqdm(list(Ms), desc="code sizes", disable=not progress):
        pq = train_pq(train, M, nbits, niter, nredo, seed=seed)
        common = dict(m=M, nbits=nbits, train=train, seed=seed)
        size = M * nbits / 8
        rows.append(dict(M=int(M), nbits=int(nbits), bytes=int(size) if size == int(size) else size,
                         relative_error=quantization_error(pq, db)["relative"],
                         recall_pq=search_recall(query, db, k, "pq", **common),
                         recall_ivfpq=search_recall(query, db, k, "ivfpq", nlist=nlist, nprobe=nprobe, **common)))
    return rows


# --------------------------------------------------------------------------- anchors: build, save, load
@dataclass
class Anchors:
    """PQ ``centroids`` (M, K, D/M) and the ``params`` that made them; ``anchors`` are the
    centroids L2-normalised per sub-space, the form SSP uses."""

    centroids: np.ndarray
    params: dict = field(default_factory=dict)

    def __post_init__(self):
        self.centroids = np.ascontiguousarray(self.centroids, dtype=np.float32)
        if self.centroids.ndim != 3:
            raise ValueError(f"centroids must be (M, K, D/M), got shape {self.centroids.shape}")
        if not np.isfinite(self.centroids).all():
            raise ValueError("centroids contain NaN or Inf")

    @property
    def anchors(self) -> np.ndarray:
        return normalize_anchors(self.centroids)

    @property
    def M(self) -> int:
        return self.centroids.shape[0]

    @property
    def K(self) -> int:
        return self.centroids.shape[1]

    @property
    def dim(self) -> int:
        return self.centroids.shape[0] * self.centroids.shape[2]

    @property
    def name(self) -> str:
        return self.params.get("name") or anchors_name(self.params.get("network", "anchors"), self.M,
                                                        int(self.K).bit_length() - 1)

    def pq(self):
        """The ``faiss.ProductQuantizer`` with these centroids."""
        return pq_from_centroids(self.centroids)

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``centroids`` and ``params`` (JSON) to an .npz, atomically."""
        return save_arrays(path, self.params, centroids=self.centroids)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Anchors":
        arrays, params = load_arrays(path, ("centroids",), what="anchor file")
        try:
            return cls(arrays["centroids"], params)
        except ValueError as e:
            raise ValueError(f"{path}: not valid anchors ({e})") from e


def anchors_name(network: str, M: int, nbits: int) -> str:
    """``<network>-pq<M>x<nbits>``, e.g. ``gem-resnet18-240-pq32x8``."""
    return f"{network}-pq{int(M)}x{int(nbits)}"


def anchors_path(dataset: str, name: str, root: str | os.PathLike) -> Path:
    """``<root>/anchors/<dataset>/<name>.npz``; ``root``: the run folder of the gallery network whose
    descriptors made them (:meth:`retrieval.run.layout.RunLayout.anchors`)."""
    return Path(root) / "anchors" / dataset / f"{name}.npz"


def build_anchors(X: np.ndarray, M: int = 32, nbits: int = 8, niter: int = 10, nredo: int = 2,
                  max_points_per_centroid: int = 1000, seed: int = 0, gpu: bool | None = None,
                  network: str | None = None, dataset: str | None = None) -> Anchors:
    """Train :func:`train_pq` on the gallery network's descriptors ``X`` (n, D) (a training or
    distractor set, never the test db) and keep its centroids with the parameters, the gallery
    network's name (``network``), the training set (``dataset``) and the quantisation error on ``X``."""
    X = _vectors(X)
    pq = train_pq(X, M, nbits, niter, nredo, max_points_per_centroid, seed, gpu)
    err = quantization_error(pq, X)
    params = dict(M=int(M), nbits=int(nbits), niter=int(niter), nredo=int(nredo),
                  max_points_per_centroid=int(max_points_per_centroid), seed=int(seed), dim=int(X.shape[1]),
                  n_train=int(X.shape[0]), network=network, dataset=dataset, train_mse=err["mse"],
                  train_relative_error=err["relative"])
    if network is not None:
        params["name"] = anchors_name(network, M, nbits)
    return Anchors(pq_centroids(pq), params)


def load_anchors(spec: str | os.PathLike, dataset: str | None = None,
                 root: str | os.PathLike | None = None) -> Anchors:
    """Anchors from a file path, or by name (``anchors_name``) under ``<root>/anchors/<dataset>/`` of a
    run folder ``root``."""
    path = Path(spec)
    if path.suffix == ".npz" or path.is_file():
        return Anchors.load(path)
    if dataset is None or root is None:
        raise ValueError(f"anchors {str(spec)!r} is not a file; to load it by name give the dataset and the run "
                         "folder root (anchors live under <run>/anchors/<dataset>/<name>.npz)")
    path = anchors_path(dataset, str(spec), root)
    if not path.is_file():
        known = sorted(p.stem for p in path.parent.glob("*.npz")) if path.parent.is_dir() else []
        raise FileNotFoundError(f"anchors {str(spec)!r} not found at {path} (build them with "
                                f"04_build_anchors); known for {dataset}: {known}")
    return Anchors.load(path)


__all__ = ["Anchors", "anchors_name", "anchors_path", "build_anchors", "centroid_usage", "code_size_sweep", "load_anchors",
           "normalize_anchors", "pq_centroids", "pq_codes", "pq_from_centroids", "quantization_error",
           "recall_at_k", "search_recall", "train_pq"]
