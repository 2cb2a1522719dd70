"""Process-group helpers for torchrun (DDP): who am I, who writes, and work split across ranks.

Every helper is a no-op (one process, rank 0) when the process was not started by torchrun, so the
same code runs in a notebook and under ``torchrun --nproc_per_node=N``.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist

from .config import resolve_device


def is_distributed() -> bool:
    """True inside an initialised process group (torchrun)."""
    return dist.is_available() and dist.is_initialized()


def world() -> int:
    """Number of processes (1 when not distributed)."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """This process's rank (0 when not distributed)."""
    return dist.get_rank() if is_distributed() else 0


def is_main() -> bool:
    """True on rank 0 (and when not distributed): the process that writes files and shows bars."""
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def init_distributed(device: str = "auto") -> bool:
    """Join the process group described by torchrun's env vars (RANK, WORLD_SIZE, ...), if any.

    Backend NCCL on CUDA, gloo on CPU. Returns True only when this call created the group (the
    caller then owns ``destroy_process_group``)."""
    if is_distributed() or "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return False
    dev = resolve_device(device)                           # cuda:LOCAL_RANK on a GPU
    cuda = dev.startswith("cuda")
    if cuda:
        torch.cuda.set_device(torch.device(dev))
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    return True


def _shard(n: int) -> tuple[int, int]:
    r, w = rank(), world()
    return r * n // w, (r + 1) * n // w


def sharded_map(fn: Callable[[Any], Any], items: Sequence) -> list:
    """``[fn(x) for x in items]``, each rank computing a contiguous slice; the results are gathered
    in the original order on every rank (a plain loop when not distributed)."""
    items = list(items)
    if world() == 1:
        return [fn(x) for x in items]
    a, b = _shard(len(items))
    parts: list = [None] * world()
    dist.all_gather_object(parts, [fn(x) for x in items[a:b]])
    return [y for part in parts for y in part]


def sharded_extract(describe: Callable[[list], Any], paths: Sequence) -> np.ndarray:
    """``describe(paths)`` -> (n, D) descriptors, each rank describing a contiguous slice of
    ``paths``; the (n, D) float array is gathered in the original order on every rank."""
    paths = list(paths)
    if world() == 1:
        return _to_numpy(describe(paths))
    a, b = _shard(len(paths))
    local = _to_numpy(describe(paths[a:b])) if b > a else None
    parts: list = [None] * world()
    dist.all_gather_object(parts, local)
    parts = [p for p in parts if p is not None]
    return np.concatenate(parts, axis=0) if parts else _to_numpy(describe([]))


def _to_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


# --------------------------------------------------------------------------- optimisation
