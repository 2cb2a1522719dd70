"""exact_search through faiss (large CPU searches) gives the torch path's ranks and tie rule."""

import numpy as np
import pytest

from retrieval import search as S


def _data(n_db=3000, nq=40, dim=32, seed=0):
    rng = np.random.default_rng(seed)
    db = rng.standard_normal((n_db, dim)).astype(np.float32)
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    q = rng.standard_normal((nq, dim)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return q, db


@pytest.mark.parametrize("k", [1, 10, 100])
def test_faiss_backend_matches_torch(k):
    q, db = _data()
    r_t, s_t = S.exact_search(q, db, k, device="cpu", backend="torch")
    r_f, s_f = S.exact_search(q, db, k, device="cpu", backend="faiss")
    assert r_f.shape == (k, len(q)) and r_f.dtype == np.int64 and s_f.dtype == np.float32
    np.testing.assert_array_equal(r_f, r_t)
    np.testing.assert_allclose(s_f, s_t, rtol=0, atol=1e-5)


def test_ties_keep_the_lower_index_even_across_the_k_boundary():
    q, db = _data(n_db=400, nq=12, dim=16, seed=1)
    db[200:260] = db[0]          # 61 copies of one vector: equal scores, within and across the top-k edge
    db[300:330] = db[5]
    for k in (3, 20, 50, 70):
        r_t, _ = S.exact_search(q, db, k, device="cpu", backend="torch")
        r_f, _ = S.exact_search(q, db, k, device="cpu", backend="faiss")
        np.testing.assert_array_equal(r_f, r_t)
    # a query equal to the duplicated vector: its copies first, in index order
    r, s = S.exact_search(db[:1], db, 10, device="cpu", backend="faiss")
    assert r[:, 0].tolist() == [0] + list(range(200, 209)) and np.all(s[:, 0] == s[0, 0])


def test_auto_dispatches_by_work(monkeypatch):
    q, db = _data(n_db=500, nq=8, dim=16)
    calls = []
    real = S._faiss_topk
    monkeypatch.setattr(S, "_faiss_topk", lambda *a: calls.append(1) or real(*a))
    S.exact_search(q, db, 10, device="cpu")                     # 64k multiply-adds: torch
    assert not calls
    assert S.faiss_faster(1000, 100_000, 512) and S.faiss_faster(70, 200_000, 2048)
    assert not S.faiss_faster(70, 1570, 1280) and not S.faiss_faster(70, 1_000_000, 512)
    assert not S.faiss_faster(1000, 100_000, 512, k=1000)        # a heap of 1,000 per query: torch
    assert 70 * 1570 * 1280 < 5e8  # the demo's searches stay on the torch path
    monkeypatch.setattr(S, "faiss_faster", lambda *shape: True)
    r_auto, _ = S.exact_search(q, db, 10, device="cpu")
    assert calls == [1]
    np.testing.assert_array_equal(r_auto, S.exact_search(q, db, 10, device="cpu", backend="torch")[0])
    S.exact_search(q, db, None, device="cpu")                   # the whole ranking stays on torch
    assert calls == [1]
    with pytest.raises(ValueError, match="backend='nope'"):
        S.exact_search(q, db, 10, backend="nope")


def test_half_precision_db_is_searched_as_its_float32_values(tmp_path):
    from retrieval.io import load_features, save_features

    q, db = _data(n_db=2000, nq=10, dim=24, seed=3)
    path = save_features(tmp_path / "f.npz", q, db, {"v": 1}, dtype="float16")
    q2, db16, params = load_features(path)
    assert db16.dtype == np.float16 and q2.dtype == np.float32 and params == {"v": 1}
    assert path.stat().st_size < 0.6 * (db.nbytes + q.nbytes)     # about half the bytes
    r16, s16 = S.exact_search(q, db16, 50, device="cpu", chunk_size=300)   # chunked, no float32 copy of the db
    r32, s32 = S.exact_search(q, db16.astype(np.float32), 50, device="cpu", backend="torch")
    np.testing.assert_array_equal(r16, r32)
    np.testing.assert_allclose(s16, s32, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="dtype='float64'"):
        save_features(tmp_path / "g.npz", q, db, {}, dtype="float64")
