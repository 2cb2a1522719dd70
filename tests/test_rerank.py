"""Tests for retrieval.rerank: toy cases worked out by hand, plain-loop references, properties."""
import numpy as np
import pytest
import torch

from retrieval.rerank import (aqe, alpha_qe, conjugate_gradient, db_neighbours, dba, diffusion,
                              qe_vectors, reciprocal_knn_graph, rerank_dba)
from retrieval.search import exact_search


def normed(x):
    x = np.asarray(x, np.float64)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def ang(*deg):
    """Unit 2-D vectors at the given angles in degrees, (n, 2)."""
    r = np.deg2rad(np.asarray(deg, np.float64))
    return np.stack([np.cos(r), np.sin(r)], 1).astype(np.float32)


def clustered(n_db=200, n_q=7, dim=16, n_clusters=10, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_clusters, dim))
    db = normed(centres[rng.integers(n_clusters, size=n_db)] + 0.4 * rng.normal(size=(n_db, dim)))
    q = normed(centres[rng.integers(n_clusters, size=n_q)] + 0.4 * rng.normal(size=(n_q, dim)))
    return q, db


def first_order(q, db):
    """(n_q, n_db) db indices by descending similarity, ties by the lower index (numpy loop)."""
    s = q.astype(np.float64) @ db.astype(np.float64).T
    return np.stack([np.lexsort((np.arange(db.shape[0]), -row)) for row in s])


def loop_neighbours(db, k):
    """k nearest other items of every item, by a plain loop."""
    out = []
    for i in range(db.shape[0]):
        order = first_order(db[i:i + 1], db)[0]
        out.append([j for j in order if j != i][:k])
    return np.array(out, np.int64).reshape(db.shape[0], k)


def loop_affinity(db, k, gamma):
    """Dense reciprocal k-NN affinity A_ij = max(s_ij, 0)^γ, by loops."""
    n = db.shape[0]
    nb = loop_neighbours(db, k)
    s = db.astype(np.float64) @ db.astype(np.float64).T
    a = np.zeros((n, n))
    for i in range(n):
        for j in nb[i]:
            if i in nb[j]:
                a[i, j] = max(s[i, j], 0.0) ** gamma
    return a


def sym_norm(a):
    d = a.sum(1)
    dinv = np.where(d > 0, 1 / np.sqrt(np.where(d > 0, d, 1)), 0)
    return dinv[:, None] * a * dinv[None, :]


# --------------------------------------------------------------------------- query expansion
def test_aqe_pulls_up_the_neighbour_of_the_neighbour():
    # q at 0°, db at 30°, -35°, 60°: first stage ranks 0 (30°), 1 (35°), 2 (60°).
    # AQE with k=1: q' = L2(q + d0) lies at 15°, so the angles become 15°, 50°, 45°:
    # db 2 (the neighbour of the nearest neighbour) now beats db 1.
    q, db = ang(0), ang(30, -35, 60)
    r0, _ = exact_search(q, db, device="cpu")
    assert r0[:, 0].tolist() == [0, 1, 2]
    r, s = aqe(q, db, k=1)
    assert r[:, 0].tolist() == [0, 2, 1]
    np.testing.assert_allclose(s[:, 0], np.cos(np.deg2rad([15, 45, 50])), atol=1e-5)


def test_aqe_includes_query_unweighted():
    # k=2 on the same toy: q' = L2(q + d0 + d1) (all three vectors with weight 1).
    q, db = ang(0), ang(30, -35, 60)
    expect = normed((q[0] + db[0] + db[1])[None])[0]
    r0 = exact_search(q, db, device="cpu")[0]
    np.testing.assert_allclose(qe_vectors(q, db, r0, k=2, alpha=0.0)[0], expect, atol=1e-6)
    r, s = aqe(q, db, k=2)
    np.testing.assert_allclose(s[:, 0], (db @ expect)[r[:, 0]], atol=1e-5)


