"""Shared helpers of the benchmark scripts (imported as ``_common`` from ``benchmarks/``).

Conventions every script follows: ``python benchmarks/<name>.py [--quick] [--out FILE]``; it prints
its figures (each speed figure with the ratio against a baseline measured in the same run), says what
it skipped and why, and writes a JSON with ``machine``, the raw figures and ``table`` (rows of
``[figure, value]`` strings that ``run_all.py`` copies into ``benchmarks/README.md``).
"""

from __future__ import annotations

import argparse
import re
import resource
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere: the package is importable
    sys.path.insert(0, str(ROOT))

from retrieval.run.provenance import machine as run_machine  # noqa: E402  (after the path above)


def parser(doc: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=doc.strip().split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, for development (figures not comparable)")
    ap.add_argument("--out", default=None, help="JSON file for the figures")
    return ap


def machine() -> dict:
    """:func:`retrieval.run.provenance.machine` (CPU model, cores, RAM, library versions) with the GPU as
    ``cuda``, the widest SIMD the CPU has, and the faiss version (None without faiss)."""
    info = run_machine()
    info["cuda"] = info.pop("gpu")
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    info["simd"] = "avx512f" if " avx512f" in flags else "avx2" if " avx2" in flags else "?"
    try:
        import faiss
        info["faiss"] = faiss.__version__
        info["faiss_gpus"] = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    except ImportError:
        info["faiss"] = None
    return info


def machine_line(m: dict) -> str:
    gpu = f", GPU {m['cuda']}" if m.get("cuda") else ", no GPU"
    return f"{m['cpu']} ({m['cores']} cores, {m['simd'].upper()}), {m.get('ram_gib', '?')} GiB RAM{gpu}"


def timed(fn, repeat: int = 1, warmup: bool = False):
    """(best wall-clock seconds over ``repeat`` calls, result of the last call)."""
    if warmup:
        fn()
    best, out = float("inf"), None
    for _ in range(max(1, repeat)):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def timed_interleaved(fns: dict, repeat: int = 1, warmup: bool = False) -> dict:
    """{name: (best seconds, last result)} for several functions called in turn, ``repeat`` rounds:
    a contender and its baseline see the same machine state (a shared machine drifts by 10-20 %
    between minutes here, more than some of the differences measured)."""
    if warmup:
        for fn in fns.values():
            fn()
    best = {name: (float("inf"), None) for name in fns}
    for _ in range(max(1, repeat)):
        for name, fn in fns.items():
            t = time.perf_counter()
            out = fn()
            best[name] = (min(best[name][0], time.perf_counter() - t), out)
    return best


def _rss_kb(key: str) -> int | None:
    try:
        m = re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
        return int(m.group(1)) if m else None
    except OSError:
        return None


@contextmanager
def peak_rss():
    """Peak resident memory while the block runs: yields a dict that gets ``before_mb``, ``peak_mb``
    and ``extra_mb`` (peak − before). Linux: the high-water mark is reset first (/proc/self/clear_refs);
    elsewhere the process's lifetime peak (``ru_maxrss``) is reported."""
    out: dict = {}
    reset = False
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        reset = True
    except OSError:
        pass
    before = _rss_kb("VmRSS") or 0
    try:
        yield out
    finally:
        peak = _rss_kb("VmHWM") if reset else None
        peak = peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out.update(before_mb=before / 1024, peak_mb=peak / 1024, extra_mb=(peak - before) / 1024,
                   exact=reset)


def sgemm_peak(n: int = 4096, repeat: int = 3) -> float:
    """The machine's matmul throughput in GFLOP/s: best of ``repeat`` float32 (n x n) @ (n x n)
    products with torch (all threads) — the practical limit for exact search by inner product."""
    import torch

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    t, _ = timed(lambda: a @ b, repeat=repeat, warmup=True)
    return 2 * n ** 3 / t / 1e9


def unit_vectors(n: int, dim: int, seed: int, centres: np.ndarray | None = None, noise: float = 1.0,
                 chunk: int = 1 << 16) -> np.ndarray:
    """(n, dim) float32 L2-normalised, deterministic for ``seed``; generated in chunks (fast uniform
    draws). With ``centres`` (c, dim): centre[random] + noise x uniform[-0.5, 0.5), i.e. clustered
    like real descriptors, so that approximate search has structure to exploit."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), np.float32)
    for i in range(0, n, chunk):
        m = min(chunk, n - i)
        x = rng.random((m, dim), dtype=np.float32)
        x -= 0.5
        if centres is not None:
            x *= noise
            x += centres[rng.integers(len(centres), size=m)]
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[i:i + m] = x
    return out


def fmt_s(s: float) -> str:
    return f"{s * 1e3:.1f} ms" if s < 1 else f"{s:.2f} s"


def skip(what: str, why: str, skipped: list) -> None:
    print(f"  skipped: {what} ({why})")
    skipped.append(f"{what}: {why}")


def write(res: dict, out: str | None) -> None:
    if out:
        from retrieval.io import atomic_write_json

        atomic_write_json(out, res)
        print(f"  -> {out}")


def fitted_vectors(n: int, like: np.ndarray, seed: int, chunk: int = 1 << 16) -> np.ndarray:
    """(n, D) float32 L2-normalised random vectors with the mean and covariance of ``like`` (m, D)
    (Gaussian through its SVD), deterministic for ``seed``: distractors with the spectrum of real
    descriptors (a few directions carry most of the variance), where isotropic random vectors have
    none and make every approximate k-NN method fail (all neighbours nearly equidistant)."""
    like = np.asarray(like, np.float64)
    mean = like.mean(0)
    _, sv, vt = np.linalg.svd(like - mean, full_matrices=False)
    basis = (sv[:, None] / np.sqrt(max(1, len(like) - 1)) * vt).astype(np.float32)   # (r, D)
    rng = np.random.default_rng(seed)
    out = np.empty((n, like.shape[1]), np.float32)
    for i in range(0, n, chunk):
        m = min(chunk, n - i)
        x = rng.standard_normal((m, len(basis)), dtype=np.float32) @ basis
        x += mean.astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[i:i + m] = x
    return out


FEATURES_DIR = ROOT / "runs" / "demo" / "features" / "synth-default"   # make demo's GeM descriptors


def load_synthetic(skipped: list) -> tuple[np.ndarray, np.ndarray, str]:
    """(query, db, source): ``make demo``'s off-the-shelf GeM descriptors of the synthetic test set
    (the GeM block of notebook 01's multi-pooling file, 1,280-d), else random vectors of the same
    shape (noted in ``skipped``)."""
    import json

    from retrieval.models.multilayer import select_pooling

    found = sorted(FEATURES_DIR.glob("pool*-gem-*-imagenet-240.npz"))
    if found:
        with np.load(found[0]) as z:
            meta = json.loads(str(z["params"]))["model"]
            q, db = (select_pooling(z[x], meta, "gem").astype(np.float32) for x in ("query", "db"))
        return q, db, f"{found[0].relative_to(ROOT)} (gem block)"
    skip("the synthetic test set's descriptors", f"no pool*-gem-*-imagenet-240.npz in {FEATURES_DIR} (run make "
         "demo): isotropic random vectors of the same shape instead", skipped)
    return unit_vectors(70, 1280, 7), unit_vectors(1570, 1280, 8), "random (70 x 1280, 1,570 x 1280)"
