"""Robustness: bad inputs give clear errors naming the file or parameter; faults (a killed extraction
or training, a full disk) lose no finished work and leave no corrupt file."""
import errno
import io
import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import retrieval.extract as rx
import retrieval.train as rt
from retrieval.train.__main__ import main as train_cli
from retrieval.config import ROOT
from retrieval.datasets import get_test, load_image, load_revisited, validate_gnd
from retrieval.extract import extract_test_set_cached, extract_vectors
from retrieval.io import atomic_save_npy, atomic_write_json, load_features, save_features
from retrieval.metrics import compute_map, evaluate
from retrieval.models import build_global_net
from retrieval.models import load_model, save_model
from retrieval.models.csa import build_csa
from retrieval.rerank import aqe, alpha_qe, csa_rerank, dba, diffusion, rerank_dba
from retrieval.search import search

SIZE = 32  # image size of the extraction tests: small, the network is only a function here


def resnet18(seed=0):
    torch.manual_seed(seed)
    return build_global_net("resnet18", "gem").eval()


@pytest.fixture(scope="module")
def model():
    return resnet18()


@pytest.fixture(scope="module")
def tiny(tiny_data):
    return tiny_data, get_test("synth", "tiny", root=tiny_data, progress=False)


def png(path, arr, mode=None):
    (Image.fromarray(arr, mode) if mode else Image.fromarray(arr)).save(path)
    return path


# =========================================================================== bad input: images
def _jpeg_bytes(seed=0, size=(48, 64)):
    buf = io.BytesIO()
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _png_bytes(seed=0):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


BROKEN = {
    "empty.jpg": lambda: b"",
    "garbage.jpg": lambda: b"GIF89a but not really" * 5,
    "truncated.jpg": lambda: _jpeg_bytes()[: len(_jpeg_bytes()) // 2],
    "truncated.png": lambda: _png_bytes()[: len(_png_bytes()) - 40],
    "header-only.jpg": lambda: _jpeg_bytes()[:200],
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_image_in_extraction_names_the_file(model, tmp_path, name):
    good = tmp_path / "good.jpg"
    good.write_bytes(_jpeg_bytes(1))
    bad = tmp_path / name
    bad.write_bytes(BROKEN[name]())
    with pytest.raises(ValueError) as e:
        extract_vectors(model, [good, bad], image_size=SIZE, batch_size=2, progress=False)
    assert str(bad) in str(e.value) and "decode" in str(e.value)


def test_missing_image_names_the_file(model, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.jpg"):
        extract_vectors(model, [tmp_path / "nowhere.jpg"], image_size=SIZE, progress=False)


def test_grayscale_is_replicated_to_three_channels(tmp_path):
    gray = np.random.default_rng(0).integers(0, 256, (9, 11), dtype=np.uint8)
    im = np.asarray(load_image(png(tmp_path / "g.png", gray, "L")))
    assert im.shape == (9, 11, 3) and all(np.array_equal(im[..., c], gray) for c in range(3))


def test_rgba_and_transparent_palette_are_composited_on_white(tmp_path):
    a = np.zeros((2, 3, 4), np.uint8)
    a[..., :3] = (200, 10, 50)
    a[..., 3] = [[0, 128, 255], [255, 0, 64]]
    im = np.asarray(load_image(png(tmp_path / "a.png", a, "RGBA"))).astype(float)
    alpha = a[..., 3:].astype(float) / 255
    expect = a[..., :3] * alpha + 255 * (1 - alpha)          # "over" white, per channel
    np.testing.assert_allclose(im, expect, atol=1.0)
    # palette image whose index 0 is transparent
    p = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8), "P")
    p.putpalette([0, 0, 0, 30, 60, 90] + [0] * 762)
    p.info["transparency"] = 0
    p.save(tmp_path / "p.png", transparency=0)
    got = np.asarray(load_image(tmp_path / "p.png"))
    assert got[0, 0].tolist() == [255, 255, 255] and got[0, 1].tolist() == [30, 60, 90]


def test_16bit_grayscale_is_scaled_not_clipped(tmp_path):
    v = np.array([[0, 257, 1000, 32768, 65535]], np.uint16)
    Image.fromarray(v).save(tmp_path / "d16.png")
    got = np.asarray(load_image(tmp_path / "d16.png"))[..., 0]
    assert got.tolist() == [[round(x / 257) for x in v[0]]]            # 0, 1, 4, 128, 255


def test_float_image_is_refused_naming_the_file(tmp_path):
    Image.fromarray(np.ones((4, 4), np.float32)).save(tmp_path / "f.tiff")
    with pytest.raises(ValueError, match=r"f\.tiff.*mode F"):
        load_image(tmp_path / "f.tiff")


def test_huge_image_is_refused_naming_the_file(model, tmp_path, monkeypatch):
    path = png(tmp_path / "huge.png", np.zeros((40, 40, 3), np.uint8))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)          # 1600 px > 2 x 500: a "bomb"
    with pytest.raises(ValueError, match=r"huge\.png.*too large.*MAX_IMAGE_PIXELS"):
        extract_vectors(model, [path], image_size=SIZE, progress=False)


