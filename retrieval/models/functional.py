"""Pooling and normalisation as plain tensor functions (no modules, no state).

Feature maps are ``x`` of shape (B, C, H, W); pooled descriptors are (B, C).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def l2n(x: torch.Tensor, eps: float = 1e-6, dim: int = -1) -> torch.Tensor:
    """L2-normalise along ``dim``: x / (‖x‖₂ + eps)."""
    return x / (torch.linalg.vector_norm(x, ord=2, dim=dim, keepdim=True) + eps)


def mac(x: torch.Tensor) -> torch.Tensor:
    """Maximum activations of convolutions: max over H, W (Tolias et al., ICLR 2016). (B, C)."""
    return torch.amax(x, dim=(-2, -1))


def spoc(x: torch.Tensor) -> torch.Tensor:
    """Sum-pooled convolutional features, taken as the mean over H, W (Babenko & Lempitsky,
    ICCV 2015). (B, C)."""
    return x.mean(dim=(-2, -1))


def gem(x: torch.Tensor, p: torch.Tensor | float = 3.0, eps: float = 1e-6) -> torch.Tensor:
    """Generalised mean: (mean_{H,W} clamp(x, eps)^p)^(1/p) (Radenović et al., TPAMI 2018).

    p = 1 gives SPoC (average), p → ∞ approaches MAC. (B, C).
    """
    return x.clamp(min=eps).pow(p).mean(dim=(-2, -1)).pow(1.0 / p)


# --------------------------------------------------------------------------- SuperGlobal
# Shao et al., "Global Features are All You Need for Image Retrieval and Reranking", ICCV 2023
GEM_PLUS_P = 4.6        # GeM+: a fixed exponent, the network's learned p is ignored
REGIONAL_P, REGIONAL_SIZE = 2.5, 5
SCALE_GEM_SCALES = (1 / math.sqrt(2), 1.0, math.sqrt(2))


def local_gem(x: torch.Tensor, p: float = REGIONAL_P, size: int = REGIONAL_SIZE) -> torch.Tensor:
    """GeM over every ``size`` × ``size`` window, stride 1: (B, C, H, W) → (B, C, H, W),
    (mean_window max(x, 0)^p)^(1/p), with reflection padding (size − 1)/2 as the released code. A map
    too small to reflect (a side <= (size − 1)/2, where the released code fails) is padded by
    replicating its border instead."""
    pad = (size - 1) // 2
    mode = "reflect" if min(x.shape[-2:]) > pad else "replicate"
    y = F.pad(x.clamp(min=0).pow(p), (pad, pad, pad, pad), mode=mode)
    return F.avg_pool2d(y, size, stride=1).pow(1.0 / p)


def regional_gem(x: torch.Tensor, p: float = REGIONAL_P, size: int = REGIONAL_SIZE) -> torch.Tensor:
    """Regional-GeM of SuperGlobal: the map blended half and half with its :func:`local_gem`,
    F' = F/2 + LocalGeM(F)/2 (B, C, H, W); GeM+ pools it next."""
    return 0.5 * x + 0.5 * local_gem(x, p, size)


def max_over_scales(parts) -> torch.Tensor:
    """Scale-GeM's combination: each scale's descriptor (B, D) L2-normalised, the elementwise max over
    scales, L2-normalised again (the power mean over scales with p → ∞)."""
    return l2n(torch.stack([l2n(v) for v in parts]).amax(0))


# --------------------------------------------------------------------------- R-MAC
RMAC_OVERLAP = 0.4
RMAC_MAX_EXTRA = 6  # at most 6 extra regions along the longer side at level 1 (7 in all)


def _rmac_extra(H: int, W: int, overlap: float) -> int:
    """Extra regions Δ along the longer side (0 for a square map; else the Δ in 1..6 whose level-1
    overlap (w − b)/w, with w = min(H, W) and step b = (max(H, W) − w)/Δ, is closest to ``overlap``;
    the first one wins a tie)."""
    w, long = min(H, W), max(H, W)
    if long == w:
        return 0
    best, best_err = 1, math.inf
    for extra in range(1, RMAC_MAX_EXTRA + 1):
        b = (long - w) / extra
        err = abs((w - b) / w - overlap)
        if err < best_err - 1e-12:
            best, best_err = extra, err
    return best


