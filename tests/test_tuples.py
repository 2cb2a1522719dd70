"""Tests for tuple mining (TupleMiner) and the tuple image dataset (TuplesDataset)."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from retrieval.datasets import load_sfm
from retrieval.datasets.tuples import IMAGENET_MEAN, IMAGENET_STD, TupleMiner, TuplesDataset

NAME = "synth-tiny"


@pytest.fixture(scope="module")
def split(tiny_data) -> dict:
    return load_sfm(tiny_data, NAME)["train"]


class FakeNet:
    """describe(paths) -> fixed random unit vectors per image; records the calls."""

    def __init__(self, paths, dim=16, seed=0):
        rng = np.random.default_rng(seed)
        v = rng.standard_normal((len(paths), dim)).astype(np.float32)
        self.vecs = v / np.linalg.norm(v, axis=1, keepdims=True)
        self.index = {p: i for i, p in enumerate(paths)}
        self.calls = []

    def __call__(self, paths):
        self.calls.append(list(paths))
        return self.vecs[[self.index[p] for p in paths]]


def _pairs(split):
    return set(zip(split["qidxs"], split["pidxs"]))


def _check_valid(tuples, split, nnum):
    cl = split["cluster"]
    pairs = _pairs(split)
    for t in tuples:
        assert len(t) == 2 + nnum
        assert all(isinstance(i, int) for i in t)
        q, p, negs = t[0], t[1], t[2:]
        assert (q, p) in pairs                       # positive is the pidx paired with the qidx
        assert all(cl[n] != cl[q] for n in negs)     # never the query's cluster
        assert len({cl[n] for n in negs}) == nnum    # distinct clusters


# --------------------------------------------------------------------------- mining
def test_random_mode_valid_tuples(split):
    miner = TupleMiner(split, qsize=20, poolsize=40, nnum=3, seed=1, mode="random")
    tuples = miner.mine(0)
    assert len(tuples) == 20
    _check_valid(tuples, split, 3)
    qidxs, pidxs, pool, _ = miner.sample(0)
    assert [t[:2] for t in tuples] == list(zip(qidxs.tolist(), pidxs.tolist()))
    assert all(n in set(pool.tolist()) for t in tuples for n in t[2:])  # from the epoch's pool
    assert miner.last_stats["n_filled"] == 0 and miner.last_stats["n_tuples"] == 20


def _brute_force(split, qidxs, pidxs, pool, vecs, nnum):
    """Independent reference: for each query score every pool image, order by (−score, index),
    keep the first image of each cluster other than the query's."""
    cl = split["cluster"]
    out = []
    for q, p in zip(qidxs, pidxs):
        cands = sorted(pool, key=lambda j: (-float(np.dot(vecs[q], vecs[j])), j))
        negs, seen = [], {cl[q]}
        for j in cands:
            if cl[j] not in seen and len(negs) < nnum:
                negs.append(int(j))
                seen.add(cl[j])
        out.append((int(q), int(p), *negs))
    return out


@pytest.mark.parametrize("nnum,poolsize", [(1, 30), (3, 40), (5, None)])
def test_hard_negatives_are_the_nearest_non_matching(split, nnum, poolsize):
    net = FakeNet(split["paths"], seed=nnum)
    miner = TupleMiner(split, qsize=15, poolsize=poolsize, nnum=nnum, seed=3)
    tuples = miner.mine(2, net)
    _check_valid(tuples, split, nnum)
    qidxs, pidxs, pool, _ = miner.sample(2)
    # the network saw the epoch's queries, then its pool
    assert len(net.calls) == 2
    assert net.calls[0] == [split["paths"][i] for i in qidxs]
    assert net.calls[1] == [split["paths"][i] for i in pool]
    expected = _brute_force(split, qidxs.tolist(), pidxs.tolist(), pool.tolist(), net.vecs, nnum)
    assert tuples == expected
    # the first negative is the nearest pool image outside the query's cluster
    cl = np.asarray(split["cluster"])
    for t in tuples:
        other = [j for j in pool if cl[j] != cl[t[0]]]
        sims = net.vecs[other] @ net.vecs[t[0]]
        assert t[2] == other[int(np.argmax(sims))]
    # average ‖q − n‖ of the mined negatives, as cirtorch logs it
    d = [np.linalg.norm(net.vecs[t[0]] - net.vecs[n]) for t in tuples for n in t[2:]]
    assert miner.last_stats["avg_neg_dist"] == pytest.approx(float(np.mean(d)), rel=1e-5)


def test_hard_mining_follows_the_descriptors(split):
    # descriptors = one-hot of the cluster, except that image z of cluster c2 looks like the query
    cl = np.asarray(split["cluster"])
    miner = TupleMiner(split, qsize=None, poolsize=None, nnum=1, seed=0)
    qidxs, _, _, _ = miner.sample(0)
    q = int(qidxs[0])
    z = int(np.flatnonzero(cl != cl[q])[0])
    vecs = np.eye(cl.max() + 1, dtype=np.float32)[cl]
    vecs[z] = vecs[q]
    index = {p: i for i, p in enumerate(split["paths"])}
    tuples = miner.mine(0, lambda paths: vecs[[index[p] for p in paths]])
    assert tuples[0][2] == z  # the hardest negative wins


