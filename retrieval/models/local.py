"""Local descriptors of a Token network and their ASMK aggregation (the Token paper's comparison of
aggregators on the same local features; Wu et al., AAAI 2022).

Local descriptors: the refined local features the Token tokeniser aggregates (``tr.local_features``:
1×1 conv + BN + LFSA, dimension d), at several scales; of each image the ``n`` strongest locations
are kept, strength being the L2 norm of the backbone activation there (as HOW, Tolias et al. ECCV
2020), and L2-normalised.

ASMK (aggregated selective match kernel; Tolias, Avrithis & Jégou, ICCV 2013, in the HOW variant)
through the ``asmk`` package: a k-means codebook learned on training-split descriptors, per image
and visual word the sum of residuals binarised, similarity = Σ over shared words of
``σ(u) = u^α`` for ``u ≥ τ`` (normalised Hamming similarity u; α = 3, τ = 0), idf off.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..extract import DEFAULT_SCALES, ImageList, _list_collate


def top_locations(strength: torch.Tensor, n: int) -> torch.Tensor:
    """Indices of the ``n`` largest entries of ``strength`` (N,), strongest first (all if N ≤ n)."""
    if n < 1:
        raise ValueError(f"n (local features per image) must be >= 1, got {n}")
    return torch.topk(strength, min(int(n), strength.numel())).indices


@torch.no_grad()
def token_local_features(model, x: torch.Tensor, n: int = 1000,
                         scales: Sequence[float] = DEFAULT_SCALES) -> torch.Tensor:
    """Local descriptors (≤ n, d) of ONE image ``x`` (1, 3, H, W) from a Token ``model``: the refined
    local features at every scale, the ``n`` strongest locations (backbone activation norm) kept,
    L2-normalised."""
    if x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(f"x must be one image (1, 3, H, W), got shape {tuple(x.shape)}")
    feats, strength = [], []
    for s in scales:
        xs = x if s == 1 else F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)
        fmap = model.backbone(xs)
        feats.append(model.tr.local_features(fmap)[0])        # (h·w, d), row-major as the flatten
        strength.append(fmap[0].flatten(1).norm(dim=0))       # (h·w,)
    feats, strength = torch.cat(feats), torch.cat(strength)
    return F.normalize(feats[top_locations(strength, n)], dim=-1)


@torch.no_grad()
def extract_local(model, paths: Sequence, image_size: int, bbxs: Sequence | None = None,
                  scales: Sequence[float] = DEFAULT_SCALES, n: int = 1000, device: str = "cpu",
                  desc: str = "local", progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Local descriptors of the images at ``paths`` (query crops when ``bbxs``): ``vecs`` (M, d)
    float32 and ``imids`` (M,) int64, the image index of each row (ascending)."""
    model = model.to(device).eval()
    loader = DataLoader(ImageList(paths, image_size, bbxs, model.meta["mean"], model.meta["std"]),
                        batch_size=1, collate_fn=_list_collate)
    vecs, imids = [], []
    for i, (x,) in enumerate(tqdm(loader, desc=desc, disable=not progress, unit="img")):
        v = token_local_features(model, x[None].to(device), n, scales).float().cpu().numpy()
        vecs.append(v)
        imids.append(np.full(len(v), i, np.int64))
    if not vecs:
        return np.zeros((0, model.tr.mid_dim), np.float32), np.zeros(0, np.int64)
    return np.concatenate(vecs).astype(np.float32), np.concatenate(imids)


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
    from asmk import asmk_method

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


__all__ = ["asmk_bytes_per_image", "asmk_index", "asmk_params", "asmk_search", "extract_local",
           "token_local_features", "top_locations"]