@pytest.mark.parametrize("bbx", [[100, 100, 140, 120], [-50, -50, -1, -1], [float("nan"), 0, 10, 10]])
def test_query_box_outside_the_image_names_the_file(model, tmp_path, bbx):
    path = png(tmp_path / "q.png", np.zeros((30, 40, 3), np.uint8))
    with pytest.raises(ValueError, match=r"q\.png.*bbx"):
        extract_vectors(model, [path], image_size=SIZE, bbxs=[bbx], progress=False)


# =========================================================================== bad input: ground truth
def _gnd(**entry0):
    g0 = {"bbx": [0.0, 0.0, 5.0, 5.0], "easy": [0], "hard": [1], "junk": [2]}
    g0.update(entry0)
    return {"imlist": ["a", "b", "c"], "qimlist": ["q"], "gnd": [{k: v for k, v in g0.items() if v is not None}]}


@pytest.mark.parametrize("entry, match", [
    (dict(hrad=[1]), r"unknown keys \['hrad'\]"),
    (dict(easy=[0, 3]), r"'easy'\] has indices outside \[0, 3\)"),
    (dict(junk=[-1]), r"'junk'\] has indices outside"),
    (dict(hard=[1.5]), r"'hard'\] must hold integer"),
    (dict(bbx=[5.0, 0.0, 1.0, 5.0]), r"'bbx'\] must be finite"),
    (dict(bbx=[0.0, float("nan"), 1.0, 5.0]), r"'bbx'\] must be finite"),
])
def test_bad_gnd_file_names_file_and_key(tmp_path, entry, match):
    folder = tmp_path / "test" / "bad"
    folder.mkdir(parents=True)
    path = folder / "gnd_bad.pkl"
    path.write_bytes(pickle.dumps(_gnd(**entry)))
    with pytest.raises(ValueError, match=match) as e:
        load_revisited(tmp_path, "bad")
    assert str(path) in str(e.value) and "gnd[0]" in str(e.value)


def test_valid_gnd_passes_and_evaluates():
    cfg = _gnd()
    validate_gnd(cfg)
    ranks = np.array([[1], [0], [2]])
    assert evaluate(ranks, cfg["gnd"])["medium"]["map"] == 1.0  # easy 0 and hard 1 both first


def test_compute_map_rejects_misspelt_key():
    with pytest.raises(ValueError, match=r"gnd\[1\] has unknown keys \['junks'\]"):
        compute_map(np.arange(4)[:, None].repeat(2, 1), [{"ok": [0]}, {"ok": [1], "junks": [0]}])


# =========================================================================== bad input: features
def _feats(seed=0, n_q=3, n_db=40, d=8):
    rng = np.random.default_rng(seed)
    q, db = rng.standard_normal((n_q, d)).astype(np.float32), rng.standard_normal((n_db, d)).astype(np.float32)
    return q / np.linalg.norm(q, axis=1, keepdims=True), db / np.linalg.norm(db, axis=1, keepdims=True)


