"""Property-based tests (hypothesis) of the metrics and the re-ranking functions on random inputs.

Invariants: mAP / AP / mP@k in [0, 1] and equal to a plain per-query loop; results unchanged when the
db ids are relabelled (metrics) or the db rows permuted (search, QE, DBA, diffusion, CSA: the
ranking is mapped through the permutation); junk equals deletion from the ranking; rankings are
permutation prefixes with descending scores; batching and query order do not change a query's result;
identities where they should hold (k = 0, α = 0, a ranking given vs computed).
"""
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retrieval.metrics import compute_map, evaluate, protocol_gnd
from retrieval.models.csa import build_csa
from retrieval.rerank import aqe, alpha_qe, csa_rerank, csa_rerank_loop, dba, diffusion, qe_vectors, rerank_dba
from retrieval.search import exact_search

# deterministic (CI-stable) and quick: random inputs drawn from a fixed seed, no example database
FAST = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=15, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])


# =========================================================================== metrics
@st.composite
def ranked_case(draw):
    """Random full or truncated rankings of n_db items for n_q queries and random ok/junk sets
    (possibly empty, possibly overlapping, possibly outside the truncated ranking)."""
    n_db = draw(st.integers(1, 40))
    n_q = draw(st.integers(1, 5))
    n_ranked = draw(st.integers(1, n_db))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    ranks = np.stack([rng.permutation(n_db)[:n_ranked] for _ in range(n_q)], 1)
    gnd = []
    for _ in range(n_q):
        ids = rng.permutation(n_db)
        n_ok = int(rng.integers(0, n_db + 1))
        n_junk = int(rng.integers(0, n_db - n_ok + 1))
        entry = {"ok": ids[:n_ok].tolist(), "junk": ids[n_ok:n_ok + n_junk].tolist()}
        if n_ok and rng.random() < 0.2:                    # an id both positive and junk
            entry["junk"].append(entry["ok"][0])
        gnd.append(entry)
    kappas = tuple(sorted(set(rng.integers(1, 12, size=3).tolist())))
    return ranks, gnd, kappas, n_db


def loop_ap(column, ok, junk, kappas):
    """AP (trapezoid rule over the junk-free ranking) and P@k of one query, by walking the list.
    A positive's position counts the junk strictly before it (an id in both sets is a positive
    that also shifts the later ones, as in the revisitop reference)."""
    ok, junk = set(ok), set(junk)
    pos, junk_before = [], 0
    for p, item in enumerate(column):
        if item in ok:
            pos.append(p - junk_before)
        if item in junk:
            junk_before += 1
    ap = 0.0
    for j, p in enumerate(pos):
        ap += ((1.0 if p == 0 else j / p) + (j + 1) / (p + 1)) / len(ok) / 2
    prs = []
    for k in kappas:
        kq = min(max(pos) + 1, k) if pos else 0
        prs.append(sum(p + 1 <= kq for p in pos) / kq if kq else 0.0)
    return ap, prs


@FAST
@given(ranked_case())
def test_compute_map_is_a_bounded_mean_of_the_loop_definition(case):
    ranks, gnd, kappas, _ = case
    m, aps, pr, prs = compute_map(ranks, gnd, kappas)
    for q, e in enumerate(gnd):
        if not e["ok"]:
            assert np.isnan(aps[q]) and np.isnan(prs[q]).all()
            continue
        ap, p = loop_ap(ranks[:, q], e["ok"], e["junk"], kappas)
        assert aps[q] == pytest.approx(ap, abs=1e-12)
        np.testing.assert_allclose(prs[q], p, atol=1e-12)
    valid = ~np.isnan(aps)
    # bounded when no id is both positive and junk (with such ids the reference can exceed 1)
    clean = valid & np.array([not set(e["ok"]) & set(e["junk"]) for e in gnd])
    assert ((aps[clean] >= 0) & (aps[clean] <= 1 + 1e-12)).all()
    assert ((prs[clean] >= 0) & (prs[clean] <= 1 + 1e-12)).all()
    if clean.all() and valid.any():
        assert 0 <= m <= 1 + 1e-12
    if valid.any():
        assert m == pytest.approx(aps[valid].mean(), abs=1e-12)
        np.testing.assert_allclose(pr, prs[valid].mean(0), atol=1e-12)
    else:
        assert np.isnan(m)


