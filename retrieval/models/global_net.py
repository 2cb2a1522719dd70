"""Global descriptor network: backbone → pooling → L2 → optional FC whitening → L2
(Radenović et al., "Fine-tuning CNN image retrieval with no human annotation", TPAMI 2018).

Module names follow the cnnimageretrieval-pytorch layout (``features``, ``pool``, ``whiten``) so
that its published ``state_dict`` loads directly.
"""

from __future__ import annotations

import torch
from torch import nn

from .backbones import IMAGENET_MEAN, IMAGENET_STD, build_backbone, normalisation  # noqa: F401
from .pooling import L2N, build_pooling


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
                     weights: str | None = None) -> GlobalNet:
    """A global network with paper defaults (ResNet-101 + GeM, p = 3 learnable).

    ``whitening``: False (none), True (a trainable FC layer D → D) or an int output dimension.
    ``weights``: pretrained backbone weights (torchvision's name, e.g. ``"IMAGENET1K_V1"``, or
    ``"imagenet"`` for EfficientNet-Lite; ``None``: random init, seed torch first). ``meta['mean'/'std']``
    is the backbone's input normalisation (:func:`~retrieval.models.backbones.normalisation`);
    ``trained`` is False until a task fine-tunes the network (its name ends in ``-imagenet`` or
    ``-untrained`` until then).
    """
    features, dim = build_backbone(backbone, weights)
    kwargs = dict(p=p, learn_p=learn_p) if pooling == "gem" else {}
    pool = build_pooling(pooling, **kwargs)
    out_dim = dim if whitening is True else int(whitening) if whitening else dim
    whiten = nn.Linear(dim, out_dim, bias=True) if whitening else None
    mean, std = normalisation(backbone)
    meta = dict(backbone=backbone, pooling=pooling, dim=dim, outputdim=out_dim,
                whitening=bool(whitening), mean=mean, std=std,
                weights=weights, trained=False, p=p if pooling == "gem" else None)
    return GlobalNet(features, pool, meta, whiten)
