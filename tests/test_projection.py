"""Metric-learning dimension reduction of fixed descriptors (tasks.projection_pairs)."""

import numpy as np
import pytest
import torch

from retrieval.tasks import projection_config, projection_pairs, train_projection


@pytest.fixture(scope="module")
def split(tiny_data, tmp_path_factory):
    from retrieval.datasets import load_sfm

    root, feats = tiny_data, tmp_path_factory.mktemp("projection")
    labels = np.asarray(load_sfm(root, "synth-tiny")["train"]["labels"])
    rng = np.random.default_rng(0)
    X = rng.standard_normal((labels.max() + 1, 24))[labels] + 0.8 * rng.standard_normal((len(labels), 24))
    X = (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)
    np.save(feats / "X.npy", X)
    return root, X, labels, feats / "X.npy"


def test_pca_init_is_the_pca_projection(split):
    root, X, _, features = split
    cfg = projection_config(train_features=str(features), preset="tiny", root=str(root), dim=5)
    model = projection_pairs(cfg)[0].eval()
    Xc = X.astype(np.float64) - X.mean(0)
    _, _, Vt = np.linalg.svd(Xc, full_matrices=False)
    ref = Xc @ Vt[:5].T
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    with torch.no_grad():
        got = model(torch.from_numpy(X)).numpy()
    np.testing.assert_allclose(np.abs(got), np.abs(ref), atol=1e-4)  # principal axes up to sign
    assert got.shape == (len(X), 5)


@pytest.mark.parametrize("loss", ["lifted", "pairs"])
def test_training_lowers_the_loss(split, loss, tmp_path):
    root, X, _, features = split
    cfg = projection_config(train_features=str(features), preset="tiny", root=str(root), dim=4,
                            loss=loss, margin=1.0 if loss == "lifted" else 0.7, init="random", epochs=8,
                            batch_size=32, lr=5e-3, device="cpu", out_dir=str(tmp_path / loss))
    model, history = train_projection(cfg)
    assert history[-1]["loss"] < history[0]["loss"]
    assert (tmp_path / loss / "checkpoint.pt").is_file()


def test_bad_options(split):
    root, _, _, features = split
    base = dict(train_features=str(features), preset="tiny", root=str(root))
    with pytest.raises(ValueError, match="dim must be in 1..24"):
        projection_pairs(projection_config(**base, dim=25))
    with pytest.raises(ValueError, match="init must be"):
        projection_pairs(projection_config(**base, init="eye"))
    with pytest.raises(ValueError, match="train_features"):
        projection_pairs(projection_config(preset="tiny", root=str(root)))
    with pytest.raises(ValueError, match="unknown projection options"):
        projection_config(nope=1)
