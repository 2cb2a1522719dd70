"""Extraction speed: images/s of ``extract_vectors`` (decode JPEG, resize, normalise, batch, forward,
multi-scale combination) vs the bare network on already-decoded tensors of the same sizes and batches
— what the data pipeline costs — single-scale and multi-scale (1, 1/√2, 1/2), ResNet-18 + GeM at the
demo's test size (240 px) on the synthetic benchmark's db images. Then the bare forward with the heap
settings the package applies on import (:func:`retrieval.config.tune_malloc`) against glibc's defaults
(``RETRIEVAL_MALLOC=default``), each in a fresh process, alternated: img/s and minor page faults.

    python benchmarks/extract_speed.py [--quick] [--out FILE]
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from _common import ROOT, machine, machine_line, parser, skip, timed, write

from retrieval.datasets import get_test
from retrieval.extract import DEFAULT_SCALES, ImageList, describe, extract_vectors
from retrieval.models import build_global_net

IMAGE_SIZE, BATCH = 240, 16
# one child process: the bare single-scale forward over the images, after a warm-up; prints
# "<tuned> <seconds> <minor faults>"
ALLOCATOR_CHILD = """
import resource, sys, time
sys.path.insert(0, {here!r})
import retrieval
from extract_speed import BATCH, bare, load
model, _, _, tensors = load({n})
bare(model, tensors[:2 * BATCH], (1.0,))
f0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
bare(model, tensors, (1.0,))
dt, f1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF).ru_minflt
print(retrieval.MALLOC_TUNED, dt, f1 - f0)
"""


def load(n_img: int):
    """ResNet-18 + GeM (random weights: same cost), the first ``n_img`` synthetic db paths, their
    ImageList and its tensors."""
    ds = get_test("synth", "default", root=ROOT / "data", progress=False)   # generated if missing (~25 s)
    paths = ds.db_paths()[:n_img]
    torch.manual_seed(0)
    model = build_global_net("resnet18", "gem").eval()
    items = ImageList(paths, IMAGE_SIZE, mean=model.meta["mean"], std=model.meta["std"])
    return model, paths, items, [items[i] for i in range(len(items))]


def allocator_probe(n_img: int, rounds: int = 2) -> dict:
    """Bare forward time and page faults with the package's heap settings vs glibc's defaults (fresh
    processes, alternated, best of ``rounds``)."""
    best = {"tuned": (float("inf"), 0), "default": (float("inf"), 0)}
    for _ in range(rounds):
        for mode in ("default", "tuned"):
            env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
            if mode == "default":
                env["RETRIEVAL_MALLOC"] = "default"
            else:
                env.pop("RETRIEVAL_MALLOC", None)
            code = ALLOCATOR_CHILD.format(here=str(Path(__file__).resolve().parent), n=n_img)
            out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
            tuned, dt, faults = out.stdout.split()[-3:]
            if (tuned == "True") != (mode == "tuned"):
                return dict(applied=False)           # not glibc, or the user's own allocator settings
            if float(dt) < best[mode][0]:
                best[mode] = (float(dt), int(faults))
    return dict(applied=True, tuned_ips=n_img / best["tuned"][0], default_ips=n_img / best["default"][0],
                tuned_faults=best["tuned"][1], default_faults=best["default"][1],
                speedup=best["default"][0] / best["tuned"][0])


def bare(model, tensors, scales, batch=BATCH):
    """The network alone on pre-decoded tensors, grouped by shape into batches like the extractor."""
    out = []
    for b0 in range(0, len(tensors), batch):
        groups: dict = {}
        for x in tensors[b0:b0 + batch]:
            groups.setdefault(tuple(x.shape), []).append(x)
        for xs in groups.values():
            out.append(describe(model, torch.stack(xs), scales))
    return torch.cat(out)


def main(argv=None) -> dict:
    args = parser(__doc__).parse_args(argv)
    n_img = 24 if args.quick else 64
    m = machine()
    skipped, rows, table = [], [], []
    model, paths, items, tensors = load(n_img)
    shapes = sorted({tuple(t.shape[1:]) for t in tensors})
    print(f"Extraction, ResNet-18 + GeM, {n_img} images of synth-default at {IMAGE_SIZE} px (tensors {shapes}), "
          f"batch {BATCH}, on {machine_line(m)}")
    t_decode, _ = timed(lambda: [items[i] for i in range(len(items))])
    for label, scales in (("single-scale", (1.0,)), ("multi-scale (1, 1/√2, 1/2)", DEFAULT_SCALES)):
        # warm-up on full batches (oneDNN builds its kernels per input shape), then the two timings
        # interleaved, best of 2 each, so that a busy moment of the machine does not favour either
        bare(model, tensors[:2 * BATCH], scales)
        t_bare, t_pipe = float("inf"), float("inf")
        for _ in range(2):
            tb, v_bare = timed(lambda: bare(model, tensors, scales))
            tp, v_pipe = timed(lambda: extract_vectors(model, paths, image_size=IMAGE_SIZE, scales=scales,
                                                       batch_size=BATCH, progress=False))
            t_bare, t_pipe = min(t_bare, tb), min(t_pipe, tp)
        same = float((v_bare.numpy() - v_pipe).__abs__().max())
        row = dict(scales=list(scales), images=n_img, pipeline_ips=n_img / t_pipe, bare_ips=n_img / t_bare,
                   pipeline_over_bare=t_pipe / t_bare, pipeline_share=(t_pipe - t_bare) / t_pipe,
                   max_abs_diff=same)
        rows.append(row)
        print(f"  {label:<27} extractor {row['pipeline_ips']:6.1f} img/s, bare forward {row['bare_ips']:6.1f} img/s: "
              f"ratio {row['pipeline_over_bare']:.2f}x (data pipeline {100 * row['pipeline_share']:.0f}% of the time; "
              f"same descriptors to {same:.1e})")
        table.append([f"extraction {label}, ResNet-18 GeM {IMAGE_SIZE} px: extractor / bare forward",
                      f"{row['pipeline_ips']:.1f} / {row['bare_ips']:.1f} img/s (**{row['pipeline_over_bare']:.2f}x**, "
                      f"pipeline {100 * row['pipeline_share']:.0f}%)"])
    print(f"  decoding + resizing + normalising alone: {n_img / t_decode:.0f} img/s")
    table.append(["JPEG decode + resize + normalise alone", f"{n_img / t_decode:.0f} img/s"])
    alloc = allocator_probe(n_img)
    if alloc["applied"]:
        print(f"  bare forward, package heap settings vs glibc defaults: {alloc['tuned_ips']:.1f} vs "
              f"{alloc['default_ips']:.1f} img/s = {alloc['speedup']:.2f}x ({alloc['tuned_faults']:,} vs "
              f"{alloc['default_faults']:,} minor page faults)")
        table.append(["bare forward (single scale), heap settings of `tune_malloc` vs glibc defaults",
                      f"{alloc['tuned_ips']:.1f} vs {alloc['default_ips']:.1f} img/s = **{alloc['speedup']:.2f}x** "
                      f"({alloc['tuned_faults']:,} vs {alloc['default_faults']:,} page faults)"])
    else:
        skip("heap settings vs glibc defaults", "tune_malloc not applied here (not glibc, or MALLOC_* set)", skipped)
    if not torch.cuda.is_available():
        skip("extraction on GPU", "no CUDA", skipped)
    res = dict(benchmark="extract_speed", machine=m, quick=args.quick, image_size=IMAGE_SIZE, batch=BATCH,
               decode_ips=n_img / t_decode, rows=rows, allocator=alloc, skipped=skipped, table=table)
    write(res, args.out)
    return res


if __name__ == "__main__":
    main()