CSA = build_csa(L=4, dim=16, depth=1, heads=2)
ENTRY_POINTS = {
    "search-exact": lambda q, db, tmp: search(q, db, k=5, device="cpu"),
    "search-flat": lambda q, db, tmp: search(q, db, k=5, index="flat", gpu=False),
    "aqe": lambda q, db, tmp: aqe(q, db, k=2, top=5),
    "alpha_qe": lambda q, db, tmp: alpha_qe(q, db, k=2, top=5),
    "dba": lambda q, db, tmp: rerank_dba(q, db, k=2, top=5),
    "diffusion": lambda q, db, tmp: diffusion(q, db, k=3, kq=2, truncate=10, top=5),
    "csa": lambda q, db, tmp: csa_rerank(CSA, q, db, np.tile(np.arange(10)[:, None], (1, len(q))), K=8, L=4),
    "save_features": lambda q, db, tmp: save_features(tmp / "never.npz", q, db, {}),
}


@pytest.mark.parametrize("fn", sorted(ENTRY_POINTS))
@pytest.mark.parametrize("where, value", [("query", np.nan), ("db", np.inf), ("db", -np.inf)])
def test_non_finite_features_are_refused(fn, where, value, tmp_path):
    q, db = _feats()
    (q if where == "query" else db)[1, 3] = value
    with pytest.raises(ValueError, match=rf"{where} contains NaN or Inf"):
        ENTRY_POINTS[fn](q, db, tmp_path)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("fn", sorted(ENTRY_POINTS))
def test_wrong_dimension_is_refused(fn, tmp_path):
    q, db = _feats()
    with pytest.raises(ValueError, match="query dimension 6 != db dimension 8"):
        ENTRY_POINTS[fn](q[:, :6], db, tmp_path)


def test_dba_alone_refuses_non_finite_db():
    _, db = _feats()
    db[0, 0] = np.nan
    with pytest.raises(ValueError, match="dba: db contains NaN"):
        dba(db, k=2)


def test_feature_file_with_nan_or_wrong_dimension_names_the_file(tmp_path):
    q, db = _feats()
    bad = tmp_path / "nan.npz"
    db_nan = db.copy()
    db_nan[2, 1] = np.nan
    np.savez(bad, query=q, db=db_nan, params=np.array("{}"))
    with pytest.raises(ValueError, match=r"nan\.npz: db contains NaN"):
        load_features(bad)
    wrong = tmp_path / "dim.npz"
    np.savez(wrong, query=q[:, :5], db=db, params=np.array("{}"))
    with pytest.raises(ValueError, match=r"dim\.npz: query dimension 5 != db dimension 8"):
        load_features(wrong)


# =========================================================================== bad input: checkpoints
def test_cirtorch_checkpoint_of_another_architecture_names_the_file(tmp_path):
    net = resnet18()
    path = save_model(net, tmp_path / "r18.pth")
    ck = torch.load(path, weights_only=True)
    ck["meta"]["architecture"] = "resnet50"        # the meta claims another backbone than the weights
    torch.save(ck, tmp_path / "claims-r50.pth")
    with pytest.raises(ValueError, match=r"claims-r50\.pth.*do not fit a resnet50"):
        load_model(tmp_path / "claims-r50.pth")
    # a training checkpoint of an older fit (no meta) names what is missing
    torch.save({"model": net.state_dict(), "epoch": 1, "task": {}}, tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match=r"checkpoint\.pt.*without the model's meta"):
        load_model(tmp_path / "checkpoint.pt")
    torch.save({"weights": 1}, tmp_path / "other.pt")  # no meta, no kind
    with pytest.raises(ValueError, match=r"other\.pt.*kind='token' or kind='csa'"):
        load_model(tmp_path / "other.pt")


@pytest.mark.parametrize("loader", ["load_model", "load_checkpoint"])
def test_truncated_checkpoint_names_the_file(tmp_path, loader):
    path = save_model(resnet18(), tmp_path / "net.pth")
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(ValueError, match=r"net\.pth: cannot read the checkpoint"):
        load_model(path) if loader == "load_model" else rt.load_checkpoint(path)


def _toy_data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 8, generator=g)
    return torch.utils.data.TensorDataset(x, x[:, :4] * 2)


def _mse(model, batch):
    x, y = batch
    return nn.functional.mse_loss(model(x), y)


def test_resume_with_a_model_of_another_architecture_names_the_checkpoint(tmp_path):
    cfg = dict(epochs=1, batch_size=8, device="cpu", out_dir=str(tmp_path / "run"))
    torch.manual_seed(0)
    rt.fit(nn.Sequential(nn.Linear(8, 4)), _toy_data(), _mse, rt.TrainConfig(**cfg))
    other = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4))
    with pytest.raises(ValueError, match=r"run/checkpoint\.pt: the checkpoint's weights do not fit"):
        rt.fit(other, _toy_data(), _mse, rt.TrainConfig(**{**cfg, "resume": True}))


