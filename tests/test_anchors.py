"""PQ anchor points (retrieval.anchors): shapes and normalisation, what the codebook captures,
save/load, errors; the faiss PQ index and its training set in retrieval.search."""
import json

import numpy as np
import pytest

from retrieval import anchors as A
from retrieval.search import search

# small toy sets: the "fewer than 39 vectors per centroid" warnings are expected (asserted where it matters)
pytestmark = pytest.mark.filterwarnings("ignore:.*(faiss recommends|codebooks are noisy):RuntimeWarning")


def clustered(n=600, dim=32, k=12, seed=0):
    """Unit vectors around k fixed centres; ``seed`` draws other points around the same centres."""
    centres = np.random.default_rng(100).normal(size=(k, dim))
    rng = np.random.default_rng(seed)
    x = centres[rng.integers(0, k, n)] + 0.3 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def X():
    return clustered()


@pytest.fixture(scope="module")
def built(X):
    with pytest.warns(RuntimeWarning, match="faiss recommends"):
        return A.build_anchors(X, M=4, nbits=5, niter=8, nredo=1, seed=3, network="gem-toy-64", dataset="toy")


# --------------------------------------------------------------------------- shapes and normalisation
def test_anchor_shapes_and_unit_norm(built, X):
    assert built.centroids.shape == (4, 32, 8) and built.centroids.dtype == np.float32
    assert (built.M, built.K, built.dim) == (4, 32, 32)
    a = built.anchors
    assert a.shape == (4, 32, 8)
    np.testing.assert_allclose(np.linalg.norm(a, axis=-1), 1.0, atol=1e-6)
    # normalising only rescales each centroid
    np.testing.assert_allclose(a * np.linalg.norm(built.centroids, axis=-1, keepdims=True), built.centroids, atol=1e-6)
    assert built.name == "gem-toy-64-pq4x5"
    p = built.params
    assert (p["M"], p["nbits"], p["niter"], p["nredo"], p["seed"], p["n_train"], p["network"]) == (4, 5, 8, 1, 3, 600, "gem-toy-64")


def test_centroids_are_the_faiss_codebook(X):
    pq = A.train_pq(X, M=4, nbits=4, niter=5, nredo=1)
    c = A.pq_centroids(pq)
    assert c.shape == (4, 16, 8)
    # independent assignment: nearest centroid of every sub-vector
    sub = X.reshape(len(X), 4, 8)
    d2 = ((sub[:, :, None, :] - c[None]) ** 2).sum(-1)  # (n, M, K)
    ref = d2.argmin(-1)
    codes = A.pq_codes(pq, X)
    assert codes.shape == (len(X), 4)
    agree = (codes == ref) | np.isclose(np.take_along_axis(d2, codes[..., None], -1)[..., 0], d2.min(-1), atol=1e-6)
    assert agree.all()
    # reconstruction error from the independent assignment
    rec = np.take_along_axis(c[None], ref[:, :, None, None], 2)[:, :, 0].reshape(len(X), -1)
    mse = float(np.mean(((X - rec) ** 2).sum(1)))
    assert A.quantization_error(pq, X)["mse"] == pytest.approx(mse, rel=1e-4)
    usage = A.centroid_usage(pq, X)
    assert usage.shape == (4, 16) and (usage.sum(1) == len(X)).all()
    np.testing.assert_array_equal(usage[2], np.bincount(codes[:, 2], minlength=16))
    # a quantiser rebuilt from the saved centroids encodes identically
    np.testing.assert_array_equal(A.pq_codes(A.pq_from_centroids(c), X), codes)


def test_codes_of_8_bit_quantiser_are_bytes(X):
    pq = A.train_pq(np.tile(X, (1, 1))[:600], M=2, nbits=8, niter=3, nredo=1)
    codes = A.pq_codes(pq, X)
    np.testing.assert_array_equal(codes, pq.compute_codes(X).astype(np.int64))
    assert A.quantization_error(pq, X)["relative"] < A.quantization_error(A.train_pq(X, M=2, nbits=2), X)["relative"]


# --------------------------------------------------------------------------- save / load
def test_save_load_round_trip_by_path_and_name(built, tmp_path):
    path = A.anchors_path("toy", built.name, root=tmp_path)
    assert path == tmp_path / "anchors" / "toy" / "gem-toy-64-pq4x5.npz"
    built.save(path)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # atomic: no temporary left
    for loaded in (A.load_anchors(path), A.load_anchors(built.name, dataset="toy", root=tmp_path)):
        np.testing.assert_array_equal(loaded.centroids, built.centroids)
        assert loaded.params == json.loads(json.dumps(built.params))
        np.testing.assert_allclose(loaded.anchors, built.anchors)


