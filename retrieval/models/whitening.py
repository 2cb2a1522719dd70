"""Post-processing of global descriptors by a linear whitening x ↦ P·(x − m), then L2.

* :func:`learn_pca_whitening`: PCA-whitening of a set of (database-side) descriptors, optionally
  reducing the dimension (Jégou & Chum, "Negative evidences and co-occurrences in image retrieval:
  the benefit of PCA and whitening", ECCV 2012).
* :func:`learn_whitening`: the discriminative "learned whitening" from matching pairs of
  Radenović, Tolias & Chum ("CNN image retrieval learns from BoW", ECCV 2016; "Fine-tuning CNN
  image retrieval with no human annotation", TPAMI 2018).
* :func:`init_fc_whitening`: copy a learned whitening into the FC layer of a
  :class:`~retrieval.models.global_net.GlobalNet` (weight = P, bias = −P·m).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..io import load_arrays, save_arrays
from ..metrics import label_map



@dataclass(eq=False)
class Whitening:
    """A linear projection with centring: ``transform(x) = (x − mean)·Pᵀ`` and
    ``apply(x) = l2n(transform(x))``.

    mean: (D,) float64; P: (d_out, D) float64, rows in order of decreasing importance (so a
    prefix of rows is a valid dimensionality reduction); kind: how it was learned ("pca",
    "learned", ...); meta: JSON-able information (e.g. the training set).
    """

    mean: np.ndarray
    P: np.ndarray
    kind: str = "pca"
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.mean = np.asarray(self.mean, dtype=np.float64)
        self.P = np.asarray(self.P, dtype=np.float64)
        if self.mean.ndim != 1:
            raise ValueError(f"whitening mean must be 1-D (D,), got shape {self.mean.shape}")
        if self.P.ndim != 2 or self.P.shape[1] != self.mean.shape[0]:
            raise ValueError(f"whitening P must be (d_out, {self.mean.shape[0]}), got shape {self.P.shape}")
        if not (np.isfinite(self.mean).all() and np.isfinite(self.P).all()):
            raise ValueError("whitening mean / P contain NaN or Inf")

    @property
    def in_dim(self) -> int:
        return int(self.P.shape[1])

    @property
    def out_dim(self) -> int:
        return int(self.P.shape[0])

    def _check(self, x) -> None:
        if x.ndim != 2 or x.shape[1] != self.in_dim:
            raise ValueError(f"whitening ({self.kind}) expects descriptors of dimension D = "
                             f"{self.in_dim} as (N, {self.in_dim}), got shape {tuple(x.shape)}")

    def transform(self, x: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """(N, D) → (N, d_out) = (x − mean)·Pᵀ, not normalised. Tensors stay tensors (same dtype
        and device, differentiable w.r.t. x); arrays are computed in float64 and returned in the
        input's floating dtype (float64 for integer input)."""
        self._check(x)
        if isinstance(x, torch.Tensor):
            out = x.dtype if x.is_floating_point() else torch.float32
            dt = torch.promote_types(out, torch.float32)  # P may overflow float16: compute in >= fp32
            mean = torch.as_tensor(self.mean, dtype=dt, device=x.device)
            P = torch.as_tensor(self.P, dtype=dt, device=x.device)
            return ((x.to(dt) - mean) @ P.T).to(out)
        x = np.asarray(x)
        out_dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float64
        return ((x.astype(np.float64) - self.mean) @ self.P.T).astype(out_dtype, copy=False)

    def apply(self, x: np.ndarray | torch.Tensor, eps: float = 1e-6) -> np.ndarray | torch.Tensor:
        """(N, D) → (N, d_out): whitened and L2-normalised, ``y / (‖y‖ + eps)``."""
        y = self.transform(x)
        if isinstance(y, torch.Tensor):
            return y / (torch.linalg.vector_norm(y, dim=-1, keepdim=True) + eps)
        y64 = y.astype(np.float64)
        return (y64 / (np.linalg.norm(y64, axis=-1, keepdims=True) + eps)).astype(y.dtype, copy=False)

    __call__ = apply

    def reduce(self, dim: int) -> "Whitening":
        """The same whitening keeping only the first ``dim`` output dimensions."""
        if not 1 <= dim <= self.out_dim:
            raise ValueError(f"dim must be in 1..{self.out_dim}, got {dim}")
        return Whitening(self.mean.copy(), self.P[:dim].copy(), self.kind, dict(self.meta))

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``mean``, ``P``, ``kind`` and ``meta`` (JSON) to an .npz file, atomically."""
        return save_arrays(path, self.meta, key="meta", mean=self.mean, P=self.P, kind=np.array(self.kind))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Whitening":
        """Read a file written by :meth:`save`; FileNotFoundError / ValueError with the path."""
        arrays, meta = load_arrays(path, ("mean", "P", "kind"), key="meta", what="whitening file")
        try:
            return cls(arrays["mean"], arrays["P"], str(arrays["kind"]), meta)
        except ValueError as e:
            raise ValueError(f"{path}: not a valid whitening ({e})") from e


def _as_2d(X, name: str = "X") -> np.ndarray:
    X = np.asarray(X.detach().cpu() if isinstance(X, torch.Tensor) else X, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] < 2:
        raise ValueError(f"{name} must be (N, D) with N >= 2, got shape {X.shape}")
    if not np.isfinite(X).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return X


def _check_dim(dim: int | None, D: int) -> int:
    if dim is None:
        return D
    if not 1 <= int(dim) <= D:
        raise ValueError(f"dim must be in 1..{D}, got {dim}")
    return int(dim)


def _eigh_desc(C: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigen-decomposition of a symmetric matrix, eigenvalues in decreasing order; each
    eigenvector's sign is fixed (largest-magnitude entry positive) so results are reproducible."""
    lam, V = np.linalg.eigh((C + C.T) / 2)
    order = np.argsort(lam)[::-1]
    lam, V = lam[order], V[:, order]
    idx = np.argmax(np.abs(V), axis=0)
    V = V * np.sign(V[idx, np.arange(V.shape[1])])
    return lam, V


