"""Evaluation speed: ``compute_map`` (vectorised) vs a straightforward per-query loop of the same
definition (the revisitop ``compute_map``), 70 queries x {5k, 100k, 1M} ranked db items; identical
results required. Also the peak memory of both at the largest size.

    python benchmarks/eval_speed.py [--quick] [--out FILE]
"""

from __future__ import annotations

import numpy as np

from _common import fmt_s, machine, machine_line, parser, peak_rss, timed, write

from retrieval.metrics import compute_map


def loop_compute_map(ranks, gnd, kappas=(1, 5, 10)):
    """Per query: positions of positives and junk by ``np.isin``, positives shifted by the junk
    before them, trapezoid AP, P@k; NaN for queries without positives (excluded from the means,
    which are summed in query order)."""
    nq = len(gnd)
    aps, prs = np.full(nq, np.nan), np.full((nq, len(kappas)), np.nan)
    for q in range(nq):
        ok = np.asarray(gnd[q]["ok"])
        if ok.size == 0:
            continue
        col = ranks[:, q]
        pos = np.flatnonzero(np.isin(col, ok))
        junk = np.flatnonzero(np.isin(col, np.asarray(gnd[q].get("junk", []), dtype=np.int64)))
        pos = pos - np.searchsorted(junk, pos)            # junk strictly before each positive
        ap = 0.0
        for j, r in enumerate(pos):
            p0 = 1.0 if r == 0 else j / r
            ap += (p0 + (j + 1.0) / (r + 1.0)) * (1.0 / ok.size) / 2.0
        aps[q] = ap
        for c, k in enumerate(kappas):
            if pos.size == 0:
                prs[q, c] = 0.0
                continue
            kq = min(pos[-1] + 1, k)
            prs[q, c] = np.count_nonzero(pos + 1 <= kq) / kq
    valid = ~np.isnan(aps)
    total, pr = 0.0, np.zeros(len(kappas))
    for q in np.flatnonzero(valid):                       # summed in query order, as revisitop does
        total, pr = total + aps[q], pr + prs[q]
    return float(total / valid.sum()), aps, pr / valid.sum(), prs


def make_case(n_db: int, nq: int, seed: int = 0):
    """R1M-like: 70 queries, each with ~60 positives and ~30 junk among the first 5,000 ids (the
    original dataset), rankings that put positives early with noise; the rest are distractors."""
    rng = np.random.default_rng(seed)
    base = min(n_db, 5000)
    ranks = np.empty((n_db, nq), np.int64)
    gnd = []
    for q in range(nq):
        ids = rng.permutation(base)
        ok, junk = ids[:int(rng.integers(20, 100))], ids[100:100 + int(rng.integers(0, 40))]
        gnd.append({"ok": ok.tolist(), "junk": junk.tolist()})
        score = rng.random(n_db)
        score[ok] *= 0.02 + 0.3 * rng.random(ok.size)          # positives mostly near the top
        ranks[:, q] = np.argsort(score, kind="stable")
    return ranks, gnd


def main(argv=None) -> dict:
    args = parser(__doc__).parse_args(argv)
    sizes = [5_000, 100_000] if args.quick else [5_000, 100_000, 1_000_000]
    nq = 70
    m = machine()
    print(f"Evaluation (compute_map, {nq} queries, mAP + mP@1,5,10) on {machine_line(m)}")
    rows, table = [], []
    for n in sizes:
        ranks, gnd = make_case(n, nq)
        rep = 3  # best of 3 for both (the 1M loop is ~1.5 s a call)
        t_vec, a = timed(lambda: compute_map(ranks, gnd), repeat=rep, warmup=True)
        t_loop, b = timed(lambda: loop_compute_map(ranks, gnd), repeat=rep)
        identical = all(np.array_equal(x, y, equal_nan=True) for x, y in zip(a, b))
        maxdiff = float(np.nanmax(np.abs(a[1] - b[1])))
        row = dict(n_db=n, queries=nq, vectorised_s=t_vec, loop_s=t_loop, ratio=t_loop / t_vec,
                   identical=identical, max_ap_diff=maxdiff, map=a[0])
        if n == sizes[-1]:
            with peak_rss() as mv:
                compute_map(ranks, gnd)
            with peak_rss() as ml:
                loop_compute_map(ranks, gnd)
            row.update(vectorised_peak_extra_mb=mv["extra_mb"], loop_peak_extra_mb=ml["extra_mb"],
                       ranks_mb=ranks.nbytes / 2**20)
        rows.append(row)
        print(f"  n_db={n:>9,}: vectorised {fmt_s(t_vec):>9}, per-query loop {fmt_s(t_loop):>9}  "
              f"ratio {row['ratio']:6.1f}x   identical results: {identical} (max |dAP| {maxdiff:.1e})")
        table.append([f"compute_map, {nq} q x {n:,} db: vectorised vs per-query loop",
                      f"{fmt_s(t_vec)} vs {fmt_s(t_loop)} = **{row['ratio']:.1f}x**"
                      + ("" if identical else f" (max dAP {maxdiff:.1e})")])
        del ranks
    last = rows[-1]
    print(f"  peak memory at {sizes[-1]:,}: vectorised +{last['vectorised_peak_extra_mb']:.0f} MB, "
          f"loop +{last['loop_peak_extra_mb']:.0f} MB above the {last['ranks_mb']:.0f} MB ranks array")
    table.append([f"peak RSS of evaluation at {sizes[-1]:,} db (above the {last['ranks_mb']:.0f} MB ranks)",
                  f"vectorised +{last['vectorised_peak_extra_mb']:.0f} MB, loop +{last['loop_peak_extra_mb']:.0f} MB"])
    res = dict(benchmark="eval_speed", machine=m, quick=args.quick, rows=rows, table=table)
    write(res, args.out)
    return res


if __name__ == "__main__":
    main()
