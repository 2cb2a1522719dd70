"""Contextual Similarity Aggregation (CSA): learned visual re-ranking with self-attention
(Ouyang et al., "Contextual Similarity Aggregation with Self-attention for Visual Re-ranking",
NeurIPS 2021).

Each query and each of its top-K first-stage candidates is described by its *affinity feature*:
its cosine similarity to L anchors (the query itself, then the query's top L−1 db results). A
pre-norm transformer encoder refines the K+1 affinity features jointly; candidates are re-ordered
by the cosine between the refined query token and each refined candidate token.

Conventions as :mod:`retrieval.search`: ``query`` (n_q, D), ``db`` (n_db, D) L2-normalised;
``ranks`` (n_ranked, n_q) int64 db indices, best first.

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

__all__ = ["affinity_features", "DropPath", "Attention", "Mlp", "Block", "CSA", "build_csa",
           "csa_loss", "csa_scores", "csa_rerank", "csa_rerank_loop", "PUBLISHED_KEY_MAP",
           "load_published_state_dict", "load_state_dict_mapped"]


# --------------------------------------------------------------------------- validation
def _pos_int(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or int(v) < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    return int(v)


def _feat(x, name: str) -> torch.Tensor:
    t = x.detach() if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x, np.float32))
    if t.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n, D), got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        t = t.float()
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or Inf")
    return t


def _ranks(ranks, n_q: int, n_db: int, need: int) -> torch.Tensor:
    """First-stage ranks validated as in :mod:`retrieval.rerank` (>= max(K, L − 1) rows), as a tensor."""
    from ..rerank import _first_ranks

    r = ranks.cpu().numpy() if isinstance(ranks, torch.Tensor) else ranks
    return torch.from_numpy(_first_ranks(r, n_q, n_db, need))


def _check_kl(K, L, n_db: int) -> tuple[int, int]:
    K, L = _pos_int("K", K), _pos_int("L", L)
    if K > n_db:
        raise ValueError(f"K={K} is larger than the db (n_db={n_db})")
    if L - 1 > n_db:
        raise ValueError(f"L - 1 = {L - 1} anchors is more than the db holds (n_db={n_db})")
    return K, L


# --------------------------------------------------------------------------- affinity features
def affinity_features(query, db, ranks, K: int, L: int) -> torch.Tensor:
    """Affinity features of the query and its top-K candidates to L anchors.

    query (B, D), db (n_db, D) L2-normalised (tensors or arrays); ranks (>= max(K, L−1), B)
    first-stage db indices. Items: [query, db[ranks[0, b]], …, db[ranks[K−1, b]]]; anchors:
    [query, db[ranks[0, b]], …, db[ranks[L−2, b]]]. Returns (B, K+1, L) float with
    ``[b, i, j] = <item_i, anchor_j>`` (one batched matmul), on ``query``'s device
    (``db`` is moved there if needed).
    """
    q, d = _feat(query, "query"), _feat(db, "db")
    if q.shape[1] != d.shape[1]:
        raise ValueError(f"query dimension {q.shape[1]} != db dimension {d.shape[1]}")
    K, L = _check_kl(K, L, d.shape[0])
    r = _ranks(ranks, q.shape[0], d.shape[0], max(K, L - 1))
    return _affinity(q, d, r, K, L)


def _affinity(q: torch.Tensor, d: torch.Tensor, r: torch.Tensor, K: int, L: int) -> torch.Tensor:
    """:func:`affinity_features` on validated tensors (no checks)."""
    r = r.to(q.device)
    d = d.to(device=q.device, dtype=q.dtype)
    n = max(K, L - 1)
    cand = d[r[:n].T]                                        # (B, n, D)
    items = torch.cat([q[:, None], cand[:, :K]], 1)          # (B, K+1, D)
    anchors = torch.cat([q[:, None], cand[:, :L - 1]], 1)    # (B, L, D)
    return torch.bmm(items, anchors.transpose(1, 2))         # (B, K+1, L)


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
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(y.transpose(1, 2).reshape(B, N, C)))


class Mlp(nn.Module):
    """fc1 → GELU → dropout → fc2 → dropout; (B, N, dim) → (B, N, dim)."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

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
        self.L, self.dim = _pos_int("L", L), _pos_int("dim", dim)
        _pos_int("depth", depth)
        self.sim_drop = nn.Dropout(drop)
        self.topk_proj = nn.Linear(L, dim)
        self.pos_drop = nn.Dropout(drop)
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


# --------------------------------------------------------------------------- re-ranking
def _rerank_inputs(model: CSA, query, db, ranks, K, L):
    q, d = _feat(query, "query"), _feat(db, "db")
    if q.shape[1] != d.shape[1]:
        raise ValueError(f"query dimension {q.shape[1]} != db dimension {d.shape[1]}")
    K, L = _check_kl(K, L, d.shape[0])
    if getattr(model, "L", L) != L:
        raise ValueError(f"the model takes L={model.L} anchors, got L={L}")
    r = _ranks(ranks, q.shape[0], d.shape[0], max(K, L - 1))
    return q, d, r, K, L