def _floor(lam: np.ndarray, eps: float) -> np.ndarray:
    """Eigenvalues floored at ``eps`` times the largest one (guards near-singular covariances)."""
    return np.maximum(lam, eps * max(float(lam[0]), np.finfo(np.float64).tiny))


def learn_pca_whitening(X, dim: int | None = None, eps: float = 1e-9, whiten: bool = True,
                        shrinkage: float = 0.0) -> Whitening:
    """PCA-whitening learned on descriptors X (N, D) (e.g. the database side).

    m = mean of X; C = (1/N)·Σ (x − m)(x − m)ᵀ = V·Λ·Vᵀ (eigenvalues decreasing);
    P = Λ_k^{−1/2}·V_kᵀ for the first k = ``dim`` (default D) components, so the whitened training
    data has zero mean and identity covariance (within the kept dimensions). Eigenvalues are
    floored at ``eps``·λ_max; with N ≤ D the trailing directions are not estimable (a warning is
    given when they are kept). ``whiten=False``: plain PCA, P = V_kᵀ (kind ``"pca-nowhiten"``).
    ``shrinkage`` α > 0 first replaces C by (1 − α)·C + α·(tr C / D)·I (Ledoit & Wolf, 2004): the small,
    poorly estimated eigenvalues are raised, so whitening no longer blows up their noise (0: the paper's).
    """
    return pca_whitenings(X, [dim], [shrinkage], eps, whiten)[(dim, shrinkage)]


