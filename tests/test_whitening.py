"""Tests for retrieval.models.whitening: PCA-whitening, learned (pair-based) whitening, file round
trip, FC initialisation of a GlobalNet."""
import numpy as np
import pytest
import torch

from retrieval.models import (
    Whitening, build_global_net, gem, init_fc_whitening, l2n, learn_pca_whitening, learn_whitening,
)


def correlated(n=600, d=8, seed=0):
    """Gaussian data with a non-zero mean and a strongly anisotropic, correlated covariance."""
    g = np.random.default_rng(seed)
    A = g.normal(size=(d, d)) * np.logspace(0, -1.5, d)
    return g.normal(size=(n, d)) @ A.T + g.normal(size=d) * 3


def second_moment(Y, center=None):
    Yc = Y - (Y.mean(0) if center is None else center)
    return Yc.T @ Yc / len(Y)


# --------------------------------------------------------------------------- PCA-whitening
def test_pca_whitening_full_dim_identity_covariance():
    X = correlated()
    w = learn_pca_whitening(X)
    assert (w.in_dim, w.out_dim, w.kind) == (8, 8, "pca")
    Y = w.transform(X)
    np.testing.assert_allclose(Y.mean(0), 0, atol=1e-10)
    np.testing.assert_allclose(second_moment(Y), np.eye(8), atol=1e-9)
    assert not np.allclose(second_moment(X), np.eye(8), atol=0.1)  # it did something


def test_pca_whitening_reduced_keeps_top_principal_directions():
    X = correlated(seed=1)
    k = 3
    w = learn_pca_whitening(X, dim=k)
    assert w.P.shape == (k, 8)
    Y = w.transform(X)
    np.testing.assert_allclose(second_moment(Y), np.eye(k), atol=1e-9)
    # independent check by SVD: row i of P is ± v_i / sqrt(λ_i)
    Xc = X - X.mean(0)
    _, sv, Vt = np.linalg.svd(Xc, full_matrices=False)
    lam = sv ** 2 / len(X)
    for i in range(k):
        np.testing.assert_allclose(np.abs(w.P[i] @ Vt[i]) * np.sqrt(lam[i]), 1.0, rtol=1e-8)
    # a prefix of the full whitening is the reduced one
    np.testing.assert_allclose(learn_pca_whitening(X).reduce(k).P, w.P, atol=1e-10)


def test_plain_pca_projects_on_principal_directions_without_scaling():
    X = correlated(seed=2)
    w = learn_pca_whitening(X, dim=3, whiten=False)
    assert w.kind == "pca-nowhiten"
    Xc = X - X.mean(0)
    _, sv, Vt = np.linalg.svd(Xc, full_matrices=False)
    np.testing.assert_allclose(np.abs(w.transform(X)), np.abs(Xc @ Vt[:3].T), atol=1e-9)
    np.testing.assert_allclose(second_moment(w.transform(X)), np.diag(sv[:3] ** 2 / len(X)), atol=1e-9)


def test_apply_is_l2_normalised_and_type_preserving():
    X = correlated(seed=2)
    w = learn_pca_whitening(X, dim=5)
    Y = w.apply(X)
    np.testing.assert_allclose(np.linalg.norm(Y, axis=1), 1.0, atol=1e-5)
    T = w.transform(X)
    np.testing.assert_allclose(Y, T / np.linalg.norm(T, axis=1, keepdims=True), rtol=1e-5)
    y32 = w.apply(X.astype(np.float32))
    assert y32.dtype == np.float32
    np.testing.assert_allclose(y32, Y, atol=1e-5)
    yt = w.apply(torch.from_numpy(X.astype(np.float32)))
    assert isinstance(yt, torch.Tensor) and yt.dtype == torch.float32
    np.testing.assert_allclose(yt.numpy(), Y, atol=1e-5)
    np.testing.assert_allclose(w(X), Y)  # callable