def test_deterministic_per_seed_and_epoch(split):
    net = FakeNet(split["paths"])
    a = TupleMiner(split, qsize=10, poolsize=30, nnum=2, seed=5)
    b = TupleMiner(split, qsize=10, poolsize=30, nnum=2, seed=5)
    assert a.mine(4, net) == b.mine(4, net) == a.mine(4, net)
    r1 = TupleMiner(split, qsize=10, poolsize=30, nnum=2, seed=5, mode="random")
    r2 = TupleMiner(split, qsize=10, poolsize=30, nnum=2, seed=5, mode="random")
    assert r1.mine(7) == r2.mine(7)
    # different epochs / seeds draw other query subsets and pools
    q0, _, pool0, _ = a.sample(0)
    q1, _, pool1, _ = a.sample(1)
    assert sorted(q0.tolist()) != sorted(q1.tolist())
    assert pool0.tolist() != pool1.tolist()
    qs, _, _, _ = TupleMiner(split, qsize=10, poolsize=30, nnum=2, seed=6).sample(0)
    assert sorted(q0.tolist()) != sorted(qs.tolist())
    assert r1.mine(0) != r1.mine(1)


def test_sizes_larger_than_available_are_clipped(split):
    n_pairs, n_images = len(split["qidxs"]), len(split["paths"])
    miner = TupleMiner(split, qsize=10 ** 6, poolsize=10 ** 6, nnum=2, seed=0, mode="random")
    assert miner.qsize == n_pairs and miner.poolsize == n_images
    qidxs, pidxs, pool, _ = miner.sample(0)
    assert sorted(zip(qidxs.tolist(), pidxs.tolist())) == sorted(zip(split["qidxs"], split["pidxs"]))
    assert pool.tolist() == list(range(n_images))
    tuples = miner.mine(0)
    assert len(tuples) == n_pairs
    _check_valid(tuples, split, 2)
    assert TupleMiner(split, qsize=None, poolsize=None, nnum=1).qsize == n_pairs


def test_small_pool_is_filled_with_a_warning(split):
    # a pool of 1 image cannot give 3 negatives of distinct clusters: the rest come from the split
    miner = TupleMiner(split, qsize=8, poolsize=1, nnum=3, seed=0, mode="random")
    with pytest.warns(RuntimeWarning, match="filled"):
        tuples = miner.mine(0)
    _check_valid(tuples, split, 3)
    assert miner.last_stats["n_filled"] == 8


def test_nnum_zero_gives_pairs_without_describe(split):
    miner = TupleMiner(split, qsize=5, poolsize=10, nnum=0)
    tuples = miner.mine(0, describe=None)
    assert len(tuples) == 5 and all(len(t) == 2 for t in tuples)
    _check_valid(tuples, split, 0)


def test_miner_errors(split):
    n_clusters = len(set(split["cluster"]))
    with pytest.raises(ValueError, match="nnum"):
        TupleMiner(split, nnum=n_clusters)  # needs nnum + 1 clusters
    with pytest.raises(ValueError, match="mode"):
        TupleMiner(split, mode="semi-hard")
    with pytest.raises(ValueError, match="qsize"):
        TupleMiner(split, qsize=0)
    with pytest.raises(ValueError, match="lacks keys"):
        TupleMiner({k: v for k, v in split.items() if k != "paths"})
    miner = TupleMiner(split, qsize=4, poolsize=10, nnum=2)
    with pytest.raises(ValueError, match="describe"):
        miner.mine(0)
    with pytest.raises(ValueError, match=r"expected \(4, D\)"):
        miner.mine(0, lambda paths: np.zeros((len(paths) + 1, 8)))
    with pytest.raises(ValueError, match="non-finite"):
        miner.mine(0, lambda paths: np.full((len(paths), 8), np.nan))
    with pytest.raises(ValueError, match="epoch"):
        miner.sample(-1)