def test_alpha_qe_weights_by_hand():
    # q = e1, sims 0.8, 0.6, 0.0; k=2, α=3 → weights 0.8³ = 0.512, 0.6³ = 0.216:
    # q' ∝ e1 + 0.512·(0.8, 0.6, 0) + 0.216·(0.6, 0, 0.8) = (1.5392, 0.3072, 0.1728).
    q = np.array([[1, 0, 0]], np.float32)
    db = np.array([[0.8, 0.6, 0], [0.6, 0, 0.8], [0, 0, 1]], np.float32)
    ranks = np.array([[0], [1], [2]])
    expect = normed([[1.5392, 0.3072, 0.1728]])[0]
    np.testing.assert_allclose(qe_vectors(q, db, ranks, k=2, alpha=3.0)[0], expect, atol=1e-6)
    r, s = alpha_qe(q, db, k=2, alpha=3.0)
    assert r[:, 0].tolist() == [0, 1, 2]
    np.testing.assert_allclose(s[:, 0], db @ expect, atol=1e-5)


def test_alpha_qe_clamps_negative_similarities():
    # second neighbour has similarity -0.6: weight max(-0.6, 0)^3 = 0 for α=3, but 1 for α=0 (AQE).
    q = np.array([[1, 0, 0]], np.float32)
    db = np.array([[0.8, 0.6, 0], [-0.6, 0, 0.8]], np.float32)
    ranks = np.array([[0], [1]])
    np.testing.assert_allclose(qe_vectors(q, db, ranks, 2, 3.0)[0],
                               normed([[1 + 0.512 * 0.8, 0.512 * 0.6, 0]])[0], atol=1e-6)
    np.testing.assert_allclose(qe_vectors(q, db, ranks, 2, 0.0)[0], normed([[1.2, 0.6, 0.8]])[0],
                               atol=1e-6)


def test_alpha_qe_alpha0_equals_aqe_and_given_ranks_equal_computed():
    q, db = clustered()
    r1, s1 = alpha_qe(q, db, k=5, alpha=0.0, top=30)
    r2, s2 = aqe(q, db, k=5, top=30)
    np.testing.assert_array_equal(r1, r2)
    np.testing.assert_array_equal(s1, s2)
    first = exact_search(q, db, 8, device="cpu")[0]
    r3, s3 = alpha_qe(q, db, ranks=first, k=5, alpha=3.0, top=30)
    r4, s4 = alpha_qe(q, db, k=5, alpha=3.0, top=30)
    np.testing.assert_array_equal(r3, r4)
    np.testing.assert_allclose(s3, s4, atol=1e-6)
    # α > 0 weights differ from uniform ones, so the expanded queries differ
    assert not np.allclose(qe_vectors(q, db, first, 5, 3.0), qe_vectors(q, db, first, 5, 0.0))


def test_qe_k0_is_plain_search():
    q, db = clustered()
    r, s = alpha_qe(q, db, k=0, top=20)
    r0, s0 = exact_search(q, db, 20, device="cpu")
    np.testing.assert_array_equal(r, r0)
    np.testing.assert_allclose(s, s0, atol=1e-6)


def test_qe_vectors_loop_reference():
    q, db = clustered(n_q=5)
    first = exact_search(q, db, 6, device="cpu")[0]
    out = qe_vectors(q, db, first, k=4, alpha=2.0)
    for j in range(q.shape[0]):
        v = q[j].astype(np.float64).copy()
        for i in first[:4, j]:
            v += max(float(q[j] @ db[i]), 0.0) ** 2 * db[i]
        np.testing.assert_allclose(out[j], v / np.linalg.norm(v), atol=1e-5)


# --------------------------------------------------------------------------- neighbours / DBA
@pytest.mark.parametrize("row_chunk", [1, 7, 1000])
@pytest.mark.parametrize("chunk_size", [5, 16384])
def test_db_neighbours_chunked_equals_loop(row_chunk, chunk_size):
    _, db = clustered(n_db=60)
    nb, sim = db_neighbours(db, 5, row_chunk=row_chunk, chunk_size=chunk_size, device="cpu")
    ref_nb, ref_sim = db_neighbours(db, 5, row_chunk=10 ** 6, chunk_size=10 ** 6, device="cpu")
    np.testing.assert_array_equal(nb, ref_nb)
    np.testing.assert_allclose(sim, ref_sim, rtol=1e-6, atol=1e-7)   # BLAS rounding varies by shape
    np.testing.assert_array_equal(nb, loop_neighbours(db, 5))
    np.testing.assert_allclose(sim, np.take_along_axis(db @ db.T, nb, 1), atol=1e-6)
    assert nb.dtype == np.int64 and sim.dtype == np.float32
    assert not (nb == np.arange(60)[:, None]).any()        # never itself


