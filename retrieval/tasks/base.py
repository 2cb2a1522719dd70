"""What every training task shares: its config (TrainConfig fields + the task's options), the
training split it reads, and the task options a checkpoint records."""

from __future__ import annotations

from pathlib import Path

from ..config import data_dir
from ..datasets import dataset_name, generate
from ..datasets.tuples import load_sfm
from ..distributed import barrier, is_main, world
from ..train import TrainConfig


def make_config(defaults: dict, overrides: dict, what: str) -> dict:
    """TrainConfig defaults, then the task's ``defaults``, updated by ``overrides``; a key of
    ``overrides`` that is in neither raises ValueError (``what`` names the task in the message)."""
    cfg = dict(TrainConfig().to_dict(), **defaults)
    unknown = set(overrides) - set(cfg)
    if unknown:
        raise ValueError(f"unknown {what} options {sorted(unknown)}; known: {sorted(cfg)}")
    cfg.update(overrides)
    return cfg


def load_train_split(cfg: dict) -> dict:
    """The SfM-120k-format training data of ``cfg`` (``train_set``, ``preset``, ``root``; root
    default :func:`~retrieval.config.data_dir`) as :func:`~retrieval.datasets.tuples.load_sfm`
    returns it. ``train_set="synth"`` renders the synthetic preset first if needed (under DDP one
    rank renders, the others wait)."""
    root = Path(cfg["root"]) if cfg.get("root") else data_dir()
    if cfg["train_set"] == "synth":
        if is_main():  # under DDP one rank renders, the others wait
            generate(cfg["preset"], root, progress=False)
        if world() > 1:
            barrier()
        name = dataset_name(cfg["preset"])
    else:
        name = cfg["train_set"]
    return load_sfm(root, name)


def task_options(cfg: dict, defaults: dict, paths: tuple = ("root",)) -> dict:
    """The task options of ``cfg`` (not TrainConfig fields, not ``paths``) for :func:`fit`'s ``task``."""
    skip = set(TrainConfig().to_dict()) | set(paths)
    return {k: cfg[k] for k in defaults if k not in skip}
