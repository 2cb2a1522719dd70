"""Token: local features refined by self-attention, grouped into L visual tokens by spatial
attention, refined by cross-/self-attention and concatenated into one compact global descriptor
(Wu et al., "Learning Token-Based Representation for Image Retrieval", AAAI 2022; code
github.com/MCC-WH/Token).

Shapes: images (B, 3, H, W) → backbone map (B, C, h, w) → local features (B, N = h·w, d) →
spatial attention (B, L, N) → tokens (B, L, d) → descriptor (B, D), L2-normalised.

Module names follow the authors' ``Token`` network (``backbone.block1..5``, ``tr.conv``,
``tr.encoder.i``, ``tr.query``, ``tr.token_norm``, ``tr.decoder.i``, ``tr.proj``, ``classifier``),
so their released ``state_dict`` loads with :func:`load_token_state_dict`.
"""

from __future__ import annotations

import math
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .. import losses
from .backbones import build_backbone, normalisation, trunk_blocks
from .checkpoints import check_state_dict, unwrap_state_dict
from .csa import DropPath, Mlp
from .pooling import GeM

MARGIN_LOSSES = ("arcface", "cosface")


# --------------------------------------------------------------------------- functions
def spatial_attention(queries: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Spatial attention of the tokeniser: A = softmax over the L tokens of ``queries · xᵀ``.

    ``queries`` (L, d) or (B, L, d) learned token queries, ``x`` (B, N, d) local features. Returns
    (B, L, N); every column (one location) sums to 1 over the L tokens, so each location is shared
    out among the tokens (the paper's eq. 3; no 1/√d scale, as in the released code).
    """
    if x.dim() != 3:
        raise ValueError(f"x must be local features (B, N, d), got shape {tuple(x.shape)}")
    if queries.dim() == 2:
        queries = queries.unsqueeze(0)
    if queries.dim() != 3 or queries.shape[-1] != x.shape[-1]:
        raise ValueError(f"queries must be (L, d) or (B, L, d) with d = {x.shape[-1]}, got {tuple(queries.shape)}")
    return torch.softmax(queries.expand(x.shape[0], -1, -1) @ x.transpose(1, 2), dim=1)


def tokenize(attn: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Tokens (B, L, d): each the attention-weighted sum of the local features, ``attn`` (B, L, N)
    @ ``x`` (B, N, d)."""
    if attn.dim() != 3 or x.dim() != 3 or attn.shape[0] != x.shape[0] or attn.shape[2] != x.shape[1]:
        raise ValueError(f"attn (B, L, N) and x (B, N, d) do not match: {tuple(attn.shape)}, {tuple(x.shape)}")
    return attn @ x


def multihead_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
                        dropout_p: float = 0.0) -> torch.Tensor:
    """Scaled dot-product attention over ``heads`` heads: q (B, Nq, d), k and v (B, Nk, d) →
    (B, Nq, d); scale 1/√(d/heads)."""
    B, Nq, d = q.shape
    if d % heads:
        raise ValueError(f"dimension {d} is not divisible by heads={heads}")
    split = lambda t: t.reshape(B, t.shape[1], heads, d // heads).transpose(1, 2)  # noqa: E731
    y = F.scaled_dot_product_attention(split(q), split(k), split(v), dropout_p=dropout_p)
    return y.transpose(1, 2).reshape(B, Nq, d)


# --------------------------------------------------------------------------- modules
class Attention(nn.Module):
    """Multi-head attention with separate ``q``, ``k``, ``v`` and ``proj`` layers (the released
    layout): ``forward(q (B, Nq, d), k, v (B, Nk, d))`` → (B, Nq, d). ``proj`` starts at zero, so
    every residual branch starts as the identity (as the released code)."""

    def __init__(self, dim: int, heads: int = 8, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"token dimension d={dim} is not divisible by heads={heads}")
        self.heads, self.attn_drop = int(heads), float(attn_drop)
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.k = nn.Linear(dim, dim, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj_drop = nn.Dropout(proj_drop)
        for m in (self.q, self.k, self.v):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        nn.init.zeros_(self.proj.weight)
        if self.proj.bias is not None:
            nn.init.zeros_(self.proj.bias)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        y = multihead_attention(self.q(q), self.k(k), self.v(v), self.heads,
                                self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(y))


class Encoder(nn.Module):
    """Local feature self-attention (LFSA): x + MHSA(x), then x + Linear(BN(x)); (B, N, d) → same."""

    def __init__(self, dim: int, heads: int = 8, qkv_bias: bool = True, drop: float = 0.0,
                 attn_drop: float = 0.0, drop_path: float = 0.0):
        super().__init__()
        self.attn = Attention(dim, heads, qkv_bias, attn_drop, drop)
        self.drop_path = DropPath(drop_path)
        self.bn = nn.BatchNorm1d(dim)
        self.mlp = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, d = x.shape
        x = x + self.drop_path(self.attn(x, x, x))
        return x + self.drop_path(self.mlp(self.bn(x.reshape(B * N, d)).reshape(B, N, d)))


class Decoder(nn.Module):
    """Token refinement: t + CrossAttn(LN₁(t), x, x); t + MLP(t) (hidden 2d); t + SelfAttn(LN₂(t)).
    Tokens t (B, L, d), local features x (B, N, d). As in the released code, the MLP has no norm
    before it (the paper's figure draws pre-norm everywhere)."""

    def __init__(self, dim: int, heads: int = 8, qkv_bias: bool = True, drop: float = 0.0,
                 attn_drop: float = 0.0, drop_path: float = 0.0):
        super().__init__()
        self.self_attn = Attention(dim, heads, qkv_bias, attn_drop, drop)
        self.cross_attn = Attention(dim, heads, qkv_bias, attn_drop, drop)
        self.drop_path = DropPath(drop_path)
        self.bn1 = nn.LayerNorm(dim)
        self.bn2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, 2 * dim, drop)

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        t = t + self.drop_path(self.cross_attn(self.bn1(t), x, x))
        t = t + self.drop_path(self.mlp(t))
        n = self.bn2(t)
        return t + self.drop_path(self.self_attn(n, n, n))


class TokenRefine(nn.Module):
    """The aggregator ``tr``: 1×1 conv + BN (C → d), LFSA encoder(s), tokeniser (L learned queries,
    :func:`spatial_attention`, :func:`tokenize`, Linear + LayerNorm), decoder(s), concatenation and
    Linear + BatchNorm1d (L·d → D). ``forward(map (B, C, h, w))`` → (B, D), not normalised."""

    def __init__(self, in_channels: int, dim: int = 1024, tokens: int = 4, heads: int = 8,
                 encoder_layers: int = 1, decoder_layers: int = 2, outputdim: int = 1024,
                 qkv_bias: bool = True, drop: float = 0.1, attn_drop: float = 0.1, drop_path: float = 0.1):
        super().__init__()
        block = dict(heads=heads, qkv_bias=qkv_bias, drop=drop, attn_drop=attn_drop, drop_path=drop_path)
        self.conv = nn.Sequential(nn.Conv2d(in_channels, dim, kernel_size=1), nn.BatchNorm2d(dim))
        self.encoder = nn.ModuleList([Encoder(dim, **block) for _ in range(encoder_layers)])
        self.query = nn.Parameter(torch.randn(1, tokens, dim))
        self.token_norm = nn.Sequential(nn.Linear(dim, dim), nn.LayerNorm(dim))
        self.decoder = nn.ModuleList([Decoder(dim, **block) for _ in range(decoder_layers)])
        self.proj = nn.Sequential(nn.Linear(tokens * dim, outputdim), nn.BatchNorm1d(outputdim))
        self.mid_dim, self.tokens = int(dim), int(tokens)

    def local_features(self, fmap: torch.Tensor) -> torch.Tensor:
        """Refined local features (B, N = h·w, d): conv + BN, flattened row-major, then LFSA."""
        B, _, h, w = fmap.shape
        x = self.conv(fmap).reshape(B, self.mid_dim, h * w).transpose(1, 2)
        for enc in self.encoder:
            x = enc(x)
        return x

    def forward(self, fmap: torch.Tensor, return_attention: bool = False):
        x = self.local_features(fmap)
        attn = spatial_attention(self.query, x)
        t = self.token_norm(tokenize(attn, x))
        for dec in self.decoder:
            t = dec(t, x)
        v = self.proj(t.reshape(t.shape[0], -1))
        return (v, attn) if return_attention else v


class GeMHead(nn.Module):
    """The control arm's aggregator (Token's recipe with only the aggregator changed): GeM pooling of the
    backbone map (learnable p, initialised at 3; Radenović et al., TPAMI 2018), then Linear + BatchNorm1d
    (C → D) as Token's final projection. ``forward(map (B, C, h, w))`` → (B, D), not normalised."""

    def __init__(self, in_channels: int, outputdim: int):
        super().__init__()
        self.pool = GeM()
        self.proj = nn.Sequential(nn.Linear(in_channels, outputdim), nn.BatchNorm1d(outputdim))

    def forward(self, fmap: torch.Tensor, return_attention: bool = False):
        if return_attention:
            raise ValueError("the GeM aggregator has no token attention (aggregator='token' has)")
        return self.proj(self.pool(fmap).flatten(1))


class ResNetBlocks(nn.Module):
    """A backbone trunk cut before its pooling as five blocks ``block1..5`` (strides 2/4, 4, 8, 16,
    32; :func:`~retrieval.models.backbones.trunk_blocks`): on a torchvision ResNet, ``block1`` =
    conv1, bn1, relu, maxpool and ``block2..5`` = layer1..4, the released Token layout; on
    EfficientNet-Lite, its stages grouped by stride. (B, 3, H, W) → (B, C, H/32, W/32)."""

    def __init__(self, features: nn.Sequential, blocks=((0, 4), (4, 5), (5, 6), (6, 7), (7, 8))):
        super().__init__()
        if len(features) != blocks[-1][1]:
            raise ValueError(f"expected a trunk of {blocks[-1][1]} children for the blocks {blocks}, "
                             f"got {len(features)}")
        for b, (start, stop) in enumerate(blocks, start=1):
            parts = list(features)[start:stop]  # renumbered from 0 (block1.0, block1.1, ... as released)
            setattr(self, f"block{b}", parts[0] if len(parts) == 1 else nn.Sequential(*parts))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in (self.block1, self.block2, self.block3, self.block4, self.block5):
            x = b(x)
        return x


class MarginHead(nn.Module):
    """Margin-softmax classifier for training: class weights ``weight`` (C, D) and
    ``forward(embeddings (B, D), labels (B,))`` → logits (B, C) of ``kind`` ("arcface": Deng et
    al. CVPR 2019; "cosface": Wang et al. CVPR 2018) from :mod:`retrieval.losses`."""

    def __init__(self, in_features: int, classes: int, scale: float, margin: float, kind: str = "arcface"):
        super().__init__()
        if kind not in MARGIN_LOSSES:
            raise ValueError(f"loss={kind!r}: expected one of {MARGIN_LOSSES}")
        if classes < 2:
            raise ValueError(f"classes must be >= 2, got {classes}")
        self.weight = nn.Parameter(torch.empty(classes, in_features))
        nn.init.xavier_uniform_(self.weight)
        self.scale, self.margin, self.kind = float(scale), float(margin), kind

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return getattr(losses, f"{self.kind}_logits")(embeddings, self.weight, labels, self.scale, self.margin)

    def extra_repr(self) -> str:
        return f"{self.kind}, classes={self.weight.shape[0]}, scale={self.scale:.3g}, margin={self.margin}"


class Token(nn.Module):
    """``forward(x)``: images (B, 3, H, W) normalised by ``meta['mean'/'std']`` → descriptors
    (B, D), L2-normalised (what :mod:`retrieval.extract` calls). ``forward(x, labels)`` (training)
    → margin logits (B, C) of the ``classifier``. ``train_blocks``: how many of the last backbone
    blocks are trained (5: all, as the paper); the others are frozen and kept in eval mode."""

    def __init__(self, backbone: ResNetBlocks, tr: TokenRefine, meta: dict, classifier: MarginHead | None = None,
                 train_blocks: int = 5):
        super().__init__()
        self.backbone, self.tr, self.classifier, self.meta = backbone, tr, classifier, meta
        self.train_blocks = int(train_blocks)
        if not 0 <= self.train_blocks <= 5:
            raise ValueError(f"train_blocks must be in 0..5, got {train_blocks}")
        for b in self._frozen():
            b.requires_grad_(False)

    def _frozen(self) -> list[nn.Module]:
        blocks = [self.backbone.block1, self.backbone.block2, self.backbone.block3, self.backbone.block4,
                  self.backbone.block5]
        return blocks[:5 - self.train_blocks]

    def train(self, mode: bool = True):
        super().train(mode)
        for b in self._frozen():
            b.eval()
        return self

    def frozen_part(self) -> nn.Sequential:
        """The frozen backbone blocks (the first ``5 - train_blocks``) as one module: images → what the
        trained blocks receive (:mod:`retrieval.train.frozen` caches its outputs)."""
        return nn.Sequential(*self._frozen())

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None, from_frozen: bool = False) -> torch.Tensor:
        """``from_frozen``: ``x`` is the output of :meth:`frozen_part` (cached), not images."""
        if from_frozen:
            blocks = [self.backbone.block1, self.backbone.block2, self.backbone.block3, self.backbone.block4,
                      self.backbone.block5][5 - self.train_blocks:]
            x = x.contiguous(memory_format=torch.channels_last)  # as the frozen blocks hand it on (to_device)
            for b in blocks:
                x = b(x)
            v = self.tr(x)
        else:
            v = self.tr(self.backbone(x))
        if labels is None:
            return F.normalize(v, dim=-1)
        if self.classifier is None:
            raise ValueError("labels given but the model has no classifier (build it with classes=C)")
        return self.classifier(v, labels)

    @torch.no_grad()
    def attention_maps(self, x: torch.Tensor) -> torch.Tensor:
        """Spatial attention of the tokeniser as maps (B, L, h, w) (sum 1 over L at every cell)."""
        fmap = self.backbone(x)
        _, attn = self.tr(fmap, return_attention=True)
        return attn.reshape(attn.shape[0], attn.shape[1], *fmap.shape[-2:])

    @property
    def name(self) -> str:
        return self.meta["name"]


def build_token(backbone: str = "resnet101", dim: int = 1024, tokens: int = 4, heads: int = 8,
                encoder_layers: int = 1, decoder_layers: int = 2, outputdim: int = 1024,
                classes: int | None = None, loss: str = "arcface", scale: float | None = None,
                margin: float = 0.2, drop: float = 0.1, attn_drop: float = 0.1, drop_path: float = 0.1,
                train_blocks: int = 5, weights: str | None = None, name: str | None = None,
                aggregator: str = "token") -> Token:
    """A Token network with the paper's defaults (ResNet-101, d = 1024, L = 4 tokens, 8 heads, one
    LFSA layer, 2 refinement layers, D = 1024; ArcFace with scale √D and margin 0.2 when
    ``classes`` is given). ``weights``: torchvision backbone weights (None: random init).
    ``aggregator="gem"``: the control arm, the same network and training with :class:`GeMHead` in place
    of the tokeniser (``dim``, ``tokens``, ``heads`` and the layers then unused); named
    ``gem-tokenrecipe-<backbone>``."""
    if aggregator not in ("token", "gem"):
        raise ValueError(f"aggregator={aggregator!r}: expected 'token' or 'gem'")
    if not backbone.startswith(("resnet", "efficientnet_lite")):
        raise ValueError(f"backbone={backbone!r}: Token is built on a torchvision ResNet (resnet18 ... resnet152) "
                         "or an EfficientNet-Lite (efficientnet_lite0/1/2)")
    for what, v in (("dim", dim), ("tokens", tokens), ("heads", heads), ("outputdim", outputdim),
                     ("decoder_layers", decoder_layers + 1), ("encoder_layers", encoder_layers + 1)):
        if int(v) != v or v < 1:
            raise ValueError(f"{what} must be a positive integer, got {v}")
    features, channels = build_backbone(backbone, weights)
    tr = (TokenRefine(channels, dim, tokens, heads, encoder_layers, decoder_layers, outputdim,
                      drop=drop, attn_drop=attn_drop, drop_path=drop_path)
          if aggregator == "token" else GeMHead(channels, outputdim))
    scale = math.sqrt(outputdim) if scale is None else float(scale)
    head = MarginHead(outputdim, classes, scale, margin, loss) if classes else None
    mean, std = normalisation(backbone)
    meta = dict(name=name or (f"token-{backbone}" if aggregator == "token" else f"gem-tokenrecipe-{backbone}"),
                aggregator=aggregator, backbone=backbone, dim=dim, tokens=tokens, heads=heads,
                encoder_layers=encoder_layers, decoder_layers=decoder_layers, outputdim=outputdim,
                mean=mean, std=std, weights=weights, trained=False)
    return Token(ResNetBlocks(features, trunk_blocks(backbone)), tr, meta, head, train_blocks)


# --------------------------------------------------------------------------- checkpoints
# cirtorch / GlobalNet backbone index → released Token block (ResNet)
GLOBAL_TO_TOKEN_BACKBONE = {"features.0.": "block1.0.", "features.1.": "block1.1.", "features.4.": "block2.",
                            "features.5.": "block3.", "features.6.": "block4.", "features.7.": "block5."}


def global_to_token_keys(backbone: str) -> dict[str, str]:
    """GlobalNet ``features.i.`` key prefixes → Token ``blockN[.j].`` prefixes for ``backbone``
    (:data:`GLOBAL_TO_TOKEN_BACKBONE` on a ResNet; EfficientNet-Lite by its
    :func:`~retrieval.models.backbones.trunk_blocks`)."""
    out = {}
    for b, (start, stop) in enumerate(trunk_blocks(backbone), start=1):
        for i in range(start, stop):
            out[f"features.{i}."] = f"block{b}." + ("" if stop - start == 1 else f"{i - start}.")
    return out


def load_token_state_dict(model: Token, state_dict: Mapping, classifier: bool = False) -> Token:
    """Load the authors' ``Token`` weights (github.com/MCC-WH/Token, ``networks/RetrievalNet.py``;
    also ours) into ``model``, strictly. ``state_dict`` may be wrapped (``{'state_dict': ...}``,
    ``{'model': ...}``) and prefixed ``module.`` (DataParallel). The ArcFace ``classifier.*``
    weights (training only; 81,313 GLDv2 classes in the release) are skipped unless
    ``classifier``. ValueError lists missing / unexpected / mis-shaped keys."""
    sd = unwrap_state_dict(state_dict)
    if not classifier:
        sd = {k: v for k, v in sd.items() if not k.startswith("classifier.")}
    expected = {k: v for k, v in model.state_dict().items() if classifier or not k.startswith("classifier.")}
    check_state_dict(sd, expected, f"the Token model ({model.meta.get('backbone')}, d={model.meta.get('dim')}, "
                     f"L={model.meta.get('tokens')})", why="")
    model.load_state_dict(sd, strict=not (classifier is False and model.classifier is not None))
    return model


def init_backbone_from_global(model: Token, state_dict: Mapping) -> Token:
    """Copy the backbone of a GlobalNet / cirtorch checkpoint (``features.N.*`` keys, e.g. the GeM
    network trained by 02_train_global) into ``model.backbone``; other keys are ignored."""
    sd = unwrap_state_dict(state_dict)
    mapped = {}
    for k, v in sd.items():
        for src, dst in global_to_token_keys(model.meta.get("backbone", "resnet")).items():
            if k.startswith(src):
                mapped[dst + k[len(src):]] = v
    missing, unexpected = model.backbone.load_state_dict(mapped, strict=False)
    if missing or unexpected:
        raise ValueError(f"backbone weights do not fit {model.meta.get('backbone')}: missing {missing[:3]} "
                         f"({len(missing)}), unexpected {unexpected[:3]} ({len(unexpected)})")
    return model


__all__ = ["Attention", "Decoder", "Encoder", "GLOBAL_TO_TOKEN_BACKBONE", "MARGIN_LOSSES", "MarginHead",
           "ResNetBlocks", "Token", "TokenRefine", "build_token", "init_backbone_from_global",
           "load_token_state_dict", "multihead_attention",
           "spatial_attention", "tokenize"]