# --------------------------------------------------------------------------- TuplesDataset
def _expected_image(path, size, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """Independent reference, cirtorch's imresize: PIL thumbnail((size, size), LANCZOS) (never
    enlarges), then (x/255 − mean)/std, (3, h, w)."""
    im = Image.open(path).convert("RGB")
    im.thumbnail((size, size), Image.LANCZOS)
    a = np.asarray(im, dtype=np.float32) / 255.0
    a = (a - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return a.transpose(2, 0, 1)


def test_dataset_item_on_synthetic_tuples(split):
    tuples = TupleMiner(split, qsize=6, poolsize=30, nnum=2, seed=0, mode="random").mine(0)
    ds = TuplesDataset(split, tuples, image_size=64)
    assert len(ds) == 6 and ds.tuple_size == 4
    x = ds[1]
    assert x.shape == (4, 3, 64, 64) and x.dtype == torch.float32
    for t, idx in enumerate(tuples[1]):
        ref = _expected_image(split["paths"][idx], 64)   # 160x120 → 64x48
        c, h, w = ref.shape
        assert (h, w) == (48, 64)
        np.testing.assert_allclose(x[t, :, :h, :w].numpy(), ref, atol=1e-5)
        assert torch.count_nonzero(x[t, :, h:, :]) == 0  # padded bottom rows
    batch = next(iter(DataLoader(ds, batch_size=3)))
    assert batch.shape == (3, 4, 3, 64, 64)
    assert torch.equal(batch[1], x)


@pytest.fixture()
def two_images(tmp_path) -> dict:
    rng = np.random.default_rng(0)
    paths = []
    for name, (w, h) in (("portrait.png", (30, 50)), ("landscape.png", (50, 20))):
        p = tmp_path / name
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    return {"paths": paths, "cluster": [0, 1], "qidxs": [0], "pidxs": [1]}


def test_dataset_padding_right_and_bottom(two_images):
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    ds = TuplesDataset(two_images, [(0, 1), (1, 0)], image_size=40, mean=mean, std=std)
    x = ds[0]
    assert x.shape == (2, 3, 40, 40)
    # portrait 30x50 → 24x40: padded on the right; landscape 50x20 → 40x16: padded at the bottom
    por = _expected_image(two_images["paths"][0], 40, mean, std)
    lan = _expected_image(two_images["paths"][1], 40, mean, std)
    assert por.shape == (3, 40, 24) and lan.shape == (3, 16, 40)
    np.testing.assert_allclose(x[0, :, :, :24].numpy(), por, atol=1e-5)
    np.testing.assert_allclose(x[1, :, :16, :].numpy(), lan, atol=1e-5)
    assert torch.count_nonzero(x[0, :, :, 24:]) == 0 and torch.count_nonzero(x[1, :, 16:, :]) == 0
    assert torch.equal(ds[1][0], x[1]) and torch.equal(ds[-1], ds[1])
    with pytest.raises(IndexError):
        ds[2]


def test_dataset_cache_keeps_each_image_for_later_epochs_and_never_with_augment(two_images, monkeypatch):
    """A shared ``cache``: the next epoch's dataset decodes nothing and gives the same tensors as an uncached
    one; with ``augment`` (crops change per epoch) the cache is not used."""
    import retrieval.datasets.tuples as T

    cache, loads = {}, []
    real = T.load_image
    monkeypatch.setattr(T, "load_image", lambda p: loads.append(p) or real(p))
    first = TuplesDataset(two_images, [(0, 1)], image_size=40, cache=cache)[0]
    assert len(loads) == 2 and set(cache) == {0, 1} and cache[0].dtype == torch.uint8
    later = TuplesDataset(two_images, [(1, 0)], image_size=40, cache=cache)
    later.set_epoch(1)
    assert torch.equal(later[0], first.flip(0)) and len(loads) == 2          # from the cache
    assert torch.equal(TuplesDataset(two_images, [(0, 1)], image_size=40)[0], first)
    aug = TuplesDataset(two_images, [(0, 1)], image_size=40, augment=True, seed=3, cache={})
    aug[0]
    assert aug._cache is None and len(loads) == 6                            # the uncached one and aug: 2 each


def test_dataset_augmentation_is_seeded(two_images):
    tuples = [(0, 1)]
    plain = TuplesDataset(two_images, tuples, image_size=40)
    aug = TuplesDataset(two_images, tuples, image_size=40, augment=True, crop_scale=0.5, seed=3)
    a0 = aug[0]
    assert a0.shape == plain[0].shape
    assert not torch.equal(a0, plain[0])           # a crop was taken
    assert torch.equal(a0, aug[0])                 # reproducible
    same = TuplesDataset(two_images, tuples, image_size=40, augment=True, crop_scale=0.5, seed=3)
    assert torch.equal(same[0], a0)
    aug.set_epoch(1)
    assert not torch.equal(aug[0], a0)             # another epoch, another crop
    # crops are never enlarged: what is left of a 50-px side after a 0.5 crop stays below S = 40
    content = lambda x: ((torch.count_nonzero(x.abs().sum(0), dim=1) > 0).sum(),  # noqa: E731
                         (torch.count_nonzero(x.abs().sum(0), dim=0) > 0).sum())
    for t in range(2):
        assert max(content(a0[t])) <= 40
    # a crop that stays above S is shrunk back: its longer side fills S, the rest is padding
    big = TuplesDataset(two_images, tuples, image_size=40, augment=True, crop_scale=0.9, seed=3)[0]
    for t in range(2):
        assert max(content(big[t])) == 40


def test_dataset_errors(two_images):
    with pytest.raises(ValueError, match="same length"):
        TuplesDataset(two_images, [(0, 1), (0, 1, 1)], image_size=32)
    with pytest.raises(ValueError, match="out of range"):
        TuplesDataset(two_images, [(0, 2)], image_size=32)
    with pytest.raises(ValueError, match="empty"):
        TuplesDataset(two_images, [], image_size=32)
    with pytest.raises(ValueError, match="image_size"):
        TuplesDataset(two_images, [(0, 1)], image_size=0)
    with pytest.raises(ValueError, match="crop_scale"):
        TuplesDataset(two_images, [(0, 1)], image_size=32, crop_scale=0)