@FAST
@given(ranked_case(), st.integers(0, 2**32 - 1))
def test_relabelling_db_ids_changes_nothing(case, seed):
    ranks, gnd, kappas, n_db = case
    perm = np.random.default_rng(seed).permutation(n_db + 5)   # ids need not stay below n_db
    moved = [{k: perm[np.asarray(v, np.int64)].tolist() for k, v in e.items()} for e in gnd]
    a, b = compute_map(ranks, gnd, kappas), compute_map(perm[ranks], moved, kappas)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


@FAST
@given(ranked_case())
def test_junk_is_the_same_as_deleting_it_from_the_ranking(case):
    ranks, gnd, kappas, _ = case
    for q, e in enumerate(gnd):
        junk_only = set(e["junk"]) - set(e["ok"])
        kept = np.array([i for i in ranks[:, q] if i not in junk_only], np.int64)
        if kept.size == 0:
            continue
        with_junk = compute_map(ranks[:, q:q + 1], [{"ok": e["ok"], "junk": sorted(junk_only)}], kappas)
        deleted = compute_map(kept[:, None], [{"ok": e["ok"], "junk": []}], kappas)
        np.testing.assert_array_equal(with_junk[1], deleted[1])
        np.testing.assert_array_equal(with_junk[3], deleted[3])


@FAST
@given(ranked_case(), st.integers(0, 2**32 - 1))
def test_positives_first_gives_one_and_promoting_a_positive_never_hurts(case, seed):
    ranks, gnd, kappas, n_db = case
    rng = np.random.default_rng(seed)
    for q, e in enumerate(gnd):
        ok = [i for i in e["ok"] if i not in set(e["junk"])]
        if not ok or len(ok) != len(e["ok"]):
            continue
        rest = [i for i in rng.permutation(n_db) if i not in set(ok)]
        perfect = np.array(rng.permutation(ok).tolist() + rest, np.int64)[:, None]
        assert compute_map(perfect, [e], kappas)[0] == pytest.approx(1.0, abs=1e-12)
        col = ranks[:, q].copy()
        swaps = [i for i in range(1, len(col)) if col[i] in set(ok) and col[i - 1] not in set(ok) | set(e["junk"])]
        if swaps:
            i = swaps[rng.integers(len(swaps))]
            up = col.copy()
            up[i - 1], up[i] = up[i], up[i - 1]
            assert compute_map(up[:, None], [e], kappas)[0] >= compute_map(col[:, None], [e], kappas)[0] - 1e-12


@FAST
@given(ranked_case())
def test_evaluate_is_compute_map_per_protocol_and_idempotent(case):
    ranks, gnd, kappas, n_db = case
    rng = np.random.default_rng(ranks.size)
    rev = []
    for e in gnd:
        ids = rng.permutation(n_db)
        a, b = sorted(rng.integers(0, n_db + 1, size=2))
        rev.append({"easy": ids[:a].tolist(), "hard": ids[a:b].tolist(), "junk": ids[b:b + 2].tolist()})
    res = evaluate(ranks, rev, kappas)
    np.testing.assert_equal(evaluate(ranks, rev, kappas), res)
    for p, r in res.items():
        m, _, pr, _ = compute_map(ranks, protocol_gnd(rev, p), kappas)
        assert r["map"] == m or (np.isnan(m) and np.isnan(r["map"]))


# =========================================================================== search and re-ranking
def unit(rng, n, d):
    x = rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@st.composite