def test_dim_mismatch_and_bad_args():
    w = learn_pca_whitening(correlated())
    with pytest.raises(ValueError, match="D = 8"):
        w.apply(np.zeros((3, 7)))
    with pytest.raises(ValueError, match="D = 8"):
        w.apply(torch.zeros(8))
    with pytest.raises(ValueError, match="dim"):
        learn_pca_whitening(correlated(), dim=9)
    with pytest.raises(ValueError, match="P"):
        Whitening(np.zeros(4), np.zeros((2, 5)))
    with pytest.raises(ValueError, match="equal length"):
        learn_whitening(correlated(), [0, 1], [2])
    with pytest.raises(ValueError, match="indices"):
        learn_whitening(correlated(n=10), [0, 1], [2, 10])


# --------------------------------------------------------------------------- learned whitening
def class_data(n_cls=60, per=6, d=10, seed=0):
    """Instances x = c_k + n: class centres c_k isotropic; the within-class nuisance n is strong
    in a few dimensions, so raw nearest neighbours are dominated by it."""
    g = np.random.default_rng(seed)
    C = g.normal(size=(n_cls, d))
    scale = np.ones(d) * 0.3
    scale[:3] = 4.0
    R, _ = np.linalg.qr(np.random.default_rng(123).normal(size=(d, d)))  # shared by all seeds
    X = (np.repeat(C, per, 0) + g.normal(size=(n_cls * per, d)) * scale) @ R.T + 2.0
    labels = np.repeat(np.arange(n_cls), per)
    return X, labels


def pairs_of(labels):
    q, p = [], []
    for i in range(len(labels)):
        for j in range(len(labels)):
            if i != j and labels[i] == labels[j]:
                q.append(i)
                p.append(j)
    return np.array(q), np.array(p)


def test_learned_whitening_identity_pair_covariance_and_decorrelated():
    X, labels = class_data()
    q, p = pairs_of(labels)
    w = learn_whitening(X, q, p)
    assert (w.kind, w.P.shape) == ("learned", (10, 10))
    diff = X[q] - X[p]
    Cs = diff.T @ diff / len(q)  # computed independently of the module
    np.testing.assert_allclose(w.P @ Cs @ w.P.T, np.eye(10), atol=1e-8)
    # the rotated data (centred on the query mean) is decorrelated, variances decreasing
    m = X[q].mean(0)
    np.testing.assert_allclose(w.mean, m)
    M = second_moment(w.transform(X), center=0.0)
    off = M - np.diag(np.diag(M))
    assert np.abs(off).max() < 1e-8 * np.abs(M).max()
    assert np.all(np.diff(np.diag(M)) <= 1e-9)
    # reduction keeps the first rows
    np.testing.assert_allclose(learn_whitening(X, q, p, dim=4).P, w.P[:4], atol=1e-8)


def test_learned_whitening_improves_nearest_neighbours():
    """Learned on some classes, it helps on other classes sharing the nuisance structure."""
    X, labels = class_data(seed=1)
    q, p = pairs_of(labels)
    w = learn_whitening(X, q, p, dim=8)
    Xt, lt = class_data(seed=2)  # new classes, new noise

    def nn_acc(Y, lab):
        Y = Y / np.linalg.norm(Y, axis=1, keepdims=True)
        S = Y @ Y.T
        np.fill_diagonal(S, -np.inf)
        return float(np.mean(lab[S.argmax(1)] == lab))

    raw = nn_acc(Xt - Xt.mean(0), lt)
    whitened = nn_acc(w.apply(Xt), lt)
    pca = nn_acc(learn_pca_whitening(X, dim=8).apply(Xt), lt)
    assert whitened > raw + 0.2, (raw, whitened)
    assert whitened > pca, (pca, whitened)