def pca_whitenings(X, dims, shrinkages, eps: float = 1e-9, whiten: bool = True) -> dict:
    """:func:`learn_pca_whitening` for every ``dim`` × ``shrinkage`` from one eigen-decomposition: the shrunk
    covariance (1 − α)·C + α·(tr C / D)·I has C's eigenvectors and eigenvalues (1 − α)·λ + α·mean(λ), so only
    the eigenvalues change. Returns ``{(dim, shrinkage): Whitening}``."""
    X = _as_2d(X)
    N, D = X.shape
    for a in shrinkages:
        if not 0.0 <= a <= 1.0:
            raise ValueError(f"shrinkage must be in [0, 1], got {a}")
    ks = {dim: _check_dim(dim, D) for dim in dims}
    if max(ks.values()) > N - 1:
        warnings.warn(f"PCA-whitening to {max(ks.values())} dimensions from only {N} descriptors: at most {N - 1} "
                      "directions have non-zero variance", RuntimeWarning, stacklevel=3)
    m = X.mean(axis=0)
    Xc = X - m
    lam0, V = _eigh_desc(Xc.T @ Xc / N)
    out = {}
    for a in shrinkages:
        lam = _floor((1.0 - a) * lam0 + a * lam0.mean(), eps) if a else _floor(lam0, eps)
        for dim, k in ks.items():
            P = (V[:, :k] / np.sqrt(lam[:k])).T if whiten else V[:, :k].T.copy()
            out[(dim, a)] = Whitening(m, P, "pca" if whiten else "pca-nowhiten",
                                      dict(n_train=N, dim=k, eps=eps, eigvals=lam[:k].tolist(), shrinkage=a))
    return out


def _shrink(C: np.ndarray, shrinkage: float, name: str = "shrinkage") -> np.ndarray:
    """(1 − α)·C + α·(tr C / D)·I: shrinkage towards a scaled identity (Ledoit & Wolf, 2004)."""
    if not 0.0 <= shrinkage <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {shrinkage}")
    if shrinkage == 0.0:
        return C
    D = C.shape[0]
    return (1.0 - shrinkage) * C + shrinkage * (np.trace(C) / D) * np.eye(D)


def learn_whitening(X, qidxs: Sequence[int], pidxs: Sequence[int], dim: int | None = None,
                    eps: float = 1e-9, shrinkage: float = 0.0) -> Whitening:
    """Learned discriminative whitening from matching pairs (Radenović et al., ECCV 2016 / TPAMI
    2018), X (N, D), pairs (X[qidxs[i]], X[pidxs[i]]).

    m = mean of the query descriptors X[qidxs];
    C_S = (1/n)·Σ_i (x_q − x_p)(x_q − x_p)ᵀ (intra-class, matching-pair differences);
    W = C_S^{−1/2} (symmetric, eigenvalues floored at ``eps``·λ_max);
    C_D = (1/N)·Σ_x W(x − m)(W(x − m))ᵀ over all of X (inter-class) = U·Σ·Uᵀ, decreasing;
    P = U_kᵀ·W for the first k = ``dim`` (default D) components.

    On the training data P makes C_S the identity (P·C_S·Pᵀ = I) and the projected (x − m)
    decorrelated with decreasing variances. ``shrinkage`` α > 0 first replaces C_S by
    (1 − α)·C_S + α·(tr C_S / D)·I, which keeps few or over-fitted pairs from blowing up the
    directions in which they happen to vary little (α = 0: the paper's estimator).
    """
    X = _as_2d(X)
    N, D = X.shape
    k = _check_dim(dim, D)
    q = np.asarray(qidxs, dtype=np.int64).reshape(-1)
    p = np.asarray(pidxs, dtype=np.int64).reshape(-1)
    if len(q) != len(p) or len(q) == 0:
        raise ValueError(f"qidxs and pidxs must be non-empty and of equal length, got {len(q)} and {len(p)}")
    if min(q.min(), p.min()) < 0 or max(q.max(), p.max()) >= N:
        raise ValueError(f"pair indices must be in 0..{N - 1}")
    if len(q) < D:
        warnings.warn(f"learning whitening of dimension {D} from only {len(q)} pairs: the pair-"
                      "difference covariance is singular and is regularised", RuntimeWarning, stacklevel=2)
    m = X[q].mean(axis=0)
    diff = X[q] - X[p]
    lam_s, V_s = _eigh_desc(_shrink(diff.T @ diff / len(q), shrinkage))
    W = (V_s / np.sqrt(_floor(lam_s, eps))) @ V_s.T  # C_S^{-1/2}
    Y = (X - m) @ W.T
    lam_d, U = _eigh_desc(Y.T @ Y / N)
    P = U[:, :k].T @ W
    return Whitening(m, P, "learned", dict(n_train=N, n_pairs=len(q), dim=k, eps=eps, shrinkage=shrinkage,
                                           eigvals=lam_d[:k].tolist()))


