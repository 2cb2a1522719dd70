"""Paths, the run profile and seeding shared by the package and the notebooks."""

from __future__ import annotations

import ctypes
import os
import random
import sys
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
    """The device to run on, always with its index when it is a GPU: ``auto`` → this process's CUDA
    device when CUDA is available, else ``cpu``; ``cuda`` → ``cuda:N`` with N = ``LOCAL_RANK`` under
    torchrun, else the current CUDA device; ``cuda:N`` and ``cpu`` are checked and returned.
    (``torch.cuda.set_device`` and DDP's ``device_ids`` reject a CUDA device without an index.)"""
    import torch  # lazy: after tune_malloc

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return device
    if not isinstance(device, str) or not device.startswith("cuda"):
        raise ValueError(f"device={device!r}: expected 'auto', 'cpu', 'cuda' or 'cuda:N'")
    if not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available on this machine")
    n = torch.cuda.device_count()
    if device == "cuda":
        local = os.environ.get("LOCAL_RANK")
        index = int(local) if local is not None else torch.cuda.current_device()
        if index >= n:
            raise ValueError(f"LOCAL_RANK={local} but this machine has {n} CUDA device(s): start at most {n} "
                             "processes per node (torchrun --nproc_per_node)")
    else:
        head, _, tail = device.partition(":")
        if head != "cuda" or not tail.isdigit():
            raise ValueError(f"device={device!r}: expected 'auto', 'cpu', 'cuda' or 'cuda:N'")
        index = int(tail)
        if index >= n:
            raise ValueError(f"device={device!r} but this machine has {n} CUDA device(s) (cuda:0..cuda:{n - 1})")
    return f"cuda:{index}"


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (all devices)."""
    import torch  # lazy: after tune_malloc

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


MALLOC_ENV = "RETRIEVAL_MALLOC"
# glibc mallopt parameters (malloc.h): M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
# bytes; mallopt takes a C int, so each stays below 2 GiB
MALLOC_SETTINGS = dict(mmap_threshold=32 << 20, trim_threshold=2047 << 20, top_pad=512 << 20)


def tune_malloc() -> bool:
    """Keep freed blocks of up to 32 MB in the process heap instead of handing them back to the kernel
    (glibc on Linux only; called when :mod:`retrieval` is imported). Returns True when applied.

    PyTorch's CPU tensors come from ``malloc``; with glibc's defaults every activation above the adaptive
    mmap threshold is a fresh ``mmap`` whose pages the kernel faults in and zeroes on first touch, and
    frees beyond the trim threshold shrink the heap so the next batch faults again. A CNN forward at the
    demo's sizes then spends as much time in page faults as in arithmetic (EfficientNet-Lite0, 16 × 240 px:
    ~1.5M minor faults per 8 batches; with these settings 1.8-1.9× faster at 240 and 339 px on a 2-core
    Xeon, identical outputs: the allocator changes no arithmetic). Blocks above 32 MB (glibc's ceiling for
    the threshold) are mapped when the heap cannot hold them and unmapped when freed; the heap hands free
    memory at its top back beyond ~2 GB, so a process may keep up to ~2.5 GB of freed memory.
    The same fix as preloading jemalloc / tcmalloc, without a system library. Skipped when
    ``$RETRIEVAL_MALLOC`` is ``default``, a glibc ``MALLOC_*`` / ``GLIBC_TUNABLES`` variable is set, or an
    allocator is preloaded."""

    if os.environ.get(MALLOC_ENV, "").strip() == "default" or not sys.platform.startswith("linux"):
        return False
    if (any(k.startswith("MALLOC_") for k in os.environ) or "GLIBC_TUNABLES" in os.environ
            or "malloc" in os.environ.get("LD_PRELOAD", "")):
        return False                                 # the user's own allocator settings (or jemalloc/tcmalloc) win
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):                # not glibc (musl, macOS)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = [mallopt(_M_MMAP_THRESHOLD, MALLOC_SETTINGS["mmap_threshold"]),
          mallopt(_M_TRIM_THRESHOLD, MALLOC_SETTINGS["trim_threshold"]),
          mallopt(_M_TOP_PAD, MALLOC_SETTINGS["top_pad"])]
    return all(v == 1 for v in ok)
