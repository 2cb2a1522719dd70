"""retrieval.config.tune_malloc: importing the package keeps freed blocks in the heap (fewer page faults),
changes no arithmetic, and leaves the allocator alone when the user opts out."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
glibc = pytest.mark.skipif(not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None,
                           reason="glibc's mallopt only")

# allocate and free arrays of 16-24 MB: with glibc's defaults the heap is trimmed (or the blocks mapped)
# every round, so each round faults its pages in again; with the package's settings only the first does
PROBE = """
import resource, numpy as np
import retrieval
r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(40):
    a = np.ones(1 << 21); b = np.ones(1 << 21); c = np.ones(3 << 20)
    del a, b, c
print(retrieval.MALLOC_TUNED, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0)
"""


def _run(code: str, **env) -> str:
    """stdout of ``python -c code`` without the caller's allocator settings, plus ``env``."""
    e = {k: v for k, v in os.environ.items() if not (k.startswith("MALLOC_") or k == "GLIBC_TUNABLES")}
    e.update(env)
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=e, capture_output=True, text=True,
                          check=True).stdout


def _probe(**env) -> tuple[bool, int]:
    out = _run(PROBE, **env).split()
    return out[0] == "True", int(out[1])


@glibc
def test_import_tunes_the_heap_and_spares_page_faults():
    tuned, faults = _probe()
    plain, faults_default = _probe(RETRIEVAL_MALLOC="default")
    assert tuned and not plain
    # 40 rounds x 56 MB = ~550k pages touched; default glibc faults most of them in again, tuned only once
    assert faults_default > 5 * faults, (faults, faults_default)


@glibc
def test_user_allocator_settings_win():
    tuned, _ = _probe(MALLOC_ARENA_MAX="2")
    assert not tuned


def test_allocator_does_not_change_results():
    """The same network output, bit for bit, with the tuned and the default heap."""
    code = ("import hashlib, torch, retrieval; from retrieval.models import build_global_net;"
            "torch.manual_seed(0); net = build_global_net('efficientnet_lite0', 'gem', weights=None).eval();"
            "x = torch.randn(4, 3, 96, 96);"
            "print(hashlib.sha1(net(x).detach().numpy().tobytes()).hexdigest())")
    outs = {_run(code).strip(), _run(code, RETRIEVAL_MALLOC="default").strip()}
    assert len(outs) == 1
