"""Local descriptors of a Token network (Wu et al., AAAI 2022), for the Token paper's comparison of
aggregators on the same local features (ASMK: :func:`retrieval.search.asmk_index`).

Local descriptors: the refined local features the Token tokeniser aggregates (``tr.local_features``:
1×1 conv + BN + LFSA, dimension d), at several scales; of each image the ``n`` strongest locations
are kept, strength being the L2 norm of the backbone activation there (as HOW, Tolias et al. ECCV
2020), and L2-normalised.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..extract import DEFAULT_SCALES, ImageList, list_collate


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
                        batch_size=1, collate_fn=list_collate)
    vecs, imids = [], []
    for i, (x,) in enumerate(tqdm(loader, desc=desc, disable=not progress, unit="img")):
        v = token_local_features(model, x[None].to(device), n, scales).float().cpu().numpy()
        vecs.append(v)
        imids.append(np.full(len(v), i, np.int64))
    if not vecs:
        return np.zeros((0, model.tr.mid_dim), np.float32), np.zeros(0, np.int64)
    return np.concatenate(vecs).astype(np.float32), np.concatenate(imids)


__all__ = ["extract_local", "token_local_features", "top_locations"]
