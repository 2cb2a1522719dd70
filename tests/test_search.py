"""Tests for retrieval.search against plain numpy rankings."""
import contextlib

import numpy as np
import pytest

from retrieval.search import exact_search, search

pytest.importorskip("faiss")


def normed(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return normed(rng.normal(size=(9, 16))), normed(rng.normal(size=(300, 16)))


def ref_ranks(q, db, k=None):
    """(k, n_q) db indices by descending score, ties by ascending index (numpy only)."""
    s = q.astype(np.float32) @ db.astype(np.float32).T
    n = db.shape[0]
    order = np.stack([np.lexsort((np.arange(n), -row)) for row in s])
    k = n if k is None else k
    return order[:, :k].T, np.take_along_axis(s, order, 1)[:, :k].T


# --------------------------------------------------------------------------- exact
@pytest.mark.parametrize("k", [1, 10, 300])
def test_exact_equals_numpy_argsort(data, k):
    q, db = data
    ranks, scores = exact_search(q, db, k=k, device="cpu")
    assert ranks.shape == (k, 9) and scores.shape == (k, 9)
    assert ranks.dtype == np.int64 and scores.dtype == np.float32
    S = q @ db.T
    np.testing.assert_array_equal(ranks, np.argsort(-S, axis=1)[:, :k].T)
    np.testing.assert_allclose(scores, np.take_along_axis(S, ranks.T, 1).T, rtol=1e-5, atol=1e-6)
    # scores are descending down each column
    assert np.all(np.diff(scores, axis=0) <= 0)


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 299])
@pytest.mark.parametrize("k", [1, 5, 20, None])
def test_exact_chunks_equal_one_chunk(data, chunk_size, k):
    q, db = data
    r1, s1 = exact_search(q, db, k=k, device="cpu")
    r2, s2 = exact_search(q, db, k=k, chunk_size=chunk_size, device="cpu")
    np.testing.assert_array_equal(r1, r2)
    np.testing.assert_allclose(s1, s2, rtol=1e-6, atol=1e-7)


def test_exact_k_none_ranks_whole_db(data):
    q, db = data
    ranks, scores = exact_search(q, db, device="cpu")
    assert ranks.shape == (300, 9) and scores.shape == (300, 9)
    for j in range(9):
        assert sorted(ranks[:, j]) == list(range(300))
    np.testing.assert_array_equal(ranks, ref_ranks(q, db)[0])


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 100])
@pytest.mark.parametrize("k", [1, 5, 20])
def test_exact_all_tied_gives_lowest_indices(chunk_size, k):
    db = np.random.default_rng(1).normal(size=(20, 4)).astype(np.float32)
    q = np.zeros((2, 4), np.float32)  # every score is 0
    ranks, scores = exact_search(q, db, k=k, chunk_size=chunk_size, device="cpu")
    np.testing.assert_array_equal(ranks, np.tile(np.arange(k)[:, None], (1, 2)))
    assert np.all(scores == 0)


def test_exact_duplicates_across_chunks_lower_index_first():
    rng = np.random.default_rng(2)
    db = normed(rng.normal(size=(30, 8)))
    v = normed(rng.normal(size=(1, 8)))[0]
    dup = [5, 12, 20, 27, 8, 9]  # chunk_size 7 -> chunks 0, 1, 2, 3 and two inside chunk 1
    db[dup] = v
    q = v[None]
    for chunk_size in (7, 4, 30):
        for k in (1, 2, 3, 6):
            ranks, scores = exact_search(q, db, k=k, chunk_size=chunk_size, device="cpu")
            np.testing.assert_array_equal(ranks[:, 0], sorted(dup)[:k])
            np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-6)


@pytest.mark.parametrize("chunk_size", [1, 4, 7, 13, 1000])
def test_exact_many_ties_match_lexsort(chunk_size):
    # small integer vectors: scores are exact in float32 and tied very often
    rng = np.random.default_rng(3)
    db = rng.integers(0, 2, size=(60, 3)).astype(np.float32)
    q = rng.integers(0, 3, size=(5, 3)).astype(np.float32)
    for k in (1, 4, 17, 60):
        ranks, scores = exact_search(q, db, k=k, chunk_size=chunk_size, device="cpu")
        r_ref, s_ref = ref_ranks(q, db, k)
        np.testing.assert_array_equal(ranks, r_ref)
        np.testing.assert_array_equal(scores, s_ref)


def test_search_exact_dispatch(data):
    q, db = data
    r1, s1 = search(q, db, k=7, device="cpu")
    r2, s2 = exact_search(q, db, k=7, device="cpu")
    np.testing.assert_array_equal(r1, r2)
    np.testing.assert_array_equal(s1, s2)


# --------------------------------------------------------------------------- faiss
@pytest.mark.parametrize("k", [1, 10, None])
def test_faiss_flat_equals_exact(data, k):
    q, db = data
    r_e, s_e = exact_search(q, db, k=k, device="cpu")
    r_f, s_f = search(q, db, k=k, index="flat", gpu=False)
    assert r_f.shape == r_e.shape and r_f.dtype == np.int64 and s_f.dtype == np.float32
    np.testing.assert_array_equal(r_f, r_e)
    np.testing.assert_allclose(s_f, s_e, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def clustered():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(20, 32))
    lab = rng.integers(0, 20, 2000)
    db = normed(centres[lab] + 0.3 * rng.normal(size=(2000, 32)))
    qlab = rng.integers(0, 20, 50)
    q = normed(centres[qlab] + 0.3 * rng.normal(size=(50, 32)))
    return q, db, qlab, lab


