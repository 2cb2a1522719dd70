"""Search speed: exact top-100 by inner product, 70 and 1,000 queries over {5k, 100k, 1M} x
D = {512, 2048} float32 db vectors — the package's ``exact_search`` vs a plain numpy matmul + argsort
and vs faiss flat (``faiss.knn``, exhaustive BLAS + heap), with GFLOP/s against the machine's measured
sgemm peak (the physical limit of exact search); IVF-PQ build/search time and recall@100; GPU paths
when CUDA is present; peak memory of the package's search at 1M.

    python benchmarks/search_speed.py [--quick] [--out FILE]
"""

from __future__ import annotations

import gc

import numpy as np
import torch

from _common import (fmt_s, machine, machine_line, parser, peak_rss, sgemm_peak, skip, timed, timed_interleaved,
                     unit_vectors, write)

from retrieval.search import exact_search, faiss_faster, faiss_index

K = 100
IVF_CASES = {(1_000_000, 512)}  # (n_db, D) where IVF-PQ is built in a full run (~2 min each on 2 cores)


def numpy_topk(q, db, k=K):
    """The plain baseline: all scores by one matmul, a full argsort per query, the first k."""
    s = q @ db.T
    idx = np.argsort(-s, axis=1)[:, :k]
    return idx.T, np.take_along_axis(s, idx, 1).T


def faiss_topk(q, db, k=K):
    import faiss

    d, i = faiss.knn(q, db, k, metric=faiss.METRIC_INNER_PRODUCT)
    return i.T, d.T


def overlap(a, b):
    """Mean fraction of the top-k ids shared by two (k, n_q) rankings (1.0: the same sets)."""
    return float(np.mean([np.intersect1d(x, y).size / len(x) for x, y in zip(a.T, b.T)]))