# =========================================================================== faults: a full disk
_REAL_FDOPEN = os.fdopen


class FullDisk:
    """A file object that accepts ``limit`` bytes, then fails like a full disk (ENOSPC)."""

    def __init__(self, fh, limit):
        self.fh, self.left = fh, limit

    def write(self, data):
        n = len(data) if isinstance(data, str) else memoryview(data).nbytes
        if n > self.left:
            self.fh.write(data[: self.left] if isinstance(data, str) else bytes(memoryview(data).cast("B")[: self.left]))
            self.left = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.left -= n
        return self.fh.write(data)

    def __getattr__(self, name):
        return getattr(self.fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.fh.close()


@pytest.fixture
def full_disk(monkeypatch):
    """After ``full_disk(limit)``, every file opened through ``os.fdopen`` (all atomic writers) holds
    at most ``limit`` bytes."""
    real = os.fdopen

    def arm(limit):
        monkeypatch.setattr(os, "fdopen", lambda fd, *a, **k: FullDisk(real(fd, *a, **k), limit))

    return arm


def _writers():
    q, db = _feats(1)
    net = resnet18(1)
    return {
        "save_features": (lambda p: save_features(p, q, db, {"v": 2}),
                          lambda p: load_features(p)[0][0, 0]),
        "atomic_write_json": (lambda p: atomic_write_json(p, {"v": list(range(5000))}),
                              lambda p: json.loads(p.read_text())["v"][:1]),
        "atomic_save_npy": (lambda p: atomic_save_npy(p, db),
                            lambda p: np.load(p)[0, 0]),
        "train.save_checkpoint": (lambda p: rt.save_checkpoint(p, {"model": net.state_dict()}),
                                  lambda p: sorted(rt.load_checkpoint(p))),
        "save_model": (lambda p: save_model(net, p), lambda p: load_model(p).meta["whitening"]),
    }


@pytest.mark.parametrize("name", sorted(_writers()))
def test_disk_full_while_writing_keeps_the_previous_file(tmp_path, full_disk, name):
    write, read = _writers()[name]
    path = tmp_path / "out.bin"
    if name == "save_features":
        path = path.with_suffix(".npz")
    # the previous version of the file: written with the same writer, other content
    old = _previous(name, path)
    before = path.read_bytes()
    full_disk(1000)
    with pytest.raises(OSError) as e:
        write(path)
    assert e.value.errno == errno.ENOSPC and str(path) in str(e.value)
    assert path.read_bytes() == before                       # the old file, byte for byte
    assert read(path) == old                                 # and still readable
    assert sorted(os.listdir(tmp_path)) == [path.name]       # no temp file left behind


def _previous(name, path):
    if name == "save_features":
        q, db = _feats(0)
        save_features(path, q, db, {"v": 1})
        return load_features(path)[0][0, 0]
    if name == "atomic_write_json":
        atomic_write_json(path, {"v": [-1]})
        return [-1]
    if name == "atomic_save_npy":
        atomic_save_npy(path, np.full((2, 2), 7.0, np.float32))
        return 7.0
    if name == "train.save_checkpoint":
        rt.save_checkpoint(path, {"epoch": 3})
        return ["epoch"]
    torch.manual_seed(0)
    save_model(build_global_net("resnet18", "gem", whitening=True).eval(), path)
    return True


def test_disk_full_at_the_end_of_extraction_keeps_old_features_and_shards(model, tiny, tmp_path, full_disk,
                                                                         monkeypatch):
    _, ds = tiny
    path = tmp_path / "feats.npz"
    old_q, old_db, _ = extract_test_set_cached(model, ds, path, image_size=SIZE - 8, shard_size=32, progress=False)
    before = path.read_bytes()
    real_save = rx.save_features

    def save_on_full_disk(*a, **k):
        full_disk(4096)
        return real_save(*a, **k)

    monkeypatch.setattr(rx, "save_features", save_on_full_disk)
    with pytest.raises(OSError, match="No space left"):
        extract_test_set_cached(model, ds, path, image_size=SIZE, shard_size=32, progress=False)
    assert path.read_bytes() == before                           # the previous features, intact
    np.testing.assert_array_equal(load_features(path)[1], old_db)
    partial = path.with_name(path.name + ".partial")
    assert {"query.npy", "db_000000000.npy", "db_000000032.npy", "db_000000064.npy"} <= {
        p.name for p in partial.iterdir()}
    # space freed: the run completes from the saved shards, extracting nothing again
    monkeypatch.setattr(rx, "save_features", real_save)
    monkeypatch.setattr(os, "fdopen", _REAL_FDOPEN)
    monkeypatch.setattr(rx, "extract_vectors", lambda *a, **k: pytest.fail("extracted again"))
    q, db, params = extract_test_set_cached(model, ds, path, image_size=SIZE, shard_size=32, progress=False)
    assert params["image_size"] == SIZE and db.shape == old_db.shape and not partial.exists()
    assert not np.allclose(db, old_db)                           # the new size's features


# =========================================================================== faults: a killed extraction
EXTRACT_SCRIPT = textwrap.dedent('''
    """Extract the tiny dataset in shards of 16 and SIGKILL this process half-way through writing
    the third db shard (no exception handler, no cleanup runs)."""
    import os, signal, sys
    import numpy as np
    import torch
    import retrieval.io as rio
    from retrieval.datasets import load_revisited
    from retrieval.extract import extract_test_set_cached
    from retrieval.models import build_global_net

    root, out, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
    real_save, saves = np.save, []

    def dying_save(fh, arr, *a, **k):
        saves.append(1)
        if len(saves) == 4:               # query.npy, db shard 0, db shard 16, then db shard 32
            fh.write(b"\\x93NUMPY half a shard")
            fh.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return real_save(fh, arr, *a, **k)

    rio.np.save = dying_save
    torch.manual_seed(0)
    net = build_global_net("resnet18", "gem").eval()
    extract_test_set_cached(net, load_revisited(root, "synth-tiny"), out, image_size=size, shard_size=16,
                    progress=False)
''')


@pytest.mark.slow
def test_killed_extraction_resumes_without_recomputing_finished_shards(model, tiny, tmp_path, monkeypatch):
    root, ds = tiny
    script = tmp_path / "extract_and_die.py"
    script.write_text(EXTRACT_SCRIPT)
    out = tmp_path / "feats.npz"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script), str(root), str(out), str(SIZE)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not out.exists()                                        # nothing that looks complete
    partial = out.with_name(out.name + ".partial")
    done = sorted(p.name for p in partial.iterdir() if not p.name.startswith("."))
    assert done == ["db_000000000.npy", "db_000000016.npy", "params.json", "query.npy"]
    assert [p.name for p in partial.iterdir() if p.name.startswith(".")]  # the half-written temp file
    for name in done[:2]:
        assert np.load(partial / name).shape == (16, 512)         # finished shards are whole

    calls = []
    real = rx.extract_vectors
    monkeypatch.setattr(rx, "extract_vectors", lambda m, paths, **k: calls.append((k["desc"], len(paths)))
                        or real(m, paths, **k))
    q, db, _ = extract_test_set_cached(model, ds, out, image_size=SIZE, shard_size=16, progress=False)
    assert [c for c in calls if c[0] == "query"] == []            # queries were saved before the kill
    assert sum(n for _, n in calls) == ds.n_db - 32               # only the db shards not finished
    ref_q = real(model, ds.query_paths(), image_size=SIZE, bbxs=ds.bbxs(), progress=False)
    ref_db = real(model, ds.db_paths(), image_size=SIZE, progress=False)
    np.testing.assert_allclose(q, ref_q, atol=1e-5)
    np.testing.assert_allclose(db, ref_db, atol=1e-5)
    assert not partial.exists() and sorted(os.listdir(tmp_path)) == ["extract_and_die.py", "feats.npz"]


