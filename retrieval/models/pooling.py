"""Thin ``nn.Module`` wrappers around :mod:`retrieval.models.functional`."""

from __future__ import annotations

import torch
from torch import nn

from . import functional as LF


class MAC(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return LF.mac(x)


class SPoC(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return LF.spoc(x)


class GeM(nn.Module):
    """GeM pooling with a learnable (default) or fixed power ``p``."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6, learn_p: bool = True):
        super().__init__()
        if p <= 0:
            raise ValueError(f"GeM p must be positive, got {p}")
        t = torch.tensor([float(p)])
        if learn_p:
            self.p = nn.Parameter(t)
        else:
            self.register_buffer("p", t)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return LF.gem(x, self.p, self.eps)

    def extra_repr(self) -> str:
        return f"p={self.p.item():.4f}, eps={self.eps}, learn_p={isinstance(self.p, nn.Parameter)}"


class GeMPlus(GeM):
    """GeM+ of SuperGlobal (Shao et al., ICCV 2023): GeM with the fixed p = 4.6."""

    def __init__(self, p: float = LF.GEM_PLUS_P, eps: float = 1e-6):
        super().__init__(p, eps, learn_p=False)


class RegionalGeM(GeMPlus):
    """Regional-GeM then GeM+ (SuperGlobal): the map blended with its 5 × 5 local GeM (p = 2.5,
    :func:`~retrieval.models.functional.regional_gem`), then GeM with p = 4.6. (B, C, H, W) → (B, C)."""

    def __init__(self, p: float = LF.GEM_PLUS_P, pr: float = LF.REGIONAL_P, size: int = LF.REGIONAL_SIZE,
                 eps: float = 1e-6):
        super().__init__(p, eps)
        self.pr, self.size = float(pr), int(size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return LF.gem(LF.regional_gem(x, self.pr, self.size), self.p, self.eps)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, pr={self.pr}, size={self.size}"


class RMAC(nn.Module):
    """Regional MAC over the rigid ``L``-level grid of :func:`~retrieval.models.functional.rmac_regions`
    (Tolias et al., ICLR 2016): (B, C, H, W) → (B, C), L2-normalised. No parameters."""

    def __init__(self, L: int = 3, eps: float = 1e-6):
        super().__init__()
        if L < 1:
            raise ValueError(f"R-MAC L must be >= 1, got {L}")
        self.L, self.eps = int(L), eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return LF.rmac(x, L=self.L, eps=self.eps)

    def extra_repr(self) -> str:
        return f"L={self.L}, eps={self.eps}"


class L2N(nn.Module):
    def __init__(self, eps: float = 1e-6):
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return LF.l2n(x, self.eps)


POOLINGS = {"mac": MAC, "spoc": SPoC, "gem": GeM, "rmac": RMAC, "gemp": GeMPlus, "rgem": RegionalGeM}
#: poolings whose multi-scale descriptors combine by the max over scales (SuperGlobal's Scale-GeM),
#: not by the GeM power mean (Radenović et al.)
MAX_OVER_SCALES = ("gemp", "rgem")


def build_pooling(name: str, **kwargs) -> nn.Module:
    """Pooling module by name; ``kwargs`` go to GeM (p, eps, learn_p) and RMAC (L, eps) and are
    ignored by the parameter-free MAC and SPoC and by SuperGlobal's GeM+ (``gemp``) and Regional-GeM
    (``rgem``), which keep the paper's exponents."""
    if name not in POOLINGS:
        raise ValueError(f"unknown pooling {name!r}; expected one of {sorted(POOLINGS)}")
    return POOLINGS[name](**kwargs) if name in ("gem", "rmac") else POOLINGS[name]()
