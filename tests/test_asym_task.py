"""Asymmetric retrieval training (retrieval.tasks.asym): data, asymmetric tuple mining,
every method's loss, training and resume, and the task under torchrun."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from retrieval.anchors import build_anchors
from retrieval.datasets import load_sfm
from retrieval.datasets.training import ImageGroups
from retrieval.datasets.tuples import TupleMiner
from retrieval.extract import ImageList
from retrieval.tasks import ASYM_METHODS, asym_config, asym_distill, gallery_classifier, train_asym, train_subset

SMALL = dict(preset="tiny", backbone="mobilenet_v3_small", image_size=32, epochs=1, batch_size=8, optimizer="adamw",
             lr=1e-3, warmup_epochs=0, qsize=6, poolsize=30, nnum=2, device="cpu", log_every=1)
DIM = 64


@pytest.fixture(scope="module")
def setup(tiny_data, tmp_path_factory):
    """Tiny data, fake 64-D "gallery descriptors" of its training split and PQ anchors on them."""
    root, feats = tiny_data, tmp_path_factory.mktemp("asym")
    split = load_sfm(root, "synth-tiny")["train"]
    rng = np.random.default_rng(0)
    G = rng.normal(size=(len(split["paths"]), DIM)).astype(np.float32)
    G /= np.linalg.norm(G, axis=1, keepdims=True)
    np.save(feats / "gallery.npy", G)
    with pytest.warns(RuntimeWarning):
        build_anchors(G, M=8, nbits=3, niter=3, nredo=1).save(feats / "anchors.npz")
    return dict(SMALL, root=str(root), gallery_features=str(feats / "gallery.npy"), anchors=str(feats / "anchors.npz"))


# --------------------------------------------------------------------------- data
def test_gallery_classifier_is_normalised_class_means():
    f = np.array([[1.0, 0.0], [0.0, 1.0], [3.0, 4.0]])
    w = gallery_classifier(f, np.array([0, 0, 1]))
    np.testing.assert_allclose(w, [[np.sqrt(0.5), np.sqrt(0.5)], [0.6, 0.8]], atol=1e-6)
    with pytest.raises(ValueError, match="no image"):
        gallery_classifier(f, np.array([0, 0, 2]))


def test_image_groups_items_and_errors(setup):
    split = load_sfm(setup["root"], "synth-tiny")["train"]
    single = ImageGroups(split, np.arange(5), 32)
    x, idx = single[3]
    # all synthetic images are 4:3: no padding, the images exactly as extraction sees them
    assert single.canvas == (24, 32) and x.shape == (1, 3, 24, 32) and idx.tolist() == [3]
    torch.testing.assert_close(x[0], ImageList([split["paths"][3]], 32)[0])
    assert torch.equal(single[3][0], x) and set(single._cache) == {3}  # cached after the first load
    tuples = ImageGroups(split, [(0, 1, 2), (3, 4, 5)], 32, cache=single._cache)
    x, idx = tuples[1]
    assert x.shape == (3, 3, 24, 32) and idx.tolist() == [3, 4, 5]
    assert set(single._cache) == {3, 4, 5}  # a shared cache
    with pytest.raises(ValueError, match="out of range"):
        ImageGroups(split, [len(split["paths"])], 32)
    with pytest.raises(ValueError, match="groups must be"):
        ImageGroups(split, np.zeros((0, 2)), 32)


def test_methods_of_one_process_share_the_resized_training_images(setup):
    """Two methods' datasets (and AML's epochs) read one cache of the resized training images: the second
    decodes nothing, and its items equal a fresh, uncached dataset's; another size starts a new cache."""
    from retrieval.tasks import asym

    ds1 = asym_distill(asym_config(**setup, method="regression"))[1]
    first = [ds1[i] for i in range(4)]
    ds2 = asym_distill(asym_config(**setup, method="ssp"))[1]
    assert ds2._cache is ds1._cache and {0, 1, 2, 3} <= set(ds2._cache)
    fresh = ImageGroups(load_sfm(setup["root"], "synth-tiny")["train"], np.arange(4), setup["image_size"], cache=False)
    for i in range(4):
        assert torch.equal(ds2[i][0], fresh[i][0]) and torch.equal(ds2[i][0], first[i][0])
    aml = asym_distill(asym_config(**setup, method="aml"))[1]
    assert aml(0)._cache is ds1._cache
    other = asym_distill(asym_config(**dict(setup, image_size=40), method="regression"))[1]
    assert other._cache is not ds1._cache and asym._RESIZED == {next(iter(asym._RESIZED)): other._cache}


