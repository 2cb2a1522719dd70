"""Re-ranking cost per query: AQE, αQE, DBA, diffusion, SuperGlobal and CSA (batched and one query at a time) on
the synthetic test set's descriptors, then with 1M random distractors added to its db (drawn with the
db's mean and covariance, ``_common.fitted_vectors``). The baseline of each row is the first-stage exact
search of the same run (the cost re-ranking adds on top of it).

DBA and diffusion need the k-NN list of every db item (offline, O(n_db² D) exactly): here at 1M it is
measured on a sample of db rows and extrapolated, exactly and by HNSW (:mod:`retrieval.rerank.graph`,
with its recall); ``benchmarks/rerank_r1m.py`` builds the whole graph and runs them.

    python benchmarks/rerank_speed.py [--quick] [--out FILE]
"""

from __future__ import annotations

import numpy as np
import torch

from _common import fitted_vectors, fmt_s, load_synthetic, machine, machine_line, parser, skip, timed, write

from retrieval.models.csa import build_csa
from retrieval.rerank import (aqe, alpha_qe, approximate_neighbours, csa_rerank, csa_rerank_loop, db_neighbours, dba,
                              diffusion, neighbour_recall, superglobal_rerank, superglobal_rerank_loop)
from retrieval.search import exact_search

GRAPH_SAMPLE = 10_000   # db rows on which the approximate k-NN graph (HNSW) is built at the 1M scale
# as notebook 03 on the demo: qe k = 2, α = 3, dba k = 2, diffusion k = 50 truncated to 1000,
# CSA K = 128, L = 64, width 128, 4 heads, depth 2 (random weights: the cost does not depend on them)
QE_K, QE_ALPHA, DBA_K, DIFF_K, TRUNC = 2, 3.0, 2, 50, 1000
CSA_K, CSA_L, CSA_DIM, CSA_HEADS, CSA_BATCH = 128, 64, 128, 4, 64


