"""Global descriptor network: backbone → pooling → L2 → optional FC whitening → L2
(Radenović et al., "Fine-tuning CNN image retrieval with no human annotation", TPAMI 2018).

Module names follow the cnnimageretrieval-pytorch layout (``features``, ``pool``, ``whiten``) so
that its published ``state_dict`` loads directly.
"""

from __future__ import annotations

import torch
from torch import nn

from .backbones import IMAGENET_MEAN, IMAGENET_STD, build_backbone, normalisation  # noqa: F401
from .pooling import L2N, MAX_OVER_SCALES, build_pooling

RELU_PLUS = 0.014   # SuperGlobal's released code: max(x, 0.014) for the ReLUs of ResNet stages 1-3


class ReLUPlus(nn.Module):
    """``max(x, floor)``: the "ReLU+" of SuperGlobal's released code (Shao et al., ICCV 2023; not in the
    paper), which replaces the ReLUs of a ResNet's first three stages."""

    def __init__(self, floor: float = RELU_PLUS):
        super().__init__()
        self.floor = float(floor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=self.floor)

    def extra_repr(self) -> str:
        return f"floor={self.floor}"


def apply_relu_plus(features: nn.Sequential, backbone: str, floor: float = RELU_PLUS) -> None:
    """Swap the ReLU of every block of torchvision's ``layer1``-``layer3`` (the stem and ``layer4``
    keep theirs) for :class:`ReLUPlus`, in place."""
    if not backbone.startswith("resnet"):
        raise ValueError(f"relu_plus applies to ResNet backbones only, not {backbone!r}")
    for stage in (4, 5, 6):                                   # conv1, bn1, relu, maxpool, layer1..layer4
        for block in features[stage]:
            block.relu = ReLUPlus(floor)


class GlobalNet(nn.Module):
    """``forward(x)``: images (B, 3, H, W), normalised by ``meta['mean'/'std']`` → descriptors
    (B, D), L2-normalised. ``whiten`` (optional) is a trainable ``nn.Linear`` applied after the
    pooled descriptor's L2 normalisation, followed by another L2.

    ``meta`` records what built the network (backbone, pooling, dim, outputdim, mean/std, weights:
    the pretrained start, trained: fine-tuned for retrieval, whitening).
    """

    def __init__(self, features: nn.Module, pool: nn.Module, meta: dict, whiten: nn.Module | None = None):
        super().__init__()
        self.features = features
        self.pool = pool
        self.norm = L2N()
        self.whiten = whiten
        self.meta = meta
        self.frozen_bn = False  # training option: keep the backbone's BatchNorm statistics (see train)

    def train(self, mode: bool = True) -> "GlobalNet":
        """As ``nn.Module.train``; with ``frozen_bn`` the backbone's BatchNorm layers stay in eval
        mode (running statistics fixed, affine parameters still trained), as cirtorch fine-tunes
        (``set_batchnorm_eval``): batches of a few correlated tuples would spoil ImageNet statistics."""
        super().train(mode)
        if mode and self.frozen_bn:
            for m in self.features.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = self.norm(self.pool(self.features(x)))
        if self.whiten is not None:
            v = self.norm(self.whiten(v))
        return v

    @property
    def name(self) -> str:
        m = self.meta
        if m.get("name"):  # published or named networks
            return m["name"]
        start = "" if m.get("trained") else "-imagenet" if m.get("weights") else "-untrained"
        return f"{m['pooling']}-{m['backbone']}" + ("-w" if m.get("whitening") else "") + start


def build_global_net(backbone: str = "resnet101", pooling: str = "gem", p: float = 3.0,
                     learn_p: bool = True, whitening: bool | int = False,
                     weights: str | None = None, relu_plus: float | str | None = "auto") -> GlobalNet:
    """A global network with paper defaults (ResNet-101 + GeM, p = 3 learnable).

    ``whitening``: False (none), True (a trainable FC layer D → D) or an int output dimension.
    ``weights``: pretrained backbone weights (torchvision's name, e.g. ``"IMAGENET1K_V1"``, or
    ``"imagenet"`` for EfficientNet-Lite; ``None``: random init, seed torch first). ``meta['mean'/'std']``
    is the backbone's input normalisation (:func:`~retrieval.models.backbones.normalisation`);
    ``trained`` is False until a task fine-tunes the network (its name ends in ``-imagenet`` or
    ``-untrained`` until then). ``relu_plus``: the floor of :class:`ReLUPlus` in ResNet stages 1-3, or
    None; ``"auto"``: 0.014 for SuperGlobal's poolings (``gemp``, ``rgem``) on a ResNet, as released,
    else None (recorded in ``meta`` when set).
    """
    features, dim = build_backbone(backbone, weights)
    if relu_plus == "auto":
        relu_plus = RELU_PLUS if pooling in MAX_OVER_SCALES and backbone.startswith("resnet") else None
    if relu_plus is not None:
        apply_relu_plus(features, backbone, float(relu_plus))
    kwargs = dict(p=p, learn_p=learn_p) if pooling == "gem" else {}
    pool = build_pooling(pooling, **kwargs)
    out_dim = dim if whitening is True else int(whitening) if whitening else dim
    whiten = nn.Linear(dim, out_dim, bias=True) if whitening else None
    mean, std = normalisation(backbone)
    meta = dict(backbone=backbone, pooling=pooling, dim=dim, outputdim=out_dim,
                whitening=bool(whitening), mean=mean, std=std,
                weights=weights, trained=False, p=p if pooling == "gem" else None,
                **({"relu_plus": float(relu_plus)} if relu_plus is not None else {}))
    return GlobalNet(features, pool, meta, whiten)