def test_asymmetric_mining_uses_the_pool_describer(setup):
    split = load_sfm(setup["root"], "synth-tiny")["train"]
    G = np.load(setup["gallery_features"])
    index = {p: i for i, p in enumerate(split["paths"])}
    calls = []

    def student(paths):
        calls.append("student")
        return G[[index[p] for p in paths]][:, ::-1].copy()  # another "network"

    def gallery(paths):
        calls.append("gallery")
        return G[[index[p] for p in paths]]

    miner = TupleMiner(split, qsize=5, poolsize=40, nnum=2, seed=0)
    tuples = miner.mine(0, student, describe_pool=gallery)
    assert calls == ["student", "gallery"] and len(tuples) == 5
    qidxs, _, pool, _ = miner.sample(0)
    for (q, _p, *negs), qi in zip(tuples, qidxs):  # negatives: the pool's nearest other-cluster gallery vectors
        sims = G[pool] @ student([split["paths"][qi]])[0]
        other = [i for i in np.argsort(-sims, kind="stable") if miner.cluster[pool[i]] != miner.cluster[q]]
        assert int(pool[other[0]]) == negs[0]


# --------------------------------------------------------------------------- the task, every method
@pytest.mark.parametrize("method", ASYM_METHODS)
def test_each_method_gives_a_finite_loss_with_gradients(setup, method):
    torch.manual_seed(0)
    model, data, loss_fn = asym_distill(asym_config(**setup, method=method))
    ds = data(0) if callable(data) and not hasattr(data, "__getitem__") else data
    batch = [torch.stack(t) for t in zip(ds[0], ds[1])]
    loss = loss_fn(model, batch)
    assert loss.ndim == 0 and torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert model.net.whiten.weight.grad is not None and model.net.pool.p.grad is not None
    assert model.net.frozen_bn is False                    # random init: BatchNorm statistics are learned
    if method in ("hvs", "lce"):
        assert model.head.grad is not None
    assert model.meta["name"] == f"{method}-mobilenet_v3_small"


