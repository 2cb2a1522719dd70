"""Query networks for asymmetric retrieval: the gallery is indexed once with a large network, the
queries are described by a small one whose descriptors must live in the gallery network's space
(Wu et al., SSP, IEEE TMM 2023; Duggal et al., HVS, CVPR 2021; Budnik & Avrithis, AML, CVPR 2021).

A query network is a small torchvision backbone (:data:`~retrieval.models.backbones.BACKBONES`:
MobileNetV2/V3, EfficientNet-B0..B3, ShuffleNetV2, ResNet-18) → GeM → L2 → a linear projection to
the gallery dimension → L2: a :class:`~retrieval.models.global_net.GlobalNet` whose ``whiten``
layer is the projection (the layout of the SSP code's query models). :class:`QueryNet` adds the
parts some training methods need: a new classification head (HVS, LCE) and a residual
transformation into the gallery space (LCE).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .functional import l2n
from .global_net import GlobalNet, build_global_net


class ResidualTransform(nn.Module):
    """``x + T(x)``, T = Linear(D, D/2) → BN → PReLU → Linear(D/2, D) → BN, both linear layers
    without bias: the residual bottleneck transformation (RBT) of Wang et al., "Unified
    Representation Learning for Cross Model Compatibility", BMVC 2020, used by LCE. (B, D) → (B, D).

    ``forward(x, update_stats=False)`` in training mode normalises with the batch statistics
    without updating the running ones (used for the class weights, which the released LCE code
    passes through the same BatchNorm layers, mixing their statistics into the test-time ones).
    PyTorch's BatchNorm momentum (0.1) is kept; the released code's ``momentum=0.9`` is MXNet's
    convention, which in PyTorch weights the newest batch by 0.9.
    """

    def __init__(self, dim: int, hidden: int | None = None):
        super().__init__()
        hidden = hidden or max(1, dim // 2)
        self.fc1 = nn.Linear(dim, hidden, bias=False)
        self.bn1 = nn.BatchNorm1d(hidden, eps=2e-5)
        self.act = nn.PReLU(hidden)
        self.fc2 = nn.Linear(hidden, dim, bias=False)
        self.bn2 = nn.BatchNorm1d(dim, eps=2e-5)

    def _bn(self, bn: nn.BatchNorm1d, h: torch.Tensor, update_stats: bool) -> torch.Tensor:
        if update_stats or not self.training:
            return bn(h)
        return F.batch_norm(h, None, None, bn.weight, bn.bias, training=True, eps=bn.eps)

    def forward(self, x: torch.Tensor, update_stats: bool = True) -> torch.Tensor:
        h = self.act(self._bn(self.bn1, self.fc1(x), update_stats))
        return x + self._bn(self.bn2, self.fc2(h), update_stats)


class QueryNet(nn.Module):
    """A query network (``net``, a :class:`GlobalNet` with a projection to the gallery dim) and the
    training-only parts of compatible training: ``head`` (C, D), the new classifier's class weights
    (HVS, LCE), and ``transform``, a :class:`ResidualTransform` into the gallery space (LCE).

    ``forward(x)``: images (B, 3, H, W) → the descriptors (B, D) used at test time, L2-normalised:
    ``net(x)``, or ``l2n(transform(net(x)))`` with a transform.
    ``forward(x, outputs=True)``: a dict with ``descriptor``, ``embedding`` (``net(x)``, before the
    transform) and, when present, ``weight`` (the head) and ``weight_transformed`` (its rows
    through the transform), so that a loss needs one call of the (possibly DDP-wrapped) model.
    ``meta`` is the inner network's (mean/std for extraction, ``query_net`` = the build arguments).
    """

    def __init__(self, net: GlobalNet, classes: int = 0, transform: bool = False):
        super().__init__()
        dim = int(net.meta["outputdim"])
        self.net = net
        self.head = nn.Parameter(nn.init.xavier_uniform_(torch.empty(classes, dim))) if classes else None
        self.transform = ResidualTransform(dim) if transform else None
        self.meta = net.meta

    def forward(self, x: torch.Tensor, outputs: bool = False):
        emb = self.net(x)
        desc = emb if self.transform is None else l2n(self.transform(emb))
        if not outputs:
            return desc
        out = {"descriptor": desc, "embedding": emb}
        if self.head is not None:
            out["weight"] = self.head
            if self.transform is not None:
                out["weight_transformed"] = self.transform(self.head, update_stats=False)
        return out

    @property
    def name(self) -> str:
        m = self.meta
        start = "" if m.get("trained") else "-imagenet" if m.get("weights") else "-untrained"
        return m.get("name") or f"gem-{m['backbone']}-q{m['outputdim']}" + start


def ridge_projection(X, Y, ridge: float = 0.1):
    """The affine map ``Y ≈ X W^T + b`` minimising ``‖X W^T + b − Y‖² + ridge · ‖W‖²`` (the bias is
    not penalised): ``X`` (N, D_in), ``Y`` (N, D_out); returns ``W`` (D_out, D_in) and ``b`` (D_out,)
    as float32, in the layout of ``nn.Linear``. Solved in float64 through the normal equations of
    the centred data."""

    X, Y = np.asarray(X, np.float64), np.asarray(Y, np.float64)
    if X.ndim != 2 or Y.ndim != 2 or len(X) != len(Y) or len(X) == 0:
        raise ValueError(f"X (N, D_in) and Y (N, D_out) with the same N >= 1 expected, got {X.shape} and {Y.shape}")
    if not ridge > 0:
        raise ValueError(f"ridge must be > 0, got {ridge}")
    mx, my = X.mean(0), Y.mean(0)
    Xc, Yc = X - mx, Y - my
    W = np.linalg.solve(Xc.T @ Xc + ridge * np.eye(X.shape[1]), Xc.T @ Yc).T
    return W.astype(np.float32), (my - W @ mx).astype(np.float32)


def init_projection(net: "QueryNet", X, Y, ridge: float = 0.1) -> None:
    """Set the query network's projection (``net.net.whiten``) to :func:`ridge_projection` of the
    gallery descriptors ``Y`` (N, D) on the query network's own pooled, L2-normalised descriptors
    ``X`` (N, D_in) of the same images (:func:`pooled`): the best affine map at the start, so that
    training refines it instead of first learning the gallery's mean direction."""
    proj = net.net.whiten
    if proj is None:
        raise ValueError("the query network has no projection layer")
    W, b = ridge_projection(X, Y, ridge)
    if W.shape != tuple(proj.weight.shape):
        raise ValueError(f"projection {tuple(proj.weight.shape)} cannot take a fitted map of shape {W.shape}")
    with torch.no_grad():
        proj.weight.copy_(torch.from_numpy(W))
        proj.bias.copy_(torch.from_numpy(b))


