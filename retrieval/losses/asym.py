"""Losses of asymmetric retrieval: a small query network trained against a frozen gallery network.

``query`` are the query network's descriptors, ``gallery`` the gallery network's descriptors of the
same images (precomputed, no gradient), both (B, D) and L2-normalised, D the gallery dim
(``kind == "pair"``); HVS and LCE classify the query embedding (``kind == "labels"``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .margin import arcface_loss, check_labels
from .registry import reduce_loss, register_loss
from .tuples import contrastive_loss


def _check_pair(query, gallery, name: str, tuples: bool = False) -> None:
    for what, x in (("query", query), ("gallery", gallery)):
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{name}: {what} must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise ValueError(f"{name}: {what} must be a floating tensor, got {x.dtype}")
    want = "(B, T, D) tuples" if tuples else "(B, D)"
    if query.dim() != (3 if tuples else 2) or query.shape[0] < 1:
        raise ValueError(f"{name}: query must be {want} with B >= 1, got shape {tuple(query.shape)}")
    if gallery.shape != query.shape:
        raise ValueError(f"{name}: gallery descriptors {tuple(gallery.shape)} must have the query's shape "
                         f"{tuple(query.shape)} (the gallery network's descriptors of the same images)")


def subspace_similarities(x: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Cosine similarities of the M sub-vectors of ``x`` (B, D) to the anchors of their sub-space.

    ``anchors`` (M, K, D/M) (e.g. PQ centroids, :mod:`retrieval.anchors`); each sub-vector and each
    anchor is L2-normalised. Returns (B, M, K).
    """
    M, K, d = anchors.shape
    if x.shape[-1] != M * d:
        raise ValueError(f"descriptors of dimension {x.shape[-1]} do not split into the anchors' "
                         f"M={M} sub-spaces of dimension {d} (M·d = {M * d})")
    sub = F.normalize(x.reshape(x.shape[0], M, d), dim=-1)
    return torch.einsum("bmd,mkd->bmk", sub, F.normalize(anchors.to(sub), dim=-1))


@register_loss("ssp", kind="pair")
def ssp_loss(query: torch.Tensor, gallery: torch.Tensor, anchors, scale: float = 10.0,
             reduction: str = "mean") -> torch.Tensor:
    """Structure similarity preservation (Wu et al., "Structure Similarity Preservation Learning for
    Asymmetric Image Retrieval", IEEE TMM 2023; code github.com/MCC-WH/SSP).

    Both descriptors (B, D) are split into the M sub-vectors of the ``anchors`` (M, K, D/M), each
    L2-normalised; in every sub-space the cosine similarities to its K anchors, times ``scale``
    (1/τ; paper: τ = 0.1), go through a softmax: the gallery's soft assignment ``p`` (no gradient)
    and the query's ``q``. The loss of an image is ``(1/M) Σ_m KL(p_m ‖ q_m)`` (KL summed over the K
    anchors); ``"mean"`` averages it over the batch, as the paper (``"sum"``, ``"none"``: (B,)).
    It is 0 exactly when the query and gallery descriptors coincide in every sub-space.

    Where the released code and the paper disagree, this follows the paper: the released model
    never loads its anchors (the buffer is registered as ``centroids`` but written to a mistyped
    ``centrooids``; the constructor keyword is ``PQ_centroid_path`` in the model and
    ``PQ_centriods_path`` in the training script, which also passes a third input the forward does
    not take); it hard-codes M = 64 sub-spaces while its anchors default to M = 32. Here M, K and
    the sub-space dimension come from ``anchors``.
    """
    _check_pair(query, gallery, "ssp_loss")
    anchors = torch.as_tensor(anchors)
    if anchors.dim() != 3:
        raise ValueError(f"ssp_loss: anchors must be (M, K, D/M), got shape {tuple(anchors.shape)}")
    dtype = torch.promote_types(query.dtype, torch.float32)  # float32 at least, also under AMP
    with torch.autocast(query.device.type, enabled=False):
        with torch.no_grad():
            log_p = F.log_softmax(scale * subspace_similarities(gallery.detach().to(dtype), anchors.to(dtype)), dim=-1)
        log_q = F.log_softmax(scale * subspace_similarities(query.to(dtype), anchors.to(dtype)), dim=-1)
        per = F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(-1).mean(-1)  # (B,)
    return reduce_loss(per, reduction)


@register_loss("regression", kind="pair")
def regression_loss(query: torch.Tensor, gallery: torch.Tensor, squared: bool = True,
                    reduction: str = "mean") -> torch.Tensor:
    """Feature regression: ``‖q − g‖²`` (``squared``; for unit vectors ``2 − 2 cos``) or ``‖q − g‖``
    between the query and gallery networks' descriptors of the same image (the "absolute" transfer
    of Budnik & Avrithis, CVPR 2021). ``query``/``gallery`` (B, D) or (B, T, D): one term per
    descriptor; ``"mean"`` (default) / ``"sum"`` over all of them, ``"none"`` returns their shape
    without the last dimension."""
    _check_pair(query, gallery, "regression_loss", tuples=query.dim() == 3)
    d2 = (query - gallery.detach()).pow(2).sum(-1)
    per = d2 if squared else d2.clamp_min(1e-12).sqrt()
    if reduction == "none":
        return per
    return reduce_loss(per.reshape(-1), reduction)


def _default_scale(scale, embeddings) -> float:
    return math.sqrt(embeddings.shape[-1]) if scale is None else float(scale)


