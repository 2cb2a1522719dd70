"""Metric-learning losses for training global descriptors, and a registry of them by name.

Two kinds of loss are registered, with two signatures:

* ``kind == "tuple"``: ``loss(x, **kw)`` with ``x`` (B, T, D) in the *tuple layout*: B tuples of
  T = 2 + N L2-normalised descriptors each, ``x[:, 0]`` the query, ``x[:, 1]`` its positive and
  ``x[:, 2:]`` the N negatives (the tuples of :class:`retrieval.datasets.tuples.TupleMiner`).
* ``kind == "labels"``: ``loss(embeddings, labels, **kw)`` with ``embeddings`` (B, D) and integer
  ``labels`` (B,) (classification-margin losses such as ArcFace / CosFace).

A trainer reads ``get_loss(name).kind`` to know which one to call.

Reduction: a tuple's loss is the *sum* of its terms (one per positive / negative pair), as in
cirtorch; ``reduction="sum"`` (default, cirtorch's gradient scale) sums the B tuple losses,
``"mean"`` averages them, ``"none"`` returns the (B,) vector.
"""

from __future__ import annotations

import functools
import inspect
from typing import Callable

import torch

REDUCTIONS = ("sum", "mean", "none")
KINDS = ("tuple", "labels")

LOSSES: dict[str, Callable] = {}


def register_loss(name: str, kind: str = "tuple"):
    """Decorator: register ``fn`` in :data:`LOSSES` under ``name`` and mark ``fn.kind = kind``.

    A name taken by another function raises ValueError (re-registering the same function, e.g. on
    a module reload, replaces it).

    ``kind="tuple"`` for losses ``fn(x (B, T, D), **kw)``; ``kind="labels"`` for
    ``fn(embeddings (B, D), labels (B,), **kw)``.
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

    Returns a callable ``(x) -> loss`` for tuple losses and ``(embeddings, labels) -> loss`` for
    label losses; it carries ``.kind`` ("tuple" / "labels"), ``.name`` and ``.kwargs``.
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


__all__ = ["KINDS", "LOSSES", "REDUCTIONS", "contrastive_loss", "get_loss", "register_loss",
           "triplet_loss"]


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