# --------------------------------------------------------------------------- files
def test_save_load_round_trip(tmp_path):
    X, labels = class_data()
    q, p = pairs_of(labels)
    w = learn_whitening(X, q, p, dim=6)
    w.meta["source"] = "unit test"
    path = w.save(tmp_path / "sub" / "w.npz")
    assert path.is_file() and [f.name for f in path.parent.iterdir()] == ["w.npz"]  # no temp left
    r = Whitening.load(path)
    assert r.kind == "learned" and r.meta == w.meta
    np.testing.assert_array_equal(r.P, w.P)
    np.testing.assert_array_equal(r.mean, w.mean)
    np.testing.assert_array_equal(r.apply(X), w.apply(X))


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        Whitening.load(tmp_path / "nope.npz")
    np.savez(tmp_path / "bad.npz", mean=np.zeros(3), kind=np.array("pca"))
    with pytest.raises(ValueError, match=r"bad\.npz.*'P'"):
        Whitening.load(tmp_path / "bad.npz")
    np.savez(tmp_path / "shape.npz", mean=np.zeros(3), P=np.zeros((2, 4)), kind=np.array("pca"),
             meta=np.array("{}"))
    with pytest.raises(ValueError, match="shape.npz"):
        Whitening.load(tmp_path / "shape.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="junk.npz"):
        Whitening.load(tmp_path / "junk.npz")


# --------------------------------------------------------------------------- FC initialisation
@pytest.fixture(scope="module")
def images64():
    return torch.randn(6, 3, 64, 64, generator=torch.Generator().manual_seed(3))


def test_init_fc_whitening_matches_apply(images64):
    torch.manual_seed(0)
    net = build_global_net("resnet18", pooling="gem", whitening=16).eval()
    g = np.random.default_rng(0)
    w = Whitening(g.normal(size=512) * 0.05, g.normal(size=(16, 512)), kind="random")
    assert init_fc_whitening(net, w) is net
    with torch.no_grad():
        out = net(images64)
        pooled = l2n(gem(net.features(images64), net.pool.p))
    assert out.shape == (6, 16)
    ref = w.apply(pooled.double().numpy())
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-5)
    np.testing.assert_allclose(net.whiten.bias.detach().numpy(), -w.P @ w.mean, rtol=1e-5, atol=1e-6)


def test_init_fc_whitening_creates_layer_from_learned_pca(images64):
    torch.manual_seed(1)
    net = build_global_net("resnet18", pooling="mac").eval()
    with torch.no_grad():
        V = net(images64).numpy()  # pooled, L2-normalised descriptors
    w = learn_pca_whitening(V, dim=4)
    init_fc_whitening(net, w)
    assert isinstance(net.whiten, torch.nn.Linear) and net.meta["outputdim"] == 4
    assert net.meta["whitening"] and net.name.endswith("-w-untrained")
    with torch.no_grad():
        out = net(images64).numpy()
    np.testing.assert_allclose(out, w.apply(V), atol=1e-5)
    # whitened training descriptors are decorrelated (before the final L2)
    np.testing.assert_allclose(second_moment(w.transform(V)), np.eye(4), atol=1e-6)


def test_init_fc_whitening_shape_mismatch():
    torch.manual_seed(0)
    net = build_global_net("resnet18", whitening=True)
    with pytest.raises(ValueError, match="512"):
        init_fc_whitening(net, Whitening(np.zeros(512), np.eye(8, 512)))
    with pytest.raises(ValueError, match="dimension 256"):
        init_fc_whitening(net, Whitening(np.zeros(256), np.eye(256)))