def test_db_neighbours_with_exact_duplicates():
    # rows 1 and 3 are identical: each is the other's nearest neighbour, and neither lists itself
    db = ang(0, 40, 100, 40, 170)
    nb, sim = db_neighbours(db, 2, device="cpu")
    assert nb[1, 0] == 3 and nb[3, 0] == 1
    assert not (nb == np.arange(5)[:, None]).any()
    np.testing.assert_allclose(sim[1, 0], 1.0, atol=1e-6)
    # three identical rows, k=1: row 2's search for k+1 = 2 items returns [0, 1] (ties by the lower
    # index) and never reaches itself; the lower-index tie (0) must be kept
    nb, _ = db_neighbours(ang(50, 50, 50, 120), 1, device="cpu")
    assert nb[:, 0].tolist() == [1, 0, 0, 0]             # row 3: a three-way tie, lowest index


def test_dba_three_points_by_hand():
    # x0 = 0°, x1 = 10°, x2 = 90°; each point's nearest other: x0→x1, x1→x0, x2→x1 (80° < 90°).
    # DBA k=1: x0, x1 → L2(x0 + x1) = 5°; x2 → L2(x2 + x1) = 50°.
    db = ang(0, 10, 90)
    np.testing.assert_allclose(dba(db, k=1), ang(5, 5, 50), atol=1e-6)
    # αDBA, α=2: x2 → L2(x2 + cos²(80°)·x1), x0 → L2(x0 + cos²(10°)·x1), x1 → L2(x1 + cos²(10°)·x0)
    c10, c80 = np.cos(np.deg2rad(10)) ** 2, np.cos(np.deg2rad(80)) ** 2
    expect = normed([db[0] + c10 * db[1], db[1] + c10 * db[0], db[2] + c80 * db[1]])
    np.testing.assert_allclose(dba(db, k=1, alpha=2.0), expect, atol=1e-6)
    # k=2 uniform: every point averages all three
    np.testing.assert_allclose(dba(db, k=2), normed(np.repeat(db.sum(0, keepdims=True), 3, 0)),
                               atol=1e-6)


def test_dba_k0_is_identity_and_chunks_do_not_matter():
    _, db = clustered(n_db=50)
    np.testing.assert_array_equal(dba(db, k=0), db)
    a = dba(db, k=4, alpha=3.0, row_chunk=3, chunk_size=7)
    b = dba(db, k=4, alpha=3.0)
    np.testing.assert_allclose(a, b, atol=1e-7)
    assert a.dtype == np.float32 and a.shape == db.shape
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)


def test_rerank_dba_protocol():
    q, db = clustered()
    aug = dba(db, k=3, alpha=1.0)
    r, s = rerank_dba(q, db, k=3, alpha=1.0, top=25)
    r0, s0 = exact_search(q, aug, 25, device="cpu")           # queries are NOT augmented
    np.testing.assert_array_equal(r, r0)
    np.testing.assert_allclose(s, s0, atol=1e-6)
    r, s = rerank_dba(q, db, k=3, alpha=1.0, top=25, qe_k=2, qe_alpha=3.0)   # +αQE+DBA
    r0, s0 = alpha_qe(q, aug, k=2, alpha=3.0, top=25)
    np.testing.assert_array_equal(r, r0)
    np.testing.assert_allclose(s, s0, atol=1e-6)


# --------------------------------------------------------------------------- graph and CG
def test_reciprocal_graph_equals_loop():
    _, db = clustered(n_db=40)
    nb, w = reciprocal_knn_graph(db, 4, gamma=3.0, row_chunk=7)
    a = np.zeros((40, 40))
    a[np.repeat(np.arange(40), 4), nb.ravel()] = w.ravel()
    np.testing.assert_allclose(a, loop_affinity(db, 4, 3.0), atol=1e-6)
    assert (w > 0).sum() < w.size                              # some kNN edges are not reciprocal
    np.testing.assert_allclose(a, a.T, atol=1e-6)