def retrieval_case(draw, min_db=8):
    """Clustered unit vectors (so neighbours and expansions matter), queries, a db permutation."""
    n_db = draw(st.integers(min_db, 60))
    n_q = draw(st.integers(1, 6))
    d = draw(st.sampled_from([4, 8, 16]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    centres = rng.standard_normal((max(2, n_db // 6), d))
    db = centres[rng.integers(len(centres), size=n_db)] + 0.5 * rng.standard_normal((n_db, d))
    q = centres[rng.integers(len(centres), size=n_q)] + 0.5 * rng.standard_normal((n_q, d))
    norm = lambda x: (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)  # noqa: E731
    return norm(q), norm(db), rng.permutation(n_db)


def clear(s_full, tol=1e-5):
    """(n, n_q) mask of the positions of a full ranking whose score is more than ``tol`` from both
    neighbours': only there are the ids defined (near-ties may swap under another summation order)."""
    gap = np.full(s_full.shape, np.inf)
    d = np.abs(np.diff(s_full, axis=0))
    gap[:-1] = np.minimum(gap[:-1], d)
    gap[1:] = np.minimum(gap[1:], d)
    return gap > tol


def assert_same_ranking(r1, s1, r2, s2, s_full=None, tol=1e-5):
    """Equal scores (to float noise) and equal ids where they are defined (:func:`clear` of the full
    ranking's scores ``s_full``, default ``s1``)."""
    np.testing.assert_allclose(s1, s2, atol=tol)
    mask = clear(s1 if s_full is None else s_full, tol)[: len(r1)]
    np.testing.assert_array_equal(r1[mask], r2[mask])


def assert_ranking(r, s, n_db, top):
    assert r.shape == s.shape == (top, r.shape[1]) and r.dtype == np.int64
    assert ((r >= 0) & (r < n_db)).all()
    assert all(len(set(c)) == top for c in r.T)                       # no repeated item
    assert (np.diff(s, axis=0) <= 1e-6).all()                         # best first


def permuted(fn, q, db, perm):
    """``fn`` on the db with rows permuted (row i of the new db is db[perm[i]]), ids mapped back."""
    r, s = fn(q, db[perm])
    return perm[r], s


METHODS = {
    "exact": lambda q, db, top: exact_search(q, db, top, chunk_size=7, device="cpu"),
    "aqe": lambda q, db, top: aqe(q, db, k=3, top=top, chunk_size=7, device="cpu"),
    "alpha_qe": lambda q, db, top: alpha_qe(q, db, k=3, alpha=3.0, top=top, device="cpu"),
    "dba": lambda q, db, top: rerank_dba(q, db, k=2, top=top, row_chunk=5, device="cpu"),
    "alpha_qe+alpha_dba": lambda q, db, top: rerank_dba(q, db, k=3, alpha=3.0, qe_k=2, top=top, device="cpu"),
    "diffusion": lambda q, db, top: diffusion(q, db, k=4, kq=3, truncate=20, top=top, batch=2),
    "diffusion-full": lambda q, db, top: diffusion(q, db, k=4, kq=3, truncate=None, top=top, batch=3),
}


@pytest.mark.parametrize("name", sorted(METHODS))
@SLOW
@given(case=retrieval_case(), top_frac=st.floats(0.1, 1.0))
def test_rankings_are_valid_and_follow_a_db_permutation(name, case, top_frac):
    q, db, perm = case
    n, top = len(db), max(1, int(top_frac * len(db)))
    fn = METHODS[name]
    r, s = fn(q, db, n)
    assert_ranking(r, s, n, n)
    if name.startswith("diffusion"):
        assert (s >= 0).all()
    rt, st_ = fn(q, db, top)                                          # top-k: a prefix of the full list
    assert_ranking(rt, st_, n, top)
    assert_same_ranking(rt, st_, r[:top], s[:top], s_full=s)
    r2, s2 = permuted(lambda a, b: fn(a, b, n), q, db, perm)
    assert_same_ranking(r2, s2, r, s)
    # each query gets the same result whatever the order (and batch) of the queries
    order = np.arange(len(q))[::-1]
    r3, s3 = fn(q[order], db, n)
    assert_same_ranking(r3, s3, r[:, order], s[:, order])


@SLOW
@given(retrieval_case())
def test_exact_search_is_the_float64_order(case):
    q, db, _ = case
    r, s = exact_search(q, db, None, chunk_size=5, device="cpu")
    ref = q.astype(np.float64) @ db.astype(np.float64).T
    np.testing.assert_allclose(s, np.take_along_axis(ref.T, r, 0), atol=1e-5)
    order = np.argsort(-ref, axis=1, kind="stable").T
    assert_same_ranking(r, s, order, np.take_along_axis(ref.T, order, 0).astype(np.float32))


@SLOW
@given(retrieval_case())
def test_identities_of_expansion_and_augmentation(case):
    q, db, perm = case
    n = len(db)
    plain = exact_search(q, db, n, device="cpu")
    for k0 in (aqe(q, db, k=0, device="cpu"), rerank_dba(q, db, k=0, device="cpu")):
        np.testing.assert_array_equal(k0[0], plain[0])
    np.testing.assert_array_equal(dba(db, k=0), db)
    # the first-stage ranking given or computed: the same expansion; α = 0 is AQE
    given_r = plain[0][:3]
    np.testing.assert_array_equal(alpha_qe(q, db, given_r, k=3, alpha=0.0)[0], aqe(q, db, k=3)[0])
    # expanded queries and augmented db rows are unit vectors, and permutation-equivariant
    x = qe_vectors(q, db, given_r, k=3, alpha=1.0)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    aug = dba(db, k=2, alpha=2.0, row_chunk=4)
    np.testing.assert_allclose(np.linalg.norm(aug, axis=1), 1.0, atol=1e-5)
    inv = np.argsort(perm)
    np.testing.assert_allclose(dba(db[perm], k=2, alpha=2.0)[inv], aug, atol=1e-5)


def dense_diffusion_scores(q, db, k, kq, t, gamma=3.0, alpha=0.99):
    """Truncated diffusion by its definition, in float64 numpy: reciprocal k-NN affinity of the
    query's top-t items (self excluded), symmetric normalisation, (I - αS) f = y solved directly."""
    s = db.astype(np.float64) @ db.astype(np.float64).T
    np.fill_diagonal(s, -np.inf)
    nn = np.argsort(-s, axis=1, kind="stable")[:, :k]
    member = np.zeros(s.shape, bool)
    member[np.arange(len(db))[:, None], nn] = True
    a = np.where(member & member.T, np.maximum(s, 0) ** gamma, 0.0)
    out = []
    for qi in q.astype(np.float64):
        sq = db.astype(np.float64) @ qi
        sub = np.argsort(-sq, kind="stable")[:t]
        asub = a[np.ix_(sub, sub)]
        deg = asub.sum(1)
        dinv = np.where(deg > 0, 1 / np.sqrt(np.where(deg > 0, deg, 1)), 0)
        y = np.zeros(t)
        y[:kq] = np.maximum(sq[sub[:kq]], 0) ** gamma
        f = np.linalg.solve(np.eye(t) - alpha * dinv[:, None] * asub * dinv[None, :], y)
        out.append(np.sort(f)[::-1])
    return np.stack(out, 1)


@SLOW
@given(retrieval_case(min_db=10), st.integers(3, 30))
def test_truncated_diffusion_solves_its_definition(case, t):
    q, db, _ = case
    t = min(t, len(db))
    _, s = diffusion(q, db, k=4, kq=3, truncate=t, top=t, iters=500, tol=1e-12, batch=2)
    np.testing.assert_allclose(s, dense_diffusion_scores(q, db, 4, 3, t), rtol=1e-4, atol=1e-4)


@SLOW
@given(retrieval_case(min_db=12), st.integers(1, 4))
def test_csa_batched_equals_loop_and_only_reorders_the_top_k(case, batch):
    q, db, _ = case
    torch.manual_seed(0)
    model = build_csa(L=4, dim=16, depth=1, heads=2)
    K = min(8, len(db))
    ranks, _ = exact_search(q, db, len(db), device="cpu")
    r1, s1 = csa_rerank(model, q, db, ranks, K=K, L=4, batch=batch)
    r2, s2 = csa_rerank_loop(model, q, db, ranks, K=K, L=4)
    assert_same_ranking(r1[:K], s1, r2[:K], s2)
    assert (np.sort(r1[:K], 0) == np.sort(ranks[:K], 0)).all()        # the same K candidates
    np.testing.assert_array_equal(r1[K:], ranks[K:])                  # the tail untouched
    assert (np.diff(s1, axis=0) <= 1e-6).all()
