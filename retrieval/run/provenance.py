"""Where a run's numbers come from: the machine, the code's commit, the date and the command, recorded in
``<run>/run.json`` by :func:`~retrieval.run.notebooks.run_notebooks` and copied with the metrics into a
committed record (:mod:`retrieval.run.report`)."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..config import ROOT


def machine() -> dict:
    """CPU model, cores, memory, GPU (None without CUDA) and the versions that change numbers."""
    cpu = platform.processor() or platform.machine()
    ram = None
    try:
        found = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu = found.group(1).strip() if found else cpu
        kb = re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text())
        ram = round(int(kb.group(1)) / 2**20, 1) if kb else None
    except OSError:
        pass
    return dict(cpu=cpu, cores=os.cpu_count(), ram_gib=ram, python=platform.python_version(),
                torch=torch.__version__, numpy=np.__version__, torch_threads=torch.get_num_threads(),
                gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)


def git_commit(root: str | os.PathLike = ROOT) -> str | None:
    """The checkout's commit, with ``+dirty`` when tracked files differ from it; None outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def provenance(command: list[str] | None = None, **extra) -> dict:
    """``{machine, commit, date (UTC, ISO), command}`` plus ``extra`` (profile, parameters, seconds, ...)."""
    cmd = command if command is not None else [Path(sys.argv[0]).name, *sys.argv[1:]]
    return dict(machine=machine(), commit=git_commit(), date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                command=" ".join(cmd), **extra)