def test_corrupt_or_wrong_shape_shard_is_extracted_again(model, tiny, tmp_path, monkeypatch):
    _, ds = tiny
    out = tmp_path / "f.npz"
    real = rx.extract_vectors
    state = {"die": True}

    def die_after_two_shards(m, paths, **k):
        if k["desc"].startswith("db 32") and state["die"]:
            raise KeyboardInterrupt
        return real(m, paths, **k)

    monkeypatch.setattr(rx, "extract_vectors", die_after_two_shards)
    with pytest.raises(KeyboardInterrupt):
        extract_test_set_cached(model, ds, out, image_size=SIZE, shard_size=16, progress=False)
    partial = out.with_name(out.name + ".partial")
    (partial / "db_000000000.npy").write_bytes(b"\x93NUMPY garbage")          # corrupt
    np.save(partial / "db_000000016.npy", np.zeros((3, 512), np.float32))    # wrong shape
    calls = []
    state["die"] = False
    monkeypatch.setattr(rx, "extract_vectors", lambda m, paths, **k: calls.append(k["desc"]) or real(m, paths, **k))
    _, db, _ = extract_test_set_cached(model, ds, out, image_size=SIZE, shard_size=16, progress=False)
    assert calls[:2] == ["db 0-16", "db 16-32"] and "query" not in calls
    np.testing.assert_allclose(db, real(model, ds.db_paths(), image_size=SIZE, progress=False), atol=1e-5)


