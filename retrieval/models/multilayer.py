"""Middle-layer fusion: pooled descriptors of several ResNet stages, concatenated.

Descriptors of middle stages carry more local, less semantic information than the last one; the
"deep retrieval" experiments concatenate R-MAC descriptors (Tolias et al., ICLR 2016) of the last
stage with those of 1–3 middle stages, then reduce the concatenation by a PCA(-whitening) learned
offline (:func:`retrieval.models.whitening.learn_pca_whitening`).
"""

from __future__ import annotations

import torch
from torch import nn

from .functional import l2n
from .pooling import build_pooling

#: ResNet stage names → index in the ``features`` Sequential of :func:`build_backbone`
#: (conv1, bn1, relu, maxpool, layer1, layer2, layer3, layer4)
RESNET_STAGES = {"layer1": 4, "layer2": 5, "layer3": 6, "layer4": 7}


class MultiLayerNet(nn.Module):
    """``forward(x)``: images (B, 3, H, W) → (B, ΣC_l) L2-normalised: each chosen stage's feature
    map pooled by ``pool`` and L2-normalised, the stages concatenated (optionally weighted) and
    L2-normalised. ``features`` is a ResNet trunk as built by :func:`build_backbone` (shared, not
    copied: pass a trained network's ``features``)."""

    def __init__(self, features: nn.Sequential, layers=("layer3", "layer4"), pooling: str = "rmac",
                 weights=None, meta: dict | None = None):
        super().__init__()
        layers = tuple(layers)
        unknown = [name for name in layers if name not in RESNET_STAGES]
        if not layers or unknown:
            raise ValueError(f"layers must be a non-empty subset of {list(RESNET_STAGES)}, got {list(layers)}")
        if len(features) != 8:
            raise ValueError(f"features must be a ResNet trunk of 8 modules (conv1 … layer4), got {len(features)}")
        self.features = features
        self.layers = tuple(sorted(layers, key=RESNET_STAGES.get))
        self.pool = build_pooling(pooling)
        w = torch.ones(len(self.layers)) if weights is None else torch.as_tensor(weights, dtype=torch.float32)
        if w.shape != (len(self.layers),):
            raise ValueError(f"weights must have one value per layer ({len(self.layers)}), got {tuple(w.shape)}")
        self.register_buffer("weights", w)
        self.meta = dict(meta or {})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        want = {RESNET_STAGES[name] for name in self.layers}
        parts = []
        for i, module in enumerate(self.features):
            x = module(x)
            if i in want:
                parts.append(l2n(self.pool(x)))
            if i >= max(want):
                break
        v = torch.cat([w * p for w, p in zip(self.weights, parts)], dim=1)
        return l2n(v)


def stage_channels(features: nn.Sequential, layers) -> list[int]:
    """Output channels of each named stage of a ResNet trunk."""
    out = []
    for name in layers:
        block = features[RESNET_STAGES[name]][-1]
        conv = getattr(block, "conv3", None) or block.conv2
        out.append(int(conv.out_channels))
    return out


def build_multilayer_net(net: nn.Module, layers=("layer3", "layer4"), pooling: str = "rmac",
                         weights=None) -> MultiLayerNet:
    """Middle-layer fusion on top of a (trained) :class:`~retrieval.models.global_net.GlobalNet`
    with a ResNet backbone: its ``features`` are shared. ``meta`` copies the net's (mean/std) with
    the new pooling, layers, ``outputdim`` and a ``name`` like ``rmac-l3l4-<net name>``."""
    layers = tuple(sorted(layers, key=lambda n: RESNET_STAGES.get(n, 99)))
    model = MultiLayerNet(net.features, layers, pooling, weights)
    dims = stage_channels(net.features, layers)
    tag = "l" + "l".join(n[-1] for n in layers)
    base = getattr(net, "name", "net")
    model.meta = dict(getattr(net, "meta", {}), pooling=pooling, layers=list(layers), stage_dims=dims,
                      dim=sum(dims), outputdim=sum(dims), whitening=False, name=f"{pooling}-{tag}-{base}")
    return model


def select_layers(v, meta: dict, layers, dims=None):
    """Descriptors of a subset of the stages from :class:`MultiLayerNet` descriptors ``v`` (N, ΣC)
    (array or tensor) made with ``meta['layers']``: each stage's block is a scaled copy of its
    L2-normalised pooled vector, so the selected blocks, concatenated and L2-normalised, equal what
    a net with only ``layers`` (same weights) would give — one extraction serves every subset.
    ``dims``: channels per stage of ``meta['layers']`` (default ``meta['stage_dims']``)."""
    import numpy as np

    have = list(meta["layers"])
    dims = list(dims if dims is not None else meta["stage_dims"])
    missing = [name for name in layers if name not in have]
    if missing or not layers:
        raise ValueError(f"layers {list(layers)} must be a non-empty subset of the extracted {have}")
    if sum(dims) != v.shape[1]:
        raise ValueError(f"descriptors have {v.shape[1]} dimensions, the stages {have} {sum(dims)}")
    starts = np.cumsum([0] + dims)
    idx = np.concatenate([np.arange(starts[have.index(n)], starts[have.index(n) + 1])
                          for n in sorted(layers, key=RESNET_STAGES.get)])
    out = v[:, idx]
    if isinstance(out, torch.Tensor):
        return l2n(out)
    return (out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)).astype(v.dtype, copy=False)
