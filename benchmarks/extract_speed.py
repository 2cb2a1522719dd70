"""Extraction speed: images/s of ``extract_vectors`` (decode JPEG, resize, normalise, batch, forward,
multi-scale combination) vs the bare network on already-decoded tensors of the same sizes and batches
— what the data pipeline costs — single-scale and multi-scale (1, 1/√2, 1/2), ResNet-18 + GeM at the
demo's test size (240 px) on the synthetic benchmark's db images.

    python benchmarks/extract_speed.py [--quick] [--out FILE]
"""

from __future__ import annotations

import torch

from _common import ROOT, machine, machine_line, parser, skip, timed, write

from retrieval.datasets import get_test
from retrieval.extract import DEFAULT_SCALES, ImageList, describe, extract_vectors
from retrieval.models import build_global_net

IMAGE_SIZE, BATCH = 240, 16


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
    ds = get_test("synth", "default", root=ROOT / "data", progress=False)   # generated if missing (~25 s)
    paths = ds.db_paths()[:n_img]
    torch.manual_seed(0)
    model = build_global_net("resnet18", "gem").eval()                      # random weights: same cost
    items = ImageList(paths, IMAGE_SIZE, mean=model.meta["mean"], std=model.meta["std"])
    tensors = [items[i] for i in range(len(items))]
    shapes = sorted({tuple(t.shape[1:]) for t in tensors})
    print(f"Extraction, ResNet-18 + GeM, {n_img} images of {ds.name} at {IMAGE_SIZE} px (tensors {shapes}), "
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
    if not torch.cuda.is_available():
        skip("extraction on GPU", "no CUDA", skipped)
    res = dict(benchmark="extract_speed", machine=m, quick=args.quick, image_size=IMAGE_SIZE, batch=BATCH,
               decode_ips=n_img / t_decode, rows=rows, skipped=skipped, table=table)
    write(res, args.out)
    return res


if __name__ == "__main__":
    main()