def test_conjugate_gradient_equals_direct_solve():
    _, db = clustered(n_db=30, dim=8)
    m = np.eye(30) - 0.9 * sym_norm(loop_affinity(db, 5, 3.0))
    b = np.random.default_rng(1).random((3, 30))
    x = conjugate_gradient(lambda v: v @ torch.from_numpy(m).T, torch.from_numpy(b), tol=1e-12,
                           iters=300).numpy()
    np.testing.assert_allclose(x, np.linalg.solve(m, b.T).T, rtol=1e-8, atol=1e-10)


def test_conjugate_gradient_one_step_and_zero_rhs():
    # from x0 = 0 one CG step is the exact line search along r0 = b: x1 = (bᵀb / bᵀMb) b
    rng = np.random.default_rng(2)
    g = rng.normal(size=(6, 6))
    m = g @ g.T + 6 * np.eye(6)
    b = rng.normal(size=(2, 6))
    b[1] = 0.0
    x = conjugate_gradient(lambda v: v @ torch.from_numpy(m), torch.from_numpy(b), iters=1).numpy()
    np.testing.assert_allclose(x[0], (b[0] @ b[0]) / (b[0] @ m @ b[0]) * b[0], rtol=1e-12)
    np.testing.assert_array_equal(x[1], 0.0)


# --------------------------------------------------------------------------- diffusion
def two_chains():
    """Chain A in the xy plane at 2°, 7°, …, 77° from q = e1 (5° apart); chain B in the xz plane
    at 20°, 23°, …, 53° (3° apart). Any A–B pair is > 20° apart, so with k=2 every k-NN list stays in
    its chain. B starts closer to q (20°) than most of A (22° and beyond)."""
    a = np.deg2rad(np.arange(2, 78, 5))
    b = np.deg2rad(np.arange(20, 54, 3))
    chain_a = np.stack([np.cos(a), np.sin(a), 0 * a], 1)
    chain_b = np.stack([np.cos(b), 0 * b, np.sin(b)], 1)
    return np.array([[1, 0, 0]], np.float32), normed(np.concatenate([chain_a, chain_b])), len(a)


@pytest.mark.parametrize("truncate", [None, 1000, 28])
def test_diffusion_follows_the_manifold(truncate):
    q, db, n_a = two_chains()
    first = exact_search(q, db, device="cpu")[0][:, 0]
    # Euclidean ranking puts B's first point (20°) above A's points from 22° on
    assert np.where(first == n_a)[0][0] < np.where(first == n_a - 1)[0][0]
    # y on A's two nearest points only; tight tol so the far end of A is reached (CG grows the
    # Krylov space one chain link per iteration)
    r, s = diffusion(q, db, k=2, kq=2, truncate=truncate, tol=1e-12, iters=100)
    assert set(r[:n_a, 0]) == set(range(n_a))                 # all of chain A first
    assert (s[:n_a, 0] > 0).all() and (s[n_a:, 0] == 0).all()
    # chain B (f = 0, a tie) keeps its first-stage order: 20°, 23°, …
    assert r[n_a:, 0].tolist() == [i for i in first if i >= n_a]


def dense_reference(q, db, k, kq, gamma, alpha, t):
    """f by numpy.linalg.solve on the (truncated) graph; returns per-query (sub, f on sub)."""
    a = loop_affinity(db, k, gamma)
    out = []
    for j, order in enumerate(first_order(q, db)):
        sub = order[:t]
        s = sym_norm(a[np.ix_(sub, sub)])
        y = np.zeros(t)
        y[:kq] = np.maximum(db[sub[:kq]].astype(np.float64) @ q[j], 0) ** gamma
        out.append((order, np.linalg.solve(np.eye(t) - alpha * s, y)))
    return out


