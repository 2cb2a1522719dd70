"""Shared fixtures of the test suite."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from retrieval.config import ROOT
from retrieval.datasets import generate


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A data root holding the ``tiny`` synthetic preset (``test/synth-tiny``, ``train/synth-tiny``),
    rendered once per test run. Treat it as read-only: write other files elsewhere, and copy it
    before changing it."""
    root = tmp_path_factory.mktemp("tiny_data")
    generate("tiny", root, progress=False)
    return root


class FakeCuda:
    """torch as if ``n`` CUDA devices were present while every tensor stays on the CPU, to run the
    CUDA branches of the package on a machine without a GPU. ``torch.cuda``'s queries are patched
    (``is_available``, ``device_count``, ``current_device``, ``set_device``, ...); a torch function mode
    turns every CUDA device argument (factories' ``device=``, ``Tensor.to``, ``Module.to``, ``.cuda()``)
    into the CPU and records it in ``requested``. As on a real GPU, ``set_device`` refuses a device
    without an index, and any index past ``n`` is an error. What it cannot catch: a CPU tensor mixed
    with a CUDA one in one op (every tensor is really on the CPU)."""

    def __init__(self, monkeypatch, n: int = 1):
        import torch
        from torch.cuda._utils import _get_device_index
        from torch.overrides import TorchFunctionMode

        self.n, self.current, self.requested, self.set_calls = n, 0, [], []
        fake = self

        def check(dev) -> str:
            d = torch.device(dev)
            if d.index is not None and not 0 <= d.index < n:
                raise RuntimeError(f"CUDA error: invalid device ordinal ({d}; {n} fake device(s))")
            fake.requested.append(str(d))
            return "cpu"

        def cpu(x):
            if isinstance(x, (str, torch.device)) and torch.device(x).type == "cuda":
                return check(x)
            return x

        def set_device(dev):
            idx = _get_device_index(dev)            # torch's own check: ValueError for 'cuda' without index
            if not 0 <= idx < n:
                raise RuntimeError(f"CUDA error: invalid device ordinal ({idx}; {n} fake device(s))")
            fake.set_calls.append(idx)
            fake.current = idx

        class Mode(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                kwargs = dict(kwargs or {})
                name = getattr(func, "__name__", "")
                if "device" in kwargs:
                    kwargs["device"] = cpu(kwargs["device"])
                if name == "to":
                    args = tuple(cpu(a) for a in args)
                elif name == "cuda":
                    idx = args[1] if len(args) > 1 else kwargs.pop("device", None)
                    check(f"cuda:{fake.current if idx is None else torch.device('cuda', idx).index}")
                    return args[0]
                elif name == "pin_memory":
                    return args[0]
                return func(*args, **kwargs)

        for attr, value in dict(is_available=lambda: True, device_count=lambda: n,
                                current_device=lambda: fake.current, set_device=set_device,
                                is_bf16_supported=lambda *a, **k: True, synchronize=lambda *a, **k: None,
                                is_initialized=lambda: False, get_device_name=lambda *a: "fake GPU").items():
            monkeypatch.setattr(torch.cuda, attr, value)
        self.mode = Mode()

    def __enter__(self):
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self.mode.__exit__(*exc)


@pytest.fixture
def fake_cuda(monkeypatch):
    """``fake_cuda(n=1)`` → a :class:`FakeCuda` context (see there); the patches end with the test."""
    return lambda n=1: FakeCuda(monkeypatch, n)


@pytest.fixture
def kernel_env(monkeypatch):
    """``kernel_env(data)``: notebooks run by the test read the data folder ``data`` and keep Jupyter's,
    IPython's and matplotlib's folders where the environment says (else ``<repo>/.jupyter``)."""
    def use(data):
        monkeypatch.setenv("RETRIEVAL_DATA_DIR", str(data))
        for var, sub in (("JUPYTER_CONFIG_DIR", "config"), ("JUPYTER_DATA_DIR", "data"),
                         ("JUPYTER_RUNTIME_DIR", "runtime"), ("IPYTHONDIR", "ipython"), ("MPLCONFIGDIR", "matplotlib")):
            monkeypatch.setenv(var, os.environ.get(var) or str(ROOT / ".jupyter" / sub))
    return use
