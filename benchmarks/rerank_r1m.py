"""DBA and diffusion at R1M scale: the synthetic test set plus 1M distractors, re-ranked on the db's
approximate k-NN graph (:mod:`retrieval.rerank.graph`), built once. Reports the graph's build time and
its recall of the exact k nearest neighbours on a sample of rows, the exact graph's cost extrapolated
from a sample (the baseline), the offline DBA pass, and the ms per query of each method's online part
against the first-stage exact search.

The distractors are random vectors with the mean and covariance of the synthetic db's descriptors
(``_common.fitted_vectors``): isotropic random vectors have no neighbourhood structure at all (every
item is nearly equidistant from every other), which no approximate k-NN method, and no real image
collection, has. Not in ``make bench`` (the graph takes minutes to tens of minutes on 2 cores):

    python benchmarks/rerank_r1m.py [--quick] [--n N] [--method ivf|hnsw] [--out FILE]

A full run (not ``--quick``) writes its table into benchmarks/README.md between the r1m markers.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from _common import ROOT, fitted_vectors, fmt_s, load_synthetic, machine, machine_line, parser, timed, write

from retrieval.rerank import approximate_neighbours, dba, diffusion, neighbour_recall, reciprocal_knn_graph
from retrieval.rerank.graph import GRAPH_DEFAULTS
from retrieval.search import exact_search

DBA_K, DIFF_K, TRUNC, TOP = 2, 50, 1000, 1000     # as rerank_speed (notebook 03's settings)
RECALL_SAMPLE, EXACT_SAMPLE = 1000, 500


def main(argv=None) -> dict:
    ap = parser(__doc__)
    ap.add_argument("--n", type=int, default=None, help="distractors (default 1,000,000; 100,000 with --quick)")
    ap.add_argument("--method", default="hnsw", choices=["hnsw", "ivf"], help="the approximate graph")
    args = ap.parse_args(argv)
    n_distract = args.n or (100_000 if args.quick else 1_000_000)
    m = machine()
    skipped, table = [], []
    query, db0, source = load_synthetic(skipped)
    nq = len(query)
    t0 = time.perf_counter()
    db = np.concatenate([db0, fitted_vectors(n_distract, db0, seed=11)])
    n, dim = db.shape
    print(f"R1M re-ranking ({nq} queries, {source}, +{n_distract:,} fitted distractors: {n:,} x {dim}) "
          f"on {machine_line(m)}", flush=True)

    t_first, (ranks, _) = timed(lambda: exact_search(query, db, TOP, device="cpu"))
    # baseline: the exact graph, timed on a sample of rows against the whole db and scaled to all rows
    t_ex = timed(lambda: exact_search(db[:EXACT_SAMPLE], db, DIFF_K + 1, device="cpu"))[0]
    t_exact = t_ex / EXACT_SAMPLE * n
    params = dict(GRAPH_DEFAULTS[args.method])
    print(f"  first stage {fmt_s(t_first)} ({1e3 * t_first / nq:.1f} ms/query); exact k-NN graph ~{t_exact / 3600:.2f} h "
          f"(from {EXACT_SAMPLE} rows); building the {args.method} graph {params} ...", flush=True)
    t_graph, (nbr, sim) = timed(lambda: approximate_neighbours(db, DIFF_K, method=args.method))
    t_rec = time.perf_counter()
    recall = neighbour_recall(db, nbr, sample=RECALL_SAMPLE)
    t_rec = time.perf_counter() - t_rec
    print(f"  graph: {fmt_s(t_graph)} ({t_exact / t_graph:.1f}x faster than exact), recall@{DIFF_K} {recall:.3f} "
          f"on {RECALL_SAMPLE} rows ({fmt_s(t_rec)})", flush=True)

    t_dba, aug = timed(lambda: dba(db, k=DBA_K, neighbours=(nbr, sim)))
    t_dba_q = timed(lambda: exact_search(query, aug, TOP, device="cpu"))[0]
    del aug
    t_recip = timed(lambda: reciprocal_knn_graph(db, DIFF_K, neighbours=(nbr, sim)))[0]
    t_diff = timed(lambda: diffusion(query, db, k=DIFF_K, truncate=TRUNC, top=TOP, neighbours=(nbr, sim)))[0]
    t_diff_q = t_diff - t_recip                 # the reciprocal graph is offline (once per db)
    per = {"first stage (exact search)": t_first,
           f"DBA (k={DBA_K}): search the augmented db": t_dba_q,
           f"diffusion (k={DIFF_K}, truncated to {TRUNC}): online": t_diff_q}
    offline = {f"exact k-NN graph (k={DIFF_K}), extrapolated from {EXACT_SAMPLE} rows": t_exact,
               f"{args.method} k-NN graph (k={DIFF_K}; {', '.join(f'{a}={b}' for a, b in params.items())})": t_graph,
               f"DBA (k={DBA_K}): augment the db from the graph": t_dba,
               f"diffusion: reciprocal affinity from the graph": t_recip}
    label = f"+{n_distract:,} distractors ({n:,} x {dim} db)"
    for what, t in per.items():
        extra = "" if what.startswith("first") else f" ({t / t_first:.2f}x first stage)"
        print(f"    {what:<52} {1e3 * t / nq:9.2f} ms/query{extra}")
        table.append([f"{label}: {what}", f"{1e3 * t / nq:.2f} ms/query{extra}"])
    for what, t in offline.items():
        shown = f"{t / 3600:.2f} h" if t >= 3600 else fmt_s(t)
        print(f"    {what:<52} {shown:>9} once (offline)")
        table.append([f"{label}: {what}", f"{shown} once"])
    table.append([f"{label}: {args.method} graph vs exact graph",
                  f"**{t_exact / t_graph:.1f}x** faster, recall@{DIFF_K} **{recall:.3f}** ({RECALL_SAMPLE} sampled rows)"])
    total = time.perf_counter() - t0
    res = dict(benchmark="rerank_r1m", machine=m, quick=args.quick, features=source, n_db=n, dim=dim,
               queries=nq, method=args.method, graph_params=params, graph_seconds=t_graph,
               exact_graph_seconds_estimated=t_exact, recall=recall, recall_sample=RECALL_SAMPLE,
               seconds=per, offline_seconds=offline, ms_per_query={k: 1e3 * v / nq for k, v in per.items()},
               wall_seconds=total, skipped=skipped, table=table,
               settings=dict(dba_k=DBA_K, diffusion_k=DIFF_K, truncate=TRUNC, top=TOP))
    out = Path(args.out or ROOT / "benchmarks" / "results" / "rerank_r1m.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    write(res, str(out))
    if not args.quick:
        from run_all import markdown, update_readme

        md = markdown([("rerank_r1m", 0, total, out)], total)
        update_readme(md.replace("Latest `make bench`", "Latest `rerank_r1m.py`", 1), marker="r1m")
    return res


if __name__ == "__main__":
    main()