class _Pooled(nn.Module):
    def __init__(self, net: GlobalNet):
        super().__init__()
        self.net, self.meta = net, net.meta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.norm(self.net.pool(self.net.features(x)))


def pooled(net: "QueryNet") -> nn.Module:
    """A module sharing ``net``'s backbone and pooling that outputs the pooled, L2-normalised
    descriptor before the projection (B, D_in), with ``net``'s ``meta`` (input normalisation), for
    :func:`~retrieval.extract.extract_vectors`."""
    return _Pooled(net.net)


def build_query_net(backbone: str = "mobilenet_v2", dim: int = 2048, classes: int = 0, transform: bool = False,
                    p: float = 3.0, weights: str | None = None) -> QueryNet:
    """A query network with the SSP paper's defaults: MobileNetV2 + GeM (p = 3, learned) + L2 + a
    linear projection to the gallery dimension ``dim`` (2048 for the ResNet-101 gallery networks)
    + L2. ``classes`` > 0 adds a new classification head (C, dim); ``transform`` an LCE residual
    transformation. ``weights``: pretrained backbone weights (as :func:`build_global_net`; ``None``: random init; seed torch)."""
    if int(dim) < 1:
        raise ValueError(f"dim must be a positive gallery dimension, got {dim}")
    if int(classes) < 0:
        raise ValueError(f"classes must be >= 0, got {classes}")
    if transform and not classes:
        raise ValueError("transform=True (LCE) needs a classification head: set classes > 0")
    net = build_global_net(backbone, "gem", p=p, whitening=int(dim), weights=weights)
    net.meta["query_net"] = dict(backbone=backbone, dim=int(dim), classes=int(classes), transform=bool(transform),
                                 p=float(p))
    return QueryNet(net, int(classes), bool(transform))


def complexity(model: nn.Module, height: int, width: int) -> dict:
    """Size and cost of a descriptor network at test time: ``params`` (a :class:`QueryNet`'s
    training-only head left out) and ``mflops``, MFLOPs of one forward pass of a (1, 3, height,
    width) image as counted by ``torch.utils.flop_counter.FlopCounterMode`` (2 FLOPs per
    multiply-add, convolutions and matrix products; many papers quote multiply-adds instead)."""

    if height < 1 or width < 1:
        raise ValueError(f"height and width must be positive, got {height} x {width}")
    head = getattr(model, "head", None)
    params = sum(p.numel() for p in model.parameters()) - (head.numel() if head is not None else 0)
    param = next(model.parameters())
    x = torch.zeros(1, 3, int(height), int(width), dtype=param.dtype, device=param.device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return {"params": int(params), "mflops": counter.get_total_flops() / 1e6}


__all__ = ["QueryNet", "ResidualTransform", "build_query_net", "complexity"]
