"""Margin softmax over classes: ArcFace (Deng et al., CVPR 2019) and CosFace (Wang et al., CVPR 2018),
the logits a classifier head computes (:class:`retrieval.models.token.MarginHead`) and their
cross-entropy losses (``kind == "labels"``)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .registry import REDUCTIONS, register_loss


def check_labels(embeddings, labels, weight, name: str, wname: str = "weight") -> None:
    """ValueError (naming the loss ``name``) unless embeddings (B, D), integer labels (B,) in [0, C) and
    class weights ``wname`` (C, D) fit together."""
    if not isinstance(embeddings, torch.Tensor) or embeddings.dim() != 2 or not embeddings.is_floating_point():
        raise ValueError(f"{name}: embeddings must be a floating tensor (B, D), got "
                         f"{tuple(embeddings.shape) if isinstance(embeddings, torch.Tensor) else type(embeddings).__name__}")
    if not isinstance(labels, torch.Tensor) or labels.shape != embeddings.shape[:1] or labels.is_floating_point():
        raise ValueError(f"{name}: labels must be an integer tensor (B,) = ({embeddings.shape[0]},), got "
                         f"{tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__}")
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or weight.shape[1] != embeddings.shape[1]:
        raise ValueError(f"{name}: {wname} must be class weights (C, D) with D = {embeddings.shape[1]}, got "
                         f"{tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= weight.shape[0]):
        raise ValueError(f"{name}: labels must be in [0, C) with C = {weight.shape[0]} classes of {wname}, got "
                         f"[{int(labels.min())}, {int(labels.max())}]")


def arcface_logits(embeddings: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                   scale: float = 64.0, margin: float = 0.5) -> torch.Tensor:
    """ArcFace logits (Deng et al., CVPR 2019): (B, C) = ``scale · cos θ_j`` with
    ``cos θ_j = <e/‖e‖, w_j/‖w_j‖>``, the target class's replaced by ``cos(θ_y + margin)`` while
    ``θ_y + margin ≤ π`` and by ``cos θ_y − margin · sin(margin)`` beyond (the paper's code, which
    keeps the target logit decreasing in θ; the SSP repository's ArcFace drops the margin there).
    ``weight`` (C, D) class weights, ``labels`` (B,) class indices. Computed in float32 (at least),
    also under AMP: the margin acts on cosines close to 1."""
    dtype = torch.promote_types(embeddings.dtype, torch.float32)
    with torch.autocast(embeddings.device.type, enabled=False):
        cos = F.linear(F.normalize(embeddings.to(dtype), dim=-1), F.normalize(weight.to(dtype), dim=-1))
        cy = cos.gather(1, labels[:, None].long()).clamp(-1.0, 1.0)
        sy = (1.0 - cy * cy).clamp_min(1e-12).sqrt()
        with_margin = cy * math.cos(margin) - sy * math.sin(margin)
        target = torch.where(cy > math.cos(math.pi - margin), with_margin, cy - margin * math.sin(margin))
        return scale * cos.scatter(1, labels[:, None].long(), target)


@register_loss("arcface", kind="labels")
def arcface_loss(embeddings: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor, scale: float = 64.0,
                 margin: float = 0.5, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of the :func:`arcface_logits` (Deng et al., CVPR 2019; paper defaults s = 64,
    m = 0.5). ``weight`` (C, D): the classifier's class weights (a parameter of the model)."""
    check_labels(embeddings, labels, weight, "arcface_loss")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return F.cross_entropy(arcface_logits(embeddings, weight, labels, scale, margin), labels.long(),
                           reduction=reduction)


def _check_margin_inputs(embeddings, weight, labels, name: str) -> None:
    if not isinstance(embeddings, torch.Tensor) or embeddings.dim() != 2:
        raise ValueError(f"{name}: embeddings must be a tensor (B, D), got "
                         f"{getattr(embeddings, 'shape', type(embeddings).__name__)}")
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or weight.shape[1] != embeddings.shape[1]:
        raise ValueError(f"{name}: weight must be class weights (C, D) with D = {embeddings.shape[1]}, got "
                         f"{getattr(weight, 'shape', type(weight).__name__)}")
    if (not isinstance(labels, torch.Tensor) or labels.shape != embeddings.shape[:1]
            or labels.is_floating_point()):
        raise ValueError(f"{name}: labels must be an integer tensor (B,) = ({embeddings.shape[0]},), got "
                         f"{getattr(labels, 'shape', type(labels).__name__)}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= weight.shape[0]):
        raise ValueError(f"{name}: labels must be in [0, C) with C = {weight.shape[0]}, got "
                         f"[{int(labels.min())}, {int(labels.max())}]")


def cosface_logits(embeddings: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                   scale: float = 64.0, margin: float = 0.35) -> torch.Tensor:
    """CosFace / large-margin cosine logits (Wang et al., CVPR 2018): (B, C) = ``scale · cos θ_j``
    with ``cos θ_j = <e/‖e‖, w_j/‖w_j‖>``, the target class's lowered to ``cos θ_y − margin``.
    ``embeddings`` (B, D), ``weight`` (C, D) class weights, ``labels`` (B,) class indices.
    ``margin`` 0 gives the scaled (normalised) softmax logits."""
    _check_margin_inputs(embeddings, weight, labels, "cosface_logits")
    cos = F.linear(F.normalize(embeddings, dim=-1), F.normalize(weight, dim=-1))
    target = cos.gather(1, labels[:, None].long()) - margin
    return scale * cos.scatter(1, labels[:, None].long(), target)


@register_loss("cosface", kind="labels")
def cosface_loss(embeddings: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor, scale: float = 64.0,
                 margin: float = 0.35, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of the :func:`cosface_logits` (Wang et al., CVPR 2018; paper s = 64, m = 0.35).
    ``weight`` (C, D): the classifier's class weights (a parameter of the model)."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return F.cross_entropy(cosface_logits(embeddings, weight, labels, scale, margin), labels.long(),
                           reduction=reduction)
