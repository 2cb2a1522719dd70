"""Tests for CSA re-ranking (Ouyang et al., NeurIPS 2021): the model (retrieval.models.csa), re-ranking
(retrieval.rerank.csa), training lists (retrieval.datasets.training.CSALists) and the task."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from retrieval.models.csa import CSA, DropPath, build_csa, csa_loss, load_published_state_dict, load_state_dict_mapped
from retrieval.rerank.csa import affinity_features, csa_rerank, csa_rerank_loop

N_DB, N_Q, D, K, L = 60, 7, 16, 12, 8


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    db = _unit(rng.standard_normal((N_DB, D))).astype(np.float32)
    q = _unit(rng.standard_normal((N_Q, D))).astype(np.float32)
    ranks = np.argsort(-(db @ q.T), axis=0, kind="stable").astype(np.int64)[:20]   # (20, n_q)
    return q, db, ranks


def _small(**kw):
    torch.manual_seed(0)
    args = dict(L=L, dim=32, depth=2, heads=4)
    args.update(kw)
    return build_csa(**args)


# --------------------------------------------------------------------------- affinity
def test_affinity_matches_loop(data):
    q, db, ranks = data
    aff = affinity_features(q, db, ranks, K, L).numpy()
    assert aff.shape == (N_Q, K + 1, L)
    for b in range(N_Q):
        items = [q[b]] + [db[ranks[i, b]] for i in range(K)]
        anchors = [q[b]] + [db[ranks[j, b]] for j in range(L - 1)]
        for i, x in enumerate(items):
            for j, a in enumerate(anchors):
                assert aff[b, i, j] == pytest.approx(float(np.dot(x, a)), abs=1e-5)
    assert np.allclose(aff[:, 0, 0], 1, atol=1e-5)
    # row 0 is the query's similarity to the anchors; column 0 each item's to the query
    assert np.allclose(aff[:, 0, 1:], (db[ranks[:L - 1]] * q[None]).sum(-1).T, atol=1e-5)
    assert np.allclose(aff[:, 1:, 0], (db[ranks[:K]] * q[None]).sum(-1).T, atol=1e-5)


def test_affinity_l_larger_than_k(data):
    q, db, ranks = data
    aff = affinity_features(torch.from_numpy(q), torch.from_numpy(db), torch.from_numpy(ranks), 3, 10)
    assert aff.shape == (N_Q, 4, 10)
    assert torch.allclose(aff[:, 1:, 0], aff[:, 0, 1:4], atol=1e-6)   # symmetric entries


@pytest.mark.parametrize("kw, msg", [
    (dict(K=21), "rows"), (dict(L=22), "rows"), (dict(K=0), "K must"), (dict(L=0), "L must"),
    (dict(K=61), "larger than the db"),
])
def test_affinity_validation(data, kw, msg):
    q, db, ranks = data
    args = dict(K=K, L=L)
    args.update(kw)
    with pytest.raises(ValueError, match=msg):
        affinity_features(q, db, ranks, **args)


def test_affinity_shape_errors(data):
    q, db, ranks = data
    with pytest.raises(ValueError, match="columns"):
        affinity_features(q[:3], db, ranks, K, L)
    with pytest.raises(ValueError, match="dimension"):
        affinity_features(q[:, :8], db, ranks, K, L)
    with pytest.raises(ValueError, match="integer"):
        affinity_features(q, db, ranks.astype(np.float32), K, L)
    bad = ranks.copy()
    bad[0, 0] = N_DB
    with pytest.raises(ValueError, match="db indices"):
        affinity_features(q, db, bad, K, L)


# --------------------------------------------------------------------------- model
def test_model_shapes_and_norm(data):
    q, db, ranks = data
    m = _small().eval()
    aff = affinity_features(q, db, ranks, K, L)
    tokens, recon = m(aff)
    assert tokens.shape == (N_Q, K + 1, 32) and recon.shape == (N_Q, K + 1, L)
    assert torch.allclose(tokens.norm(dim=-1), torch.ones(N_Q, K + 1), atol=1e-5)
    s = m.score(aff)
    assert s.shape == (N_Q, K)
    ref = torch.stack([torch.stack([torch.dot(tokens[b, 0], tokens[b, i]) for i in range(1, K + 1)])
                       for b in range(N_Q)])
    assert torch.allclose(s, ref, atol=1e-5)
    with pytest.raises(ValueError, match="aff must be"):
        m(aff[..., :L - 1])


def test_eval_deterministic_train_stochastic(data):
    q, db, ranks = data
    m = _small(drop=0.0, attn_drop=0.0, drop_path=0.5)
    aff = affinity_features(q, db, ranks, K, L)
    m.eval()
    a, b = m(aff)[0], m(aff)[0]
    assert torch.equal(a, b)
    m.train()
    torch.manual_seed(1)
    outs = [m(aff)[0] for _ in range(4)]
    assert any(not torch.allclose(outs[0], o) for o in outs[1:])


def test_drop_path_per_sample():
    dp = DropPath(0.5).train()
    torch.manual_seed(0)
    x = torch.ones(200, 3, 4)
    y = dp(x)
    per = y.reshape(200, -1)
    assert torch.all((per == 0).all(1) | (per == 2).all(1))          # whole sample dropped or scaled
    assert 40 < int((per[:, 0] == 0).sum()) < 160
    assert torch.equal(dp.eval()(x), x)
    rates = [blk.drop_path.drop_prob for blk in _small(depth=3, drop_path=0.2).blocks]
    assert rates == pytest.approx([0.0, 0.1, 0.2])


def test_attention_and_block_match_manual():
    torch.manual_seed(0)
    blk = _small(drop=0.0, attn_drop=0.0, drop_path=0.0).blocks[0].eval()
    with torch.no_grad():                                            # non-trivial LayerNorms
        for n in (blk.norm1, blk.norm2):
            n.weight.uniform_(0.5, 1.5)
            n.bias.normal_()
    x = torch.randn(2, 5, 32)
    att, h = blk.attn, 4

    def ln(t, n):
        mu, var = t.mean(-1, keepdim=True), t.var(-1, unbiased=False, keepdim=True)
        return (t - mu) / torch.sqrt(var + 1e-5) * n.weight + n.bias

    def attn(t):
        qkv = t @ att.qkv.weight.T + att.qkv.bias
        q, k, v = qkv[..., :32], qkv[..., 32:64], qkv[..., 64:]
        heads = []
        for i in range(h):
            sl = slice(8 * i, 8 * (i + 1))
            w = torch.softmax(q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(8), -1)
            heads.append(w @ v[..., sl])
        return torch.cat(heads, -1) @ att.proj.weight.T + att.proj.bias

    def mlp(t):
        z = t @ blk.mlp.fc1.weight.T + blk.mlp.fc1.bias
        z = 0.5 * z * (1 + torch.erf(z / math.sqrt(2)))
        return z @ blk.mlp.fc2.weight.T + blk.mlp.fc2.bias

    with torch.no_grad():
        assert torch.allclose(att(x), attn(x), atol=1e-5)
        y = x + attn(ln(x, blk.norm1))
        y = y + mlp(ln(y, blk.norm2))
        assert torch.allclose(blk(x), y, atol=1e-5)


# --------------------------------------------------------------------------- loss
def test_loss_matches_loop():
    torch.manual_seed(0)
    B, N, dim = 3, 6, 10
    tokens = torch.nn.functional.normalize(torch.randn(B, N, dim), dim=-1)
    aff, recon = torch.randn(B, N, L), torch.randn(B, N, L)
    pos = torch.rand(B, N) < 0.4
    pos[:, 0] = True
    t, alpha = 2.0, 0.2
    total = 0.0
    for b in range(B):
        s = [float(tokens[b, 0] @ tokens[b, i]) for i in range(N)]
        num = sum(math.exp(s[i] / t) for i in range(N) if pos[b, i])
        den = sum(math.exp(x / t) for x in s)
        total += -math.log(num / den)
    recon[1, 2] = 3.0 * aff[1, 2]        # a perfect row: distance 0, clamped to sqrt(1e-4) = 0.01
    dist = 0.0
    for b in range(B):
        for i in range(N):
            a, r = aff[b, i] / aff[b, i].norm(), recon[b, i] / recon[b, i].norm()
            # the authors' term (RerankTransformer.forward): sqrt(clamp(squared distance, 1e-4, 1e4))
            dist += math.sqrt(min(max(float(((a - r) ** 2).sum()), 1e-4), 1e4))
    ref = total / B + alpha * dist / (B * N)
    got = csa_loss(tokens, recon, aff, pos, temperature=t, alpha=alpha)
    assert float(got) == pytest.approx(ref, rel=1e-5)
    # alpha weights the distance, not its square
    rec = (float(csa_loss(tokens, recon, aff, pos, alpha=1.0)) - float(csa_loss(tokens, recon, aff, pos, alpha=0.0)))
    assert rec == pytest.approx(dist / (B * N), rel=1e-5)
    # all positive → contrastive 0
    allpos = torch.ones(B, N, dtype=torch.bool)
    assert float(csa_loss(tokens, recon, aff, allpos, alpha=0.0)) == pytest.approx(0.0, abs=1e-6)


def test_loss_validation_and_grad(data):
    q, db, ranks = data
    m = _small()
    aff = affinity_features(q, db, ranks, K, L)
    tokens, recon = m(aff)
    pos = torch.zeros(N_Q, K + 1, dtype=torch.bool)
    with pytest.raises(ValueError, match="query itself"):
        csa_loss(tokens, recon, aff, pos)
    pos[:, 0] = True
    pos[:, 1] = True
    loss = csa_loss(tokens, recon, aff, pos)
    loss.backward()
    assert m.topk_proj.weight.grad is not None and m.recon.weight.grad is not None
    with pytest.raises(ValueError, match="positives"):
        csa_loss(tokens, recon, aff, pos[:, :3])
    with pytest.raises(ValueError, match="shape mismatch"):
        csa_loss(tokens, recon[:, :3], aff, pos)


# --------------------------------------------------------------------------- re-ranking
def test_rerank_batched_equals_loop(data):
    q, db, ranks = data
    m = _small().train()
    r1, s1 = csa_rerank(m, q, db, ranks, K=K, L=L, batch=3)
    r2, s2 = csa_rerank_loop(m, q, db, ranks, K=K, L=L)
    assert m.training                                                # mode restored
    assert r1.dtype == np.int64 and r1.shape == ranks.shape and s1.shape == (K, N_Q)
    assert np.array_equal(r1, r2)
    assert np.allclose(s1, s2, atol=1e-5)


def test_rerank_permutes_only_top_k(data):
    q, db, ranks = data
    m = _small()
    new, s = csa_rerank(m, q, db, ranks, K=K, L=L, batch=4)
    assert np.array_equal(new[K:], ranks[K:])
    for b in range(N_Q):
        assert sorted(new[:K, b]) == sorted(ranks[:K, b])
    assert np.all(np.diff(s, axis=0) <= 1e-7)
    # scores are the model's scores of the reordered candidates, computed independently per query
    m.eval()
    with torch.no_grad():
        for b in range(N_Q):
            aff = affinity_features(q[b:b + 1], db, ranks[:, b:b + 1], K, L)
            sc = m.score(aff)[0].numpy()
            pos = {int(ranks[i, b]): i for i in range(K)}
            assert np.allclose(s[:, b], [sc[pos[int(x)]] for x in new[:K, b]], atol=1e-5)


def test_rerank_follows_toy_model_scores(data):
    """A hand-set model whose token is a known function of the affinity feature: token_i =
    (sim(item_i, anchor_{L-1}), 0.5) (blocks zeroed → identity, no final norm). The re-ranked
    order must be the order of the analytic cosines, and differ from the first stage."""
    q, db, ranks = data
    m = _small(depth=1, drop=0.0, attn_drop=0.0, drop_path=0.0, final_norm=False).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
        m.topk_proj.weight[0, L - 1] = 1.0
        m.topk_proj.bias[1] = 0.5
    new, s = csa_rerank(m, q, db, ranks, K=K, L=L, batch=2)
    changed = False
    for b in range(N_Q):
        anchor = db[ranks[L - 2, b]]                                 # anchor L−1 = (L−2)-th result
        tok = lambda v: np.array([float(v @ anchor), 0.5])          # noqa: E731
        t0 = tok(q[b]) / np.linalg.norm(tok(q[b]))
        sc = np.array([tok(db[i]) @ t0 / np.linalg.norm(tok(db[i])) for i in ranks[:K, b]])
        order = np.argsort(-sc, kind="stable")
        assert np.array_equal(new[:K, b], ranks[:K, b][order])
        assert np.allclose(s[:, b], sc[order], atol=1e-5)
        changed |= not np.array_equal(new[:K, b], ranks[:K, b])
    assert changed


def test_rerank_validation(data):
    q, db, ranks = data
    m = _small()
    with pytest.raises(ValueError, match="anchors"):
        csa_rerank(m, q, db, ranks, K=K, L=L + 1)
    with pytest.raises(ValueError, match="rows"):
        csa_rerank(_small(L=30), q, db, ranks, K=K, L=30)
    with pytest.raises(ValueError, match="batch"):
        csa_rerank(m, q, db, ranks, K=K, L=L, batch=0)
    with pytest.raises(ValueError, match="columns"):
        csa_rerank(m, q, db, ranks[:, :2], K=K, L=L)


# --------------------------------------------------------------------------- state dicts
def _published_names(sd):
    """This module's keys → the authors' RerankTransformer keys, written out independently."""
    out = {}
    for k, v in sd.items():
        if k.startswith("recon."):
            k = "feature_align.layers.0." + k[len("recon."):]
        out["module." + k] = v.clone()
    return out


def test_load_published_state_dict(data):
    q, db, ranks = data
    src = _small(final_norm=False).eval()
    torch.manual_seed(5)
    with torch.no_grad():
        for p in src.parameters():
            p.add_(0.1 * torch.randn_like(p))
    pub = _published_names(src.state_dict())
    assert any(k.startswith("module.feature_align.layers.0.") for k in pub)
    dst = CSA(L=L, dim=32, depth=2, heads=4, final_norm=False).eval()
    load_published_state_dict(dst, {"state_dict": pub})
    aff = affinity_features(q, db, ranks, K, L)
    assert torch.allclose(dst(aff)[0], src(aff)[0]) and torch.allclose(dst(aff)[1], src(aff)[1])
    with pytest.raises(ValueError, match="final_norm=False"):
        load_published_state_dict(_small(), pub)
    with pytest.raises(RuntimeError):                               # strict: a key missing
        load_published_state_dict(CSA(L=L, dim=32, depth=2, heads=4, final_norm=False),
                                  {k: v for k, v in pub.items() if "fc2" not in k})


def test_load_state_dict_mapped(data):
    q, db, ranks = data
    src = _small().eval()
    renamed = {k.replace("blocks.", "layers.").replace("topk_proj.", "embed."): v
               for k, v in src.state_dict().items()}
    dst = CSA(L=L, dim=32, depth=2, heads=4).eval()
    with pytest.raises(RuntimeError):
        dst.load_state_dict(renamed)
    load_state_dict_mapped(dst, renamed, {"layers.": "blocks.", "embed.": "topk_proj."})
    aff = affinity_features(q, db, ranks, K, L)
    assert torch.equal(dst(aff)[0], src(aff)[0])


def test_csa_lists_items_match_an_independent_construction():
    from retrieval.datasets.training import CSALists

    rng = np.random.default_rng(3)
    X = rng.standard_normal((30, 8)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    labels = np.arange(30) % 4
    ds = CSALists(X, labels, K=6, L=4, seed=1)
    for i in (0, 7, 29):
        order = [j for j in np.argsort(-(X @ X[i]), kind="stable") if j != i]
        aff, pos = ds[i]
        assert aff.shape == (7, 4) and pos.shape == (7,) and bool(pos[0])
        anchors = [i] + order[:3]
        # rows: the query, then a permutation of its top-6; columns: the query and its top-3 in order
        rows = aff.numpy()
        expected_rows = {tuple(np.round(X[j] @ X[anchors].T, 5)) for j in order[:6]}
        got_rows = {tuple(np.round(r, 5)) for r in rows[1:]}
        assert got_rows == expected_rows
        np.testing.assert_allclose(rows[0], X[i] @ X[anchors].T, atol=1e-6)
        # positives: same label as the query, per row
        lab_of_row = {tuple(np.round(X[j] @ X[anchors].T, 5)): labels[j] == labels[i] for j in order[:6]}
        assert [lab_of_row[tuple(np.round(r, 5))] for r in rows[1:]] == pos[1:].tolist()
    ds.set_epoch(1)
    a1 = ds[0][0]
    ds.set_epoch(2)
    assert not torch.equal(a1, ds[0][0])  # candidates reshuffled each epoch, same set
    with pytest.raises(ValueError, match="labels"):
        CSALists(X, labels[:5], K=6, L=4)


def test_csa_task_trains_a_step(tiny_data, tmp_path):
    from retrieval.datasets import load_sfm
    from retrieval.tasks import csa_config, train_csa

    root = tiny_data
    split = load_sfm(root, "synth-tiny")["train"]
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((max(split["labels"]) + 1, 16))
    X = centers[split["labels"]] + 0.5 * rng.standard_normal((len(split["labels"]), 16))
    X = (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)
    np.save(tmp_path / "X.npy", X)
    cfg = csa_config(train_features=str(tmp_path / "X.npy"), preset="tiny", root=str(root), K=8, L=8, dim=16,
                     heads=2, epochs=2, batch_size=16, lr=0.05, warmup_epochs=0, device="cpu",
                     out_dir=str(tmp_path / "csa"))
    model, history = train_csa(cfg)
    assert len(history) == 2 and all(np.isfinite(h["loss"]) for h in history)
    assert (tmp_path / "csa" / "checkpoint.pt").is_file()
    with pytest.raises(ValueError, match="nope"):
        csa_config(nope=1)


def test_inference_benchmark_runs_and_agrees(tmp_path):
    """The benchmark script (not timed here): batched and per-query re-ranking give the same lists."""
    import importlib.util
    import json as _json

    from retrieval.config import ROOT

    spec = importlib.util.spec_from_file_location("csa_bench", ROOT / "benchmarks" / "csa_inference.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    res = bench.main(["--queries", "5", "--db", "60", "--dim", "8", "--K", "12", "--L", "6", "--batch", "2",
                      "--device", "cpu", "--out", str(tmp_path / "b.json")])
    assert res["same_ranks"] and res["loop_qps"] > 0 and res["batched_qps"] > 0
    assert _json.loads((tmp_path / "b.json").read_text())["K"] == 12


def test_csa_task_whitens_training_features(tiny_data, tmp_path):
    """``whitening`` is applied to the training descriptors before the lists are built, and
    ``train_features`` may be an extract_vectors_cached .npz."""
    from retrieval.datasets import load_sfm
    from retrieval.datasets.training import CSALists
    from retrieval.io import load_vectors
    from retrieval.models.whitening import Whitening
    from retrieval.tasks import csa_config, csa_lists

    root = tiny_data
    labels = np.asarray(load_sfm(root, "synth-tiny")["train"]["labels"])
    rng = np.random.default_rng(1)
    X = rng.standard_normal((len(labels), 12)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    np.savez(tmp_path / "X.npz", vecs=X, params=np.array("{}"))
    np.testing.assert_array_equal(load_vectors(tmp_path / "X.npz"), X)
    w = Whitening(mean=rng.standard_normal(12) * 0.1, P=rng.standard_normal((12, 12)), kind="learned")
    w.save(tmp_path / "w.npz")
    cfg = csa_config(train_features=str(tmp_path / "X.npz"), whitening=str(tmp_path / "w.npz"), preset="tiny",
                     root=str(root), K=6, L=4, dim=8, heads=2, device="cpu", out_dir=None)
    data = csa_lists(cfg)[1](0)
    ref = CSALists(w.apply(X), labels, K=6, L=4, seed=cfg["seed"])
    for i in (0, 7):
        np.testing.assert_allclose(data[i][0].numpy(), ref[i][0].numpy(), atol=1e-5)
        assert torch.equal(data[i][1], ref[i][1])
    # augmented: lists of two extractors (the second unwhitened) concatenated
    X2 = rng.standard_normal((len(labels), 6)).astype(np.float32)
    np.save(tmp_path / "X2.npy", X2 / np.linalg.norm(X2, axis=1, keepdims=True))
    aug = dict(cfg, train_features=[str(tmp_path / "X.npz"), str(tmp_path / "X2.npy")],
               whitening=[str(tmp_path / "w.npz"), None])
    both = csa_lists(aug)[1](0)
    assert len(both) == 2 * len(labels)
    ref2 = CSALists(np.load(tmp_path / "X2.npy"), labels, K=6, L=4, seed=cfg["seed"] + 1)
    np.testing.assert_allclose(both[len(labels) + 3][0].numpy(), ref2[3][0].numpy(), atol=1e-5)
    np.testing.assert_allclose(both[3][0].numpy(), ref[3][0].numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="whitening: 1 entries for 2"):
        csa_lists(dict(aug, whitening=[None]))
    np.savez(tmp_path / "bad.npz", other=X)
    with pytest.raises(ValueError, match="bad.npz.*vecs"):
        load_vectors(tmp_path / "bad.npz")
    with pytest.raises(FileNotFoundError, match="missing.npy"):
        load_vectors(tmp_path / "missing.npy")


def test_csa_task_initial_weights_follow_the_seed_only(tiny_data, tmp_path):
    """The model is built from ``seed`` whatever the global RNG state (fresh processes, torchrun)."""
    from retrieval.datasets import load_sfm
    from retrieval.tasks import csa_config, csa_lists

    root = tiny_data
    n = len(load_sfm(root, "synth-tiny")["train"]["labels"])
    X = np.random.default_rng(0).standard_normal((n, 8)).astype(np.float32)
    np.save(tmp_path / "X.npy", X / np.linalg.norm(X, axis=1, keepdims=True))
    cfg = csa_config(train_features=str(tmp_path / "X.npy"), preset="tiny", root=str(root), K=6, L=4, dim=8,
                     heads=2, device="cpu", out_dir=None)
    torch.manual_seed(123)
    a = csa_lists(cfg)[0].state_dict()
    torch.rand(1000)
    b = csa_lists(cfg)[0].state_dict()
    c = csa_lists(dict(cfg, seed=1))[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_training_lists_count_the_query_like_the_authors():
    """The authors' RerankDataset_TopKSIM takes each image's top ``topk`` by self-similarity (the
    image itself first): topk = 512 is the query + 511 candidates, i.e. K = 511 here."""
    from retrieval.datasets.training import CSALists
    from retrieval.tasks import csa_config

    cfg = csa_config()
    assert (cfg["K"], cfg["L"]) == (511, 512)  # the paper's --topk 512 --sim_len 512
    rng = np.random.default_rng(3)
    X = rng.standard_normal((40, 16)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    topk = 9                                              # authors' count: the query + 8
    ds = CSALists(X, np.arange(40) % 4, K=topk - 1, L=topk, seed=0)
    sim = torch.from_numpy(X @ X.T)
    for i in (0, 7, 39):
        authors = torch.topk(sim[i], k=topk)[1]           # the query first, then its top 8
        aff, _ = ds[i]
        assert aff.shape == (topk, topk)
        ours = torch.cat([torch.tensor([i]), ds.lists[i, :topk - 1]])
        assert int(authors[0]) == i and set(authors.tolist()) == set(ours.tolist())
        # rows = items (the query, then candidates shuffled), columns = anchors in rank order
        torch.testing.assert_close(aff[0], sim[i, authors])


def test_dropout_has_torchs_distribution_and_is_identity_in_eval():
    """retrieval.models.csa.dropout (mask from torch.rand): a share p of the elements zeroed, the others
    scaled by 1/(1-p), so the expectation is kept; identity in eval and at p = 0; gradients through the mask."""
    from retrieval.models.csa import Dropout, dropout

    torch.manual_seed(0)
    x = torch.rand(200, 500) + 0.5
    y = dropout(x, 0.1, True)
    zero = (y == 0).float().mean().item()
    assert abs(zero - 0.1) < 0.005                                      # 100,000 draws: 5 sigma ~ 0.0047
    kept = y != 0
    assert torch.allclose(y[kept], x[kept] / 0.9)
    assert abs(y.mean().item() / x.mean().item() - 1) < 0.01
    assert torch.equal(dropout(x, 0.1, False), x) and torch.equal(dropout(x, 0.0, True), x)
    m = Dropout(0.3).eval()
    assert torch.equal(m(x), x)
    g = torch.ones(10, requires_grad=True)
    dropout(g, 0.5, True).sum().backward()
    assert set(g.grad.unique().tolist()) <= {0.0, 2.0}
    with pytest.raises(ValueError, match="dropout p"):
        Dropout(1.0)