def test_ivfpq_recall_on_clustered_data(clustered):
    q, db, qlab, lab = clustered
    exact, _ = exact_search(q, db, k=10, device="cpu")
    ranks, scores = search(q, db, k=100, index="ivfpq", nlist=16, m=16, nprobe=4, gpu=False)
    assert ranks.shape == (100, 50) and ranks.dtype == np.int64
    assert ranks.min() >= 0 and ranks.max() < 2000
    recall10 = np.mean([len(set(ranks[:10, j]) & set(exact[:, j])) / 10 for j in range(50)])
    recall10_100 = np.mean([len(set(ranks[:, j]) & set(exact[:, j])) / 10 for j in range(50)])
    assert recall10 > 0.5, recall10          # ~0.68 measured; chance is ~0.005
    assert recall10_100 > 0.95, recall10_100
    # the top-10 comes from the query's own cluster
    assert np.mean(lab[ranks[:10]] == qlab[None]) > 0.98
    # approximate scores are still descending
    assert np.all(np.diff(scores, axis=0) <= 1e-6)


def test_ivfpq_bad_parameters(clustered):
    q, db, _, _ = clustered
    with pytest.raises(ValueError, match="divide"):
        search(q, db, k=5, index="ivfpq", nlist=16, m=5, gpu=False)
    with pytest.raises(ValueError, match="too few"):
        search(q, db[:100], k=5, index="ivfpq", nlist=16, m=8, gpu=False)


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize("index", ["exact", "flat"])
def test_errors(data, index):
    q, db = data
    kw = dict(device="cpu") if index == "exact" else dict(gpu=False)
    with pytest.raises(ValueError, match="dimension"):
        search(q[:, :8], db, k=3, index=index, **kw)
    bad = q.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        search(bad, db, k=3, index=index, **kw)
    bad = db.copy()
    bad[5, 0] = np.inf
    with pytest.raises(ValueError, match="NaN or Inf"):
        search(q, bad, k=3, index=index, **kw)
    for k in (0, -1, 301):
        with pytest.raises(ValueError, match="k must be"):
            search(q, db, k=k, index=index, **kw)
    with pytest.raises(ValueError, match="2-D"):
        search(q[0], db, k=3, index=index, **kw)


@pytest.mark.parametrize("backend", ["torch", "faiss"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_db_row_in_a_later_chunk_is_refused(data, backend, value):
    q, db = data
    bad = db.copy()
    bad[250, 3] = value                                   # chunk 5 of 50-row chunks
    with pytest.raises(ValueError, match="db contains NaN or Inf"):
        exact_search(q, bad, 5, chunk_size=50, device="cpu", backend=backend)
    # check_finite=False skips the check: torch ranks the NaN row first, faiss drops it
    r, _ = exact_search(q, bad, 5, chunk_size=50, device="cpu", backend=backend, check_finite=False)
    assert r.shape == (5, len(q))


def test_large_finite_values_are_not_mistaken_for_inf():
    """A chunk whose sum overflows float32 but holds only finite values is searched, not refused."""
    db = np.full((4, 8), 3e37, np.float32)
    db[:, 1::2] = 1e-3
    q = np.eye(8, dtype=np.float32)[:2] * 1e-3
    r, s = exact_search(q, db, 2, device="cpu", backend="torch")
    np.testing.assert_array_equal(r, [[0, 0], [1, 1]])
    assert np.isfinite(s).all()


def test_unknown_index(data):
    q, db = data
    with pytest.raises(ValueError) as e:
        search(q, db, k=3, index="hnsw")
    assert "hnsw" in str(e.value) and "ivfpq" in str(e.value) and "flat" in str(e.value)


def test_ivfpq_refuses_to_return_missing_results():
    rng = np.random.default_rng(0)
    db = rng.standard_normal((600, 16)).astype(np.float32)
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    with pytest.raises(ValueError, match="fewer than k"):
        search(db[:3], db, k=600, index="ivfpq", nlist=16, m=4, nbits=4, nprobe=1)


@pytest.mark.parametrize("index", ["flat", "ivfpq"])
def test_index_search_past_the_gpu_k_limit_falls_back_to_a_cpu_copy(index, monkeypatch):
    """faiss GPU returns at most 2,048 neighbours: simulated on the CPU with a limit of 5, a larger k
    is answered by a CPU copy of the index, equal to the index's own answer; k <= limit is not copied."""
    import faiss

    import retrieval.search as S

    rng = np.random.default_rng(3)
    db, q = normed(rng.normal(size=(600, 16))), normed(rng.normal(size=(7, 16)))
    kw = dict(nlist=4, m=4, nbits=4) if index == "ivfpq" else {}
    with pytest.warns(RuntimeWarning) if index == "ivfpq" else contextlib.nullcontext():
        idx = S.faiss_index(db, index, gpu=False, **kw)
    copies = []
    monkeypatch.setattr(S, "_on_gpu", lambda ix: True)
    monkeypatch.setattr(faiss, "index_gpu_to_cpu", lambda ix: copies.append(ix) or faiss.clone_index(ix), raising=False)
    for k, copied in ((5, 0), (6, 1), (40, 2)):
        s, i = S.index_search(idx, q, k, k_max=5)
        s_ref, i_ref = idx.search(q, k)
        np.testing.assert_array_equal(i, i_ref)
        np.testing.assert_array_equal(s, s_ref)
        assert len(copies) == copied