def _rmac_starts(length: int, side: int, n: int) -> list[int]:
    """``n`` start offsets of windows of size ``side`` spread uniformly over ``length``: floor(i·b),
    b = (length − side)/(n − 1), the last one ending exactly at ``length``."""
    if n == 1:
        return [max(0, (length - side) // 2)] if side < length else [0]
    b = (length - side) / (n - 1)
    return [min(int(math.floor(i * b + 1e-9)), length - side) for i in range(n)]


def rmac_regions(H: int, W: int, L: int = 3, overlap: float = RMAC_OVERLAP) -> np.ndarray:
    """The rigid multi-scale grid of R-MAC regions of an H × W feature map (Tolias, Sicre & Jégou,
    "Particular object retrieval with integral max-pooling of CNN activations", ICLR 2016).

    Rule implemented, for levels l = 1..L:

    * the regions are squares of side w_l = max(1, floor(2·min(H, W)/(l + 1))) (level 1: the largest
      square, of side min(H, W));
    * there are l regions along the shorter side and l + Δ along the longer side, Δ being fixed
      for all levels by the aspect ratio: 0 for a square map, else the Δ ∈ {1..6} for which
      consecutive level-1 regions, spaced by b = (max(H, W) − min(H, W))/Δ, overlap by a fraction
      (w − b)/w as close as possible to ``overlap`` (0.4 in the paper);
    * along each side, n windows of size w_l start at floor(i·(len − w_l)/(n − 1)), i = 0..n−1
      (so the first touches the start and the last the end of the map); a single window along a
      side longer than it is centred.

    Level l thus has l·(l + Δ) regions. Unlike cirtorch, no extra full-map region is added (for a
    square map the level-1 region is the full map anyway).

    Returns an int64 array (R, 4) of half-open boxes (x0, y0, x1, y1) in feature-map cells, levels
    in order, row-major within a level.
    """
    if H < 1 or W < 1:
        raise ValueError(f"feature map must be at least 1x1, got {H}x{W}")
    if L < 1:
        raise ValueError(f"L must be >= 1, got {L}")
    extra = _rmac_extra(H, W, overlap)
    w = min(H, W)
    boxes = []
    for level in range(1, L + 1):
        side = max(1, int(math.floor(2 * w / (level + 1))))
        ny = level + (extra if H > W else 0)
        nx = level + (extra if W > H else 0)
        for y0 in _rmac_starts(H, side, ny):
            for x0 in _rmac_starts(W, side, nx):
                boxes.append((x0, y0, x0 + side, y0 + side))
    return np.asarray(boxes, dtype=np.int64).reshape(-1, 4)


def _apply_region_whiten(v: torch.Tensor, region_whiten) -> torch.Tensor:
    if callable(region_whiten):
        return region_whiten(v)
    mean, P = region_whiten
    mean = torch.as_tensor(mean, dtype=v.dtype, device=v.device)
    P = torch.as_tensor(P, dtype=v.dtype, device=v.device)
    if P.ndim != 2 or P.shape[1] != v.shape[1] or mean.shape != (v.shape[1],):
        raise ValueError(f"region whitening expects mean ({v.shape[1]},) and P (d, {v.shape[1]}), "
                         f"got {tuple(mean.shape)} and {tuple(P.shape)}")
    return (v - mean) @ P.T


def rmac(x: torch.Tensor, L: int = 3, eps: float = 1e-6, region_whiten=None,
         regions: np.ndarray | None = None) -> torch.Tensor:
    """Regional MAC (Tolias et al., ICLR 2016): (B, C, H, W) → (B, C) (or (B, d) when whitened).

    Each region of :func:`rmac_regions` (or of ``regions``, boxes (R, 4) as (x0, y0, x1, y1)) is
    max-pooled and L2-normalised; the (B·R, C) region vectors are optionally PCA-whitened by
    ``region_whiten`` — a callable on (B·R, C) tensors, or a pair ``(mean (C,), P (d, C))``
    applied as (v − mean)·Pᵀ — and L2-normalised again; they are summed over the regions and
    the sum L2-normalised.
    """
    B, C, H, W = x.shape
    boxes = rmac_regions(H, W, L) if regions is None else np.asarray(regions, dtype=np.int64).reshape(-1, 4)
    if len(boxes) == 0:
        raise ValueError("rmac needs at least one region")
    v = torch.stack([torch.amax(x[:, :, y0:y1, x0:x1], dim=(-2, -1)) for x0, y0, x1, y1 in boxes.tolist()],
                    dim=1)  # (B, R, C)
    v = l2n(v, eps)
    if region_whiten is not None:
        R = v.shape[1]
        v = l2n(_apply_region_whiten(v.reshape(B * R, C), region_whiten), eps).reshape(B, R, -1)
    return l2n(v.sum(dim=1), eps)