def select_shrinkage(X, qidxs: Sequence[int], pidxs: Sequence[int], X_val, val_labels,
                     grid: Sequence[float] = (0.0, 0.25, 0.5, 0.75)) -> tuple[float, dict[float, float]]:
    """The shrinkage of :func:`learn_whitening` chosen on a labelled validation split, never on test: for
    each α of ``grid`` the whitening learned from the training pairs (``X`` (N, D), ``qidxs``, ``pidxs``) is
    applied to the val descriptors ``X_val`` (M, D) and scored by :func:`~retrieval.metrics.label_map`
    (each val image queries the others; positives share its landmark). Returns ``(best α, {α: val mAP})``;
    ties go to the first α of ``grid``. A best α at the end of ``grid`` means the grid is too small."""
    if len(grid) == 0:
        raise ValueError("grid: no shrinkage to choose from")
    val_map = {a: label_map(learn_whitening(X, qidxs, pidxs, shrinkage=a).apply(X_val), val_labels) for a in grid}
    return max(val_map, key=val_map.get), val_map


@torch.no_grad()
def init_fc_whitening(net: nn.Module, whitening: Whitening) -> nn.Module:
    """Copy ``whitening`` into ``net.whiten`` (an ``nn.Linear``): weight = P, bias = −P·mean, so
    that ``net(x) = whitening.apply(v)`` with v the network's L2-normalised pooled descriptor
    (Radenović et al., TPAMI 2018, initialising the FC layer by learned whitening).

    If ``net.whiten`` is None a new ``nn.Linear(D, d_out)`` is created (and ``net.meta`` updated);
    an existing layer must have matching shape. Returns ``net``.
    """
    layer = getattr(net, "whiten", None)
    meta = getattr(net, "meta", {})
    D = meta.get("dim")
    if D is not None and D != whitening.in_dim:
        raise ValueError(f"whitening expects descriptors of dimension {whitening.in_dim}, "
                         f"the network pools {D}")
    if layer is None:
        ref = next(net.parameters(), None)
        layer = nn.Linear(whitening.in_dim, whitening.out_dim, bias=True)
        if ref is not None:
            layer = layer.to(device=ref.device, dtype=ref.dtype)
        net.whiten = layer
    elif not isinstance(layer, nn.Linear) or layer.bias is None:
        raise ValueError(f"net.whiten must be an nn.Linear with bias, got {type(layer).__name__}")
    elif (layer.out_features, layer.in_features) != whitening.P.shape:
        raise ValueError(f"net.whiten is {layer.in_features} → {layer.out_features}, whitening is "
                         f"{whitening.in_dim} → {whitening.out_dim}")
    w = torch.as_tensor(whitening.P, dtype=torch.float64)
    b = -(w @ torch.as_tensor(whitening.mean, dtype=torch.float64))
    layer.weight.copy_(w.to(layer.weight))
    layer.bias.copy_(b.to(layer.bias))
    if isinstance(meta, dict):
        meta.update(whitening=True, outputdim=whitening.out_dim, whitening_kind=whitening.kind)
    return net
