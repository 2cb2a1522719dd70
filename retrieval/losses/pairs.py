"""In-batch metric learning over all pairs of a labelled batch (dimension-reduction experiments):
``loss(embeddings (B, D), labels (B,))``."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .registry import register_loss


def _pair_masks(embeddings: torch.Tensor, labels: torch.Tensor, name: str):
    if embeddings.ndim != 2:
        raise ValueError(f"{name}: embeddings must be (B, D), got shape {tuple(embeddings.shape)}")
    if labels.shape != (embeddings.shape[0],):
        raise ValueError(f"{name}: labels must be ({embeddings.shape[0]},), got shape {tuple(labels.shape)}")
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same


def _euclidean(x: torch.Tensor) -> torch.Tensor:
    """(B, D) → (B, B) Euclidean distances, with a finite gradient at 0."""
    sq = x.pow(2).sum(1)
    return (sq[:, None] + sq[None, :] - 2 * x @ x.T).clamp(min=1e-12).sqrt()


@register_loss("lifted", kind="labels")
def lifted_structure_loss(embeddings: torch.Tensor, labels: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """Lifted structured embedding loss (Oh Song et al., CVPR 2016, eq. 4).

    embeddings (B, D), labels (B,). For every positive pair (i, j), i ≠ j, with Euclidean
    distances D: J_ij = log(Σ_{k: y_k≠y_i} exp(α − D_ik) + Σ_{l: y_l≠y_j} exp(α − D_jl)) + D_ij;
    loss = 1 / (2|P|) Σ_{(i,j)∈P} max(0, J_ij)² over the |P| unordered positive pairs.
    ``margin`` = α (paper: 1). A batch without positive pairs gives 0 (with a gradient graph).
    """
    pos, neg = _pair_masks(embeddings, labels, "lifted")
    D = _euclidean(embeddings)
    # log Σ_{k∈N(i)} exp(α − D_ik) per anchor, −inf when i has no negative
    lse = torch.logsumexp((margin - D).masked_fill(~neg, float("-inf")), dim=1)      # (B,)
    J = torch.logaddexp(lse[:, None], lse[None, :]) + D                                # (B, B)
    terms = F.relu(J[pos]).pow(2)
    if terms.numel() == 0:
        return embeddings.sum() * 0.0
    return terms.mean() / 2  # J is symmetric: the mean over ordered pairs is the mean over unordered ones


@register_loss("pairs", kind="labels")
def in_batch_pair_loss(embeddings: torch.Tensor, labels: torch.Tensor, margin: float = 0.7) -> torch.Tensor:
    """Contrastive loss over every pair of the batch (Hadsell et al., CVPR 2006, as cirtorch's
    contrastive loss, but on all in-batch pairs instead of mined tuples): ½ D_ij² for positive
    pairs, ½ max(0, margin − D_ij)² for negative pairs, averaged over the unordered pairs i < j.
    embeddings (B, D), labels (B,)."""
    pos, neg = _pair_masks(embeddings, labels, "pairs")
    D = _euclidean(embeddings)
    upper = torch.triu(torch.ones_like(pos), diagonal=1)
    per = torch.where(pos, 0.5 * D.pow(2), 0.5 * F.relu(margin - D).pow(2))
    n = upper.sum()
    if n == 0:
        return embeddings.sum() * 0.0
    return (per * (upper & (pos | neg))).sum() / n
