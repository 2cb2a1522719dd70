"""Training data in the retrieval-SfM-120k format (Radenović et al., TPAMI 2018): loading,
per-epoch tuple mining (:class:`TupleMiner`) and the tuple image dataset (:class:`TuplesDataset`).

``<root>/train/<name>/<name>.pkl`` holds ``{"train": split, "val": split}``; each split has
``cids`` (image ids), ``cluster`` (3-D model id per image), ``qidxs`` and ``pidxs`` (matching
query/positive image indices) and, in this package's data, ``labels`` (landmark id per image).
"""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .images import load_image, resize_longer


def cid2filename(cid: str, prefix: str | os.PathLike) -> str:
    """Image path of ``cid`` in the SfM-120k layout: ``prefix/cid[-2:]/cid[-4:-2]/cid[-6:-4]/cid``."""
    return os.path.join(prefix, cid[-2:], cid[-4:-2], cid[-6:-4], cid)


def load_sfm(root: str | os.PathLike, name: str) -> dict:
    """Load and validate ``<root>/train/<name>/<name>.pkl``; adds ``paths`` to every split."""
    folder = Path(root) / "train" / name
    path = folder / f"{name}.pkl"
    if not path.is_file():
        raise FileNotFoundError(f"training annotation not found: {path}")
    try:
        with open(path, "rb") as fh:
            db = pickle.load(fh)
    except Exception as e:  # truncated or not a pickle: name the file
        raise ValueError(f"{path}: cannot read the pickle ({type(e).__name__}: {e})") from e
    if not isinstance(db, dict) or "train" not in db:
        raise ValueError(f"{path}: expected a dict with a 'train' split (and 'val'), got {type(db).__name__}")
    for split, d in db.items():
        missing = {"cids", "cluster", "qidxs", "pidxs"} - set(d)
        if missing:
            raise ValueError(f"{path}: split {split!r} lacks keys {sorted(missing)}")
        n = len(d["cids"])
        if len(d["cluster"]) != n:
            raise ValueError(f"{path}: split {split!r} has {n} cids but {len(d['cluster'])} cluster ids")
        if len(d["qidxs"]) != len(d["pidxs"]):
            raise ValueError(f"{path}: split {split!r} has {len(d['qidxs'])} qidxs but {len(d['pidxs'])} pidxs")
        for key in ("qidxs", "pidxs"):
            idx = np.asarray(d[key], dtype=np.int64)
            if idx.size and (idx.min() < 0 or idx.max() >= n):
                raise ValueError(f"{path}: split {split!r} {key} out of range [0, {n})")
        d["paths"] = [cid2filename(c, folder / "ims") for c in d["cids"]]
    return db


# ----------------------------------------------------------------------------------------------
# tuple mining (Radenović et al., TPAMI 2018, section 3.3 / cirtorch's TuplesDataset)

MINING_MODES = ("hard", "random")


def _nonneg_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def _check_split(split: dict, name: str = "split") -> int:
    missing = {"cluster", "qidxs", "pidxs", "paths"} - set(split)
    if missing:
        raise ValueError(f"{name} lacks keys {sorted(missing)} (load it with load_sfm)")
    n = len(split["paths"])
    if len(split["cluster"]) != n:
        raise ValueError(f"{name} has {n} paths but {len(split['cluster'])} cluster ids")
    return n


