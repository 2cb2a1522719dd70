"""Tests for retrieval.extract: preprocessing, batching, multi-scale, dataset feature caching."""
import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import retrieval.extract as rx
from retrieval.datasets import get_test
from retrieval.extract import ImageList, describe, extract_test_set_cached, extract_vectors
from retrieval.io import load_features, save_features
from retrieval.metrics import evaluate
from retrieval.models import build_global_net
from retrieval.search import search

SIZE = 64
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = build_global_net("resnet18", pooling="gem", p=3.0).eval()
    with torch.no_grad():
        net.pool.p.fill_(2.5)  # a p other than the default, so describe must read it from the model
    return net


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Five PNG images of two shapes (landscape 80x60, portrait 45x90) in mixed order."""
    d = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    paths = []
    for i, (w, h) in enumerate([(80, 60), (45, 90), (80, 60), (80, 60), (45, 90)]):
        a = (rng.random((h, w, 3)) * 255).astype(np.uint8)
        p = d / f"im{i}.png"
        Image.fromarray(a).save(p)
        paths.append(p)
    return paths


def preprocess(path, size=SIZE):
    """The reference, cirtorch's loader + imresize: RGB, PIL thumbnail((size, size), LANCZOS),
    /255, ImageNet norm."""
    with Image.open(path) as f:
        im = f.convert("RGB")
    im.thumbnail((size, size), Image.LANCZOS)
    a = (np.asarray(im, np.float32) / 255.0 - MEAN) / STD
    return torch.from_numpy(a.transpose(2, 0, 1).copy())


# --------------------------------------------------------------------------- describe
def test_describe_single_scale_equals_model(model):
    x = torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(x)
    torch.testing.assert_close(describe(model, x), ref, rtol=0, atol=0)
    torch.testing.assert_close(describe(model, x, scales=[1.0]), ref, rtol=0, atol=0)


@pytest.mark.parametrize("scales", [(1.0, 1 / math.sqrt(2), 0.5), (1.0, 0.75)])
def test_describe_multiscale_matches_formula(model, scales):
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    p = model.pool.p.item()
    assert p == 2.5
    with torch.no_grad():
        vs = []
        for s in scales:
            xs = x if s == 1 else F.interpolate(x, scale_factor=s, mode="bilinear",
                                                 align_corners=False)
            assert xs.shape[-1] == math.floor(SIZE * s)
            vs.append(model(xs).double().numpy())
    V = np.stack(vs)  # (S, B, D), each v_s L2-normalised and >= 0
    assert V.min() >= 0
    m = np.mean(V ** p, axis=0) ** (1 / p)
    ref = m / np.linalg.norm(m, axis=1, keepdims=True)
    out = describe(model, x, scales=scales)
    assert out.shape == (2, model.meta["dim"])
    np.testing.assert_allclose(out.numpy(), ref, atol=2e-6)
    np.testing.assert_allclose(np.linalg.norm(out.numpy(), axis=1), 1.0, atol=1e-5)
    # multi-scale differs from single scale (the test above would be vacuous otherwise)
    assert not np.allclose(ref, vs[0], atol=1e-4)


def test_describe_multiscale_mac_uses_plain_mean():
    torch.manual_seed(0)
    net = build_global_net("resnet18", pooling="mac").eval()
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        v = [net(x), net(F.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=False))]
    m = ((v[0] + v[1]) / 2).numpy()
    ref = m / np.linalg.norm(m, axis=1, keepdims=True)
    np.testing.assert_allclose(describe(net, x, scales=(1.0, 0.5)).numpy(), ref, atol=2e-6)


def test_describe_empty_scales(model):
    with pytest.raises(ValueError, match="scales"):
        describe(model, torch.zeros(1, 3, 8, 8), scales=())


# --------------------------------------------------------------------------- preprocessing
@pytest.mark.parametrize("size,wh,expect_hw", [(64, (100, 37), (24, 64)), (64, (30, 120), (64, 16)),
                                               (50, (80, 60), (38, 50)), (64, (64, 64), (64, 64)),
                                               (64, (40, 30), (30, 40))])   # smaller: kept
def test_image_list_resizes_longer_side(tmp_path, size, wh, expect_hw):
    a = (np.random.default_rng(0).random((wh[1], wh[0], 3)) * 255).astype(np.uint8)
    Image.fromarray(a).save(tmp_path / "a.png")
    x = ImageList([tmp_path / "a.png"], size)[0]
    assert x.shape == (3, *expect_hw)
    assert max(x.shape[1:]) == min(size, max(wh))
    torch.testing.assert_close(x, preprocess(tmp_path / "a.png", size), rtol=0, atol=1e-5)


def test_image_list_grayscale_becomes_rgb(tmp_path):
    a = (np.random.default_rng(0).random((20, 30)) * 255).astype(np.uint8)
    Image.fromarray(a, mode="L").save(tmp_path / "g.png")
    x = ImageList([tmp_path / "g.png"], 30)[0]
    assert x.shape == (3, 20, 30)
    # same gray level in every channel before normalisation
    raw = x * torch.tensor(STD).view(3, 1, 1) + torch.tensor(MEAN).view(3, 1, 1)
    torch.testing.assert_close(raw[0], raw[1], atol=1e-5, rtol=0)
    torch.testing.assert_close(raw[0], raw[2], atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- extract_vectors
@pytest.mark.parametrize("batch_size", [1, 2, 5])
def test_extract_vectors_equals_one_at_a_time(model, images, batch_size):
    out = extract_vectors(model, images, image_size=SIZE, batch_size=batch_size, progress=False)
    assert out.shape == (5, 512) and out.dtype == np.float32
    with torch.no_grad():
        ref = np.concatenate([model(preprocess(p)[None]).numpy() for p in images])
    shapes = {tuple(preprocess(p).shape) for p in images}
    assert shapes == {(3, 48, 64), (3, 64, 32)}  # grouping by shape is exercised
    np.testing.assert_allclose(out, ref, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    # distinct images give distinct descriptors (rows are not copies of one another)
    assert len({tuple(np.round(r, 4)) for r in out}) == 5


def test_extract_vectors_multiscale_equals_describe(model, images):
    scales = (1.0, 1 / math.sqrt(2))
    out = extract_vectors(model, images, image_size=SIZE, scales=scales, batch_size=3,
                          progress=False)
    ref = np.concatenate([describe(model, preprocess(p)[None], scales).numpy() for p in images])
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_extract_vectors_empty(model):
    out = extract_vectors(model, [], image_size=SIZE, progress=False)
    assert out.shape == (0, 512) and out.dtype == np.float32


def test_query_crop_equals_cropped_png(model, images, tmp_path):
    src = images[1]  # 45x90
    bbx = [5, 10, 40, 70]
    Image.open(src).crop(tuple(bbx)).save(tmp_path / "crop.png")  # PNG: lossless
    a = extract_vectors(model, [src, images[0]], image_size=SIZE, bbxs=[bbx, [0, 0, 80, 60]],
                        progress=False)
    # the crop (35x60) keeps its image's scale (cirtorch ImagesFromList): thumbnail to
    # SIZE * 60 / 90 = 42.67 px, i.e. 42 (PIL floors the box), not to SIZE
    with torch.no_grad():
        ref = model(preprocess(tmp_path / "crop.png", 42)[None]).numpy()
    b = extract_vectors(model, [images[0]], image_size=SIZE, progress=False)
    np.testing.assert_allclose(a, np.concatenate([ref, b]), atol=1e-6)
    # and the crop changes the descriptor
    full = extract_vectors(model, [src], image_size=SIZE, progress=False)
    assert not np.allclose(a[0], full[0], atol=1e-3)
    assert ImageList([src], SIZE, bbxs=[bbx])[0].shape == preprocess(tmp_path / "crop.png", 42).shape
    assert max(ImageList([src], SIZE, bbxs=[bbx])[0].shape) == 42


def test_missing_image_names_file(model, images, tmp_path):
    missing = tmp_path / "nope_missing.jpg"
    with pytest.raises(FileNotFoundError, match="nope_missing.jpg"):
        extract_vectors(model, [images[0], missing], image_size=SIZE, progress=False)


def test_corrupt_image_names_file(model, images, tmp_path):
    bad = tmp_path / "corrupt_img.jpg"
    bad.write_bytes(b"this is not a jpeg" * 10)
    with pytest.raises(ValueError, match="corrupt_img.jpg"):
        extract_vectors(model, [images[0], bad], image_size=SIZE, progress=False)


def test_bbxs_length_mismatch(model, images):
    with pytest.raises(ValueError, match="bbxs"):
        extract_vectors(model, images[:3], image_size=SIZE, bbxs=[[0, 0, 10, 10]] * 2,
                        progress=False)


def test_bad_image_size(model, images):
    with pytest.raises(ValueError, match="image_size"):
        extract_vectors(model, images[:1], image_size=0, progress=False)


# --------------------------------------------------------------------------- extract_test_set_cached
@pytest.fixture(scope="module")
def dataset(tiny_data):
    return get_test("synth", "tiny", root=tiny_data, progress=False)


@pytest.fixture(scope="module")
def extracted(model, dataset, tmp_path_factory):
    path = tmp_path_factory.mktemp("feat") / "features" / "tiny.npz"
    query, db, params = extract_test_set_cached(model, dataset, path, image_size=SIZE, batch_size=8,
                                        progress=False)
    return path, query, db, params


def test_extract_dataset_shapes_and_file(model, dataset, extracted):
    path, query, db, params = extracted
    assert query.shape == (dataset.n_query, 512) and db.shape == (dataset.n_db, 512)
    assert query.dtype == np.float32 and db.dtype == np.float32
    assert path.is_file()
    q2, d2, p2 = load_features(path)
    np.testing.assert_array_equal(q2, query)
    np.testing.assert_array_equal(d2, db)
    assert p2 == params
    assert params["image_size"] == SIZE and params["dataset"] == dataset.name
    assert params["n_query"] == dataset.n_query and params["n_db"] == dataset.n_db
    np.testing.assert_allclose(np.linalg.norm(db, axis=1), 1.0, atol=1e-5)


def test_extract_dataset_matches_extract_vectors(model, dataset, extracted):
    _, query, db, _ = extracted
    q = extract_vectors(model, dataset.query_paths()[:2], image_size=SIZE,
                        bbxs=dataset.bbxs()[:2], progress=False)
    d = extract_vectors(model, dataset.db_paths()[-3:], image_size=SIZE, progress=False)
    np.testing.assert_allclose(query[:2], q, atol=1e-5)
    np.testing.assert_allclose(db[-3:], d, atol=1e-5)
    # queries are cropped: differ from the uncropped image
    full = extract_vectors(model, dataset.query_paths()[:1], image_size=SIZE, progress=False)
    assert not np.allclose(full[0], query[0], atol=1e-3)


def test_extract_dataset_loads_cached(model, dataset, extracted, monkeypatch):
    path, query, db, params = extracted

    class Called(Exception):
        pass

    def boom(*a, **k):
        raise Called

    monkeypatch.setattr(rx, "extract_vectors", boom)
    q2, d2, p2 = extract_test_set_cached(model, dataset, path, image_size=SIZE, batch_size=3,
                                 progress=False)  # batch size is not a parameter of the result
    np.testing.assert_array_equal(q2, query)
    np.testing.assert_array_equal(d2, db)
    assert p2 == params
    # other parameters or overwrite -> extraction runs again
    with pytest.raises(Called):
        extract_test_set_cached(model, dataset, path, image_size=48, progress=False)
    with pytest.raises(Called):
        extract_test_set_cached(model, dataset, path, image_size=SIZE, scales=(1.0, 0.5), progress=False)
    with pytest.raises(Called):
        extract_test_set_cached(model, dataset, path, image_size=SIZE, overwrite=True, progress=False)
    # the file was left untouched by the failed calls
    assert load_features(path)[2] == params


def test_extract_dataset_reextracts_on_new_size(model, dataset, tmp_path, extracted):
    _, query, db, _ = extracted
    path = tmp_path / "f.npz"
    extract_test_set_cached(model, dataset, path, image_size=SIZE, progress=False)
    q48, d48, p48 = extract_test_set_cached(model, dataset, path, image_size=48, progress=False)
    assert p48["image_size"] == 48 and load_features(path)[2]["image_size"] == 48
    assert q48.shape == query.shape and d48.shape == db.shape
    assert not np.allclose(d48, db, atol=1e-3)
    ref = extract_vectors(model, dataset.db_paths()[:2], image_size=48, progress=False)
    np.testing.assert_allclose(d48[:2], ref, atol=1e-5)


def test_extract_dataset_resumes_from_saved_shards(model, dataset, tmp_path, extracted, monkeypatch):
    _, query, db, _ = extracted
    path = tmp_path / "resume.npz"
    real = rx.extract_vectors
    calls, state = [], {"interrupt": True}

    class Interrupted(Exception):
        pass

    def dies_on_third_db_shard(m, paths, **kw):
        if kw.get("desc", "").startswith("db"):
            calls.append(len(paths))
            if len(calls) == 3 and state["interrupt"]:
                raise Interrupted
        return real(m, paths, **kw)

    monkeypatch.setattr(rx, "extract_vectors", dies_on_third_db_shard)
    with pytest.raises(Interrupted):
        extract_test_set_cached(model, dataset, path, image_size=SIZE, shard_size=16, progress=False)
    assert not path.exists()  # nothing that looks complete
    partial = path.with_name(path.name + ".partial")
    assert sorted(p.name for p in partial.glob("db_*.npy")) == ["db_000000000.npy", "db_000000016.npy"]
    calls.clear()
    state["interrupt"] = False
    q2, d2, _ = extract_test_set_cached(model, dataset, path, image_size=SIZE, shard_size=16, progress=False)
    n_left = dataset.n_db - 32
    assert sum(calls) == n_left  # only the missing shards were extracted
    np.testing.assert_allclose(d2, db, atol=1e-5)
    np.testing.assert_allclose(q2, query, atol=1e-5)
    assert path.exists() and not partial.exists()


def test_extract_dataset_cache_tracks_weights(model, dataset, tmp_path, monkeypatch):
    path = tmp_path / "w.npz"
    extract_test_set_cached(model, dataset, path, image_size=SIZE, progress=False)
    other = copy.deepcopy(model)
    with torch.no_grad():
        next(other.parameters()).add_(0.01)
    assert rx.model_fingerprint(other) != rx.model_fingerprint(model)
    monkeypatch.setattr(rx, "extract_vectors", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("re-extracted")))
    with pytest.raises(RuntimeError, match="re-extracted"):
        extract_test_set_cached(other, dataset, path, image_size=SIZE, progress=False)


def test_end_to_end_evaluate(dataset, extracted):
    _, query, db, _ = extracted
    ranks, scores = search(query, db)
    assert ranks.shape == (dataset.n_db, dataset.n_query)
    res = evaluate(ranks, dataset.gnd)
    assert set(res) == {"easy", "medium", "hard"}
    for proto in res.values():
        assert set(proto) == {"map", "mp@1", "mp@5", "mp@10"}
        for v in proto.values():
            assert 0.0 <= v <= 1.0


# --------------------------------------------------------------------------- multi-resolution
def test_multi_resolution_is_sum_then_l2_of_single_sizes(model, images):
    scales = (1.0, 0.75)
    a = extract_vectors(model, images, image_size=SIZE, scales=scales, progress=False)
    b = extract_vectors(model, images, image_size=48, scales=scales, progress=False)
    out = extract_vectors(model, images, image_size=[SIZE, 48], scales=scales, batch_size=2,
                          progress=False)
    s = a.astype(np.float64) + b
    ref = s / np.linalg.norm(s, axis=1, keepdims=True)
    assert out.shape == a.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, ref, atol=1e-6)
    assert not np.allclose(out, a, atol=1e-3) and not np.allclose(out, b, atol=1e-3)
    # a list of one size is the single-size case exactly; order of sizes does not matter
    np.testing.assert_array_equal(extract_vectors(model, images, image_size=[SIZE], scales=scales,
                                                  progress=False), a)
    np.testing.assert_allclose(extract_vectors(model, images, image_size=(48, SIZE), scales=scales,
                                               progress=False), out, atol=1e-6)
    # per-size descriptors extracted once combine to the same thing
    np.testing.assert_allclose(rx.combine_resolutions([a, b]), out, atol=1e-6)
    with pytest.raises(ValueError, match="one shape"):
        rx.combine_resolutions([a, b[:1]])
    with pytest.raises(ValueError, match="at least one"):
        rx.combine_resolutions([])


def test_multi_resolution_query_crops(model, images):
    bbxs = [[5, 10, 40, 70], [0, 0, 80, 60]]
    paths = [images[1], images[0]]
    a = extract_vectors(model, paths, image_size=SIZE, bbxs=bbxs, progress=False)
    b = extract_vectors(model, paths, image_size=40, bbxs=bbxs, progress=False)
    out = extract_vectors(model, paths, image_size=[SIZE, 40], bbxs=bbxs, progress=False)
    s = a.astype(np.float64) + b
    np.testing.assert_allclose(out, s / np.linalg.norm(s, axis=1, keepdims=True), atol=1e-6)


@pytest.mark.parametrize("bad", [[], [64, 0], [64, 48.5], [-3]])
def test_multi_resolution_bad_sizes(model, images, bad):
    with pytest.raises(ValueError, match="image_size"):
        extract_vectors(model, images[:1], image_size=bad, progress=False)


def test_extract_dataset_multi_resolution_params_and_cache(model, dataset, tmp_path, extracted,
                                                           monkeypatch):
    _, query, db, params = extracted
    path = tmp_path / "mr.npz"
    q, d, p = extract_test_set_cached(model, dataset, path, image_size=[SIZE, 48], progress=False)
    assert p["image_size"] == [SIZE, 48] and load_features(path)[2]["image_size"] == [SIZE, 48]
    # the single-int params are unchanged by the option
    assert params["image_size"] == SIZE
    d48 = extract_vectors(model, dataset.db_paths()[:3], image_size=48, progress=False)
    s = db[:3].astype(np.float64) + d48
    np.testing.assert_allclose(d[:3], s / np.linalg.norm(s, axis=1, keepdims=True), atol=1e-5)
    assert q.shape == query.shape
    # same list again: loaded from the file; a one-element list is the int case
    def boom(*a, **k):
        raise RuntimeError("re-extracted")

    monkeypatch.setattr(rx, "extract_vectors", boom)
    q2, d2, _ = extract_test_set_cached(model, dataset, path, image_size=[SIZE, 48], progress=False)
    np.testing.assert_array_equal(d2, d)
    with pytest.raises(RuntimeError, match="re-extracted"):
        extract_test_set_cached(model, dataset, path, image_size=[SIZE, 40], progress=False)
    one = tmp_path / "one.npz"
    save_features(one, query, db, params)  # the cache of the int case
    _, _, p1 = extract_test_set_cached(model, dataset, one, image_size=[SIZE], progress=False)
    assert p1 == params


def test_multiscale_of_whitened_network_uses_plain_mean():
    """Whitened descriptors have negative entries: scales are combined by the plain mean (p = 1)."""
    torch.manual_seed(0)
    from retrieval.models import build_global_net

    net = build_global_net("resnet18", "gem", whitening=True).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        vs = [net(x), net(F.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=False))]
    assert (vs[0] < 0).any()
    ref = (vs[0] + vs[1]) / 2
    ref = ref / ref.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(describe(net, x, (1.0, 0.5)), ref, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- extract_vectors_cached
def test_extract_cached_round_trip_and_invalidation(model, images, tmp_path, monkeypatch):
    path = tmp_path / "train.npz"
    vecs = rx.extract_vectors_cached(model, images, path, image_size=SIZE, progress=False)
    np.testing.assert_allclose(vecs, rx.extract_vectors(model, images, image_size=SIZE, progress=False), atol=1e-6)
    assert path.is_file() and not list(tmp_path.glob("*.tmp*"))
    boom = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("re-extracted"))  # noqa: E731
    monkeypatch.setattr(rx, "extract_vectors", boom)
    np.testing.assert_array_equal(rx.extract_vectors_cached(model, images, path, image_size=SIZE, progress=False), vecs)
    other = copy.deepcopy(model)
    with torch.no_grad():
        next(other.parameters()).add_(0.01)
    for kwargs in (dict(model=other, paths=images), dict(model=model, paths=images[:3]),
                   dict(model=model, paths=images, image_size=SIZE + 8)):
        kw = dict(image_size=SIZE, progress=False) | kwargs
        with pytest.raises(RuntimeError, match="re-extracted"):
            rx.extract_vectors_cached(kw.pop("model"), kw.pop("paths"), path, **kw)


def test_extract_cached_rejects_foreign_file(model, images, tmp_path):
    path = tmp_path / "x.npz"
    np.savez(path, other=np.zeros(3))
    with pytest.raises(ValueError, match="x.npz.*vecs"):
        rx.extract_vectors_cached(model, images, path, image_size=SIZE, progress=False)


def test_extract_test_matches_extract_dataset(model, dataset, extracted):
    _, query, db, _ = extracted
    q, d, ms = rx.extract_test_set_timed(model, dataset, image_size=SIZE, progress=False)
    np.testing.assert_allclose(q, query, atol=1e-5)
    np.testing.assert_allclose(d, db, atol=1e-5)
    assert ms > 0
