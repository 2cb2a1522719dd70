"""Bytes per vector of faiss index types, measured on synthetic descriptors (for the README's
"Running at scale" note: what R1M and 10M-100M databases cost in memory).

For each dimension D (512: ResNet-18/VGG GeM, 2048: ResNet-50/101 GeM) and index type, the index
is trained on ``--train`` vectors, ``--n`` vectors are added, the index is serialised
(``faiss.serialize_index``) and its size divided by ``--n``: the per-vector cost including the
codes, ids and (amortised) codebooks. Also reported: recall@10 of the index against exact inner-
product search on ``--queries`` held-out vectors, and add / search time on this machine.

The vectors are L2-normalised Gaussian mixtures (``--clusters`` centres plus noise), which have
the cluster structure that makes IVF and PQ work on real descriptors; the bytes per vector do not
depend on the data, recall does (real GeM descriptors will differ).

    python benchmarks/index_memory.py                      # 100k vectors, D = 512 and 2048
    python benchmarks/index_memory.py --n 20000 --dims 512 # quick

Writes ``benchmarks/results/index_memory.json`` (``{"<D>": {"meta": ..., "rows": [...]}}``, one
entry per dimension, updated as each finishes).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def synthetic(n: int, d: int, clusters: int, seed: int) -> np.ndarray:
    """(n, d) float32 L2-normalised points around ``clusters`` random centres."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d)).astype(np.float32)
    x = centres[rng.integers(0, clusters, n)] + 0.6 * rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def specs(d: int, n: int) -> list[tuple[str, str]]:
    """(label, faiss index_factory string); nlist ~ 4 sqrt(n) (faiss' rule of thumb)."""
    nlist = int(2 ** round(np.log2(4 * np.sqrt(n))))
    out = [("Flat (float32, exact)", "Flat"),
           ("SQfp16", "SQfp16"),
           ("SQ8", "SQ8"),
           ("PQ16x8", "PQ16"),
           ("PQ32x8", "PQ32"),
           ("PQ64x8", "PQ64"),
           (f"IVF{nlist},PQ32x8", f"IVF{nlist},PQ32"),
           (f"IVF{nlist},PQ64x8", f"IVF{nlist},PQ64"),
           ("HNSW32 (float32)", "HNSW32")]
    return [(label, f) for label, f in out if not f.startswith(("PQ", "IVF")) or d % int(f.split("PQ")[1]) == 0]


def measure(d: int, n: int, n_train: int, n_query: int, clusters: int, seed: int, threads: int) -> list[dict]:
    import faiss
    from tqdm.auto import tqdm

    faiss.omp_set_num_threads(threads)
    data = synthetic(n + n_train + n_query, d, clusters, seed)
    base, train, query = data[:n], data[n:n + n_train], data[n + n_train:]
    exact = faiss.IndexFlatIP(d)
    exact.add(base)
    _, truth = exact.search(query, 10)
    rows = []
    for label, factory in tqdm(specs(d, n), desc=f"D={d}", unit="index"):
        index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
        t0 = time.perf_counter()
        if not index.is_trained:
            index.train(train)
        t_train = time.perf_counter() - t0
        t0 = time.perf_counter()
        index.add(base)
        t_add = time.perf_counter() - t0
        if hasattr(index, "nprobe"):
            index.nprobe = 16
        else:
            ivf = faiss.try_extract_index_ivf(index) if "IVF" in factory else None
            if ivf is not None:
                ivf.nprobe = 16
        t0 = time.perf_counter()
        _, found = index.search(query, 10)
        t_search = time.perf_counter() - t0
        recall = float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)]))
        size = int(faiss.serialize_index(index).size)
        rows.append(dict(index=label, factory=factory, dim=d, n=n, bytes_total=size,
                         bytes_per_vector=round(size / n, 2), float32_bytes=4 * d,
                         compression=round(4 * d * n / size, 1), recall_at_10=round(recall, 3),
                         nprobe=16 if "IVF" in factory else None, train_s=round(t_train, 2),
                         add_s=round(t_add, 2), search_ms_per_query=round(1000 * t_search / len(query), 3)))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100_000, help="database vectors")
    ap.add_argument("--dims", type=int, nargs="+", default=[512, 2048])
    ap.add_argument("--train", type=int, default=20_000, help="training vectors (PQ / IVF / SQ)")
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "index_memory.json"))
    args = ap.parse_args(argv)
    import faiss

    from retrieval.io import atomic_write_json

    meta = dict(faiss=faiss.__version__, machine=platform.machine(), processor=platform.processor(),
                python=platform.python_version(), threads=args.threads, n=args.n, train=args.train,
                queries=args.queries, clusters=args.clusters, seed=args.seed)
    out = Path(args.out)
    try:  # results of other dimensions (earlier runs) are kept; each dimension is written when done
        saved = json.loads(out.read_text()) if out.exists() else {}
    except ValueError:
        saved = {}
    for d in args.dims:
        rows = measure(d, args.n, args.train, args.queries, args.clusters, args.seed, args.threads)
        print(f"{'index':<22} {'D':>5} {'bytes/vec':>10} {'x smaller':>9} {'R@10':>6} {'ms/query':>9}")
        for r in rows:
            print(f"{r['index']:<22} {r['dim']:>5} {r['bytes_per_vector']:>10.1f} {r['compression']:>9.1f} "
                  f"{r['recall_at_10']:>6.3f} {r['search_ms_per_query']:>9.3f}", flush=True)
        saved[str(d)] = {"meta": meta, "rows": rows}
        path = atomic_write_json(out, saved)
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
