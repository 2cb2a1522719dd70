"""Paths, the run profile and seeding shared by the package and the notebooks."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PROFILE_ENV = "RETRIEVAL_PROFILE"
PROFILES = ("full", "smoke")


def profile() -> str:
    """The run profile: ``full`` (default) or ``smoke`` (tiny preset, few iterations; for tests),
    read from the ``RETRIEVAL_PROFILE`` environment variable."""
    value = os.environ.get(PROFILE_ENV, "full").strip() or "full"
    if value not in PROFILES:
        raise ValueError(f"{PROFILE_ENV}={value!r}: expected one of {PROFILES}")
    return value


def smoke() -> bool:
    return profile() == "smoke"


def data_dir() -> Path:
    """Where data, features and downloads live: ``$RETRIEVAL_DATA_DIR`` or ``<repo>/data``."""
    return Path(os.environ.get("RETRIEVAL_DATA_DIR") or ROOT / "data")


def resolve(path: str | os.PathLike) -> Path:
    """A path relative to the repository root (absolute paths are kept)."""
    path = Path(path)
    return path if path.is_absolute() else ROOT / path


def resolve_device(device: str = "auto") -> str:
    """``auto`` → ``cuda`` when available, else ``cpu``; anything else is checked and returned."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available on this machine")
    if not (device == "cpu" or device.startswith("cuda")):
        raise ValueError(f"device={device!r}: expected 'auto', 'cpu' or 'cuda[:N]'")
    return device


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (all devices)."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _fits(value, default) -> bool:
    if value is None or default is None:  # None means "off" / "not given" in the parameters cells
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple))
    return isinstance(value, type(default))


def check_parameters(values: dict, defaults: dict, where: str = "notebook") -> None:
    """Check notebook parameters ``values`` against the parameters cell's ``defaults``: ValueError
    for a name the notebook does not have, TypeError naming the parameter when a value's type does
    not fit its default's (an int passes for a float, None for anything, a default of None takes
    any value)."""
    unknown = sorted(set(values) - set(defaults))
    if unknown:
        raise ValueError(f"{where}: no parameter(s) {unknown}; its parameters are {sorted(defaults)}")
    for name, value in values.items():
        if not _fits(value, defaults[name]):
            raise TypeError(f"{where}: parameter {name!r} = {value!r} ({type(value).__name__}) does not fit its "
                            f"default {defaults[name]!r} ({type(defaults[name]).__name__})")