def _device(model: nn.Module, device) -> torch.device:
    if device is not None:
        return torch.device(device)
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def _rerank(model, query, db, ranks, K, L, batch, device) -> tuple[np.ndarray, np.ndarray]:
    batch = _pos_int("batch", batch)
    q, d, r, K, L = _rerank_inputs(model, query, db, ranks, K, L)
    dev = _device(model, device)
    was_training = model.training
    model.eval()
    try:
        d = d.to(dev)
        top = r[:K].clone()
        scores = torch.empty((K, q.shape[0]), dtype=torch.float32)
        for b0 in range(0, q.shape[0], batch):
            sl = slice(b0, b0 + batch)
            aff = _affinity(q[sl].to(dev), d, r[:, sl], K, L)
            s = model.score(aff).float().cpu()                         # (B, K)
            o = torch.argsort(s, dim=1, descending=True, stable=True)  # ties: first-stage order
            top[:, sl] = r[:K, sl].gather(0, o.T)
            scores[:, sl] = s.gather(1, o).T
    finally:
        model.train(was_training)
    out = torch.cat([top, r[K:]], 0)
    return out.numpy().astype(np.int64, copy=False), scores.numpy()


def csa_rerank(model: CSA, query, db, ranks, K: int = 1024, L: int = 512, batch: int = 64,
               device=None) -> tuple[np.ndarray, np.ndarray]:
    """Re-rank the top-K of first-stage ``ranks`` with a CSA model (eval mode, no grad).

    query (n_q, D), db (n_db, D) L2-normalised; ranks (n_ranked >= max(K, L−1), n_q). ``batch``
    queries share one affinity build (:func:`affinity_features`) and one forward pass. Returns
    ``ranks`` (n_ranked, n_q) int64 — the top-K ordered by CSA score (ties in first-stage order),
    rows K… unchanged — and ``scores`` (K, n_q) float32, descending. ``device``: default the
    model's.
    """
    return _rerank(model, query, db, ranks, K, L, batch, device)


def csa_rerank_loop(model: CSA, query, db, ranks, K: int = 1024, L: int = 512,
                    device=None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`csa_rerank` one query at a time (reference / benchmark baseline); same result."""
    return _rerank(model, query, db, ranks, K, L, 1, device)


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


# --------------------------------------------------------------------------- training data
class CSALists(torch.utils.data.Dataset):
    """CSA training lists from first-stage descriptors of a *training* split (Ouyang et al. 2021).

    Every image i is a query; its ranked list is its top-K among the other images by inner product
    of ``features`` (N, D). Item i is ``(aff (K+1, L), positives (K+1,) bool)``: the query then its
    K candidates in a random order (seeded by ``seed``, epoch and i; the query stays first), the L
    anchors are the query and its top L−1 results in rank order, positives share the query's label.
    ``K`` counts candidates only; the authors' training ``--topk`` counts the query too (their
    ``RerankDataset_TopKSIM`` takes the top ``topk`` of the self-similarity, the query first), so
    their ``topk=512`` is ``K=511`` here (``L`` counts the query in both).
    """

    def __init__(self, features, labels, K: int = 512, L: int = 512, seed: int = 0, shuffle: bool = True):
        from ..search import exact_search

        x = _feat(features, "features")
        lab = torch.as_tensor(np.asarray(labels))
        if lab.shape != (x.shape[0],):
            raise ValueError(f"labels must be ({x.shape[0]},), got {tuple(lab.shape)}")
        self.K, self.L = _check_kl(K, L, x.shape[0] - 1)
        need = max(self.K, self.L - 1)
        ranks, _ = exact_search(x.numpy(), x.numpy(), need + 1)   # (need+1, N), self first
        ranks = torch.from_numpy(ranks.T.copy())                    # (N, need+1)
        own = ranks == torch.arange(x.shape[0])[:, None]
        # drop each image itself (usually rank 0; duplicates may put it lower)
        keep = torch.where(own.any(1, keepdim=True), ~own, torch.ones_like(own))
        self.lists = torch.stack([row[m][:need] for row, m in zip(ranks, keep)])
        self.x, self.labels, self.seed, self.shuffle, self.epoch = x, lab, int(seed), shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        cand = self.lists[i, :self.K]
        if self.shuffle:
            g = torch.Generator().manual_seed(hash((self.seed, self.epoch, int(i))) % (2 ** 63))
            cand = cand[torch.randperm(self.K, generator=g)]
        items = torch.cat([torch.tensor([i]), cand])
        anchors = torch.cat([torch.tensor([i]), self.lists[i, :self.L - 1]])
        aff = self.x[items] @ self.x[anchors].T
        return aff, self.labels[items] == self.labels[i]
