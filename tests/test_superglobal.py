"""SuperGlobal re-ranking (Shao et al., ICCV 2023) against a slow loop written from the formulas, batched
against one query at a time, and the released defaults."""

import inspect

import numpy as np
import pytest

from retrieval.rerank import SUPERGLOBAL_DEFAULTS, rerank, superglobal_rerank, superglobal_rerank_loop
from retrieval.search import exact_search


def normed(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(6, 24))
    db = normed(centres[rng.integers(0, 6, 200)] + 0.6 * rng.normal(size=(200, 24)))
    query = normed(centres[rng.integers(0, 6, 9)] + 0.6 * rng.normal(size=(9, 24)))
    ranks, _ = exact_search(query, db, 200, device="cpu")
    return query, db, ranks


def slow_superglobal(q, db, short, K, beta, expand):
    """Final scores of one query's shortlist ``short`` (M,), element by element."""
    x = db[short].astype(np.float64)
    M = len(x)
    refined = np.empty_like(x)
    for i in range(M):
        sims = [(float(x[i] @ x[j]), j) for j in range(M) if j != i]
        sims.sort(key=lambda t: -t[0])
        num, den = x[i].copy(), 1.0
        for s, j in sims[:K]:
            num += beta * s * x[j]
            den += beta * s
        refined[i] = num / den
    s1 = np.array([float(q @ refined[i]) for i in range(M)])
    best = sorted(range(M), key=lambda i: (-s1[i], i))[:expand]
    q2 = np.max(refined[best], axis=0)
    s2 = np.array([float(q2 @ refined[i]) for i in range(M)])
    return (s1 + s2) / 2


@pytest.mark.parametrize("M, K, beta, expand", [(30, 4, 0.15, 5), (50, 9, 0.15, 10), (12, 0, 0.3, 3)])
def test_superglobal_equals_the_slow_loop(data, M, K, beta, expand):
    query, db, ranks = data
    r, s = superglobal_rerank(query, db, ranks, M=M, K=K, beta=beta, expand=expand, batch=4)
    compared = 0
    for j in range(len(query)):
        ref = slow_superglobal(query[j].astype(np.float64), db, ranks[:M, j], K, beta, expand)
        order = sorted(range(M), key=lambda i: (-ref[i], i))
        np.testing.assert_allclose(s[:, j], ref[order], rtol=0, atol=1e-5)
        # the same order wherever the reference scores are not within float32 noise of each other
        gaps = np.diff(ref[order])
        if np.all(np.abs(gaps) > 1e-5):
            np.testing.assert_array_equal(r[:M, j], ranks[:M, j][order])
            compared += 1
        assert sorted(r[:M, j]) == sorted(ranks[:M, j])
    np.testing.assert_array_equal(r[M:], ranks[M:])                      # after M: first-stage order
    assert compared >= len(query) // 2


def test_batched_equals_one_query_at_a_time(data):
    query, db, ranks = data
    r1, s1 = superglobal_rerank(query, db, ranks, M=60, batch=4)
    r2, s2 = superglobal_rerank_loop(query, db, ranks, M=60)
    np.testing.assert_array_equal(r1, r2)
    np.testing.assert_allclose(s1, s2, rtol=0, atol=1e-6)


def test_without_refinement_the_first_term_is_the_first_stage_score(data):
    """β = 0 leaves every candidate as it is: s1 = q·x, so with one expansion item (q' = the best
    candidate) the score is (q·x + x_best·x) / 2."""
    query, db, ranks = data
    r, s = superglobal_rerank(query, db, ranks, M=40, beta=0.0, expand=1)
    for j in range(len(query)):
        x = db[ranks[:40, j]]
        ref = (x @ query[j] + x @ x[0]) / 2            # ranks are exact: x[0] is the best by q·x
        np.testing.assert_allclose(np.sort(s[:, j])[::-1], np.sort(ref)[::-1], atol=1e-5)


def test_defaults_are_the_released_ones():
    assert SUPERGLOBAL_DEFAULTS == dict(M=400, K=9, beta=0.15, expand=10)
    sig = inspect.signature(superglobal_rerank).parameters
    assert {k: sig[k].default for k in SUPERGLOBAL_DEFAULTS} == SUPERGLOBAL_DEFAULTS


def test_rerank_by_name_reorders_the_top_m_and_keeps_the_tail(data):
    query, db, _ = data
    r, s = rerank("superglobal", query, db, top=100, superglobal_m=50)
    first, _ = exact_search(query, db, 100, device="cpu")
    ref_r, ref_s = superglobal_rerank(query, db, first, M=50)
    np.testing.assert_array_equal(r, ref_r)
    np.testing.assert_allclose(s[:50], ref_s, atol=1e-6)
    assert r.shape == s.shape == (100, len(query))
    assert np.all(np.diff(s, axis=0) <= 1e-6)                             # scores descend across M


def test_bad_input(data):
    query, db, ranks = data
    with pytest.raises(ValueError, match="M must be"):
        superglobal_rerank(query, db, ranks, M=201)
    with pytest.raises(ValueError, match="fewer than k=50"):
        superglobal_rerank(query, db, ranks[:20], M=50)
    with pytest.raises(ValueError, match="beta"):
        superglobal_rerank(query, db, ranks, M=20, beta=-1)
