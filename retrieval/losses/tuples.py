"""Tuple losses (cirtorch): ``loss(x, **kw)`` with ``x`` (B, T, D) in the tuple layout (query,
positive, negatives; :class:`retrieval.datasets.tuples.TupleMiner`)."""

from __future__ import annotations

import torch

from .registry import reduce_loss, register_loss


def _check_tuples(x, min_t: int, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name}: x must be a torch.Tensor of shape (B, T, D), got {type(x).__name__}")
    if x.dim() != 3 or x.shape[1] < min_t or x.shape[0] < 1 or x.shape[2] < 1:
        raise ValueError(f"{name}: x must have the tuple layout (B, T, D) = (tuples, query + positive + "
                         f"negatives, dim) with B >= 1 and T >= {min_t}, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name}: x must be a floating tensor, got {x.dtype}")
    return x


def _sq_dist(x: torch.Tensor) -> torch.Tensor:
    """Squared distances ‖q − x_t‖² of the query to every other tuple member: (B, T − 1)."""
    return (x[:, 1:] - x[:, :1]).pow(2).sum(-1)


@register_loss("contrastive")
def contrastive_loss(x: torch.Tensor, margin: float = 0.7, reduction: str = "sum") -> torch.Tensor:
    """Contrastive loss (Hadsell et al., CVPR 2006; Radenović et al., TPAMI 2018, eq. 4).

    For each tuple (q, p, n_1..n_N) of ``x`` (B, T, D):
    ``ℓ = ½‖q − p‖² + Σ_j ½ · max(0, margin − ‖q − n_j‖)²``;
    returns ``Σ_b ℓ_b`` (``reduction="sum"``), the mean over tuples, or the (B,) vector ("none").
    Radenović et al. use ``margin`` 0.7 for VGG and 0.75–0.85 for ResNet with GeM.
    """
    _check_tuples(x, 2, "contrastive_loss")
    d2 = _sq_dist(x)
    pos = 0.5 * d2[:, 0]
    # sqrt of a clamped value: the gradient is 0 (not NaN) when a negative coincides with q
    dn = d2[:, 1:].clamp_min(1e-12).sqrt()
    neg = 0.5 * (margin - dn).clamp_min(0).pow(2).sum(1)
    return reduce_loss(pos + neg, reduction)


@register_loss("triplet")
def triplet_loss(x: torch.Tensor, margin: float = 0.1, reduction: str = "sum") -> torch.Tensor:
    """Triplet (ranking) loss (Schroff et al., CVPR 2015; Gordo et al., IJCV 2017).

    For each tuple (q, p, n_1..n_N) of ``x`` (B, T, D), one triplet per negative:
    ``ℓ = Σ_j max(0, ‖q − p‖² − ‖q − n_j‖² + margin)``;
    returns ``Σ_b ℓ_b`` (``reduction="sum"``), the mean over tuples, or the (B,) vector ("none").
    """
    _check_tuples(x, 3, "triplet_loss")
    d2 = _sq_dist(x)
    per = (d2[:, :1] - d2[:, 1:] + margin).clamp_min(0).sum(1)
    return reduce_loss(per, reduction)