@register_loss("hvs", kind="labels")
def hvs_loss(embeddings: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor, old_weight: torch.Tensor,
             scale: float | None = None, margin: float = 0.15, old_margin: float | None = None,
             old_factor: float = 1.0, reduction: str = "mean") -> torch.Tensor:
    """Compatibility-aware training as in HVS (Duggal et al., "Compatibility-aware Heterogeneous
    Visual Search", CVPR 2021), i.e. the influence loss of BCT (Shen et al., CVPR 2020): the query
    network's embedding (B, D) is classified by a new ArcFace head ``weight`` (C, D) *and* by the
    frozen classifier of the gallery network ``old_weight`` (C, D; no gradient), so that it lands
    where the gallery network puts the class. ``scale`` defaults to √D, ``margin`` 0.15 for both
    heads (``old_margin`` None: the same) as in the SSP authors' baseline;
    loss = ArcFace(new) + ``old_factor`` · ArcFace(old)."""
    check_labels(embeddings, labels, weight, "hvs_loss")
    check_labels(embeddings, labels, old_weight, "hvs_loss", "old_weight")
    s = _default_scale(scale, embeddings)
    new = arcface_loss(embeddings, labels, weight, s, margin, reduction)
    old = arcface_loss(embeddings, labels, old_weight.detach(), s, margin if old_margin is None else old_margin,
                       reduction)
    return new + old_factor * old


@register_loss("lce", kind="labels")
def lce_loss(embeddings: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor, old_weight: torch.Tensor,
             transformed: torch.Tensor, transformed_weight: torch.Tensor, scale: float | None = None,
             margin: float = 0.15, old_margin: float = 0.2, old_factor: float = 0.5, consistency: float = 10.0,
             reduction: str = "mean") -> torch.Tensor:
    """Learning compatible embeddings (LCE; Meng et al., ICCV 2021) as the SSP authors' baseline:
    the query network's embedding (B, D) is trained by a new ArcFace head ``weight`` (C, D); the
    same embedding mapped into the gallery space by a small residual transformation ψ
    (``transformed`` = ψ(embedding), (B, D)) is classified by the frozen gallery classifier
    ``old_weight`` (C, D); and ψ of the new class weights (``transformed_weight`` (C, D)) is pulled
    onto the old ones: ``consistency · (1/C) Σ_c ‖ψ(w_c)/‖ψ(w_c)‖ − w°_c/‖w°_c‖‖``.

    loss = ArcFace(new, ``margin``) + ``old_factor`` · ArcFace(old on ψ, ``old_margin``) + weight
    term (added to every image's loss, so ``"mean"`` is the total above); ``scale`` defaults to √D.
    """
    check_labels(embeddings, labels, weight, "lce_loss")
    check_labels(transformed, labels, old_weight, "lce_loss", "old_weight")
    if transformed_weight.shape != old_weight.shape:
        raise ValueError(f"lce_loss: transformed_weight {tuple(transformed_weight.shape)} must match "
                         f"old_weight {tuple(old_weight.shape)}")
    s = _default_scale(scale, embeddings)
    new = arcface_loss(embeddings, labels, weight, s, margin, "none")
    old = arcface_loss(transformed, labels, old_weight.detach(), s, old_margin, "none")
    gap = (F.normalize(transformed_weight, dim=-1) - F.normalize(old_weight.detach(), dim=-1))
    weight_term = gap.pow(2).sum(-1).clamp_min(1e-12).sqrt().mean()
    return reduce_loss(new + old_factor * old + consistency * weight_term, reduction)


@register_loss("aml", kind="pair")
def aml_loss(query: torch.Tensor, gallery: torch.Tensor, margin: float = 0.7, reg_weight: float = 1.0,
             reduction: str = "mean") -> torch.Tensor:
    """Asymmetric metric learning (Budnik & Avrithis, "Asymmetric Metric Learning for Knowledge
    Transfer", CVPR 2021) with the regression term of the SSP authors' baseline.

    ``query`` (B, T, D): the query network's descriptors of tuples (q, p, n_1..n_N) in the tuple
    layout; ``gallery`` (B, T, D): the gallery network's descriptors of the same images. The
    contrastive term (:func:`contrastive_loss`) takes the *query network's* q as anchor against the
    *gallery network's* positive and negatives (mined with the query network against gallery
    descriptors): ``½‖q − g_p‖² + Σ_j ½ max(0, margin − ‖q − g_nj‖)²``; the regression term is the
    mean ``‖q_t − g_t‖`` over the T images of the tuple, weighted by ``reg_weight``. Per tuple;
    ``"mean"`` over tuples (default), ``"sum"``, ``"none"`` (B,).

    The released baseline differs: its negatives ``features[:, 1:]`` include the positive, its
    negative term has no hinge (``(margin − d)²`` also pulls far negatives back to the margin),
    and the positive term is added once per negative.
    """
    _check_pair(query, gallery, "aml_loss", tuples=True)
    if query.shape[1] < 2:
        raise ValueError(f"aml_loss: tuples need T >= 2 (query, positive, negatives), got T = {query.shape[1]}")
    mixed = torch.cat([query[:, :1], gallery[:, 1:].detach()], dim=1)
    contrast = contrastive_loss(mixed, margin=margin, reduction="none")
    reg = regression_loss(query, gallery, squared=False, reduction="none").mean(1)
    return reduce_loss(contrast + reg_weight * reg, reduction)
