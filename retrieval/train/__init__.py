"""Training: :class:`TrainConfig` (:mod:`.config`), the loop :func:`fit` (:mod:`.loop`), its optimiser,
schedule and mixed precision (:mod:`.optim`); ``python -m retrieval.train`` (:mod:`.__main__`) runs the
notebooks' tasks from the command line."""

from ..distributed import barrier, init_distributed, is_main, rank, sharded_extract, sharded_map, world
from .config import TrainConfig
from .loop import (CHECKPOINT, CURVE, HISTORY, fit, load_checkpoint, plot_history, save_checkpoint, to_device)
from .optim import build_optimizer, build_scheduler, lr_factor, param_groups, resolve_amp

__all__ = ["TrainConfig", "fit", "param_groups", "build_optimizer", "build_scheduler", "lr_factor",
           "resolve_amp", "init_distributed", "is_main", "world", "rank", "barrier", "sharded_map",
           "sharded_extract", "save_checkpoint", "load_checkpoint", "plot_history", "to_device",
           "CHECKPOINT", "HISTORY", "CURVE"]
