"""Optimiser, learning-rate schedule and mixed precision of :func:`~retrieval.train.fit`: weight decay
off for biases, norms and GeM's p; linear warm-up then cosine decay, updated every step; AMP dtype."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Iterable

import torch
from torch import nn

if TYPE_CHECKING:
    from .config import TrainConfig

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)


def param_groups(model: nn.Module, weight_decay: float, **extra) -> list[dict]:
    """Two groups (empty ones dropped): ``decay`` (weights of ≥2 dims) and ``no_decay`` (biases,
    norm-layer parameters and every 1-D/scalar parameter such as GeM's p). Frozen parameters are
    left out. ``extra`` (e.g. ``lr=...``) is copied into both groups."""
    decay, no_decay, seen = [], [], set()
    for mod_name, module in model.named_modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            if p.ndim <= 1 or name == "bias" or isinstance(module, _NORM_TYPES):
                no_decay.append(p)
            else:
                decay.append(p)
    groups = [dict(name="decay", params=decay, weight_decay=weight_decay, **extra),
              dict(name="no_decay", params=no_decay, weight_decay=0.0, **extra)]
    return [g for g in groups if g["params"]]


def build_optimizer(params: nn.Module | Iterable[dict], cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD (momentum) or AdamW over ``param_groups(model, cfg.weight_decay)`` or given groups."""
    groups = param_groups(params, cfg.weight_decay) if isinstance(params, nn.Module) else list(params)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _warmup(cfg: TrainConfig, steps_per_epoch: int) -> int:
    if cfg.warmup_steps is not None:
        return int(cfg.warmup_steps)
    return int(round(cfg.warmup_epochs * steps_per_epoch))


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Multiplier of the base lr at optimizer step ``step`` (0-based): ``(step+1)/warmup`` during
    the warm-up, then ``r + (1-r)(1+cos(pi t))/2`` with ``t = (step-warmup)/(total-warmup)``
    clipped to [0, 1] and ``r = min_lr/lr``."""
    if step < warmup:
        return (step + 1) / warmup
    t = min(1.0, max(0.0, (step - warmup) / max(1, total - warmup)))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step warm-up + cosine (:func:`lr_factor`) over ``cfg.epochs * steps_per_epoch`` steps.
    Groups with their own lr are scaled by the same factor."""
    total, warmup = cfg.epochs * steps_per_epoch, _warmup(cfg, steps_per_epoch)
    ratio = cfg.min_lr / cfg.lr if cfg.lr > 0 else 0.0

    def factor(step: int) -> float:  # a closure, so LambdaLR does not pickle it into its state
        return lr_factor(step, total, warmup, ratio)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def resolve_amp(amp: str | bool, device: str, amp_dtype: str = "auto") -> torch.dtype | None:
    """The autocast dtype, or None when mixed precision is off (``"auto"``: on for CUDA only)."""
    amp = {True: "on", False: "off"}.get(amp, amp)
    dev = torch.device(device).type
    if amp == "off" or (amp == "auto" and dev != "cuda"):
        return None
    if amp not in ("auto", "on"):
        raise ValueError(f"amp={amp!r}: expected 'auto', 'on' or 'off'")
    if amp_dtype == "auto":
        bf16_ok = dev != "cuda" or torch.cuda.is_bf16_supported()
        return torch.bfloat16 if bf16_ok else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[amp_dtype]
