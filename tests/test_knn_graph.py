"""The db's approximate k-NN graph: recall against exact lists, the cache keyed by the db, and DBA /
diffusion fed a graph computed once give what they compute themselves."""

import numpy as np
import pytest

from retrieval.run import RunLayout
from retrieval.rerank import (approximate_neighbours, cached_neighbours, db_neighbours, dba, diffusion,
                              neighbour_recall, rerank_dba)


def _clustered(n=3000, dim=32, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((40, dim))
    x = centres[rng.integers(0, 40, n)] + 0.3 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_hnsw_lists_match_exact_ones_closely():
    db = _clustered()
    nbr, sim = approximate_neighbours(db, 10)
    assert nbr.shape == sim.shape == (len(db), 10) and nbr.dtype == np.int64
    assert not (nbr == np.arange(len(db))[:, None]).any()            # never itself
    assert np.all(np.diff(sim, axis=1) <= 1e-6)                       # best first
    exact, _ = db_neighbours(db, 10)
    overlap = np.mean([np.intersect1d(a, b).size / 10 for a, b in zip(nbr, exact)])
    assert overlap >= 0.95
    assert abs(neighbour_recall(db, nbr, sample=300) - overlap) < 0.05  # the sampled estimate
    assert neighbour_recall(db, exact, sample=300) == 1.0
    np.testing.assert_array_equal(approximate_neighbours(db, 5, method="exact")[0], exact[:, :5])
    with pytest.raises(ValueError, match="method='lsh'"):
        approximate_neighbours(db, 5, method="lsh")
    with pytest.raises(ValueError, match=r"takes .*not \['nprobe'\]"):
        approximate_neighbours(db, 5, method="hnsw", nprobe=4)


def test_ivf_graph_recall_grows_with_nprobe_to_exact():
    db = _clustered()
    exact, _ = db_neighbours(db, 10)
    recalls = [neighbour_recall(db, approximate_neighbours(db, 10, method="ivf", nlist=32, nprobe=p)[0],
                                sample=len(db)) for p in (2, 4, 32)]
    assert recalls[0] < recalls[1] <= recalls[2] == 1.0            # all 32 cells probed: the exact lists
    nbr, sim = approximate_neighbours(db, 10, method="ivf", nlist=32, nprobe=32)
    np.testing.assert_array_equal(np.sort(nbr, 1), np.sort(exact, 1))
    assert not (nbr == np.arange(len(db))[:, None]).any()
    with pytest.raises(ValueError, match="fewer than k"):         # 1 probed cell of ~4 items
        approximate_neighbours(db, 10, method="ivf", nlist=len(db) // 4, nprobe=1, train_size=len(db))


def test_cache_is_reused_only_for_the_same_db_and_parameters(tmp_path):
    db = _clustered(800, 16, seed=1)
    path = RunLayout(tmp_path).graph("d", "gem", 8)
    nbr, sim, info = cached_neighbours(db, 8, path, recall_sample=100)
    assert path.is_file() and info["recall"] >= 0.9 and info["k"] == 8
    again = cached_neighbours(db, 4, path, recall_sample=100)             # fewer neighbours: the stored first 4
    np.testing.assert_array_equal(again[0], nbr[:, :4])
    assert again[2]["build_seconds"] == info["build_seconds"]
    other = db.copy()
    other[0] = other[1]
    rebuilt = cached_neighbours(other, 8, path, recall_sample=100)[2]     # another db: built again
    assert rebuilt["db_sha1"] != info["db_sha1"]
    assert cached_neighbours(other, 8, path, recall_sample=100, ef_search=64)[2]["ef_search"] == 64
    ivf = cached_neighbours(other, 8, path, recall_sample=100, method="ivf", nlist=8)[2]     # another method
    assert ivf["method"] == "ivf" and ivf["nlist"] == 8 and ivf["build_seconds"] != info["build_seconds"]


def test_methods_fed_the_graph_equal_their_own_exact_lists():
    db = _clustered(600, 16, seed=2)
    query = _clustered(12, 16, seed=3)
    lists = db_neighbours(db, 50)
    np.testing.assert_allclose(dba(db, k=2, alpha=3.0, neighbours=lists), dba(db, k=2, alpha=3.0), atol=1e-6)
    a = rerank_dba(query, db, k=2, neighbours=lists, top=50)
    b = rerank_dba(query, db, k=2, top=50)
    np.testing.assert_array_equal(a[0], b[0])
    a = diffusion(query, db, k=20, truncate=200, top=100, neighbours=lists)
    b = diffusion(query, db, k=20, truncate=200, top=100)
    np.testing.assert_array_equal(a[0], b[0])
    with pytest.raises(ValueError, match="neighbours: expected"):
        dba(db, k=2, neighbours=(lists[0][:10], lists[1][:10]))


def test_benchmark_distractors_keep_the_db_spectrum():
    """The R1M benchmarks' distractors (``benchmarks/_common.fitted_vectors``): unit vectors whose
    direction statistics follow the db's (its leading principal direction), unlike isotropic noise."""
    import importlib.util

    from retrieval.config import ROOT

    spec = importlib.util.spec_from_file_location("bench_common", ROOT / "benchmarks" / "_common.py")
    common = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(common)
    db = _clustered(2000, 32, seed=3)
    x = common.fitted_vectors(20000, db, seed=0)
    assert x.shape == (20000, 32) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1, atol=1e-5)
    np.testing.assert_array_equal(x, common.fitted_vectors(20000, db, seed=0))          # seeded
    lead = np.linalg.svd(db - db.mean(0), full_matrices=False)[2][0]
    var = lambda v: np.var((v - v.mean(0)) @ lead)                                      # noqa: E731
    iso = np.random.default_rng(0).standard_normal((20000, 32))
    iso /= np.linalg.norm(iso, axis=1, keepdims=True)
    assert var(x) > 0.8 * var(db) and var(x) > 2 * var(iso)                             # iso: 1/32
    np.testing.assert_allclose(x.mean(0), db.mean(0), atol=0.1)
