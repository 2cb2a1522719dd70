"""CSA inference throughput: batched over queries vs one query at a time, in the same run.

Paper test setting (Ouyang et al., NeurIPS 2021): K = 1024 candidates, L = 512 anchors, depth 2, width
768, 12 heads. Random L2-normalised descriptors stand in for real ones (the cost does not depend on
their values). Prints queries/s of both, their ratio and the peak memory, and writes JSON.

    python benchmarks/csa_inference.py [--queries 64] [--batch 32] [--device auto] [--out FILE]
"""

from __future__ import annotations

import argparse
import platform
import resource
import time

import numpy as np
import torch

from retrieval.config import resolve_device
from retrieval.models.csa import build_csa
from retrieval.rerank import csa_rerank, csa_rerank_loop
from retrieval.search import search


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--queries", type=int, default=64)
    ap.add_argument("--db", type=int, default=5000)
    ap.add_argument("--dim", type=int, default=512, help="descriptor dimension")
    ap.add_argument("--K", type=int, default=1024)
    ap.add_argument("--L", type=int, default=512)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default=None, help="JSON file for the figures")
    ap.add_argument("--quick", action="store_true", help="8 queries, K=256, L=128 (development)")
    args = ap.parse_args(argv)
    if args.quick:
        args.queries, args.K, args.L, args.batch = 8, 256, 128, 8
    device = resolve_device(args.device)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    db = rng.standard_normal((args.db, args.dim)).astype(np.float32)
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    query = db[rng.choice(args.db, args.queries, replace=False)] + 0.1 * rng.standard_normal(
        (args.queries, args.dim)).astype(np.float32)
    query /= np.linalg.norm(query, axis=1, keepdims=True)
    ranks, _ = search(query, db, k=max(args.K, args.L - 1))
    model = build_csa(L=args.L).to(device).eval()

    def timed(fn):
        fn(query[:2], ranks[:, :2])  # warm-up
        if device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        out = fn(query, ranks)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - t, out

    loop_s, (r_loop, _) = timed(lambda q, r: csa_rerank_loop(model, q, db, r, K=args.K, L=args.L, device=device))
    loop_gpu_mb = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None
    batch_s, (r_batch, _) = timed(lambda q, r: csa_rerank(model, q, db, r, K=args.K, L=args.L,
                                                          batch=args.batch, device=device))
    batch_gpu_mb = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None
    same = bool(np.array_equal(r_loop[:args.K], r_batch[:args.K]))
    res = dict(device=device, machine=platform.processor() or platform.machine(), threads=torch.get_num_threads(),
               queries=args.queries, K=args.K, L=args.L, batch=args.batch,
               loop_qps=args.queries / loop_s, batched_qps=args.queries / batch_s, ratio=loop_s / batch_s,
               same_ranks=same, peak_rss_mb=peak_rss_mb(), loop_peak_gpu_mb=loop_gpu_mb,
               batched_peak_gpu_mb=batch_gpu_mb)
    print(f"CSA inference, K={args.K} L={args.L} width 768 depth 2, {args.queries} queries on {device}:")
    print(f"  one query at a time: {res['loop_qps']:8.2f} queries/s")
    print(f"  batched ({args.batch}/batch):  {res['batched_qps']:8.2f} queries/s   ratio {res['ratio']:.2f}x")
    print(f"  identical rankings: {same}; peak RSS {res['peak_rss_mb']:.0f} MB"
          + (f"; peak GPU memory loop {loop_gpu_mb:.0f} MB, batched {batch_gpu_mb:.0f} MB" if batch_gpu_mb else ""))
    res["table"] = [[f"CSA K={args.K} L={args.L} width 768, {args.queries} q: batched ({args.batch}/batch) vs one "
                     "query at a time", f"{res['batched_qps']:.2f} vs {res['loop_qps']:.2f} q/s (**{res['ratio']:.2f}x**)"]]
    if args.out:
        from retrieval.io import atomic_write_json

        atomic_write_json(args.out, res)
    return res


if __name__ == "__main__":
    main()
