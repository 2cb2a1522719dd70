"""Middle-layer fusion: pooled descriptors of several backbone stages, concatenated.

Descriptors of middle stages carry more local, less semantic information than the last one; the
"deep retrieval" experiments concatenate R-MAC descriptors (Tolias et al., ICLR 2016) of the last
stage with those of 1–3 middle stages, then reduce the concatenation by a PCA(-whitening) learned
offline (:func:`retrieval.models.whitening.learn_pca_whitening`). Stages are named as ResNet's
(``layer1..4``, strides 4, 8, 16, 32); on EfficientNet-Lite they are the ends of the blocks of
:data:`~retrieval.models.backbones.TRUNK_BLOCKS` with those strides (``layer4``: after the head).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .backbones import trunk_blocks
from .functional import l2n, max_over_scales
from .pooling import build_pooling

#: ResNet stage names → index in the ``features`` Sequential of :func:`build_backbone`
#: (conv1, bn1, relu, maxpool, layer1, layer2, layer3, layer4)
RESNET_STAGES = {"layer1": 4, "layer2": 5, "layer3": 6, "layer4": 7}


def backbone_stages(backbone: str) -> dict[str, int]:
    """Stage names ``layer1..4`` → child index of backbone ``backbone``'s ``features`` (the last
    child of blocks 2-5 of :func:`~retrieval.models.backbones.trunk_blocks`)."""
    return {f"layer{k}": stop - 1 for k, (_, stop) in enumerate(trunk_blocks(backbone)[1:], start=1)}


def _stage_order(name: str) -> int:
    return int(name[5:]) if name.startswith("layer") and name[5:].isdigit() else 99


class MultiLayerNet(nn.Module):
    """``forward(x)``: images (B, 3, H, W) → (B, ΣC_l) L2-normalised: each chosen stage's feature
    map pooled by ``pool`` and L2-normalised, the stages concatenated (optionally weighted) and
    L2-normalised. ``features`` is a trunk as built by :func:`build_backbone` (shared, not copied:
    pass a trained network's ``features``); ``stages`` maps stage names to its child indices
    (default: a ResNet's, :data:`RESNET_STAGES`; :func:`backbone_stages` for the others)."""

    def __init__(self, features: nn.Sequential, layers=("layer3", "layer4"), pooling: str = "rmac",
                 weights=None, meta: dict | None = None, stages: dict | None = None):
        super().__init__()
        layers = tuple(layers)
        self.stages = dict(stages or RESNET_STAGES)
        unknown = [name for name in layers if name not in self.stages]
        if not layers or unknown:
            raise ValueError(f"layers must be a non-empty subset of {list(self.stages)}, got {list(layers)}")
        if len(features) != max(self.stages.values()) + 1:
            raise ValueError(f"features must be a trunk of {max(self.stages.values()) + 1} modules for the "
                             f"stages {self.stages}, got {len(features)}")
        self.features = features
        self.layers = tuple(sorted(layers, key=self.stages.get))
        self.pool = build_pooling(pooling)
        w = torch.ones(len(self.layers)) if weights is None else torch.as_tensor(weights, dtype=torch.float32)
        if w.shape != (len(self.layers),):
            raise ValueError(f"weights must have one value per layer ({len(self.layers)}), got {tuple(w.shape)}")
        self.register_buffer("weights", w)
        self.meta = dict(meta or {})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        want = {self.stages[name] for name in self.layers}
        parts = []
        for i, module in enumerate(self.features):
            x = module(x)
            if i in want:
                parts.append(l2n(self.pool(x)))
            if i >= max(want):
                break
        v = torch.cat([w * p for w, p in zip(self.weights, parts)], dim=1)
        return l2n(v)


def stage_channels(features: nn.Sequential, layers, stages: dict | None = None) -> list[int]:
    """Output channels of each named stage of a trunk (one forward pass of a small image)."""
    stages = stages or RESNET_STAGES
    want = {stages[name]: name for name in layers}
    channels, x = {}, torch.zeros(1, 3, 64, 64)
    was = features.training
    features.eval()
    with torch.no_grad():
        for i, module in enumerate(features):
            x = module(x)
            if i in want:
                channels[want[i]] = int(x.shape[1])
            if i >= max(want):
                break
    features.train(was)
    return [channels[name] for name in layers]


def build_multilayer_net(net: nn.Module, layers=("layer3", "layer4"), pooling: str = "rmac",
                         weights=None) -> MultiLayerNet:
    """Middle-layer fusion on top of a (trained) :class:`~retrieval.models.global_net.GlobalNet`
    with a ResNet or EfficientNet-Lite backbone: its ``features`` are shared. ``meta`` copies the
    net's (mean/std) with the new pooling, layers, ``outputdim`` and a ``name`` like
    ``rmac-l3l4-<net name>``."""
    layers = tuple(sorted(layers, key=_stage_order))
    stages = backbone_stages(getattr(net, "meta", {}).get("backbone", "resnet"))
    model = MultiLayerNet(net.features, layers, pooling, weights, stages=stages)
    dims = stage_channels(net.features, layers, stages)
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

    have = list(meta["layers"])
    dims = list(dims if dims is not None else meta["stage_dims"])
    missing = [name for name in layers if name not in have]
    if missing or not layers:
        raise ValueError(f"layers {list(layers)} must be a non-empty subset of the extracted {have}")
    if sum(dims) != v.shape[1]:
        raise ValueError(f"descriptors have {v.shape[1]} dimensions, the stages {have} {sum(dims)}")
    starts = np.cumsum([0] + dims)
    idx = np.concatenate([np.arange(starts[have.index(n)], starts[have.index(n) + 1])
                          for n in sorted(layers, key=_stage_order)])
    out = v[:, idx]
    if isinstance(out, torch.Tensor):
        return l2n(out)
    return (out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)).astype(v.dtype, copy=False)


class MultiPoolNet(nn.Module):
    """Several poolings of one backbone map in one pass: ``forward(x)`` → (B, k·C), the L2-normalised
    descriptors of ``poolings`` (e.g. MAC, SPoC, GeM, R-MAC; Radenović et al. TPAMI 2018 compare them
    on one network) side by side, so one extraction serves every pooling (:func:`select_pooling`).
    ``features`` is shared with the network it comes from."""

    def __init__(self, features: nn.Module, poolings=("mac", "spoc", "gem", "rmac"), p: float = 3.0,
                 meta: dict | None = None):
        super().__init__()
        if not poolings or len(set(poolings)) != len(poolings):
            raise ValueError(f"poolings must be distinct names, got {list(poolings)}")
        self.features = features
        self.poolings = tuple(poolings)
        self.pools = nn.ModuleList([build_pooling(n, p=p, learn_p=False) if n == "gem" else build_pooling(n)
                                    for n in self.poolings])
        self.meta = dict(meta or {})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fmap = self.features(x)
        return torch.cat([l2n(pool(fmap)) for pool in self.pools], dim=1)


def build_multipool_net(net: nn.Module, poolings=("mac", "spoc", "gem", "rmac")) -> MultiPoolNet:
    """:class:`MultiPoolNet` on a :class:`~retrieval.models.global_net.GlobalNet`'s backbone (its GeM
    exponent for ``gem``); ``meta`` copies the net's (mean/std) with ``poolings``, ``outputdim`` and
    a ``name`` like ``pool4-<net name>``."""
    m = dict(getattr(net, "meta", {}))
    p = float(m.get("p") or 3.0)
    model = MultiPoolNet(net.features, poolings, p)
    dim = int(m.get("dim") or stage_channels(net.features, ["x"], {"x": len(net.features) - 1})[0])
    model.meta = dict(m, pooling="+".join(poolings), poolings=list(poolings), dim=dim,
                      outputdim=dim * len(poolings), whitening=False,
                      name=f"pool{len(poolings)}-{getattr(net, 'name', 'net')}")
    return model


def select_pooling(v, meta: dict, pooling: str):
    """The ``pooling`` block (N, C) of :class:`MultiPoolNet` descriptors ``v`` (N, k·C), array or
    tensor, L2-normalised: exactly that pooling's descriptor at one scale (after a multi-scale
    combination, the block's mean over scales)."""

    names = list(meta["poolings"])
    if pooling not in names:
        raise ValueError(f"pooling {pooling!r} was not extracted; have {names}")
    dim = v.shape[1] // len(names)
    if dim * len(names) != v.shape[1]:
        raise ValueError(f"descriptors have {v.shape[1]} dimensions, not a multiple of {len(names)} poolings")
    i = names.index(pooling)
    out = v[:, i * dim:(i + 1) * dim]
    if isinstance(out, torch.Tensor):
        return l2n(out)
    return (out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)).astype(v.dtype, copy=False)


def select_pooling_over_scales(parts, meta: dict, pooling: str):
    """Scale-GeM (SuperGlobal, Shao et al. ICCV 2023) from single-scale :class:`MultiPoolNet`
    extractions: ``parts``, one (N, k·C) array per scale; the ``pooling`` block of each, combined by
    :func:`~retrieval.models.functional.max_over_scales`. Returns (N, C) float32."""

    return max_over_scales([torch.as_tensor(select_pooling(v, meta, pooling)) for v in parts]).numpy()