class TupleMiner:
    """Training tuples ``(q, p, n_1..n_N)`` of an SfM-120k-format split, re-mined every epoch.

    Protocol of Radenović et al. (TPAMI 2018): every epoch draws ``qsize`` random (query,
    positive) pairs of ``split["qidxs"]`` / ``split["pidxs"]`` and a random pool of ``poolsize``
    images of the split; queries and pool are described by the current network and, for each
    query, the negatives are the pool images nearest to it by inner product whose ``cluster``
    (3-D model) differs from the query's, taking at most one image per cluster, until ``nnum``.

    * ``mode="hard"``: the mining above (needs ``describe``);
    * ``mode="random"``: the same walk over the pool in random order (random negatives, one per
      other cluster; no network) for ablations and tests.

    Randomness comes from ``np.random.default_rng([seed, epoch])``: the same (seed, epoch) gives
    the same queries, pool and (for equal descriptors) the same tuples. ``qsize`` / ``poolsize``
    larger than what the split holds (or ``None``) are clipped to all pairs / all images.
    Ties in similarity go to the lower image index. If the pool lacks ``nnum`` other clusters for
    a query, the rest are filled with random images of unused clusters from the whole split (a
    RuntimeWarning; counted in ``last_stats["n_filled"]``). Similarities are computed for
    ``chunk_size`` queries at a time (memory ~ 12 bytes × chunk_size × poolsize).

    ``last_stats`` after :meth:`mine`: ``epoch``, ``n_tuples``, ``mode``, ``n_filled`` and
    ``avg_neg_dist`` (mean ‖q − n‖ of the mined negatives, hard mode; cirtorch logs it).
    """

    def __init__(self, split: dict, qsize: int | None = 2000, poolsize: int | None = 20000,
                 nnum: int = 5, seed: int = 0, mode: str = "hard", chunk_size: int = 256):
        n = _check_split(split)
        if mode not in MINING_MODES:
            raise ValueError(f"mode must be one of {MINING_MODES}, got {mode!r}")
        self.nnum = _nonneg_int(nnum, "nnum")
        self.seed = _nonneg_int(seed, "seed")
        for name, v in (("qsize", qsize), ("poolsize", poolsize)):
            if v is not None and _nonneg_int(v, name) < 1:
                raise ValueError(f"{name} must be >= 1 (or None for all), got {v}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.cluster = np.asarray(split["cluster"], dtype=np.int64)
        self.qidxs = np.asarray(split["qidxs"], dtype=np.int64)
        self.pidxs = np.asarray(split["pidxs"], dtype=np.int64)
        if len(self.qidxs) != len(self.pidxs):
            raise ValueError(f"split has {len(self.qidxs)} qidxs but {len(self.pidxs)} pidxs")
        if len(self.qidxs) == 0:
            raise ValueError("split has no (query, positive) pairs")
        for key, idx in (("qidxs", self.qidxs), ("pidxs", self.pidxs)):
            if idx.min() < 0 or idx.max() >= n:
                raise ValueError(f"split {key} out of range [0, {n})")
        n_clusters = len(np.unique(self.cluster))
        if self.nnum > n_clusters - 1:
            raise ValueError(f"nnum={self.nnum} negatives from distinct other clusters need at least "
                             f"{self.nnum + 1} clusters; the split has {n_clusters}")
        self.paths = list(split["paths"])
        self.n_images = n
        self.qsize = len(self.qidxs) if qsize is None else min(int(qsize), len(self.qidxs))
        self.poolsize = n if poolsize is None else min(int(poolsize), n)
        self.mode, self.chunk_size = mode, int(chunk_size)
        self.last_stats: dict = {}

    def sample(self, epoch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.random.Generator]:
        """The epoch's ``(qidxs (qsize,), pidxs (qsize,), pool (poolsize,) sorted, rng)``."""
        rng = np.random.default_rng([self.seed, _nonneg_int(epoch, "epoch")])
        sel = rng.permutation(len(self.qidxs))[:self.qsize]
        pool = np.sort(rng.permutation(self.n_images)[:self.poolsize])
        return self.qidxs[sel], self.pidxs[sel], pool, rng

    def mine(self, epoch: int, describe=None, describe_pool=None) -> list[tuple[int, ...]]:
        """Tuples ``[(q, p, n_1..n_nnum), ...]`` (image indices into the split) of ``epoch``.

        ``describe(paths: list[str]) -> np.ndarray (len(paths), D)`` gives descriptors (L2-
        normalised, by the current network); it is called twice, for the queries then the pool,
        and is not needed for ``mode="random"`` or ``nnum=0``. ``describe_pool`` (same signature)
        describes the pool instead, e.g. with another network's precomputed descriptors
        (asymmetric mining: query-network queries against gallery-network negatives, AML).
        """
        qidxs, pidxs, pool, rng = self.sample(epoch)
        stats = dict(epoch=int(epoch), n_tuples=len(qidxs), mode=self.mode, n_filled=0,
                     avg_neg_dist=float("nan"))
        if self.nnum == 0:
            self.last_stats = stats
            return [(int(q), int(p)) for q, p in zip(qidxs, pidxs)]
        qvecs = None
        if self.mode == "hard":
            if describe is None:
                raise ValueError("mode='hard' needs describe(paths) -> (n, D) descriptors")
            qvecs = self._describe(describe, qidxs, "queries")
            pvecs = self._describe(describe_pool or describe, pool, "pool")
            if pvecs.shape[1] != qvecs.shape[1]:
                raise ValueError(f"describe returned dim {qvecs.shape[1]} for the queries but "
                                 f"{pvecs.shape[1]} for the pool")
        tuples, dists = [], []
        for start in range(0, len(qidxs), self.chunk_size):
            stop = min(start + self.chunk_size, len(qidxs))
            if self.mode == "hard":
                scores = qvecs[start:stop] @ pvecs.T
                orders = np.argsort(-scores, axis=1, kind="stable")  # ties: lower image index
            else:
                orders = [rng.permutation(len(pool)) for _ in range(start, stop)]
            for k, order in enumerate(orders):
                q, p = int(qidxs[start + k]), int(pidxs[start + k])
                negs = self._walk(pool[order], self.cluster[q])
                if len(negs) < self.nnum:
                    stats["n_filled"] += 1
                    negs = self._walk(rng.permutation(self.n_images), self.cluster[q], negs)
                if self.mode == "hard":
                    dists.append(self._dists(qvecs[start + k], negs, pool, pvecs))
                tuples.append((q, p, *negs))
        if dists:
            stats["avg_neg_dist"] = float(np.mean(np.concatenate(dists)))
        if stats["n_filled"]:
            warnings.warn(f"epoch {epoch}: the pool of {len(pool)} images lacked {self.nnum} other "
                          f"clusters for {stats['n_filled']} queries; filled with random images",
                          RuntimeWarning, stacklevel=2)
        self.last_stats = stats
        return tuples

    # -- helpers
    def _describe(self, describe, idx: np.ndarray, what: str) -> np.ndarray:
        vecs = np.asarray(describe([self.paths[i] for i in idx]), dtype=np.float32)
        if vecs.ndim != 2 or vecs.shape[0] != len(idx):
            raise ValueError(f"describe returned shape {vecs.shape} for {len(idx)} {what} images; "
                             f"expected ({len(idx)}, D)")
        if not np.isfinite(vecs).all():
            raise ValueError(f"describe returned non-finite descriptors for the {what}")
        return vecs

    def _walk(self, candidates: np.ndarray, qcluster: int, negs: list | None = None) -> list[int]:
        """Take candidates in order, skipping the query's cluster and clusters already used."""
        negs = list(negs or [])
        used = {int(qcluster), *(int(self.cluster[n]) for n in negs)}
        for c in candidates:
            if len(negs) >= self.nnum:
                break
            cl = int(self.cluster[c])
            if cl not in used:
                used.add(cl)
                negs.append(int(c))
        return negs

    def _dists(self, qvec: np.ndarray, negs: list, pool: np.ndarray, pvecs: np.ndarray) -> np.ndarray:
        """‖q − n‖ of the negatives found in the pool (as cirtorch's average negative distance)."""
        pos = np.searchsorted(pool, negs)
        ok = (pos < len(pool)) & (pool[np.minimum(pos, len(pool) - 1)] == negs)
        return np.linalg.norm(pvecs[pos[ok]] - qvec, axis=1)


# ----------------------------------------------------------------------------------------------
# tuple images

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class TuplesDataset(Dataset):
    """The images of training tuples: item ``i`` is a float32 tensor (T, 3, S, S).

    Every image of tuple ``tuples[i]`` (indices into ``split["paths"]``) is loaded (RGB), resized
    as cirtorch's ``TuplesDataset`` does (:func:`~retrieval.datasets.images.resize_longer`: longer
    side ``S = image_size`` by PIL's thumbnail rule, LANCZOS, smaller images kept), normalised ``(x / 255 − mean) / std`` and then
    zero-padded at the bottom / right to S × S (i.e. padded with the mean colour), so that the
    default collate stacks a batch to (B, T, 3, S, S).

    ``augment=True`` takes, before the resize, a random crop of ``[crop_scale, 1]`` of each side
    (no flips: landmarks are not mirror-symmetric), drawn from ``default_rng([seed, epoch, i, t])``
    so that it is reproducible whatever the DataLoader workers; ``set_epoch`` changes it. Off by
    default. ``cache``: a dict (split index → resized uint8 image) that keeps each image after its first
    load, shared with the datasets of later epochs (without ``augment`` only: crops differ per epoch).
    """

    def __init__(self, split: dict, tuples, image_size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                 augment: bool = False, crop_scale: float = 0.8, seed: int = 0, cache: dict | None = None):
        if "paths" not in split:
            raise ValueError("split lacks 'paths' (load it with load_sfm)")
        if image_size <= 0:
            raise ValueError(f"image_size must be positive, got {image_size}")
        if not 0.0 < crop_scale <= 1.0:
            raise ValueError(f"crop_scale must be in (0, 1], got {crop_scale}")
        self.paths = list(split["paths"])
        tuples = [tuple(int(v) for v in t) for t in tuples]
        if not tuples:
            raise ValueError("tuples is empty")
        lengths = {len(t) for t in tuples}
        if len(lengths) != 1 or min(lengths) < 2:
            raise ValueError(f"every tuple must have the same length T >= 2 (query, positive, "
                             f"negatives), got lengths {sorted(lengths)}")
        self.tuples = np.asarray(tuples, dtype=np.int64)
        if self.tuples.min() < 0 or self.tuples.max() >= len(self.paths):
            raise ValueError(f"tuple indices out of range [0, {len(self.paths)})")
        self.image_size = int(image_size)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.augment, self.crop_scale = bool(augment), float(crop_scale)
        self.seed, self.epoch = _nonneg_int(seed, "seed"), 0
        self._cache = None if self.augment else cache

    def set_epoch(self, epoch: int) -> None:
        """Select the random crops of ``epoch`` (only matters with ``augment``)."""
        self.epoch = _nonneg_int(epoch, "epoch")

    @property
    def tuple_size(self) -> int:
        """T = 2 + number of negatives."""
        return self.tuples.shape[1]

    def __len__(self) -> int:
        return len(self.tuples)

    def __getitem__(self, i: int) -> torch.Tensor:
        if not -len(self) <= i < len(self):
            raise IndexError(f"tuple index {i} out of range for {len(self)} tuples")
        i = i % len(self)
        return torch.stack([self.image(int(idx), key=(i, t)) for t, idx in enumerate(self.tuples[i])])

    def image(self, idx: int, key: tuple | None = None) -> torch.Tensor:
        """Image ``idx`` of the split as a normalised, padded (3, S, S) tensor; ``key`` (tuple,
        position) seeds the random crop when ``augment`` is on."""
        x = self._cache.get(idx) if self._cache is not None else None
        if x is None:
            img = load_image(self.paths[idx])
            if self.augment:
                img = self._crop(img, np.random.default_rng([self.seed, self.epoch, *(key or (0, 0))]))
            img = resize_longer(img, self.image_size)
            x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
            if self._cache is not None:
                self._cache[idx] = x
        x = x.float() / 255.0
        x = (x - self.mean) / self.std
        out = x.new_zeros((3, self.image_size, self.image_size))
        out[:, :x.shape[1], :x.shape[2]] = x
        return out

    def _crop(self, img, rng: np.random.Generator):
        w, h = img.size
        cw = max(1, round(w * rng.uniform(self.crop_scale, 1.0)))
        ch = max(1, round(h * rng.uniform(self.crop_scale, 1.0)))
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        return img.crop((x0, y0, x0 + cw, y0 + ch))