@pytest.mark.parametrize("truncate", [None, 25])
def test_diffusion_equals_direct_solve(truncate):
    q, db = clustered(n_db=60, n_q=4, dim=8, n_clusters=4, seed=3)
    t = 60 if truncate is None else truncate
    r, s = diffusion(q, db, k=6, kq=3, gamma=3.0, alpha=0.9, truncate=truncate, tol=1e-13,
                     iters=500, batch=3)
    assert r.shape == (60, 4) and s.shape == (60, 4)
    for j, (order, f) in enumerate(dense_reference(q, db, 6, 3, 3.0, 0.9, t)):
        f_of = dict(zip(order[:t].tolist(), f))
        got = [f_of[i] for i in r[:t, j]]
        np.testing.assert_allclose(s[:t, j], got, rtol=1e-5, atol=1e-7)
        assert np.all(np.diff(got) <= 1e-9)                    # ordered by the reference f
        np.testing.assert_array_equal(r[t:, j], order[t:])     # beyond T: first-stage order
        assert (s[t:, j] == 0).all()


def test_diffusion_full_graph_equals_untruncated_and_batches_agree():
    q, db = clustered(n_db=80, n_q=5, dim=8, n_clusters=5, seed=4)
    kw = dict(k=5, kq=3, tol=1e-12, iters=300)
    r1, s1 = diffusion(q, db, truncate=None, batch=2, **kw)
    r2, s2 = diffusion(q, db, truncate=80, batch=5, **kw)
    r3, s3 = diffusion(q, db, truncate=80, batch=1, **kw)
    np.testing.assert_allclose(s1, s2, rtol=1e-5, atol=1e-7)
    for j in range(5):                                        # same f for every db item
        f1, f2 = np.zeros(80), np.zeros(80)
        f1[r1[:, j]], f2[r2[:, j]] = s1[:, j], s2[:, j]
        np.testing.assert_allclose(f1, f2, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(r2, r3)
    np.testing.assert_allclose(s2, s3, rtol=1e-6, atol=1e-9)


def test_diffusion_top_is_prefix_of_full_ranking():
    q, db = clustered(n_db=80, n_q=3, dim=8, seed=5)
    for truncate in (None, 30):
        r, s = diffusion(q, db, k=5, kq=3, truncate=truncate)
        for top in (10, 30, 50):
            rt, st = diffusion(q, db, k=5, kq=3, truncate=truncate, top=top)
            np.testing.assert_array_equal(rt, r[:top])
            np.testing.assert_allclose(st, s[:top], atol=1e-7)


# --------------------------------------------------------------------------- layout and sanity
def test_ties_by_lower_index():
    # db 3 and db 7 are identical: equal scores, the lower index first, adjacent
    q, db = clustered(n_db=20, n_q=3, seed=6)
    db[7] = db[3]
    q[0] = db[3]
    for fn in (lambda: aqe(q, db, k=2), lambda: alpha_qe(q, db, k=2),
               lambda: rerank_dba(q, db, k=0)):
        r, s = fn()
        assert r.shape == (20, 3) and s.shape == (20, 3)
        assert r.dtype == np.int64 and s.dtype == np.float32
        p3, p7 = np.where(r[:, 0] == 3)[0][0], np.where(r[:, 0] == 7)[0][0]
        assert p7 == p3 + 1 and s[p3, 0] == s[p7, 0]


def methods():
    return {
        "aqe": lambda q, db, top: aqe(q, db, k=3, top=top),
        "alpha_qe": lambda q, db, top: alpha_qe(q, db, k=3, top=top),
        "dba": lambda q, db, top: rerank_dba(q, db, k=3, alpha=3.0, top=top, qe_k=2),
        "diffusion": lambda q, db, top: diffusion(q, db, k=10, kq=5, truncate=100, top=top),
        "diffusion_full": lambda q, db, top: diffusion(q, db, k=10, kq=5, truncate=None, top=top),
    }


@pytest.mark.parametrize("name", list(methods()))
@pytest.mark.parametrize("top", [None, 1, 50, 150])
def test_permutation_prefix_without_duplicates(name, top):
    q, db = clustered(n_db=200, n_q=7)
    r, s = methods()[name](q, db, top)
    n = 200 if top is None else top
    assert r.shape == (n, 7) and s.shape == (n, 7)
    assert r.dtype == np.int64 and s.dtype == np.float32
    assert r.min() >= 0 and r.max() < 200
    for j in range(7):
        assert len(set(r[:, j])) == n
    assert np.all(np.diff(s, axis=0) <= 1e-6)                  # scores non-increasing
    if top is None:
        assert (np.sort(r, 0) == np.arange(200)[:, None]).all()


# --------------------------------------------------------------------------- validation
def bad_calls():
    q, db = clustered(n_db=20, n_q=2, dim=4)
    return [
        ("dimension", lambda: aqe(q, db[:, :3])),
        ("2-D", lambda: alpha_qe(q[0], db)),
        ("NaN", lambda: dba(np.full((3, 2), np.nan, np.float32))),
        ("k must be", lambda: aqe(q, db, k=21)),
        ("k must be", lambda: alpha_qe(q, db, k=-1)),
        ("alpha", lambda: alpha_qe(q, db, alpha=-1.0)),
        ("alpha", lambda: dba(db, alpha=float("inf"))),
        ("k must be", lambda: dba(db, k=20)),
        ("top", lambda: aqe(q, db, top=0)),
        ("top", lambda: rerank_dba(q, db, top=21)),
        ("rows", lambda: alpha_qe(q, db, ranks=np.zeros((1, 2), np.int64), k=2)),
        ("columns", lambda: alpha_qe(q, db, ranks=np.zeros((3, 1), np.int64), k=2)),
        ("db indices", lambda: alpha_qe(q, db, ranks=np.full((3, 2), 20), k=2)),
        ("integer", lambda: alpha_qe(q, db, ranks=np.zeros((3, 2)), k=2)),
        ("k must be", lambda: diffusion(q, db, k=0, kq=2)),
        ("k must be", lambda: diffusion(q, db, k=20, kq=2)),
        ("kq", lambda: diffusion(q, db, k=3, kq=21)),
        ("kq", lambda: diffusion(q, db, k=3, kq=6, truncate=5)),
        ("alpha", lambda: diffusion(q, db, k=3, kq=2, alpha=1.0)),
        ("gamma", lambda: diffusion(q, db, k=3, kq=2, gamma=0)),
        ("iters", lambda: diffusion(q, db, k=3, kq=2, iters=0)),
        ("tol", lambda: diffusion(q, db, k=3, kq=2, tol=-1)),
        ("truncate", lambda: diffusion(q, db, k=3, kq=2, truncate=0)),
        ("k must be", lambda: db_neighbours(db, 1.5)),
        ("b must be", lambda: conjugate_gradient(lambda v: v, torch.ones(3))),
    ]


@pytest.mark.parametrize("i", range(len(bad_calls())))
def test_invalid_inputs_raise(i):
    match, call = bad_calls()[i]
    with pytest.raises(ValueError, match=match):
        call()


def test_rerank_dispatch_matches_the_functions():
    from retrieval import rerank as rr

    rng = np.random.default_rng(5)
    db = rng.standard_normal((80, 8)).astype(np.float32)
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    q = db[:3] + 0.1 * rng.standard_normal((3, 8)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    np.testing.assert_array_equal(rr.rerank("aqe", q, db, qe_k=3)[0], rr.aqe(q, db, k=3)[0])
    np.testing.assert_array_equal(rr.rerank("alpha_qe", q, db, qe_k=3, qe_alpha=2.0)[0],
                                  rr.alpha_qe(q, db, k=3, alpha=2.0)[0])
    np.testing.assert_array_equal(rr.rerank("alpha_qe+alpha_dba", q, db, qe_k=2, dba_k=3)[0],
                                  rr.rerank_dba(q, db, k=3, alpha=3.0, qe_k=2, qe_alpha=3.0)[0])
    # aqe+dba (Gordo et al.): plain AQE over the plain-DBA database, computed directly
    aug = rr.dba(db, k=20, alpha=0.0)
    expect = rr.aqe(q, aug, k=1)
    got = rr.rerank("aqe+dba", q, db, qe_k=1, dba_k=20)
    np.testing.assert_array_equal(got[0], expect[0])
    np.testing.assert_allclose(got[1], expect[1], atol=1e-6)
    np.testing.assert_array_equal(rr.rerank("diffusion", q, db, diffusion_k=10, truncate=40)[0],
                                  rr.diffusion(q, db, k=10, truncate=40)[0])
    with pytest.raises(ValueError, match="unknown re-ranking method"):
        rr.rerank("csa?", q, db)
