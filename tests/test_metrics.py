"""Tests for retrieval.metrics against independent loop implementations."""
import math
import tracemalloc

import numpy as np
import pytest

from retrieval.metrics import (
    CLASSIC, PROTOCOLS, classic_ap, compute_ap, compute_map, evaluate, format_map_table, format_table,
    gnd_protocols, protocol_gnd,
)


# --------------------------------------------------------------------------- references
def ref_compute_map(ranks, gnd, kappas=(1, 5, 10)):
    """Per-query loop port of the revisitop ``compute_map`` (with while-loop junk shift)."""
    nq = len(gnd)
    aps = np.zeros(nq)
    prs = np.zeros((nq, len(kappas)))
    total, pr_total, nempty = 0.0, np.zeros(len(kappas)), 0
    for i in range(nq):
        ok = np.array(gnd[i]["ok"])
        if ok.shape[0] == 0:
            aps[i] = np.nan
            prs[i] = np.nan
            nempty += 1
            continue
        junk = np.array(gnd[i].get("junk", []))
        col = ranks[:, i]
        pos = np.flatnonzero(np.isin(col, ok))
        jpos = np.flatnonzero(np.isin(col, junk))
        shift, ij = 0, 0
        if len(jpos):
            for ip in range(len(pos)):
                while ij < len(jpos) and pos[ip] > jpos[ij]:
                    shift += 1
                    ij += 1
                pos[ip] -= shift
        ap = 0.0
        for j, r in enumerate(pos):
            p0 = 1.0 if r == 0 else j / r
            p1 = (j + 1) / (r + 1)
            ap += (p0 + p1) * (1.0 / len(ok)) / 2.0
        aps[i] = ap
        total += ap
        pos = pos + 1
        for c, k in enumerate(kappas):
            kq = min(max(pos), k)  # raises on empty pos, like the reference
            prs[i, c] = (pos <= kq).sum() / kq
        pr_total += prs[i]
    return total / (nq - nempty), aps, pr_total / (nq - nempty), prs


def ref_classic_ap_one(ranked, good_ok, junk):
    """Loop port of the Oxford ``compute_ap.cpp`` program (float64 instead of float32)."""
    pos, amb = set(good_ok), set(junk)
    old_recall, old_precision, ap = 0.0, 1.0, 0.0
    inter, j = 0, 0
    for item in ranked:
        if item in amb:
            continue
        if item in pos:
            inter += 1
        recall = inter / len(pos)
        precision = inter / (j + 1.0)
        ap += (recall - old_recall) * ((old_precision + precision) / 2.0)
        old_recall, old_precision = recall, precision
        j += 1
    return ap


def random_case(rng, n_db, nq, n_ranked=None, empty_frac=0.2, overlap=False):
    """Random permutations and ok/junk sets; every non-empty query has a positive in ranks."""
    n_ranked = n_db if n_ranked is None else n_ranked
    ranks = np.stack([rng.permutation(n_db)[:n_ranked] for _ in range(nq)], axis=1)
    gnd = []
    for q in range(nq):
        if rng.random() < empty_frac:
            gnd.append({"ok": [], "junk": list(rng.choice(n_db, 3, replace=False))})
            continue
        ids = rng.permutation(n_db)
        nok, nj = rng.integers(1, 15), rng.integers(0, 15)
        ok = list(ids[:nok])
        junk = list(ids[nok:nok + nj])
        if overlap and nok > 1:
            junk.append(ok[0])
        if not np.isin(ranks[:, q], ok).any():
            ok.append(int(ranks[rng.integers(n_ranked), q]))
        entry = {"ok": ok}
        if nj or rng.random() < 0.5:
            entry["junk"] = junk
        gnd.append(entry)
    return ranks, gnd


