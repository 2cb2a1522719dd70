"""``python -m retrieval.train --task global --config cfg.json``: the notebooks' training tasks from the
command line (under ``torchrun`` for DDP); rank 0 exports the trained model."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path
from typing import Callable

import torch.distributed as dist
from torch import nn

from .. import tasks
from ..config import resolve, seed_everything
from ..distributed import barrier, init_distributed, is_distributed, is_main
from ..models.registry import model_meta, save_model
from .config import TrainConfig
from .loop import fit

#: ``--task`` names: the task functions the notebooks call (each trains and returns ``(model, history)``)
TASKS = {"global": "train_global", "csa": "train_csa", "asym": "train_asym", "token": "train_token",
         "projection": "train_projection"}


def load_task(spec: str) -> Callable:
    """A task by name (:data:`TASKS`: ``retrieval.tasks.train_<name>``), or ``module:function`` (a builder
    returning ``(model, data, loss_fn[, on_epoch_end])``)."""
    if spec in TASKS:
        return getattr(tasks, TASKS[spec])
    module, sep, name = spec.partition(":")     # a user's builder, named at run time
    if not sep or not module or not name:
        raise ValueError(f"--task {spec!r}: expected one of {sorted(TASKS)} or 'module:function'")
    return getattr(importlib.import_module(module), name)


def export_path(model: nn.Module, out_dir: str | os.PathLike) -> Path:
    """Where a trained model is exported: ``<out_dir>/<its name>.pth`` (the kind for nameless models),
    the file the notebooks write and :func:`~retrieval.models.load_model` reads."""
    meta = getattr(model, "meta", None) or model_meta(model) or {}
    name = getattr(model, "name", None) or meta.get("name") or meta.get("kind") or "model"
    return resolve(out_dir) / f"{name}.pth"


def main(argv: list[str] | None = None) -> int:
    """``python -m retrieval.train --task global --config cfg.json`` (under torchrun for DDP).

    A named task (global, csa, asym, token, projection) runs the same function as the notebooks
    (``retrieval.tasks.train_<task>``: its defaults updated by the JSON) and rank 0 exports the
    trained model with :func:`~retrieval.models.save_model` to ``<out_dir>/<name>.pth``, loadable by
    ``load_model`` and by the notebooks' ``network=`` parameter. ``module:function`` runs a custom
    builder returning ``(model, data, loss_fn[, on_epoch_end])`` through :func:`fit` (checkpoint only)."""
    ap = argparse.ArgumentParser(prog="python -m retrieval.train", description=main.__doc__.split("\n")[0])
    ap.add_argument("--task", required=True, help=f"one of {sorted(TASKS)}, or module:function (a builder)")
    ap.add_argument("--config", required=True, help="JSON file: TrainConfig fields and task options")
    ap.add_argument("--out-dir", help="override out_dir")
    ap.add_argument("--resume", action="store_true", help="continue from out_dir/checkpoint.pt")
    args = ap.parse_args(argv)
    try:
        config = json.loads(Path(args.config).read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"--config {args.config}: cannot read a JSON object ({e})")
    if not isinstance(config, dict):
        raise SystemExit(f"--config {args.config}: expected a JSON object of options")
    if args.out_dir:
        config["out_dir"] = args.out_dir
    if args.resume:
        config["resume"] = True
    cfg = TrainConfig.from_dict(config)
    task = load_task(args.task)
    created = init_distributed(cfg.device)
    try:
        seed_everything(cfg.seed)  # same on every rank: identical model initialisation
        if args.task in TASKS:
            model, history = task(config)
            if is_main() and cfg.out_dir is not None:
                path = save_model(model, export_path(model, cfg.out_dir))
                print(f"{len(history)} epochs; exported {path} (load_model)")
        else:
            parts = task(config)
            if len(parts) not in (3, 4):
                raise ValueError("the task must return (model, data, loss_fn) or (model, data, loss_fn, on_epoch_end)")
            model, data, loss_fn = parts[:3]
            fit(model, data, loss_fn, cfg, on_epoch_end=parts[3] if len(parts) == 4 else None)
    finally:
        if created and is_distributed():
            barrier()
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