# =========================================================================== faults: a killed training
TASK = textwrap.dedent('''
    """Toy task: an MLP with dropout on noisy inputs (random streams matter for an exact resume);
    with KILL_AT=n the process SIGKILLs itself at the n-th optimisation step."""
    import os, signal
    import torch
    import torch.nn.functional as F
    from torch import nn
    from torch.utils.data import TensorDataset

    def task(config):
        g = torch.Generator().manual_seed(1)
        x = torch.randn(64, 8, generator=g)
        data = TensorDataset(x, torch.tanh(x @ torch.randn(8, 3, generator=g)))
        model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 3))
        kill_at, steps = int(os.environ.get("KILL_AT", 0)), [0]

        def loss_fn(net, batch):
            steps[0] += 1
            if steps[0] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            xb, yb = batch
            return F.mse_loss(net(xb + 0.1 * torch.randn_like(xb)), yb)

        return model, data, loss_fn
''')


def _cfg(tmp_path, out):
    cfg = dict(epochs=3, batch_size=8, lr=0.05, optimizer="sgd", warmup_steps=3, seed=5, device="cpu",
               out_dir=str(out))
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    return tmp_path / "cfg.json"


def _train(tmp_path, out, kill_at=0, resume=False):
    _cfg(tmp_path, out)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]), "KILL_AT": str(kill_at),
           "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    args = [sys.executable, "-m", "retrieval.train", "--task", "toy_kill_task:task", "--config",
            str(tmp_path / "cfg.json")] + (["--resume"] if resume else [])
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)


@pytest.mark.slow
def test_training_killed_mid_epoch_resumes_from_the_last_checkpoint(tmp_path):
    (tmp_path / "toy_kill_task.py").write_text(TASK)
    # the uninterrupted reference: the same command line, in this process on one thread
    threads = torch.get_num_threads()
    sys.path.insert(0, str(tmp_path))
    try:
        torch.set_num_threads(1)
        assert train_cli(["--task", "toy_kill_task:task", "--config", str(_cfg(tmp_path, tmp_path / "ref"))]) == 0
    finally:
        torch.set_num_threads(threads)
        sys.path.remove(str(tmp_path))
        sys.modules.pop("toy_kill_task", None)
    killed = _train(tmp_path, tmp_path / "run", kill_at=8 + 5)     # 8 steps per epoch: mid-epoch 2
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    ck = rt.load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert ck["epoch"] == 1 and ck["step"] == 8                    # the last complete epoch
    resumed = _train(tmp_path, tmp_path / "run", resume=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "epochs 2..3 (resumed from" in resumed.stdout
    a, b = (rt.load_checkpoint(tmp_path / d / "checkpoint.pt") for d in ("ref", "run"))
    assert a["epoch"] == b["epoch"] == 3
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k                    # bit-identical to the uninterrupted run
    drop = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert drop(a["history"]) == drop(b["history"])
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.endswith(".tmp")]


def test_atomic_write_gives_the_usual_file_mode(tmp_path):
    """Atomic writes end with the mode a plain open() would give (mkstemp alone makes 0600)."""
    import os

    from retrieval.io import atomic_write_json

    umask = os.umask(0)
    os.umask(umask)
    path = atomic_write_json(tmp_path / "m.json", {"a": 1})
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