def main(argv=None) -> dict:
    args = parser(__doc__).parse_args(argv)
    n_distract = 100_000 if args.quick else 1_000_000
    m = machine()
    skipped, rows, table = [], [], []
    query, db0, source = load_synthetic(skipped)
    nq = len(query)
    torch.manual_seed(0)
    csa = build_csa(L=CSA_L, dim=CSA_DIM, depth=2, heads=CSA_HEADS).eval()
    print(f"Re-ranking cost per query ({nq} queries, {source}) on {machine_line(m)}")

    for label, db in (("synthetic", db0), (f"+{n_distract:,} distractors", None)):
        if db is None:
            db = np.concatenate([db0, fitted_vectors(n_distract, db0, seed=11)])
        n = len(db)
        big = n > 100_000
        top = 1000                                   # lists of the first TRUNC items are re-ranked
        t_first, (ranks, _) = timed(lambda: exact_search(query, db, top, device="cpu"), 1 if big else 3)
        per = {"first stage (exact search)": t_first}
        per["AQE (k=2)"] = timed(lambda: aqe(query, db, ranks, k=QE_K, top=top), 1 if big else 3)[0]
        per["αQE (k=2, α=3)"] = timed(lambda: alpha_qe(query, db, ranks, k=QE_K, alpha=QE_ALPHA, top=top),
                                      1 if big else 3)[0]
        offline = {}
        if not big:
            offline["DBA (k=2): augment the db"] = timed(lambda: dba(db, k=DBA_K))[0]
            aug = dba(db, k=DBA_K)
            per["DBA (k=2): search the augmented db"] = timed(lambda: exact_search(query, aug, top), 3)[0]
            t_graph = timed(lambda: db_neighbours(db, DIFF_K))[0]
            t_diff = timed(lambda: diffusion(query, db, k=DIFF_K, truncate=TRUNC, top=top))[0]
            offline[f"diffusion (k={DIFF_K}): k-NN graph of the db"] = t_graph
            per[f"diffusion (k={DIFF_K}, truncated to {TRUNC}): online"] = t_diff - t_graph
            per_row = t_graph / n
        else:
            # the db's k-NN lists: time a sample of rows against the whole db, scale to every row
            sample = db[:500]
            t_s = timed(lambda: exact_search(sample, db, DIFF_K + 1, device="cpu"))[0]
            per_row = t_s / len(sample)
            # the approximate graph (HNSW, retrieval.rerank.graph) on a sample of the db: its build + search
            # time per row and its recall, scaled to every row (HNSW grows as n log n: a lower bound)
            sub = db[:GRAPH_SAMPLE]
            t_h, (nbr, _) = timed(lambda: approximate_neighbours(sub, DIFF_K))
            rec = neighbour_recall(sub, nbr, sample=300)
            hnsw_row = t_h / len(sub)
            for what in (f"DBA (k={DBA_K})", f"diffusion (k={DIFF_K})"):
                est = per_row * n
                skip(f"{what} at {n:,}", f"its offline k-NN graph of every db item would take ~{est / 3600:.1f} h "
                     f"exactly here ({per_row * 1e3:.2f} ms per db row, measured on 500 rows), >= "
                     f"{hnsw_row * n / 3600:.1f} h by HNSW (M=32; {hnsw_row * 1e3:.1f} ms per row and recall "
                     f"{rec:.3f} measured on {len(sub):,} rows)", skipped)
                offline[f"{what}: k-NN graph of the db (estimated)"] = est
            offline[f"HNSW k-NN graph (k={DIFF_K}, M=32) of {len(sub):,} db rows, recall {rec:.3f}"] = t_h
            per["DBA (k=2): search the augmented db (= a first-stage search)"] = t_first
        per["SuperGlobal (M=400, K=9) batched (16 q/batch)"] = timed(lambda: superglobal_rerank(query, db, ranks),
                                                                    1 if big else 3)[0]
        per["SuperGlobal one query at a time"] = timed(lambda: superglobal_rerank_loop(query, db, ranks))[0]
        per["CSA batched (64 q/batch)"] = timed(lambda: csa_rerank(csa, query, db, ranks, K=CSA_K, L=CSA_L,
                                                                   batch=CSA_BATCH))[0]
        per["CSA one query at a time"] = timed(lambda: csa_rerank_loop(csa, query, db, ranks, K=CSA_K, L=CSA_L))[0]
        print(f"  {label} (n_db = {n:,}):")
        for what, t in per.items():
            extra = "" if what.startswith("first") else f"  ({t / t_first:5.2f}x the first stage)"
            print(f"    {what:<58} {1e3 * t / nq:9.2f} ms/query{extra}")
            table.append([f"{label} ({n:,} db): {what}", f"{1e3 * t / nq:.2f} ms/query"
                          + ("" if what.startswith("first") else f" ({t / t_first:.2f}x first stage)")])
        for what, t in offline.items():
            print(f"    {what:<58} {fmt_s(t):>9} once (offline)")
            table.append([f"{label} ({n:,} db): {what}", f"{fmt_s(t) if t < 3600 else f'{t / 3600:.1f} h'} once"])
        ratio = per["CSA one query at a time"] / per["CSA batched (64 q/batch)"]
        sg = per["SuperGlobal one query at a time"] / per["SuperGlobal (M=400, K=9) batched (16 q/batch)"]
        print(f"    CSA batched vs one at a time: {ratio:.2f}x; SuperGlobal: {sg:.2f}x")
        table.append([f"{label}: CSA batched vs one query at a time", f"**{ratio:.2f}x**"])
        table.append([f"{label}: SuperGlobal batched vs one query at a time", f"**{sg:.2f}x**"])
        rows.append(dict(case=label, n_db=n, queries=nq, seconds=per, offline_seconds=offline,
                         ms_per_query={k: 1e3 * v / nq for k, v in per.items()}, csa_batched_over_loop=ratio,
                         superglobal_batched_over_loop=sg,
                         knn_ms_per_db_row=per_row * 1e3))
        del db
    res = dict(benchmark="rerank_speed", machine=m, quick=args.quick, features=source, rows=rows,
               skipped=skipped, table=table,
               settings=dict(qe_k=QE_K, qe_alpha=QE_ALPHA, dba_k=DBA_K, diffusion_k=DIFF_K, truncate=TRUNC,
                             csa=dict(K=CSA_K, L=CSA_L, dim=CSA_DIM, heads=CSA_HEADS, depth=2, batch=CSA_BATCH)))
    write(res, args.out)
    return res


if __name__ == "__main__":
    main()