def test_load_errors(tmp_path, built):
    with pytest.raises(FileNotFoundError, match="absent.npz"):
        A.load_anchors(tmp_path / "absent.npz")
    with pytest.raises(ValueError, match="give the dataset"):
        A.load_anchors("gem-toy-64-pq4x5")
    built.save(A.anchors_path("toy", built.name, root=tmp_path))
    with pytest.raises(FileNotFoundError, match=r"04_build_anchors.*gem-toy-64-pq4x5"):
        A.load_anchors("gem-other-pq4x5", dataset="toy", root=tmp_path)
    bad = tmp_path / "bad.npz"
    np.savez(bad, vecs=np.zeros(3))
    with pytest.raises(ValueError, match="bad.npz: not an anchor file"):
        A.load_anchors(bad)


def test_training_errors(X):
    with pytest.raises(ValueError, match=r"too few for nbits=8 \(K = 256"):
        A.train_pq(X[:100], M=4, nbits=8)
    with pytest.raises(ValueError, match="M=5 sub-spaces must be a positive divisor of the dimension D=32"):
        A.train_pq(X, M=5, nbits=4)
    with pytest.raises(ValueError, match=r"nbits=0 must be an integer in \[1, 16\]"):
        A.train_pq(X, M=4, nbits=0)
    bad = X.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        A.train_pq(bad, M=4, nbits=4)
    with pytest.raises(ValueError, match=r"X has dimension 32, the anchors 16"):
        A.quantization_error(A.train_pq(X[:, :16], M=2, nbits=3), X)
    with pytest.raises(ValueError, match="power of 2"):
        A.pq_from_centroids(np.zeros((2, 5, 4), np.float32))


def test_gpu_request_without_gpu_is_a_clear_error(X):
    import faiss

    if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        pytest.skip("a GPU is present")
    with pytest.raises(ValueError, match="gpu=True"):
        A.train_pq(X, M=4, nbits=4, gpu=True)


# --------------------------------------------------------------------------- recall against exact search
def test_recall_at_k():
    exact = np.array([[0, 1], [1, 2], [2, 3]])
    assert A.recall_at_k(exact, exact, 3) == 1.0
    other = np.array([[1, 9], [0, 8], [7, 3]])  # query 0 finds 2 of 3, query 1 finds 1 of 3
    assert A.recall_at_k(other, exact, 3) == pytest.approx(0.5)
    assert A.recall_at_k(other, exact, 1) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="k=4"):
        A.recall_at_k(other, exact, 4)


def test_pq_index_trained_on_other_vectors_and_code_size_sweep(X):
    train, db, query = clustered(800, seed=1), X, X[:20]
    ranks, scores = search(query, db, k=10, index="pq", m=8, nbits=6, train=train, gpu=False)
    assert ranks.shape == (10, 20) and (np.diff(scores, axis=0) <= 1e-6).all()
    assert A.search_recall(query, db, 10, "pq", m=8, nbits=6, train=train) > 0.2  # random: 10/600
    with pytest.raises(ValueError, match=r"train must be \(n, 32\)"):
        search(query, db, k=5, index="pq", m=8, nbits=4, train=train[:, :16])
    with pytest.warns(RuntimeWarning, match="codebooks are noisy"):
        rows = A.code_size_sweep(train, query, db, Ms=(2, 16), nbits=6, k=10, nlist=4, nprobe=4, niter=5,
                                 nredo=1, progress=False)
    assert [r["M"] for r in rows] == [2, 16] and [r["bytes"] for r in rows] == [1.5, 12]
    assert rows[1]["relative_error"] < rows[0]["relative_error"]
    assert rows[1]["recall_pq"] > rows[0]["recall_pq"]
    assert all(0 <= r["recall_ivfpq"] <= 1 for r in rows)


def test_figures(X, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from retrieval import viz

    pq = A.train_pq(X, M=4, nbits=3, niter=3, nredo=1)
    fig = viz.plot_centroid_usage(A.centroid_usage(pq, X), title="usage")
    assert len(fig.axes) == 2 and "unused" in fig.axes[0].get_title()
    rows = [dict(M=m, bytes=m, relative_error=1 / m, recall_pq=0.1 * m, recall_ivfpq=0.05 * m) for m in (2, 4, 8)]
    fig = viz.plot_code_size(rows, k=10)
    assert [line.get_label() for line in fig.axes[0].get_lines()] == ["ivfpq recall@10", "pq recall@10"]
    assert viz.save_figure(fig, tmp_path / "f.png").stat().st_size > 0