def test_learned_whitening_shrinkage():
    X, labels = class_data()
    q, p = pairs_of(labels)
    diff = X[q] - X[p]
    Cs = diff.T @ diff / len(q)
    D = Cs.shape[0]
    for alpha in (0.3, 1.0):
        w = learn_whitening(X, q, p, shrinkage=alpha)
        shrunk = (1 - alpha) * Cs + alpha * np.trace(Cs) / D * np.eye(D)
        np.testing.assert_allclose(w.P @ shrunk @ w.P.T, np.eye(D), atol=1e-8)
    # alpha = 1: the intra-class step is a plain rescaling, so Lw reduces to a PCA rotation of X
    w1 = learn_whitening(X, q, p, shrinkage=1.0)
    G = w1.P @ w1.P.T
    np.testing.assert_allclose(G, G[0, 0] * np.eye(D), atol=1e-8)
    np.testing.assert_allclose(learn_whitening(X, q, p, shrinkage=0.0).P, learn_whitening(X, q, p).P)
    with pytest.raises(ValueError, match="shrinkage"):
        learn_whitening(X, q, p, shrinkage=1.5)


def test_apply_float16_does_not_overflow():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((20, 32))  # fewer descriptors than dimensions: huge entries in P
    w = learn_pca_whitening(X, eps=1e-12)
    assert np.abs(w.P).max() > 7e4  # beyond float16's range
    x = torch.from_numpy(X[:4]).half()
    out = w.apply(x)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    np.testing.assert_allclose(out.float().numpy(), w.apply(x.float().numpy()), atol=2e-3)


def test_select_shrinkage_is_the_grid_argmax_of_val_map():
    from retrieval.metrics import label_map
    from retrieval.models.whitening import select_shrinkage

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((6, 8))
    labels = np.repeat(np.arange(6), 5)
    X = centres[labels] + 0.8 * rng.standard_normal((30, 8))
    Xv = centres[labels] + 0.8 * rng.standard_normal((30, 8))
    q, p = [int(i) for i in range(0, 30, 5)], [int(i) + 1 for i in range(0, 30, 5)]
    best, val_map = select_shrinkage(X, q, p, Xv, labels, grid=(0.0, 0.5, 0.9))
    want = {a: label_map(learn_whitening(X, q, p, shrinkage=a).apply(Xv), labels) for a in (0.0, 0.5, 0.9)}
    assert val_map == pytest.approx(want) and best == max(want, key=want.get)
    tie, tmap = select_shrinkage(X, q, p, Xv, labels, grid=(0.5, 0.5))     # ties: the first of the grid
    assert tie == 0.5 and len(tmap) == 1
    with pytest.raises(ValueError, match="no shrinkage"):
        select_shrinkage(X, q, p, Xv, labels, grid=())


def test_pca_whitening_shrinkage_whitens_the_shrunk_covariance():
    """With shrinkage α the whitened training data has the covariance C·S⁻¹ where S = (1−α)C + α(trC/D)I:
    identity at α = 0, C/(trC/D) (no whitening, only scaling) at α = 1, and its eigenvalues computed here."""
    X = correlated()
    C = np.cov(X, rowvar=False, bias=True)
    D = C.shape[0]
    for a in (0.0, 0.3, 1.0):
        w = learn_pca_whitening(X, shrinkage=a)
        Z = w.transform(X)
        S = (1 - a) * C + a * np.trace(C) / D * np.eye(D)
        expected = np.sort(np.linalg.eigvals(np.linalg.solve(S, C)).real)
        np.testing.assert_allclose(np.sort(np.linalg.eigvalsh(np.cov(Z, rowvar=False, bias=True))), expected, rtol=1e-6)
        assert w.meta["shrinkage"] == a
    with pytest.raises(ValueError, match="shrinkage must be in"):
        learn_pca_whitening(X, shrinkage=1.5)


def test_pca_whitenings_share_one_decomposition_and_equal_each_learned_alone():
    from retrieval.models.whitening import pca_whitenings
    X = correlated()
    many = pca_whitenings(X, [3, None], [0.0, 0.4])
    assert set(many) == {(3, 0.0), (3, 0.4), (None, 0.0), (None, 0.4)}
    for (dim, a), w in many.items():
        alone = learn_pca_whitening(X, dim, shrinkage=a)
        np.testing.assert_allclose(w.P, alone.P, atol=1e-9)
        np.testing.assert_allclose(w.mean, alone.mean)
