"""One generic, resumable training loop (single process or DDP through torchrun).

The caller supplies the model, the data (a ``Dataset`` or ``epoch -> Dataset``, e.g. tuples mined
again every epoch) and ``loss_fn(model, batch) -> scalar``; :func:`fit` does the rest: optimizer with
weight-decay exclusions, per-step warm-up + cosine schedule, AMP, gradient clipping, progress bars,
atomic end-of-epoch checkpoints with RNG states (exact resume), ``history.json`` and a curve PNG.

Distributed: ``torchrun --nproc_per_node=N -m retrieval.train --task module:function --config
cfg.json``. Each rank sees ``batch_size`` samples per step and DDP averages the gradients, so one
step uses ``N x batch_size`` samples (a single-process run with batch ``N x batch_size`` and the same
data order is the same computation up to float rounding, except for BatchNorm, whose batch statistics
are per rank; its running statistics are taken from rank 0 at the end of every epoch). Only rank 0
writes files.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import math
import os
import pickle
import random
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset
from tqdm.auto import tqdm

from .config import resolve, resolve_device, seed_everything
from .io import atomic_write, atomic_write_json
from .viz import save_figure

__all__ = ["TrainConfig", "fit", "param_groups", "build_optimizer", "build_scheduler", "lr_factor",
           "resolve_amp", "init_distributed", "is_main", "world", "rank", "barrier", "sharded_map",
           "sharded_extract", "save_checkpoint", "load_checkpoint", "plot_history", "load_task", "main"]

CHECKPOINT = "checkpoint.pt"
HISTORY = "history.json"
CURVE = "training_curve.png"
_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)


# --------------------------------------------------------------------------- configuration
@dataclasses.dataclass
class TrainConfig:
    """Training options (JSON-serialisable; stored in every checkpoint).

    ``warmup_steps`` (if not None) overrides ``warmup_epochs``; the learning rate rises linearly
    over the warm-up, then follows a cosine down to ``min_lr``, updated every step.
    ``amp``: ``"auto"`` (on for CUDA only), ``"on"`` or ``"off"``; ``amp_dtype``: ``"auto"`` (bf16
    where supported, else fp16), ``"bf16"`` or ``"fp16"`` (fp16 uses a GradScaler).
    ``out_dir=None`` trains without writing anything.
    """

    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    optimizer: str = "adamw"
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_epochs: float = 0.0
    warmup_steps: int | None = None
    min_lr: float = 0.0
    grad_clip: float | None = None
    amp: str = "auto"
    amp_dtype: str = "auto"
    seed: int = 0
    num_workers: int = 0
    device: str = "auto"
    out_dir: str | None = "runs/train"
    resume: bool = False
    log_every: int = 10
    shuffle: bool = True
    drop_last: bool = False
    find_unused_parameters: bool = False
    keep_epoch_checkpoints: bool = False

    def __post_init__(self):
        if isinstance(self.amp, bool):
            self.amp = "on" if self.amp else "off"
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer={self.optimizer!r}: expected 'sgd' or 'adamw'")
        if self.amp not in ("auto", "on", "off"):
            raise ValueError(f"amp={self.amp!r}: expected 'auto', 'on' or 'off'")
        if self.amp_dtype not in ("auto", "bf16", "fp16"):
            raise ValueError(f"amp_dtype={self.amp_dtype!r}: expected 'auto', 'bf16' or 'fp16'")
        if self.epochs < 0 or self.batch_size < 1 or self.log_every < 1:
            raise ValueError("epochs must be >= 0, batch_size and log_every >= 1")
        if self.lr < 0 or self.min_lr < 0 or self.warmup_epochs < 0 or (self.warmup_steps or 0) < 0:
            raise ValueError("lr, min_lr and the warm-up must be non-negative")
        if self.out_dir is not None:
            self.out_dir = str(self.out_dir)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """Build from a dict, ignoring keys that are not fields (task options may share the dict)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# --------------------------------------------------------------------------- distributed helpers
def _dist_on() -> bool:
    return dist.is_available() and dist.is_initialized()


def world() -> int:
    """Number of processes (1 when not distributed)."""
    return dist.get_world_size() if _dist_on() else 1


def rank() -> int:
    """This process's rank (0 when not distributed)."""
    return dist.get_rank() if _dist_on() else 0


def is_main() -> bool:
    """True on rank 0 (and when not distributed): the process that writes files and shows bars."""
    return rank() == 0


def barrier() -> None:
    if _dist_on():
        dist.barrier()


