"""Contextual Similarity Aggregation (CSA): the re-ranking transformer and its loss (Ouyang et al.,
"Contextual Similarity Aggregation with Self-attention for Visual Re-ranking", NeurIPS 2021).

The model takes *affinity features* (B, K+1, L): the cosine similarities of a query and its top-K
first-stage candidates to L anchors (the query itself, then its top L−1 db results); a pre-norm
transformer encoder refines them jointly and candidates are re-ordered by the cosine between the
refined query token and each refined candidate token. Building the affinity features and
re-ranking: :mod:`retrieval.rerank.csa`; training lists: :class:`retrieval.datasets.training.CSALists`.

Module names follow the authors' published code (github.com/MCC-WH/CSA,
``network/RerankTransformer.py`` and ``network/Transformer_Block.py``): ``topk_proj``,
``blocks.N.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}``. Differences from it: an
optional final LayerNorm ``norm`` (absent there; build with ``final_norm=False`` to load its
weights) and the reconstruction head ``recon`` (``feature_align.layers.0`` there); see
:func:`load_published_state_dict`.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DropPath", "Attention", "Mlp", "Block", "CSA", "build_csa", "csa_loss", "csa_scores",
           "PUBLISHED_KEY_MAP", "load_published_state_dict", "load_state_dict_mapped", "positive_int"]


# --------------------------------------------------------------------------- validation
def positive_int(name: str, v) -> int:
    """``v`` as an int >= 1 (bools rejected); ValueError naming ``name`` otherwise."""
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or int(v) < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    return int(v)


# --------------------------------------------------------------------------- transformer
class DropPath(nn.Module):
    """Stochastic depth: in training, zero the whole residual branch of a sample with probability
    ``drop_prob`` and scale kept ones by 1/(1−p); identity in eval. x (B, ...) → same."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        keep = 1.0 - self.drop_prob
        mask = torch.rand((x.shape[0],) + (1,) * (x.ndim - 1), device=x.device) < keep
        return x * mask.to(x.dtype) / keep

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Dropout as ``F.dropout`` (each element zeroed with probability ``p``, the kept ones scaled by
    1/(1−p)), its mask drawn with ``torch.rand``: the same distribution, faster on CPU than torch's Bernoulli
    kernel (once on a 2-core EPYC: 20 vs 33 ms forward + backward on (64, 129, 512); CSA's demo training step
    0.36 → 0.32 s, dropout being a third of it)."""
    if not training or p == 0.0:
        return x
    return x * ((torch.rand_like(x) >= p).to(x.dtype) * (1.0 / (1.0 - p)))


class Dropout(nn.Module):
    """:func:`dropout` as a module (``nn.Dropout``'s interface: ``p``, train / eval)."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout p must be in [0, 1), got {p}")
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Attention(nn.Module):
    """Multi-head self-attention, x (B, N, dim) → (B, N, dim); fused ``qkv`` projection, scale
    1/sqrt(dim/heads), dropout ``attn_drop`` on the attention weights, ``proj_drop`` after ``proj``."""

    def __init__(self, dim: int, heads: int = 8, qkv_bias: bool = False, attn_drop: float = 0.0,
                 proj_drop: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim={dim} is not divisible by heads={heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.attn_drop = float(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        if self.training and self.attn_drop > 0:  # weights, then :func:`dropout` on them (SDPA's own is slower)
            a = (q @ k.transpose(-2, -1) * (C // self.heads) ** -0.5).softmax(dim=-1)
            y = dropout(a, self.attn_drop, True) @ v
        else:
            y = F.scaled_dot_product_attention(q, k, v)
        return self.proj_drop(self.proj(y.transpose(1, 2).reshape(B, N, C)))


class Mlp(nn.Module):
    """fc1 → GELU → dropout → fc2 → dropout; (B, N, dim) → (B, N, dim)."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Block(nn.Module):
    """Pre-norm encoder block: x + DropPath(Attn(LN(x))), then x + DropPath(MLP(LN(x)))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = False,
                 drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, qkv_bias, attn_drop, drop)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class CSA(nn.Module):
    """CSA re-ranking transformer (Ouyang et al., NeurIPS 2021).

    ``forward(aff)``: affinity features (B, K+1, L) (row 0 the query) → ``tokens`` (B, K+1, dim),
    L2-normalised, and ``recon`` (B, K+1, L), the reconstruction of ``aff`` from the refined tokens
    (before L2) for the feature-preservation loss. Pipeline: dropout → ``topk_proj`` (L → dim) →
    dropout → ``depth`` :class:`Block` s (drop-path rates linearly 0 … ``drop_path``, as the
    published code) → ``norm`` (LayerNorm, or identity if ``final_norm=False``) → L2 / ``recon``.
    :meth:`score` gives the re-ranking scores (B, K).
    """

    def __init__(self, L: int = 512, dim: int = 768, depth: int = 2, heads: int = 12,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, drop: float = 0.1,
                 attn_drop: float = 0.1, drop_path: float = 0.1, final_norm: bool = True):
        super().__init__()
        self.L, self.dim = positive_int("L", L), positive_int("dim", dim)
        positive_int("depth", depth)
        self.sim_drop = Dropout(drop)
        self.topk_proj = nn.Linear(L, dim)
        self.pos_drop = Dropout(drop)
        rates = torch.linspace(0, drop_path, depth).tolist()
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, qkv_bias, drop, attn_drop, r)
                                    for r in rates)
        self.norm = nn.LayerNorm(dim) if final_norm else nn.Identity()
        self.recon = nn.Linear(dim, L)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, aff: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if aff.ndim != 3 or aff.shape[-1] != self.L:
            raise ValueError(f"aff must be (B, K+1, L={self.L}), got shape {tuple(aff.shape)}")
        x = self.pos_drop(self.topk_proj(self.sim_drop(aff)))
        for blk in self.blocks:
            x = blk(x)
        x = self.norm(x)
        return F.normalize(x, dim=-1), self.recon(x)

    def score(self, aff: torch.Tensor) -> torch.Tensor:
        """aff (B, K+1, L) → (B, K) cosine of the refined query token to each candidate token."""
        return csa_scores(self(aff)[0])


def build_csa(L: int = 512, dim: int = 768, depth: int = 2, heads: int = 12, mlp_ratio: float = 4.0,
              qkv_bias: bool = True, drop: float = 0.1, attn_drop: float = 0.1, drop_path: float = 0.1,
              final_norm: bool = True) -> CSA:
    """A :class:`CSA` with the paper's defaults (L = 512 anchors, 2 layers, 12 heads, width 768)."""
    return CSA(L, dim, depth, heads, mlp_ratio, qkv_bias, drop, attn_drop, drop_path, final_norm)


def csa_scores(tokens: torch.Tensor) -> torch.Tensor:
    """tokens (B, K+1, dim) L2-normalised → (B, K) <token_0, token_i>, i = 1 … K."""
    return torch.einsum("bd,bkd->bk", tokens[:, 0], tokens[:, 1:])


# --------------------------------------------------------------------------- loss
def csa_loss(tokens: torch.Tensor, recon: torch.Tensor, aff: torch.Tensor, positives: torch.Tensor,
             temperature: float = 2.0, alpha: float = 0.2) -> torch.Tensor:
    """Contrastive + feature-preservation loss (Ouyang et al., NeurIPS 2021, Sec. 3.3).

    tokens (B, N, dim) L2-normalised (N = K+1, token 0 the query), recon and aff (B, N, L),
    positives (B, N) bool with ``positives[:, 0]`` True. With s_i = <token_0, token_i> over all N
    items (s_0 = 1): mean_b −log(Σ_{i∈pos} exp(s_i/t) / Σ_i exp(s_i/t)) + alpha ·
    mean_{b,i} sqrt(clamp(‖L2(aff_{b,i}) − L2(recon_{b,i})‖², 1e-4, 1e4)): the reconstruction term
    is the per-row Euclidean *distance* (clamped as in the authors' ``RerankTransformer.forward``),
    the term their alpha = 0.2 was tuned for, not its square.
    """
    if tokens.ndim != 3 or recon.ndim != 3 or aff.shape != recon.shape or tokens.shape[:2] != aff.shape[:2]:
        raise ValueError(f"shape mismatch: tokens {tuple(tokens.shape)}, recon {tuple(recon.shape)}, "
                         f"aff {tuple(aff.shape)}")
    if positives.shape != tokens.shape[:2] or positives.dtype != torch.bool:
        raise ValueError(f"positives must be bool {tuple(tokens.shape[:2])}, got {positives.dtype} "
                         f"{tuple(positives.shape)}")
    if not bool(positives[:, 0].all()):
        raise ValueError("positives[:, 0] (the query itself) must be True")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be > 0, got {temperature}")
    logits = torch.einsum("bd,bnd->bn", tokens[:, 0], tokens) / temperature
    pos = logits.masked_fill(~positives.to(logits.device), float("-inf"))
    contrastive = (torch.logsumexp(logits, 1) - torch.logsumexp(pos, 1)).mean()
    sq = (F.normalize(aff, dim=-1) - F.normalize(recon, dim=-1)).pow(2).sum(-1)   # (B, N)
    return contrastive + alpha * sq.clamp(1e-4, 1e4).sqrt().mean()


# --------------------------------------------------------------------------- state dicts
#: published key prefix (github.com/MCC-WH/CSA, network/RerankTransformer.py) → this module's.
#: ``blocks.*`` (network/Transformer_Block.py: norm1, attn.qkv, attn.proj, norm2, mlp.fc1,
#: mlp.fc2) and ``topk_proj.*`` keep their names.
PUBLISHED_KEY_MAP = {"feature_align.layers.0.": "recon.", "topk_proj.": "topk_proj.", "blocks.": "blocks."}


def load_state_dict_mapped(model: nn.Module, state_dict: Mapping[str, torch.Tensor],
                           mapping: Mapping[str, str], strict: bool = True):
    """Load ``state_dict`` after renaming keys by prefix: a key starting with a ``mapping`` key
    has that prefix replaced by its value (longest prefix first); other keys are kept. A leading
    ``module.`` (DataParallel) is dropped first. Returns ``model.load_state_dict``'s result."""
    order = sorted(mapping, key=len, reverse=True)
    out = {}
    for k, v in state_dict.items():
        k = k[len("module."):] if k.startswith("module.") else k
        for p in order:
            if k.startswith(p):
                k = mapping[p] + k[len(p):]
                break
        if k in out:
            raise ValueError(f"two keys map to {k!r}")
        out[k] = v
    return model.load_state_dict(out, strict=strict)


def load_published_state_dict(model: CSA, state_dict: Mapping[str, torch.Tensor]):
    """Load weights of the authors' ``RerankTransformer`` (github.com/MCC-WH/CSA,
    network/RerankTransformer.py) into ``model`` via :data:`PUBLISHED_KEY_MAP` (strict).

    That network has no final LayerNorm: ``model`` must be built with ``final_norm=False``.
    ``state_dict`` may be wrapped as ``{'state_dict': ...}`` / ``{'model': ...}``.
    """
    for wrap in ("state_dict", "model"):
        if wrap in state_dict and isinstance(state_dict[wrap], Mapping):
            state_dict = state_dict[wrap]
            break
    if isinstance(model.norm, nn.LayerNorm):
        raise ValueError("the published CSA has no final LayerNorm: build the model with final_norm=False")
    return load_state_dict_mapped(model, state_dict, PUBLISHED_KEY_MAP, strict=True)
