"""benchmarks/gpu_check.py (``make gpu-check``): its CPU fallback end to end, and its helpers (a failing
part is recorded and the run goes on; tolerances; the order check of CSA rankings)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from retrieval.config import ROOT

BENCH = ROOT / "benchmarks"


@pytest.fixture(scope="module")
def gc():
    """The script as a module (it imports ``_common`` from benchmarks/, as when run as a script)."""
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("gpu_check", BENCH / "gpu_check.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.path.remove(str(BENCH))


def test_a_failing_part_is_recorded_and_the_run_goes_on(gc):
    ok = gc.run_part("a", lambda: dict(summary="fine", checks={"x": True, "gpu only": None}), 10)
    assert ok["status"] == "ok" and ok["summary"] == "fine" and not ok["over_budget"] and ok["seconds"] >= 0
    raised = gc.run_part("b", lambda: 1 / 0, 10)
    assert raised["status"] == "failed" and "Traceback" in raised["error"] and "ZeroDivisionError" in raised["error"]
    assert "[FAILED] b" in gc.part_line(raised) and "ZeroDivisionError: division by zero" in gc.part_line(raised)
    check = gc.run_part("c", lambda: dict(summary="ran", checks={"same ranks": False, "x": True}), 10)
    assert check["status"] == "failed" and check["error"] == "checks failed: same ranks"
    slow = gc.run_part("d", lambda: time.sleep(0.02), 0.01)   # over budget: flagged, not failed
    assert slow["status"] == "ok" and slow["over_budget"] and "OVER BUDGET" in gc.part_line(slow)
    assert gc._table({"b": raised}, "cpu")[0][1].startswith("failed, 0 s: ZeroDivisionError")


def test_tolerances_and_the_order_of_rankings(gc):
    assert gc.within(1.04, 1.0, 5e-2) and not gc.within(1.06, 1.0, 5e-2) and not gc.within(math.nan, 1.0, 5e-2)
    assert gc.within(5e-4, 0.0, 2e-2)                          # a loss near 0: the absolute tolerance
    assert gc.rel_diff(0.0, 0.0) == 0 and gc.rel_diff(1.0, 0.0) == math.inf
    assert gc.rel_diff(1.1, 1.0) == pytest.approx(0.1)
    ids, scores = np.array([[5, 1], [7, 2], [9, 3]]), np.array([[0.9, 0.5], [0.8, 0.4], [0.7, 0.3]])
    assert gc.order_violation(ids, scores, ids) == 0.0
    assert gc.order_violation(ids, scores, np.array([[5, 1], [9, 2], [7, 3]])) == pytest.approx(0.1)


@pytest.mark.slow
def test_cpu_fallback_runs_every_part(gc, tmp_path):
    # CPU mode whatever the machine; one OpenMP thread: on a busy 2-core machine torch's threads
    # contending with another process made the whole run 2x slower (197 s vs 91 s)
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    out = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, str(BENCH / "gpu_check.py"), "--quick", "--out", str(out)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert "no CUDA: running the CPU fallbacks" in proc.stdout
    res = json.loads(out.read_text())
    assert res["cuda"] is False and res["device"] == "cpu" and res["status"] == "ok" and res["machine"]["cpu"]
    assert set(res["parts"]) == set(gc.PARTS)   # (the JSON sorts its keys)
    for name, part in res["parts"].items():
        assert part["status"] == "ok", (name, part.get("error"))
        assert part["seconds"] > 0 and part["summary"] and f"] {name}" in proc.stdout
        # a sub-check may be skipped (None) only where it needs a GPU, with the reason in `skipped`
        assert all(v is True or (v is None and "GPU" in k) for k, v in part["checks"].items()), part["checks"]
    assert res["skipped"] and all("CUDA" in s or "GPU" in s for s in res["skipped"])
    amp = res["parts"]["amp"]
    assert set(amp["families"]) == set(gc.FAMILIES) and "fp32" in amp["dtypes"]
    for fam, rec in amp["families"].items():
        assert math.isfinite(rec["fp32_loss"]), fam
        for dt, d in rec["dtypes"].items():
            assert len(d["steps"]) == gc.STEPS and all(map(math.isfinite, d["steps"])), (fam, dt)
            assert "loss" not in d or math.isfinite(d["loss"])
    assert res["parts"]["torchrun"]["backend"] == "gloo" and res["parts"]["torchrun"]["max_diff"] == 0.0
    assert len(res["table"]) == len(gc.PARTS)