def assert_same(got, ref):
    m, aps, pr, prs = got
    rm, raps, rpr, rprs = ref
    assert m == pytest.approx(rm, rel=1e-12, abs=1e-12)
    np.testing.assert_allclose(aps, raps, rtol=1e-12, atol=1e-12, equal_nan=True)
    np.testing.assert_allclose(pr, rpr, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(prs, rprs, rtol=1e-12, atol=1e-12, equal_nan=True)


# --------------------------------------------------------------------------- vs reference
@pytest.mark.parametrize("seed", range(6))
def test_matches_reference_full_ranks(seed):
    rng = np.random.default_rng(seed)
    ranks, gnd = random_case(rng, n_db=60, nq=12, overlap=seed % 2 == 1)
    assert_same(compute_map(ranks, gnd, (1, 3, 5, 10)), ref_compute_map(ranks, gnd, (1, 3, 5, 10)))


@pytest.mark.parametrize("seed", range(6))
def test_matches_reference_truncated_ranks(seed):
    rng = np.random.default_rng(100 + seed)
    ranks, gnd = random_case(rng, n_db=200, nq=10, n_ranked=25)
    assert_same(compute_map(ranks, gnd), ref_compute_map(ranks, gnd))


def test_matches_reference_uint32_ranks():
    ranks, gnd = random_case(np.random.default_rng(7), n_db=40, nq=5)
    assert_same(compute_map(ranks.astype(np.uint32), gnd), ref_compute_map(ranks, gnd))


def test_compute_ap_matches_loop():
    rng = np.random.default_rng(3)
    pos = np.sort(rng.choice(100, 12, replace=False))
    expected = 0.0
    for j, r in enumerate(pos):
        expected += ((1.0 if r == 0 else j / r) + (j + 1) / (r + 1)) / 2 / 20
    assert compute_ap(pos, 20) == pytest.approx(expected, rel=1e-12)


# --------------------------------------------------------------------------- hand-worked
def test_junk_before_positives():
    # ranking 10(junk) 3(+) 11 4(+) -> junk removed: 3@0, 11@1, 4@2.
    # j=0, r=0: (1 + 1/1)/2 / 2 = 1/2 ; j=1, r=2: (1/2 + 2/3)/2 / 2 = 7/24 -> AP = 19/24.
    ranks = np.array([[10, 3, 11, 4, 0, 1]]).T
    m, aps, _, _ = compute_map(ranks, [{"ok": [3, 4], "junk": [10]}])
    assert aps[0] == pytest.approx(19 / 24)
    assert m == pytest.approx(19 / 24)


def test_single_positive_at_rank_three():
    # positive at 1-based rank 3 (r = 2, j = 0): p0 = 0/2 = 0, p1 = 1/3 -> AP = (0 + 1/3)/2 = 1/6.
    ranks = np.array([[5, 6, 7, 8]]).T
    _, aps, _, prs = compute_map(ranks, [{"ok": [7]}], kappas=(1, 5))
    assert aps[0] == pytest.approx(1 / 6)
    # P@1: kq = min(3, 1) = 1 -> 0/1 ; P@5: kq = min(3, 5) = 3 -> 1/3.
    np.testing.assert_allclose(prs[0], [0.0, 1 / 3])
    assert compute_ap([2], 1) == pytest.approx(1 / 6)


def test_empty_query_is_nan_and_excluded():
    # query 0: positive first -> AP 1 ; query 1: no positives -> NaN, not in the mean.
    ranks = np.array([[1, 2, 3], [2, 1, 3]]).T
    m, aps, pr, prs = compute_map(ranks, [{"ok": [1], "junk": []}, {"ok": [], "junk": [2]}])
    assert aps[0] == 1.0 and math.isnan(aps[1])
    assert np.isnan(prs[1]).all()
    assert m == 1.0
    np.testing.assert_allclose(pr, [1.0, 1.0, 1.0])


def test_all_empty_gives_nan():
    m, aps, pr, _ = compute_map(np.array([[0], [1]]), [{"ok": []}])
    assert math.isnan(m) and math.isnan(aps[0]) and np.isnan(pr).all()


def test_all_positives_on_top():
    ranks = np.array([[4, 2, 9, 0, 1, 3]]).T
    m, _, pr, _ = compute_map(ranks, [{"ok": [2, 4, 9], "junk": [1]}])
    assert m == pytest.approx(1.0)
    np.testing.assert_allclose(pr, [1.0, 1.0, 1.0])


def test_mp_at_k_fewer_positives_than_k():
    # ranking 0(+) 9(junk) 1 2(+) ... -> junk-free 1-based positions of positives: 1, 3.
    # k=1: kq=1 -> 1/1 ; k=5: kq=min(3,5)=3 -> 2/3 ; k=10: kq=3 -> 2/3 (not 2/10).
    ranks = np.array([[0, 9, 1, 2, 3, 4, 5, 6, 7, 8]]).T
    _, _, pr, prs = compute_map(ranks, [{"ok": [0, 2], "junk": [9]}])
    np.testing.assert_allclose(prs[0], [1.0, 2 / 3, 2 / 3])
    np.testing.assert_allclose(pr, [1.0, 2 / 3, 2 / 3])


def test_positives_missing_from_truncated_ranks():
    # query 1's positive (id 50) is not among the top-3: AP 0, P@k 0 (reference would crash).
    ranks = np.array([[0, 1, 2], [2, 1, 0]]).T
    m, aps, pr, prs = compute_map(ranks, [{"ok": [0]}, {"ok": [50]}])
    np.testing.assert_allclose(aps, [1.0, 0.0])
    np.testing.assert_allclose(prs[1], 0.0)
    assert m == pytest.approx(0.5)
    np.testing.assert_allclose(pr, 0.5)


def test_id_both_positive_and_junk_like_reference():
    ranks = np.array([[3, 7, 5, 1]]).T
    gnd = [{"ok": [3, 5], "junk": [3]}]
    assert_same(compute_map(ranks, gnd), ref_compute_map(ranks, gnd))


# --------------------------------------------------------------------------- properties
@pytest.mark.parametrize("seed", range(5))
def test_ap_one_iff_positives_first(seed):
    rng = np.random.default_rng(200 + seed)
    ids = rng.permutation(50)
    ok, junk, neg = ids[:5], ids[5:12], ids[12:]
    top = rng.permutation(np.concatenate([ok, junk[:4]]))     # positives first, junk mixed in
    ranking = np.concatenate([top, rng.permutation(np.concatenate([junk[4:], neg]))])
    _, aps, _, _ = compute_map(ranking[:, None], [{"ok": ok, "junk": junk}])
    assert aps[0] == pytest.approx(1.0)
    # move one negative ahead of the last positive -> AP < 1
    bad = list(ranking)
    bad.remove(neg[0])
    last = max(bad.index(p) for p in ok)
    bad.insert(last, neg[0])
    _, aps2, _, _ = compute_map(np.array(bad)[:, None], [{"ok": ok, "junk": junk}])
    assert aps2[0] < 1.0 - 1e-9


@pytest.mark.parametrize("seed", range(5))
def test_junk_equals_deleting_from_ranking(seed):
    rng = np.random.default_rng(300 + seed)
    ranks, gnd = random_case(rng, n_db=80, nq=6, empty_frac=0.0)
    for q, e in enumerate(gnd):
        col = ranks[:, q]
        junk = e.get("junk", [])
        kept = col[~np.isin(col, junk)]
        a = compute_map(col[:, None], [e])
        b = compute_map(kept[:, None], [{"ok": e["ok"]}])
        assert a[0] == pytest.approx(b[0], rel=1e-12)
        np.testing.assert_allclose(a[3], b[3], rtol=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_junking_a_negative_never_lowers_ap(seed):
    rng = np.random.default_rng(400 + seed)
    ranks, gnd = random_case(rng, n_db=60, nq=8, empty_frac=0.0)
    _, before, _, _ = compute_map(ranks, gnd)
    more = []
    for q, e in enumerate(gnd):
        col = ranks[:, q]
        negs = col[~np.isin(col, list(e["ok"]) + list(e.get("junk", [])))]
        more.append({"ok": e["ok"], "junk": list(e.get("junk", [])) + [int(rng.choice(negs))]})
    _, after, _, _ = compute_map(ranks, more)
    assert np.all(after >= before - 1e-12)
    assert np.any(after > before)


def revisited_case(rng, n_db=70, nq=6):
    ranks = np.stack([rng.permutation(n_db) for _ in range(nq)], axis=1)
    gnd = []
    for q in range(nq):
        ids = rng.permutation(n_db)
        ne, nh, nj = rng.integers(0, 6), rng.integers(1, 6), rng.integers(0, 6)
        gnd.append({"easy": list(ids[:ne]), "hard": list(ids[ne:ne + nh]),
                    "junk": list(ids[ne + nh:ne + nh + nj]), "bbx": [0, 0, 1, 1]})
    return ranks, gnd


def test_protocol_gnd_definitions():
    g = [{"easy": [1, 2], "hard": [3], "junk": [4], "bbx": None}]
    as_sets = lambda e: (set(e["ok"].tolist()), set(e["junk"].tolist()))  # noqa: E731
    assert as_sets(protocol_gnd(g, "easy")[0]) == ({1, 2}, {3, 4})
    assert as_sets(protocol_gnd(g, "medium")[0]) == ({1, 2, 3}, {4})
    assert as_sets(protocol_gnd(g, "hard")[0]) == ({3}, {1, 2, 4})


def test_evaluate_consistent_with_compute_map():
    rng = np.random.default_rng(5)
    ranks, gnd = revisited_case(rng)
    res = evaluate(ranks, gnd, kappas=(1, 5, 10))
    assert set(res) == {"easy", "medium", "hard"}
    for p in ("easy", "medium", "hard"):
        assert set(res[p]) == {"map", "mp@1", "mp@5", "mp@10"}
        assert all(type(v) is float for v in res[p].values())
        m, _, pr, _ = ref_compute_map(ranks, protocol_gnd(gnd, p))
        assert m == pytest.approx(compute_map(ranks, protocol_gnd(gnd, p))[0])
        assert res[p]["map"] == pytest.approx(m)
        assert [res[p][f"mp@{k}"] for k in (1, 5, 10)] == pytest.approx(list(pr))


def test_format_table():
    res = {"easy": {"map": 0.5, "mp@1": 1.0}, "medium": {"map": 0.25, "mp@1": 0.0},
           "hard": {"map": 0.125, "mp@1": 0.5}}
    one = format_table(res)
    assert "mAP" in one and "50.00" in one and "25.00" in one and "12.50" in one
    assert "mP@1" in one and "100.00" in one
    two = format_table({"gem": res, "r-mac": res})
    assert "gem" in two and "r-mac" in two and len(two.splitlines()) == 5


# --------------------------------------------------------------------------- classic
@pytest.mark.parametrize("seed", range(6))
def test_classic_ap_vs_cpp_port(seed):
    rng = np.random.default_rng(500 + seed)
    n_db, nq = 60, 8
    n_ranked = 60 if seed % 2 == 0 else 30
    ranks = np.stack([rng.permutation(n_db)[:n_ranked] for _ in range(nq)], axis=1)
    gnd = []
    for _ in range(nq):
        ids = rng.permutation(n_db)
        ng, no, nj = rng.integers(0, 5), rng.integers(1, 5), rng.integers(0, 8)
        e = {"good": list(ids[:ng]), "ok": list(ids[ng:ng + no]),
             "junk": list(ids[ng + no:ng + no + nj])}
        if seed >= 3:  # overlaps: the C++ skips a junk positive but counts it in |pos|
            e["junk"].append(e["ok"][0])
            e["ok"] += e["good"][:1]
        gnd.append(e)
    m, aps = classic_ap(ranks, gnd)
    ref = [ref_classic_ap_one(ranks[:, q].tolist(), e["good"] + e["ok"], e["junk"])
           for q, e in enumerate(gnd)]
    np.testing.assert_allclose(aps, ref, rtol=1e-12, atol=1e-15)
    assert m == pytest.approx(np.mean(ref), rel=1e-12)


# --------------------------------------------------------------------------- bitwise means
def sequential_mean(values):
    """revisitop's accumulation: ``map = map + ap`` in query order, then one division."""
    total = 0.0
    for v in values:
        total = total + v
    return total / len(values)


def test_means_equal_revisitop_bit_for_bit():
    """70 queries (as ROxf/RPar) where the pairwise sum of np.mean differs from the reference's
    query-order sum: mAP and mP@k must equal the loop port exactly (==, no tolerance)."""
    rng = np.random.default_rng(0)
    ranks, gnd = random_case(rng, n_db=300, nq=70, empty_frac=0.1)
    m, aps, pr, prs = compute_map(ranks, gnd)
    rm, raps, rpr, rprs = ref_compute_map(ranks, gnd)
    valid = ~np.isnan(raps)
    assert np.mean(raps[valid]) != rm                 # the case np.mean gets wrong in the last bits
    assert np.array_equal(aps, raps, equal_nan=True) and np.array_equal(prs, rprs, equal_nan=True)
    assert m == rm and type(m) is float
    assert np.array_equal(pr, rpr)
    # classic_ap averages the same way (its per-query AP is the same formula)
    cm, caps = classic_ap(ranks, gnd)
    assert np.array_equal(caps, raps, equal_nan=True)
    assert cm == sequential_mean(list(caps[valid])) == rm


# --------------------------------------------------------------------------- classic protocol
def test_classic_protocol_from_original_gnd():
    """Original Oxford5k/Paris6k gnd (ok/junk, optionally good) -> evaluate returns only 'classic',
    equal to compute_map on good+ok / junk (cirtorch's compute_map_and_print for oxford5k)."""
    rng = np.random.default_rng(3)
    ranks, rev = revisited_case(rng, nq=8)
    orig = [{"ok": e["easy"] + e["hard"], "junk": e["junk"], "bbx": e["bbx"]} for e in rev]
    orig[0] = {"good": orig[0]["ok"][:1], "ok": orig[0]["ok"][1:], "junk": orig[0]["junk"]}  # raw Oxford lists
    assert gnd_protocols(orig) == (CLASSIC,) and gnd_protocols(rev) == PROTOCOLS
    res = evaluate(ranks, orig, kappas=(1, 5))
    assert list(res) == [CLASSIC] and set(res[CLASSIC]) == {"map", "mp@1", "mp@5"}
    merged = [{"ok": e.get("good", []) + e["ok"], "junk": e["junk"]} for e in orig]
    m, _, pr, _ = ref_compute_map(ranks, merged, kappas=(1, 5))
    assert res[CLASSIC]["map"] == m and [res[CLASSIC]["mp@1"], res[CLASSIC]["mp@5"]] == list(pr)
    # the classic mAP of the original lists = the revisited Medium mAP (ok = easy + hard)
    assert res[CLASSIC]["map"] == evaluate(ranks, rev)["medium"]["map"]
    with pytest.raises(ValueError, match="use protocol 'classic'"):
        protocol_gnd(orig, "medium")
    with pytest.raises(ValueError, match="not in the original"):
        protocol_gnd(rev, CLASSIC)
    with pytest.raises(ValueError, match="mixes formats"):
        evaluate(ranks, rev[:4] + orig[4:])


def test_tables_of_classic_results():
    classic = {CLASSIC: {"map": 0.8125, "mp@1": 1.0}}
    rev = {"easy": {"map": 0.5, "mp@1": 1.0}, "medium": {"map": 0.25, "mp@1": 0.0},
           "hard": {"map": 0.125, "mp@1": 0.5}}
    one = format_table(classic).splitlines()
    assert one[0].split() == ["metric", "classic"]
    assert one[1].split() == ["mAP", "81.25"] and one[2].split() == ["mP@1", "100.00"]
    mixed = format_table({"ox": classic, "rox": rev}).splitlines()
    assert mixed[0].split() == ["name", "metric", "E", "M", "H", "classic"]
    assert mixed[1].split() == ["ox", "mAP", "-", "-", "-", "81.25"]
    assert mixed[3].split() == ["rox", "mAP", "50.00", "25.00", "12.50", "-"]
    rows = format_map_table({"gem": classic, "mac": {CLASSIC: {"map": 0.5}}}, {"dim": {"gem": 2048}}).splitlines()
    assert rows[0].split() == ["method", "classic", "dim"]
    assert rows[1].split() == ["gem", "81.25", "2048"] and rows[2].split() == ["mac", "50.00", "-"]
    assert format_table(rev).splitlines()[0].split() == ["metric", "E", "M", "H"]   # unchanged for E/M/H


# --------------------------------------------------------------------------- input errors
@pytest.mark.parametrize("where", ["first row", "past the first block", "last entry"])
def test_negative_id_anywhere_in_long_ranks_is_refused(where):
    """compute_map checks negative ids on its candidate entries only (no separate pass over ranks): a
    negative id far below the labelled ids, in any block, must still be refused, by classic_ap too."""
    rng = np.random.default_rng(0)
    nq, n = 3, 400_000                                   # several blocks; labelled ids < 10
    ranks = np.stack([rng.permutation(n) for _ in range(nq)], axis=1)
    gnd = [{"ok": [1, 2], "junk": [3]}] * nq
    assert np.isfinite(compute_map(ranks, gnd)[0])
    r, c = {"first row": (0, 1), "past the first block": (300_000, 2), "last entry": (n - 1, nq - 1)}[where]
    ranks[r, c] = -5
    with pytest.raises(ValueError, match="negative"):
        compute_map(ranks, gnd)
    with pytest.raises(ValueError, match="negative"):
        classic_ap(ranks, [{"good": [1], "ok": [2], "junk": [3]}] * nq)


def test_errors():
    ranks = np.array([[0, 1], [1, 0]])
    with pytest.raises(ValueError, match="ranks"):
        compute_map(ranks, [{"ok": [0]}])                       # 2 columns, 1 query
    with pytest.raises(ValueError, match="ranks"):
        compute_map(np.array([0, 1]), [{"ok": [0]}])            # 1-D
    with pytest.raises(ValueError, match="ranks"):
        compute_map(ranks.astype(float), [{"ok": [0]}] * 2)     # float
    with pytest.raises(ValueError, match="ranks"):
        compute_map(np.array([[0], [-1]]), [{"ok": [0]}])       # negative index
    with pytest.raises(ValueError, match="gnd"):
        compute_map(ranks, [{"ok": [0]}, {"junk": [1]}])        # missing 'ok'
    with pytest.raises(ValueError, match="gnd"):
        compute_map(ranks, [{"ok": [0]}, {"ok": [-3]}])         # negative gnd id
    with pytest.raises(ValueError, match="protocol"):
        protocol_gnd([{"easy": [], "hard": [], "junk": []}], "extreme")
    with pytest.raises(ValueError, match="kappas"):
        compute_map(ranks, [{"ok": [0]}] * 2, kappas=(0,))


# --------------------------------------------------------------------------- scale
@pytest.mark.slow
def test_scale_one_million():
    rng = np.random.default_rng(9)
    n_db, nq = 1_000_000, 8
    ranks = np.empty((n_db, nq), dtype=np.int64)
    for q in range(nq):
        ranks[:, q] = rng.permutation(n_db)
    gnd = [{"ok": rng.choice(n_db, 50, replace=False).tolist(),
            "junk": rng.choice(n_db, 30, replace=False).tolist()} for _ in range(nq)]
    for q in range(nq):                                         # a few positives near the top
        gnd[q]["ok"] += ranks[[0, 2, 7], q].tolist()
    tracemalloc.start()
    m, aps, pr, prs = compute_map(ranks, gnd)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < ranks.nbytes // 2                             # int8-sized work, not float64
    cols = [0, 5]
    _, raps, _, rprs = ref_compute_map(ranks[:, cols], [gnd[c] for c in cols])
    np.testing.assert_allclose(aps[cols], raps, rtol=1e-12)
    np.testing.assert_allclose(prs[cols], rprs, rtol=1e-12)
    assert np.isfinite(m) and pr.shape == (3,)


def test_tied_scores_are_ranked_by_db_index_before_scoring():
    """Ties: db 0 (negative) and db 1 (positive) have the same score. The search puts the lower
    index first, so the positive sits at 0-based rank 1: AP = (0/1 + 1/2) / 2 = 0.25. With the
    labels swapped the positive comes first: AP = 1."""
    from retrieval.search import search

    query = np.array([[1.0, 0.0]], np.float32)
    db = np.array([[0.6, 0.8], [0.6, 0.8], [0.0, 1.0]], np.float32)
    ranks, scores = search(query, db)
    assert ranks[:, 0].tolist() == [0, 1, 2] and scores[0, 0] == scores[1, 0]
    m, aps, _, _ = compute_map(ranks, [{"ok": [1], "junk": []}])
    assert m == pytest.approx(0.25)
    m, aps, _, _ = compute_map(ranks, [{"ok": [0], "junk": []}])
    assert m == pytest.approx(1.0)


def test_format_map_table_rows_and_extra_columns():
    from retrieval.metrics import format_map_table

    res = {"a": {p: {"map": v} for p, v in zip(("easy", "medium", "hard"), (0.5, 0.25, 0.125))},
           "long-name": {p: {"map": v} for p, v in zip(("easy", "medium", "hard"), (1.0, 0.0, 0.5))}}
    text = format_map_table(res, {"ms/img": {"a": 3.14159}, "dim": {"a": 512, "long-name": 64}})
    lines = text.splitlines()
    assert lines[0].split() == ["method", "E", "M", "H", "ms/img", "dim"]
    assert lines[1].split() == ["a", "50.00", "25.00", "12.50", "3.14", "512"]
    assert lines[2].split() == ["long-name", "100.00", "0.00", "50.00", "-", "64"]


def test_label_map_equals_a_loop():
    """Leave-one-out mAP on a labelled split: each item against the others, positives its class."""
    from retrieval.metrics import label_map

    rng = np.random.default_rng(5)
    labels = rng.integers(0, 4, 30)
    x = rng.standard_normal((30, 8)).astype(np.float32) + 2.0 * np.eye(8, dtype=np.float32)[labels]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    aps = []
    for i in range(30):
        others = [j for j in range(30) if j != i]
        order = sorted(others, key=lambda j: (-float(x[i] @ x[j]), j))
        hits = [labels[j] == labels[i] for j in order]
        if not any(hits):
            continue
        npos, found, ap = sum(hits), 0, 0.0
        for r, h in enumerate(hits):       # trapezoid rule, as revisitop
            if h:
                p0 = 1.0 if r == 0 else found / r
                found += 1
                ap += (p0 + found / (r + 1)) / 2 / npos
        aps.append(ap)
    assert label_map(x, labels) == pytest.approx(np.mean(aps), abs=1e-12)
    assert label_map(x, labels) > label_map(x, rng.permutation(labels))
    with pytest.raises(ValueError, match="labels"):
        label_map(x, labels[:5])


def test_random_ranking_matches_the_expected_ap_of_one_positive():
    # one positive among N ranked items (the other protocol's positive is junk): revisitop's AP is
    # (1 + 1)/2 at rank 0 and (0 + 1/(r+1))/2 at rank r > 0, so E[AP] = (1 + (H_N - 1)/2) / N
    from retrieval.metrics import random_ranking

    n_db, rng = 41, np.random.default_rng(3)
    gnd = [dict(zip(("easy", "hard"), ([int(a)], [int(b)])), junk=[])
           for a, b in (rng.choice(n_db, 2, replace=False) for _ in range(20))]
    res = random_ranking(gnd, n_db, trials=300, seed=1)
    N = n_db - 1
    expected = (1 + (sum(1 / k for k in range(1, N + 1)) - 1) / 2) / N
    for protocol in ("easy", "hard"):
        assert res[protocol]["map"] == pytest.approx(expected, abs=0.006)
    assert res["easy"]["mp@1"] == pytest.approx(1 / N, abs=0.01)
    assert set(res) == {"easy", "medium", "hard"} and set(res["medium"]) == {"map", "mp@1", "mp@5", "mp@10"}
    assert random_ranking(gnd, n_db, trials=2, seed=5) == random_ranking(gnd, n_db, trials=2, seed=5)
    with pytest.raises(ValueError, match="trials"):
        random_ranking(gnd, n_db, trials=0)


def test_topk_oracle_against_a_loop_and_bounds():
    from retrieval.metrics import protocol_gnd, topk_oracle

    rng = np.random.default_rng(4)
    n_db, nq, K = 30, 6, 8
    gnd = [dict(easy=list(map(int, rng.choice(n_db, 3, replace=False))), hard=[], junk=[]) for _ in range(nq)]
    for g in gnd:
        g["hard"] = [int(j) for j in rng.choice(np.setdiff1d(np.arange(n_db), g["easy"]), 4, replace=False)]
    ranks = np.stack([rng.permutation(n_db) for _ in range(nq)], 1)
    for protocol in ("medium", "hard"):
        got = topk_oracle(ranks, gnd, K, protocol)
        for i, g in enumerate(protocol_gnd(gnd, protocol)):
            top = list(ranks[:K, i])
            expected = [j for j in top if j in set(g["ok"])] + [j for j in top if j not in set(g["ok"])]
            assert list(got[:K, i]) == expected
        np.testing.assert_array_equal(got[K:], ranks[K:])
        # an upper bound of every re-ranking of the top-K, reached when K covers the whole list
        assert evaluate(got, gnd)[protocol]["map"] >= evaluate(ranks, gnd)[protocol]["map"]
        assert evaluate(topk_oracle(ranks, gnd, n_db, protocol), gnd)[protocol]["map"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="queries"):
        topk_oracle(ranks[:, :2], gnd, K)
