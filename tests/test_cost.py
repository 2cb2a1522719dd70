"""The one cost definition gives exactly rerank()'s ranks for every method, with the db side apart;
the shortlist control reorders only the first stage's top K."""

import numpy as np
import pytest

from retrieval.rerank import METHODS, rerank
from retrieval.rerank.cost import DB_SIDE, restrict_to_shortlist, timed_rerank
from retrieval.search import exact_search


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def feats():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(5, 24))
    db = _unit(np.concatenate([c + 0.7 * rng.normal(size=(12, 24)) for c in centres]))
    query = _unit(centres + 0.7 * rng.normal(size=(5, 24)))
    return query, db


@pytest.mark.parametrize("method", METHODS)
def test_timed_rerank_gives_rerank_s_ranks(feats, method):
    query, db = feats
    params = dict(qe_k=3, qe_alpha=2.0, dba_k=4, dba_alpha=2.0, diffusion_k=6, truncate=40, superglobal_m=30)
    want = rerank(method, query, db, **params)[0]
    ranks, _, ms, offline = timed_rerank(method, query, db, **params)
    np.testing.assert_array_equal(ranks, want)
    assert ms > 0 and offline >= 0 and (offline > 0) == (method in DB_SIDE or method == "diffusion")


def test_first_stage_cost_is_the_search(feats):
    query, db = feats
    ranks, _, _, offline = timed_rerank("first", query, db)
    np.testing.assert_array_equal(ranks, exact_search(query, db, len(db))[0])
    assert offline == 0


def test_restrict_to_shortlist():
    first = np.array([[0, 5], [1, 6], [2, 7], [3, 8], [4, 9]])       # two queries, 5 ranked each
    method = np.array([[3, 9], [2, 0], [9, 8], [0, 6], [1, 5]])      # the method's own order
    out = restrict_to_shortlist(method, first, 3)
    # query 0: top-3 {0,1,2} in the method's order 2, 0, 1; then 3, 4 as the first stage had them
    np.testing.assert_array_equal(out[:, 0], [2, 0, 1, 3, 4])
    # query 1: top-3 {5,6,7}: the method ranks 6 before 5 and never ranks 7 (it goes last of the three)
    np.testing.assert_array_equal(out[:, 1], [6, 5, 7, 8, 9])
    np.testing.assert_array_equal(restrict_to_shortlist(first, first, 5), first)  # the first stage is unchanged
    with pytest.raises(ValueError, match="K=6"):
        restrict_to_shortlist(method, first, 6)