def init_distributed(device: str = "auto") -> bool:
    """Join the process group described by torchrun's env vars (RANK, WORLD_SIZE, ...), if any.

    Backend NCCL on CUDA, gloo on CPU. Returns True only when this call created the group (the
    caller then owns ``destroy_process_group``)."""
    if _dist_on() or "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return False
    cuda = resolve_device(device).startswith("cuda")
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
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


# --------------------------------------------------------------------------- checkpoints, RNG
def save_checkpoint(path: str | os.PathLike, state: dict) -> Path:
    """``torch.save(state)`` atomically (temp file in the same folder + rename); a full disk raises
    the OSError naming ``path`` and leaves the previous checkpoint intact."""
    return atomic_write(path, lambda fh: torch.save(state, fh))


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Load a checkpoint written by :func:`fit` (keys: model, optimizer, scheduler, scaler, epoch,
    step, steps_per_epoch, rng, world_size, config, history). Trusted files only (full unpickling).
    ValueError naming the file when it is truncated or not a checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, ValueError) as e:
        raise ValueError(f"{path}: cannot read the checkpoint, truncated or not a torch file "
                         f"({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path}: not a training checkpoint (a {type(ckpt).__name__}, expected a dict)")
    return ckpt


def _atomic_copy(src: Path, dst: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _get_rng() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------- data
def _worker_init(worker_id: int) -> None:
    s = torch.initial_seed() % 2**32
    random.seed(s)
    np.random.seed(s)


def _loader(ds, cfg: TrainConfig, epoch: int, device: torch.device, collate_fn) -> DataLoader:
    if isinstance(ds, IterableDataset):
        raise TypeError("fit needs a map-style dataset (len + getitem), not an IterableDataset")
    # DistributedSampler also when single-process (1 replica): the same permutation, seeded by
    # seed + epoch, so N ranks x batch b see exactly the batches of one process with batch N*b.
    sampler = DistributedSampler(ds, num_replicas=world(), rank=rank(), shuffle=cfg.shuffle,
                                 seed=cfg.seed, drop_last=cfg.drop_last)
    sampler.set_epoch(epoch)
    gen = torch.Generator().manual_seed((cfg.seed * 1_000_003 + epoch * 1_009 + rank()) % 2**63)
    return DataLoader(ds, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers,
                      collate_fn=collate_fn, pin_memory=device.type == "cuda", drop_last=cfg.drop_last,
                      generator=gen, worker_init_fn=_worker_init if cfg.num_workers else None)


def _to(batch, device: torch.device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        out = [_to(v, device) for v in batch]
        return type(batch)(*out) if hasattr(batch, "_fields") else type(batch)(out)
    return batch


# --------------------------------------------------------------------------- figure
def plot_history(history: list[dict]):
    """Mean loss and learning rate per epoch (a matplotlib Figure on the Agg canvas)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 2.8))
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    ep = [r["epoch"] + 1 for r in history]
    ax1.plot(ep, [r["loss"] for r in history], "o-", color="#1f77b4")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("mean training loss")
    ax2.plot(ep, [r["lr"] for r in history], "o-", color="#ff7f0e")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("learning rate (last step)")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- the loop
def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def _device(cfg: TrainConfig) -> torch.device:
    dev = resolve_device(cfg.device)
    if _dist_on() and dev == "cuda":
        dev = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return torch.device(dev)


def fit(model: nn.Module, data: Dataset | Callable[[int], Dataset], loss_fn: Callable[[nn.Module, Any], torch.Tensor],
        cfg: TrainConfig, on_epoch_end: Callable[[int, list, nn.Module], dict | None] | None = None,
        collate_fn: Callable | None = None, params: Iterable[dict] | None = None,
        task: dict | None = None) -> list[dict]:
    """Train ``model`` in place; return the history (one dict per epoch: epoch (0-based), loss
    (mean over steps and ranks), lr (last step), seconds (dataset build + training), steps, step).

    ``data``: a Dataset, or ``epoch -> Dataset`` called at the start of every epoch (0-based).
    ``loss_fn(model, batch)``: batch already on the device; ``model`` is the DDP wrapper when
    distributed, so call it (not ``model.module``) for the gradients to be synchronised.
    ``on_epoch_end(epoch, history, model)`` runs on every rank with the unwrapped model before the
    checkpoint (so the saved RNG states include its draws); a returned dict is merged into that
    epoch's record. ``params``: optimizer groups (default
    :func:`param_groups`). With ``cfg.resume`` the run continues from ``out_dir/checkpoint.pt``.
    ``task``: JSON-able description of the model and data (task options, a hash of the training
    data) stored in the checkpoint; resuming from a checkpoint whose ``task`` differs is an error,
    so a changed experiment never silently continues another one's weights.
    """
    created = init_distributed(cfg.device)
    try:
        return _fit(model, data, loss_fn, cfg, on_epoch_end, collate_fn, params, task)
    finally:
        if created:
            barrier()
            dist.destroy_process_group()


def _fit(model, data, loss_fn, cfg, on_epoch_end, collate_fn, params, task=None) -> list[dict]:
    device, main_proc = _device(cfg), is_main()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    out = resolve(cfg.out_dir) if cfg.out_dir is not None else None
    ckpt_path = out / CHECKPOINT if out is not None else None
    seed_everything(cfg.seed + rank())

    ckpt = None
    if cfg.resume and ckpt_path is not None and ckpt_path.is_file():
        ckpt = load_checkpoint(ckpt_path)
        _warn_config_change(ckpt["config"], cfg)
        _check_task(ckpt.get("task"), task, ckpt_path)
        missing = sorted({"model", "optimizer", "scheduler", "scaler", "epoch", "step", "rng"} - set(ckpt))
        if missing:
            raise ValueError(f"{ckpt_path}: not a checkpoint of fit (lacks {missing})")
        try:
            model.load_state_dict(ckpt["model"])
        except RuntimeError as e:  # another architecture: missing/unexpected keys, shape mismatch
            raise ValueError(f"{ckpt_path}: the checkpoint's weights do not fit this model (another "
                             f"architecture?); train into another out_dir or set resume=False.\n{e}") from e
    start = ckpt["epoch"] if ckpt else 0
    history: list[dict] = list(ckpt["history"]) if ckpt else []
    if start >= cfg.epochs:
        return history

    dataset_for = (lambda e: data) if isinstance(data, Dataset) or not callable(data) else data
    first_ds = None
    if ckpt:
        steps_per_epoch = int(ckpt["steps_per_epoch"])
    else:
        t0 = time.perf_counter()
        first_ds = dataset_for(0)
        build_s = time.perf_counter() - t0
        steps_per_epoch = len(_loader(first_ds, cfg, 0, device, collate_fn))
    if steps_per_epoch == 0:
        raise ValueError("the data loader yields no batch (empty dataset, or drop_last with too few samples)")

    model.to(device)
    optimizer = build_optimizer(model if params is None else params, cfg)
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch)  # before loading: see LambdaLR init
    amp_dtype = resolve_amp(cfg.amp, str(device), cfg.amp_dtype)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    step = 0
    if ckpt:
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        step = int(ckpt["step"])
        rngs = ckpt["rng"]
        if len(rngs) != world():
            warnings.warn(f"checkpoint saved with {len(rngs)} processes, resuming with {world()}: "
                          "random streams differ from an uninterrupted run")
        _set_rng(rngs[rank()] if rank() < len(rngs) else rngs[0])
    net = model
    if world() > 1:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                      find_unused_parameters=cfg.find_unused_parameters)
    clip_params = [p for g in optimizer.param_groups for p in g["params"]]
    if main_proc:
        amp_s = "off" if amp_dtype is None else str(amp_dtype).replace("torch.", "")
        print(f"fit: device={device} world={world()} amp={amp_s} steps/epoch={steps_per_epoch} "
              f"epochs {start + 1}..{cfg.epochs}" + (f" (resumed from {ckpt_path})" if ckpt else ""))

    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        if first_ds is not None and epoch == 0:
            ds, t0 = first_ds, t0 - build_s
        else:
            ds = dataset_for(epoch)
        loader = _loader(ds, cfg, epoch, device, collate_fn)
        net.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        n, lr = 0, optimizer.param_groups[0]["lr"]
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not main_proc, leave=True)
        for i, batch in enumerate(bar):
            batch = _to(batch, device)
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                loss = loss_fn(net, batch)
            if loss.ndim != 0:
                raise ValueError(f"loss_fn must return a scalar, got shape {tuple(loss.shape)}")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.grad_clip:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(clip_params, cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            step += 1
            loss_sum += loss.detach().double()
            n += 1
            if (i + 1) % cfg.log_every == 0 or i + 1 == len(loader):
                running = loss_sum.item() / n
                if not math.isfinite(running) and world() == 1:  # under DDP: checked after the all-reduce
                    raise FloatingPointError(f"non-finite loss at epoch {epoch}, step {step}")
                bar.set_postfix(loss=f"{running:.4g}", lr=f"{lr:.3g}")
        bar.close()
        stats = torch.stack([loss_sum, torch.tensor(float(n), dtype=torch.float64, device=device)])
        if world() > 1:
            dist.all_reduce(stats)
            # BatchNorm running statistics drift apart on each rank's last batches: take rank 0's,
            # so every rank mines the next epoch with the network the checkpoint holds
            for buf in model.buffers():
                dist.broadcast(buf, 0)
        if not math.isfinite(float(stats[0])):
            raise FloatingPointError(f"non-finite loss in epoch {epoch}")
        record = {"epoch": epoch, "loss": float(stats[0] / stats[1]), "lr": float(lr),
                  "seconds": time.perf_counter() - t0, "steps": n, "step": step}
        history.append(record)
        if on_epoch_end is not None:
            extra = on_epoch_end(epoch, history, model)
            if extra:
                record.update(extra)

        rngs = [_get_rng()]
        if world() > 1:
            rngs = [None] * world()
            dist.all_gather_object(rngs, _get_rng())
        if main_proc and out is not None:
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                     "epoch": epoch + 1, "step": step, "steps_per_epoch": steps_per_epoch,
                     "rng": rngs, "world_size": world(), "config": cfg.to_dict(), "history": history,
                     "task": task}
            save_checkpoint(ckpt_path, state)
            if cfg.keep_epoch_checkpoints:
                _atomic_copy(ckpt_path, out / f"checkpoint_epoch{epoch + 1}.pt")
            atomic_write_json(out / HISTORY, history)
            save_figure(plot_history(history), out / CURVE)
    return history


def _check_task(saved: dict | None, task: dict | None, path) -> None:
    if task is None or saved == task:
        return
    if saved is None:
        warnings.warn(f"{path}: checkpoint has no task record (older version); cannot check it matches {task}")
        return
    absent = "<absent>"  # an option the checkpoint's version did not have shows as such, not as None
    diff = {k: (saved.get(k, absent), task.get(k, absent)) for k in sorted(set(saved) | set(task))
            if saved.get(k, absent) != task.get(k, absent)}
    raise ValueError(f"{path}: checkpoint of another experiment (saved, now): {diff}; "
                     "train into another out_dir, or set resume=False to start again")


def _warn_config_change(saved: dict, cfg: TrainConfig) -> None:
    ignore = {"resume", "out_dir", "num_workers", "log_every", "device", "keep_epoch_checkpoints"}
    diff = {k: (saved.get(k), v) for k, v in cfg.to_dict().items() if k not in ignore and saved.get(k) != v}
    if diff:
        warnings.warn(f"resuming with a changed configuration (saved, now): {diff}")


# --------------------------------------------------------------------------- command line
def load_task(spec: str) -> Callable:
    """Import ``module:function``."""
    module, sep, name = spec.partition(":")
    if not sep or not module or not name:
        raise ValueError(f"--task {spec!r}: expected 'module:function'")
    return getattr(importlib.import_module(module), name)


def main(argv: list[str] | None = None) -> int:
    """``python -m retrieval.train --task module:function --config cfg.json`` (under torchrun for
    DDP). The JSON holds the TrainConfig fields plus any task options; the task function gets the
    whole dict and returns ``(model, data, loss_fn)`` or ``(model, data, loss_fn, on_epoch_end)``."""
    ap = argparse.ArgumentParser(prog="python -m retrieval.train", description=main.__doc__)
    ap.add_argument("--task", required=True, help="module:function returning (model, data, loss_fn[, on_epoch_end])")
    ap.add_argument("--config", required=True, help="JSON file: TrainConfig fields and task options")
    ap.add_argument("--out-dir", help="override out_dir")
    ap.add_argument("--resume", action="store_true", help="continue from out_dir/checkpoint.pt")
    args = ap.parse_args(argv)
    config = json.loads(Path(args.config).read_text())
    if args.out_dir:
        config["out_dir"] = args.out_dir
    if args.resume:
        config["resume"] = True
    cfg = TrainConfig.from_dict(config)
    created = init_distributed(cfg.device)
    try:
        seed_everything(cfg.seed)  # same on every rank: identical model initialisation
        parts = load_task(args.task)(config)
        if len(parts) not in (3, 4):
            raise ValueError("the task must return (model, data, loss_fn) or (model, data, loss_fn, on_epoch_end)")
        model, data, loss_fn = parts[:3]
        fit(model, data, loss_fn, cfg, on_epoch_end=parts[3] if len(parts) == 4 else None)
    finally:
        if created and _dist_on():
            barrier()
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    # run through the imported module, so `retrieval.train` is a single module object
    from retrieval.train import main as _main

    sys.exit(_main())
