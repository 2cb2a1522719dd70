"""The frozen-part cache (retrieval.train.frozen): a cached training run takes the same steps as the uncached
loop with the same views; the cache is filled once, resumes, and is keyed by the frozen weights."""

import numpy as np
import pytest
import torch

from retrieval.datasets import load_sfm
from retrieval.datasets.training import LabelledImages
from retrieval.tasks import token_classification, token_config, train_token
from retrieval.train.frozen import FrozenCache, module_fingerprint

SMALL = dict(backbone="resnet18", dim=32, tokens=3, heads=4, outputdim=24)


def _cfg(root, tmp_path, name, **kw):
    return token_config(**dict(dict(root=str(root), preset="tiny", **SMALL, image_size=48, images_per_epoch=8,
                                    batch_size=4, optimizer="sgd", lr=0.05, warmup_epochs=0, device="cpu",
                                    out_dir=str(tmp_path / name), train_blocks=1, views=2, seed=3), **kw))


def test_cached_training_equals_uncached_with_the_same_views(tiny_data, tmp_path):
    """Three epochs (views 0, 1, 0; two steps each): the same losses and weights, cached or not; the frozen
    blocks unchanged, the trained ones moved."""
    plain, hist_plain = train_token(_cfg(tiny_data, tmp_path, "plain", epochs=3))
    cached, hist_cached = train_token(_cfg(tiny_data, tmp_path, "cached", epochs=3, cache_frozen=True))
    assert [h["loss"] for h in hist_cached] == pytest.approx([h["loss"] for h in hist_plain], rel=1e-5, abs=1e-6)
    a, b = plain.state_dict(), cached.state_dict()
    assert set(a) == set(b)
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-5, rtol=1e-4), k
    fresh, _, _ = token_classification(_cfg(tiny_data, tmp_path, "fresh"))
    assert module_fingerprint(fresh.frozen_part()) == module_fingerprint(cached.frozen_part())
    assert not torch.allclose(fresh.backbone.block5[0].conv1.weight, cached.backbone.block5[0].conv1.weight)
    # without fixed views there is nothing to cache under augmentation
    with pytest.raises(ValueError, match="views=V"):
        token_classification(_cfg(tiny_data, tmp_path, "x", views=None, cache_frozen=True))
    with pytest.raises(ValueError, match="train_blocks < 5"):
        token_classification(_cfg(tiny_data, tmp_path, "x", train_blocks=5, cache_frozen=True))


def test_cache_fill_is_once_resumable_exact_and_keyed_by_the_weights(tiny_data, tmp_path):
    model, _, _ = token_classification(_cfg(tiny_data, tmp_path, "m"))
    frozen = model.frozen_part().eval()
    split = load_sfm(tiny_data, "synth-tiny")["train"]
    idx = np.arange(0, 12, 2)
    ds = LabelledImages(split, idx, np.zeros(len(idx)), 48, model.meta["mean"], model.meta["std"], augment=True,
                        seed=3, key_by_image=True)
    ds.set_epoch(1)
    image = lambda k: ds[k][0]  # noqa: E731
    n = len(split["paths"])
    cache = FrozenCache(tmp_path / "c", frozen, dict(image_size=48, views=2), n)
    assert cache.fill(image, idx[:3], 1, batch_size=2, progress=False) == 3       # cut after three images ...
    again = FrozenCache(tmp_path / "c", frozen, dict(image_size=48, views=2), n)
    assert again.dir == cache.dir
    assert again.fill(image, idx, 1, batch_size=4, progress=False) == 3            # ... resumes with the rest
    assert again.fill(image, idx, 1, progress=False) == 0                          # then nothing to compute
    assert np.flatnonzero(again.done(1)).tolist() == idx.tolist() and not again.done(0).any()
    items = again.dataset(idx, 1, np.arange(len(idx)))
    with torch.no_grad():
        want = frozen(torch.stack([image(k) for k in range(len(idx))]))
    got = torch.stack([items[k][0] for k in range(len(idx))])
    assert got.shape == want.shape == (len(idx), 256, 3, 3)   # resnet18 layer3: 256 channels, stride 16
    assert torch.allclose(got, want, atol=1e-5) and items[4][1] == 4
    with pytest.raises(ValueError, match="lacks 1"):
        again.dataset([1], 1, [0])
    # other weights (or other params) → another folder: never the stale outputs
    with torch.no_grad():
        frozen[0][0].weight.mul_(2.0)
    assert FrozenCache(tmp_path / "c", frozen, dict(image_size=48, views=2), n).dir != cache.dir
    assert FrozenCache(tmp_path / "c", model.frozen_part(), dict(image_size=64, views=2), n).dir != cache.dir