def test_pretrained_query_network_keeps_batchnorm_statistics(setup):
    model, _, _ = asym_distill(asym_config(**dict(setup, backbone="efficientnet_lite0"), method="regression",
                                           weights="imagenet"))
    assert model.net.frozen_bn is True
    model.train()
    bns = [m for m in model.net.features.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert bns and not any(m.training for m in bns) and model.net.whiten.training
    model, _, _ = asym_distill(asym_config(**dict(setup, backbone="efficientnet_lite0"), method="regression",
                                           weights="imagenet", frozen_bn=False))
    assert model.net.frozen_bn is False


def test_task_errors(setup):
    with pytest.raises(ValueError, match="method='sspp'"):
        asym_distill(asym_config(**setup, method="sspp"))
    with pytest.raises(ValueError, match="anchors: SSP needs"):
        asym_distill(asym_config(**dict(setup, anchors=None), method="ssp"))
    with pytest.raises(ValueError, match="gallery_features: path"):
        asym_distill(asym_config(**dict(setup, gallery_features=None), method="regression"))
    with pytest.raises(ValueError, match="unknown asymmetric-training options"):
        asym_config(methd="ssp")


def test_train_subset_is_seeded_sorted_and_checked():
    a = train_subset(50, 10, seed=1)
    assert a.tolist() == sorted(set(a.tolist())) and len(a) == 10 and a.max() < 50
    assert np.array_equal(a, train_subset(50, 10, seed=1)) and not np.array_equal(a, train_subset(50, 10, seed=2))
    assert np.array_equal(train_subset(7, None), np.arange(7))
    for bad in (0, 51, 2.5, True):
        with pytest.raises(ValueError, match="train_images must be"):
            train_subset(50, bad)


def test_regression_on_a_subset_reads_the_subset_rows(setup, tmp_path):
    """train_images=n: the gallery file holds the n subset descriptors, in train_subset order; the
    loss of image i is against its own descriptor (checked against the full-split run)."""
    G = np.load(setup["gallery_features"])
    idx = train_subset(len(G), 12, seed=0)
    np.save(tmp_path / "sub.npy", G[idx])
    sub = dict(setup, gallery_features=str(tmp_path / "sub.npy"), train_images=12, method="regression")
    torch.manual_seed(0)
    model, data, loss_fn = asym_distill(asym_config(**sub))
    assert len(data) == 12 and data.groups[:, 0].tolist() == idx.tolist()
    torch.manual_seed(0)
    model_full, data_full, loss_full = asym_distill(asym_config(**setup, method="regression"))
    batch = [torch.stack(t) for t in zip(data[0], data[1])]  # images idx[0], idx[1]
    torch.testing.assert_close(loss_fn(model, batch), loss_full(model_full, batch))
    with pytest.raises(ValueError, match=r"holds \(12, 64\) descriptors .*train_images=13"):
        asym_distill(asym_config(**dict(sub, train_images=13)))
    for method in ("hvs", "aml"):
        with pytest.raises(ValueError, match="train_images"):
            asym_distill(asym_config(**dict(sub, method=method)))


def test_train_asym_ssp_learns_and_resumes(setup, tmp_path):
    cfg = dict(setup, method="ssp", epochs=2, out_dir=str(tmp_path / "run"), seed=3)
    model, history = train_asym(cfg)
    assert [h["epoch"] for h in history] == [0, 1] and history[1]["loss"] < history[0]["loss"]
    assert not model.training and model.meta["trained"]
    again, history2 = train_asym(dict(cfg, resume=True))  # finished run: loaded, not retrained
    assert history2 == history
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(again.eval()(x), model(x))


@pytest.mark.slow
def test_asym_task_under_torchrun_two_processes(setup, tmp_path):
    cfg = dict(setup, method="lce", out_dir=str(tmp_path / "ddp"), batch_size=4)
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "retrieval.train", "--task", "retrieval.tasks:asym_distill",
                           "--config", str(tmp_path / "cfg.json")],
                          capture_output=True, text=True, timeout=280, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = torch.load(tmp_path / "ddp" / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert ckpt["world_size"] == 2 and ckpt["epoch"] == 1
    n = len(np.load(setup["gallery_features"]))
    assert ckpt["history"][0]["steps"] == -(-n // 8)  # 2 ranks x 4 images per step
    assert "head" in ckpt["model"] and "transform.fc1.weight" in ckpt["model"]


def test_training_curves_figure():
    import matplotlib

    matplotlib.use("Agg")
    from retrieval.viz import plot_histories

    hist = [dict(epoch=e, loss=1.0 / (e + 1)) for e in range(3)]
    fig = plot_histories({"ssp": hist, "regression": hist, "aml": hist})
    assert [ax.get_title() for ax in fig.axes[:3]] == ["ssp", "regression", "aml"]


# --------------------------------------------------------------------------- head_init="ridge"
def test_ridge_projection_solves_the_penalised_least_squares():
    from retrieval.models import ridge_projection

    rng = np.random.default_rng(2)
    X, Y = rng.normal(size=(40, 6)), rng.normal(size=(40, 3))
    lam = 0.3
    W, b = ridge_projection(X, Y, lam)
    # independent route: lstsq on [X 1] with sqrt(lam)-rows penalising W only (not the bias)
    A = np.vstack([np.hstack([X, np.ones((40, 1))]), np.hstack([np.sqrt(lam) * np.eye(6), np.zeros((6, 1))])])
    sol = np.linalg.lstsq(A, np.vstack([Y, np.zeros((6, 3))]), rcond=None)[0]
    np.testing.assert_allclose(W, sol[:6].T, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(b, sol[6], rtol=1e-4, atol=1e-5)
    # an exact affine map is recovered as the penalty vanishes
    A_true, c = rng.normal(size=(3, 6)), rng.normal(size=3)
    W, b = ridge_projection(X, X @ A_true.T + c, 1e-9)
    np.testing.assert_allclose(W, A_true, atol=1e-5)
    np.testing.assert_allclose(b, c, atol=1e-5)
    with pytest.raises(ValueError, match="ridge"):
        ridge_projection(X, Y, 0.0)
    with pytest.raises(ValueError, match="same N"):
        ridge_projection(X, Y[:5])


def test_ridge_head_init_starts_at_the_fitted_map(setup):
    from retrieval.extract import extract_vectors
    from retrieval.models import pooled, ridge_projection

    split = load_sfm(setup["root"], "synth-tiny")["train"]
    G = np.load(setup["gallery_features"])
    losses = {}
    for head_init in (None, "ridge"):
        model, data, loss_fn = asym_distill(dict(setup, method="regression", head_init=head_init, seed=0))
        X = extract_vectors(pooled(model), split["paths"], image_size=32, progress=False)
        with torch.no_grad():
            out = extract_vectors(model, split["paths"], image_size=32, progress=False)
        losses[head_init] = float(((out - G) ** 2).sum(1).mean())
        if head_init == "ridge":
            W, b = ridge_projection(X, G, 0.1)  # the backbone is the same seeded network in both runs
            np.testing.assert_allclose(model.net.whiten.weight.detach().numpy(), W, rtol=1e-4, atol=1e-5)
            y = X @ W.T + b
            np.testing.assert_allclose(out, y / np.linalg.norm(y, axis=1, keepdims=True), rtol=1e-3, atol=1e-4)
    assert losses["ridge"] < losses[None]  # the fitted start is closer to the gallery descriptors
    with pytest.raises(ValueError, match="head_init"):
        asym_distill(dict(setup, method="regression", head_init="zeros"))