def main(argv=None) -> dict:
    args = parser(__doc__).parse_args(argv)
    sizes = [5_000, 100_000] if args.quick else [5_000, 100_000, 1_000_000]
    dims = [512] if args.quick else [512, 2048]
    nqs = [70, 1000]
    m = machine()
    peak = sgemm_peak(2048 if args.quick else 4096)
    print(f"Exact top-{K} search on {machine_line(m)}; measured sgemm peak {peak:.0f} GFLOP/s "
          f"({torch.get_num_threads()} threads)")
    rows, ivf, table, skipped = [], [], [], []
    table.append(["sgemm peak (torch, float32)", f"{peak:.0f} GFLOP/s"])
    cuda = torch.cuda.is_available()
    if not cuda:
        skip("GPU search (package on CUDA, faiss GPU)", "no CUDA", skipped)
    for dim in dims:
        rng = np.random.default_rng(dim)
        centres = rng.standard_normal((1000, dim)).astype(np.float32) / np.sqrt(dim)
        # clustered like real descriptors (IVF-PQ needs structure); the exact-search cost does not care
        db_all = unit_vectors(sizes[-1], dim, seed=1, centres=centres, noise=0.25)
        q_all = unit_vectors(max(nqs), dim, seed=2, centres=centres, noise=0.25)
        for n in sizes:
            db = db_all[:n]
            for nq in nqs:
                q = q_all[:nq]
                flop = 2.0 * nq * n * dim
                rep = 3 if flop < 5e10 else 1
                with peak_rss() as mem:  # kept for the largest case (one run, rep = 1 there)
                    t_ours, (r_ours, _) = timed(lambda: exact_search(q, db, K, device="cpu"), rep, warmup=rep > 1)
                # against faiss in alternation (best of 3 rounds, 1 at the largest shapes); where faiss is
                # the engine (faiss_faster), also without the db's NaN/Inf pass (check_finite=False)
                fns = {"ours": lambda: exact_search(q, db, K, device="cpu"), "faiss": lambda: faiss_topk(q, db)}
                engine = "faiss" if faiss_faster(nq, n, dim) else "torch"
                if engine == "faiss":
                    fns["unchecked"] = lambda: exact_search(q, db, K, device="cpu", check_finite=False)
                duel = timed_interleaved(fns, rep)
                t_ours = min(t_ours, duel["ours"][0])
                t_faiss, (r_faiss, _) = duel["faiss"]
                t_unchecked = duel["unchecked"][0] if engine == "faiss" else None
                # the numpy baseline holds (nq, n) scores and int64 argsort indices: at 1k x 1M that is
                # 12 GB and ~1 min of sorting, so it is timed on the first 100 queries and scaled
                # (both its matmul and its per-row sort are linear in the number of queries)
                sub = nq if nq * n <= 1e8 else 100
                t_np, (r_np, _) = timed(lambda: numpy_topk(q[:sub], db), rep)
                t_np *= nq / sub
                row = dict(dim=dim, n_db=n, queries=nq, ours_s=t_ours, numpy_s=t_np, faiss_s=t_faiss,
                           numpy_extrapolated_from=sub if sub < nq else None,
                           engine=engine, unchecked_s=t_unchecked,
                           faiss_over_unchecked=None if t_unchecked is None else t_faiss / t_unchecked,
                           numpy_over_ours=t_np / t_ours, faiss_over_ours=t_faiss / t_ours,
                           ours_gflops=flop / t_ours / 1e9, faiss_gflops=flop / t_faiss / 1e9,
                           ours_of_peak=flop / t_ours / 1e9 / peak,
                           same_as_numpy=overlap(r_ours[:, :sub], r_np), same_as_faiss=None if r_faiss is None else overlap(r_ours, r_faiss))
                if cuda:
                    exact_search(q, db[:1000], K, device="cuda")
                    t_gpu, _ = timed(lambda: exact_search(q, db, K, device="cuda"), rep)
                    row.update(gpu_s=t_gpu, gpu_over_cpu=t_ours / t_gpu)
                rows.append(row)
                ext = f" (numpy timed on {sub} q, scaled)" if sub < nq else ""
                print(f"  D={dim:<5} n={n:>9,} q={nq:>5}: ours {fmt_s(t_ours):>9} ({row['ours_gflops']:5.0f} GFLOP/s, "
                      f"{100 * row['ours_of_peak']:3.0f}% of peak) | numpy {fmt_s(t_np):>9} = {row['numpy_over_ours']:5.1f}x "
                      + (f"| faiss flat {fmt_s(t_faiss):>9} = {row['faiss_over_ours']:4.2f}x" if r_faiss is not None
                         else "| faiss flat skipped")
                      + (f" | unchecked {fmt_s(t_unchecked)} = {row['faiss_over_unchecked']:4.2f}x" if t_unchecked else "")
                      + (f" | GPU {fmt_s(row['gpu_s'])}" if cuda else "")
                      + f" | same top-{K} as numpy: {row['same_as_numpy']:.3f}"
                      + ("" if r_faiss is None else f", as faiss: {row['same_as_faiss']:.3f}") + ext)
                table.append([f"exact top-{K}, D={dim}, {n:,} db, {nq} q ({engine}): ours (GFLOP/s, % of peak) / numpy / "
                              "faiss flat / ours with check_finite=False",
                              f"{fmt_s(t_ours)} ({row['ours_gflops']:.0f}, {100 * row['ours_of_peak']:.0f}%) / "
                              f"{fmt_s(t_np)}{'*' if sub < nq else ''} (**{row['numpy_over_ours']:.1f}x**) / "
                              + (f"{fmt_s(t_faiss)} (**{row['faiss_over_ours']:.2f}x**)" if r_faiss is not None
                               else "skipped (time budget)")
                              + (f" / {fmt_s(t_unchecked)} (**{row['faiss_over_unchecked']:.2f}x**)" if t_unchecked
                                 else " / (torch: checked inside the matmul loop)")])
            if n == sizes[-1]:  # mem: the run of the largest case above
                rows[-1]["ours_peak_extra_mb"] = mem["extra_mb"]
                print(f"    peak memory of exact_search, {len(q_all)} q x {n:,} x {dim}: +{mem['extra_mb']:.0f} MB "
                      f"above the {db.nbytes / 2**20:.0f} MB db")
                table.append([f"peak RSS of exact search, {len(q_all)} q x {n:,} x {dim} (above the "
                              f"{db.nbytes / 2**20:.0f} MB db)", f"+{mem['extra_mb']:.0f} MB"])
        # IVF-PQ: approximate search, against the exact top-100
        for n in sizes[1:]:
            if (n, dim) not in IVF_CASES and not args.quick:
                skip(f"IVF-PQ at {n:,} x {dim}", "time budget: IVF-PQ is built at 1M x 512 only (its PQ "
                     "training and encoding take ~2 min per case on 2 cores)", skipped)
                continue
            db, q = db_all[:n], q_all
            nlist = 1024 if n >= 1_000_000 else 256
            n_train = min(n, 40 * nlist)                         # faiss asks for >= 39 per centroid
            mm = dim // 16                                       # 16 dims per sub-quantiser, 8 bits
            t_build, index = timed(lambda: faiss_index(db, "ivfpq", nlist=nlist, m=mm, nbits=8, nprobe=16,
                                                        gpu=False, train=db[:n_train]))
            t_s, (d_ivf, r_ivf) = timed(lambda: index.search(q, K))
            t_exact, (r_ex, _) = timed(lambda: exact_search(q, db, K, device="cpu"))
            rec = overlap(r_ex, r_ivf.T)
            ivf.append(dict(dim=dim, n_db=n, queries=len(q), nlist=nlist, m=mm, nprobe=16, n_train=n_train,
                            build_s=t_build, search_s=t_s, exact_s=t_exact, exact_over_ivfpq=t_exact / t_s,
                            recall_at_100=rec, code_bytes=mm))
            print(f"  IVF-PQ D={dim} n={n:,} (nlist {nlist}, {mm} B/vector, nprobe 16, trained on {n_train:,}): "
                  f"build {fmt_s(t_build)}, {len(q)} q in {fmt_s(t_s)} vs exact {fmt_s(t_exact)} = "
                  f"{t_exact / t_s:.1f}x faster, recall@{K} {rec:.3f}")
            table.append([f"IVF-PQ, D={dim}, {n:,} db, {len(q)} q (nlist {nlist}, {mm} B, nprobe 16): "
                          f"build / search (vs exact) / recall@{K}",
                          f"{fmt_s(t_build)} / {fmt_s(t_s)} (**{t_exact / t_s:.1f}x**) / {rec:.3f}"])
            del index
        del db_all, db, q_all
        gc.collect()
    res = dict(benchmark="search_speed", machine=m, quick=args.quick, sgemm_peak_gflops=peak, k=K,
               rows=rows, ivfpq=ivf, skipped=skipped, table=table,
               notes="* numpy timed on the first 100 queries and scaled to all (linear in queries)")
    write(res, args.out)
    return res


if __name__ == "__main__":
    main()
