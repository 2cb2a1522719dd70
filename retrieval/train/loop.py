"""One generic, resumable training loop (single process or DDP through torchrun).

The caller supplies the model, the data (a ``Dataset`` or ``epoch -> Dataset``, e.g. tuples mined
again every epoch) and ``loss_fn(model, batch) -> scalar``; :func:`fit` does the rest: optimizer with
weight-decay exclusions, per-step warm-up + cosine schedule, AMP, gradient clipping, progress bars,
atomic end-of-epoch checkpoints with RNG states (exact resume), ``history.json`` and a curve PNG.

Distributed: ``torchrun --nproc_per_node=N -m retrieval.train --task global --config cfg.json``
(:mod:`retrieval.train.__main__`). Each rank sees ``batch_size`` samples per step and DDP averages the
gradients, so one step uses ``N x batch_size`` samples (a single-process run with batch ``N x batch_size``
and the same data order is the same computation up to float rounding, except for BatchNorm, whose batch
statistics are per rank; its running statistics are taken from rank 0 at the end of every epoch). Only
rank 0 writes files.

Why this file is long: :func:`fit` is one loop whose resume, DDP, AMP and checkpoint paths share its
state (optimiser, scheduler, scaler, RNG streams); the parts that stand alone live beside it
(:mod:`.config`, :mod:`.optim`, :mod:`retrieval.distributed`).
"""

from __future__ import annotations

import math
import os
import pickle
import random
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset
from tqdm.auto import tqdm

from ..config import resolve, resolve_device, seed_everything
from ..distributed import barrier, init_distributed, is_main, rank, world
from ..io import atomic_copy, atomic_write, atomic_write_json
from ..models.registry import model_meta
from ..viz import save_figure
from .config import TrainConfig
from .optim import build_optimizer, build_scheduler, resolve_amp

CHECKPOINT = "checkpoint.pt"
HISTORY = "history.json"
CURVE = "training_curve.png"


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


def _get_rng() -> dict:
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    # numpy's key array as a tensor: the checkpoint then loads with torch.load(weights_only=True)
    state = {"python": random.getstate(), "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng(state: dict) -> None:
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys.numpy() if isinstance(keys, torch.Tensor) else keys, np.uint32), *rest))
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


def to_device(batch, device: torch.device):
    """``batch`` (a tensor, or dicts / lists / tuples / named tuples of them) on ``device``; image batches
    (B, 3, H, W) in channels-last memory format (the convolutions' faster NHWC kernels: about 1.2x per
    training step for EfficientNet-Lite0 on 2 CPU cores; the same values)."""
    if isinstance(batch, torch.Tensor):
        out = batch.to(device, non_blocking=True)
        if out.dim() == 4 and out.shape[1] == 3 and out.is_floating_point():
            out = out.contiguous(memory_format=torch.channels_last)
        return out
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        out = [to_device(v, device) for v in batch]
        return type(batch)(*out) if hasattr(batch, "_fields") else type(batch)(out)
    return batch


# --------------------------------------------------------------------------- figure
def plot_history(history: list[dict]):
    """Mean loss and learning rate per epoch (a matplotlib Figure on the Agg canvas)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # lazy: figures only
    from matplotlib.figure import Figure  # lazy: figures only

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
    """This process's device, with its index on CUDA (LOCAL_RANK's GPU under torchrun)."""
    return torch.device(resolve_device(cfg.device))


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
            batch = to_device(batch, device)
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
            meta = model_meta(model)
            if meta is not None:  # load_model rebuilds the network from the training checkpoint too
                state["meta"] = dict(meta, trained=True) if "trained" in meta else meta  # ≥ 1 epoch trained
            save_checkpoint(ckpt_path, state)
            if cfg.keep_epoch_checkpoints:
                atomic_copy(ckpt_path, out / f"checkpoint_epoch{epoch + 1}.pt")
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
