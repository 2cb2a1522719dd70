"""Half-precision db storage: mAP of float16 vs float32 db descriptors on the synthetic benchmark (the
demo's fine-tuned GeM, raw and learned-whitened, from ``runs/demo``), the bytes saved, and the exact
search time of a float16 db (converted chunk by chunk) against float32 at 100k x 512.

    python benchmarks/half_precision.py [--quick] [--out FILE] [--run-dir runs/demo]
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from _common import ROOT, fmt_s, machine, machine_line, parser, skip, timed, unit_vectors, write

from retrieval.datasets import load_revisited
from retrieval.io import load_features
from retrieval.metrics import PROTOCOLS, evaluate
from retrieval.models.whitening import Whitening
from retrieval.search import exact_search


def main(argv=None) -> dict:
    ap = parser(__doc__)
    ap.add_argument("--run-dir", default=str(ROOT / "runs" / "demo"))
    args = ap.parse_args(argv)
    m = machine()
    print(f"float16 db storage on {machine_line(m)}")
    rows, table, skipped = [], [], []
    run = Path(args.run_dir)
    feats = sorted((run / "features" / "synth-default").glob("gem-*-240.npz"))
    if not feats:
        skip("mAP float16 vs float32", f"no synthetic descriptors in {run}/features (run make demo first)", skipped)
    else:
        q, db, params = load_features(feats[0])
        net = feats[0].stem.rsplit("-", 1)[0]
        ds = load_revisited(Path(params.get("data_root", "")) if params.get("data_root") else ROOT / "data",
                            params["dataset"])
        variants = {net: (q, db)}
        choice = run / "train_global" / f"whitening_{net}.json"
        if choice.is_file():
            a = json.loads(choice.read_text())["shrinkage"]
            w = Whitening.load(run / "train_global" / f"whitening_lw{a:g}_{net}.npz")
            variants[f"{net}+lw-shrink{a:g}"] = (w.apply(q), w.apply(db))
        for name, (qq, dd) in variants.items():
            r32 = evaluate(exact_search(qq, dd, device="cpu")[0], ds.gnd)
            r16 = evaluate(exact_search(qq, dd.astype(np.float16), device="cpu")[0], ds.gnd)
            diff = {p: 100 * (r16[p]["map"] - r32[p]["map"]) for p in PROTOCOLS}
            rows.append(dict(method=name, map32={p: 100 * r32[p]["map"] for p in PROTOCOLS},
                             map16={p: 100 * r16[p]["map"] for p in PROTOCOLS}, diff=diff))
            print(f"  {name}: float16 - float32 mAP (x100) " + ", ".join(f"{p[0].upper()} {v:+.3f}" for p, v in diff.items()))
            table.append([f"{name} on {ds.name}: float16 db - float32 db, mAP x100 (E / M / H)",
                          " / ".join(f"{diff[p]:+.3f}" for p in PROTOCOLS)])
    n, dim = (20_000, 512) if args.quick else (100_000, 512)
    db = unit_vectors(n, dim, seed=1)
    q = unit_vectors(70, dim, seed=2)
    t32, (r32, _) = timed(lambda: exact_search(q, db, 100, device="cpu", backend="torch"), 3, warmup=True)
    db16 = db.astype(np.float16)
    t16, (r16, _) = timed(lambda: exact_search(q, db16, 100, device="cpu"), 3, warmup=True)
    same = float(np.mean([np.intersect1d(a, b).size / a.size for a, b in zip(r32.T, r16.T)]))
    table.append([f"exact top-100, 70 q x {n:,} x {dim}: float16 db / float32 db (time ratio), same top-100",
                  f"{fmt_s(t16)} / {fmt_s(t32)} (**{t16 / t32:.2f}x**), {same:.3f}"])
    table.append(["db bytes at R1M (1,001,001 x 2048): float32 / float16",
                  f"{1_001_001 * 2048 * 4 / 2**30:.2f} GiB / {1_001_001 * 2048 * 2 / 2**30:.2f} GiB (half)"])
    print(f"  search 70 q x {n:,} x {dim}: float16 {fmt_s(t16)} vs float32 {fmt_s(t32)} = {t16 / t32:.2f}x; "
          f"same top-100 {same:.3f}")
    res = dict(benchmark="half_precision", machine=m, quick=args.quick, rows=rows, search=dict(
        n_db=n, dim=dim, float16_s=t16, float32_s=t32, ratio=t16 / t32, same_top100=same),
        skipped=skipped, table=table)
    write(res, args.out)
    return res


if __name__ == "__main__":
    main()
