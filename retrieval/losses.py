"""Metric-learning losses for training global descriptors, and a registry of them by name.

Two kinds of loss are registered, with two signatures:

* ``kind == "tuple"``: ``loss(x, **kw)`` with ``x`` (B, T, D) in the *tuple layout*: B tuples of
  T = 2 + N L2-normalised descriptors each, ``x[:, 0]`` the query, ``x[:, 1]`` its positive and
  ``x[:, 2:]`` the N negatives (the tuples of :class:`retrieval.datasets.tuples.TupleMiner`).
* ``kind == "labels"``: ``loss(embeddings, labels, **kw)`` with ``embeddings`` (B, D) and integer
  ``labels`` (B,) (classification-margin losses such as ArcFace / CosFace).
* ``kind == "pair"``: ``loss(query, gallery, **kw)``: asymmetric retrieval, the query network's
  descriptors and the frozen gallery network's descriptors of the *same* images, (B, D) (or
  (B, T, D) tuples for AML).

A trainer reads ``get_loss(name).kind`` to know which one to call.

Reduction: a tuple's loss is the *sum* of its terms (one per positive / negative pair), as in
cirtorch; ``reduction="sum"`` (default, cirtorch's gradient scale) sums the B tuple losses,
``"mean"`` averages them, ``"none"`` returns the (B,) vector.
"""

from __future__ import annotations

import functools
import inspect
import math
from typing import Callable

import torch
import torch.nn.functional as F

REDUCTIONS = ("sum", "mean", "none")
KINDS = ("tuple", "labels", "pair")

LOSSES: dict[str, Callable] = {}


def register_loss(name: str, kind: str = "tuple"):
    """Decorator: register ``fn`` in :data:`LOSSES` under ``name`` and mark ``fn.kind = kind``.

    A name taken by another function raises ValueError (re-registering the same function, e.g. on
    a module reload, replaces it).

    ``kind="tuple"`` for losses ``fn(x (B, T, D), **kw)``; ``kind="labels"`` for
    ``fn(embeddings (B, D), labels (B,), **kw)``; ``kind="pair"`` for ``fn(query, gallery, **kw)``.
    """
    if kind not in KINDS:
        raise ValueError(f"loss kind must be one of {KINDS}, got {kind!r}")

    def deco(fn: Callable) -> Callable:
        old = LOSSES.get(name)
        if old is not None and (old.__module__, old.__qualname__) != (fn.__module__, fn.__qualname__):
            raise ValueError(f"a loss named {name!r} is already registered ({LOSSES[name].__name__})")
        fn.kind = kind
        fn.loss_name = name
        LOSSES[name] = fn
        return fn

    return deco


def get_loss(name: str, **kwargs) -> Callable:
    """The registered loss ``name`` with its hyper-parameters bound (e.g. ``margin=0.7``).

    Returns a callable ``(x) -> loss`` for tuple losses, ``(embeddings, labels) -> loss`` for
    label losses and ``(query, gallery) -> loss`` for pair losses; it carries ``.kind`` ("tuple" / "labels"), ``.name`` and ``.kwargs``.
    Unknown names or keyword arguments raise ValueError listing what is known.
    """
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; known losses: {sorted(LOSSES)}")
    fn = LOSSES[name]
    params = inspect.signature(fn).parameters
    n_data = 1 if fn.kind == "tuple" else 2
    allowed = [p for p in list(params)[n_data:]
               if params[p].kind in (params[p].POSITIONAL_OR_KEYWORD, params[p].KEYWORD_ONLY)]
    bad = sorted(set(kwargs) - set(allowed))
    if bad and not any(p.kind == p.VAR_KEYWORD for p in params.values()):
        raise ValueError(f"loss {name!r} takes no argument(s) {bad}; its parameters are {allowed}")
    loss = functools.partial(fn, **kwargs)
    loss.kind, loss.name, loss.kwargs = fn.kind, name, dict(kwargs)  # partial objects take attributes
    return loss


# ----------------------------------------------------------------------------------------------
# helpers


def _check_tuples(x, min_t: int, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name}: x must be a torch.Tensor of shape (B, T, D), got {type(x).__name__}")
    if x.dim() != 3 or x.shape[1] < min_t or x.shape[0] < 1 or x.shape[2] < 1:
        raise ValueError(f"{name}: x must have the tuple layout (B, T, D) = (tuples, query + positive + "
                         f"negatives, dim) with B >= 1 and T >= {min_t}, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name}: x must be a floating tensor, got {x.dtype}")
    return x


def _reduce(per_tuple: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "sum":
        return per_tuple.sum()
    if reduction == "mean":
        return per_tuple.mean()
    if reduction == "none":
        return per_tuple
    raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def _sq_dist(x: torch.Tensor) -> torch.Tensor:
    """Squared distances ‖q − x_t‖² of the query to every other tuple member: (B, T − 1)."""
    return (x[:, 1:] - x[:, :1]).pow(2).sum(-1)


# ----------------------------------------------------------------------------------------------
# tuple losses


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
    return _reduce(pos + neg, reduction)


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
    return _reduce(per, reduction)


# ----------------------------------------------------------------------------------------------
# asymmetric retrieval: a small query network trained against a frozen gallery network
#
# ``query`` are the query network's descriptors, ``gallery`` the gallery network's descriptors of
# the same images (precomputed, no gradient), both (B, D) and L2-normalised, D the gallery dim.


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


def _check_labels(embeddings, labels, weight, name: str, wname: str = "weight") -> None:
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
    return _reduce(per, reduction)


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
    return _reduce(per.reshape(-1), reduction)


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
    _check_labels(embeddings, labels, weight, "arcface_loss")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return F.cross_entropy(arcface_logits(embeddings, weight, labels, scale, margin), labels.long(),
                           reduction=reduction)


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
    _check_labels(embeddings, labels, weight, "hvs_loss")
    _check_labels(embeddings, labels, old_weight, "hvs_loss", "old_weight")
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
    _check_labels(embeddings, labels, weight, "lce_loss")
    _check_labels(transformed, labels, old_weight, "lce_loss", "old_weight")
    if transformed_weight.shape != old_weight.shape:
        raise ValueError(f"lce_loss: transformed_weight {tuple(transformed_weight.shape)} must match "
                         f"old_weight {tuple(old_weight.shape)}")
    s = _default_scale(scale, embeddings)
    new = arcface_loss(embeddings, labels, weight, s, margin, "none")
    old = arcface_loss(transformed, labels, old_weight.detach(), s, old_margin, "none")
    gap = (F.normalize(transformed_weight, dim=-1) - F.normalize(old_weight.detach(), dim=-1))
    weight_term = gap.pow(2).sum(-1).clamp_min(1e-12).sqrt().mean()
    return _reduce(new + old_factor * old + consistency * weight_term, reduction)


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
    return _reduce(contrast + reg_weight * reg, reduction)


__all__ = ["KINDS", "LOSSES", "REDUCTIONS", "aml_loss", "arcface_logits", "arcface_loss", "contrastive_loss",
           "get_loss", "hvs_loss", "lce_loss", "register_loss", "regression_loss", "ssp_loss",
           "subspace_similarities", "triplet_loss"]


# ----------------------------------------------------------------------------------------------
# margin softmax over landmark classes (Token, Wu et al. AAAI 2022): CosFace next to the ArcFace above
import math  # noqa: E402  (this section stays importable on its own)

import torch.nn.functional as F  # noqa: E402


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


__all__ += ["cosface_logits", "cosface_loss"]


# ----------------------------------------------------------------------------------------------
# in-batch metric learning over all pairs of a labelled batch (dimension reduction experiments)


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
