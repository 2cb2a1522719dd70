"""Ranked lists in a run folder, the top-10 grids and the ipywidgets result browser (driven in Python)."""

import io

import matplotlib

matplotlib.use("Agg")

import matplotlib.colors as mcolors  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from PIL import Image  # noqa: E402

from retrieval import viz  # noqa: E402
from retrieval.browse import ResultBrowser, framed_png, pick_methods  # noqa: E402
from retrieval.datasets import get_test  # noqa: E402
from retrieval.metrics import compute_map, protocol_gnd  # noqa: E402
from retrieval.run import list_ranks, load_ranks, ranks_path, record_ranks  # noqa: E402


def oracle_ranks(gnd, n_db):
    """Per query: easy, then hard, then junk, then the rest (column q ranks query q)."""
    cols = []
    for g in gnd:
        head = list(g["easy"]) + list(g["hard"]) + list(g["junk"])
        cols.append(head + [i for i in range(n_db) if i not in set(head)])
    return np.array(cols).T


@pytest.fixture(scope="module")
def run(tiny_data, tmp_path_factory):
    """A tiny synthetic test set and a run folder with two methods' lists: seeded random ranks
    ("first") and the ground-truth order ("first+oracle")."""
    root = tiny_data
    ds = get_test("synth", "tiny", root=root, progress=False)
    run_dir = tmp_path_factory.mktemp("run")
    rng = np.random.default_rng(0)
    rand = np.stack([rng.permutation(ds.n_db) for _ in range(ds.n_query)], axis=1)
    record_ranks(run_dir, ds.name, "first", rand, ds.gnd, scores=-np.sort(-rng.random(rand.shape), axis=0),
                 keep=30, data_root=root)
    oracle = oracle_ranks(ds.gnd, ds.n_db)
    record_ranks(run_dir, ds.name, "first+oracle", oracle, ds.gnd, scores=np.ones((5, ds.n_query)), keep=30,
                 data_root=root)
    return ds, run_dir, rand, oracle


def test_record_ranks_round_trip_with_true_ap(run):
    ds, run_dir, rand, oracle = run
    assert list_ranks(run_dir) == {ds.name: ["first", "first+oracle"]}
    r = load_ranks(run_dir, ds.name, "first")
    np.testing.assert_array_equal(r["ranks"], rand[:30])
    assert r["n_ranked"] == ds.n_db and r["method"] == "first" and r["dataset"] == ds.name
    for p in ("easy", "medium", "hard"):
        # AP of the full lists, not of the stored top 30
        np.testing.assert_allclose(r["ap"][p], compute_map(rand, protocol_gnd(ds.gnd, p))[1], rtol=1e-6)
    o = load_ranks(run_dir, ds.name, "first+oracle")
    valid = ~np.isnan(o["ap"]["medium"])
    assert valid.any() and np.allclose(o["ap"]["medium"][valid], 1.0)
    assert np.all(o["scores"][:5] == 1) and np.isnan(o["scores"][5:]).all()  # scored top 5 only


def test_record_ranks_rejects_bad_shapes(run, tmp_path):
    ds, _, rand, _ = run
    with pytest.raises(ValueError, match="n_q="):
        record_ranks(tmp_path, ds.name, "x", rand[:, :-1], ds.gnd)
    with pytest.raises(ValueError, match="scores"):
        record_ranks(tmp_path, ds.name, "x", rand, ds.gnd, scores=np.zeros((3, 2)))
    with pytest.raises(FileNotFoundError, match="no ranked lists of 'nope'"):
        load_ranks(tmp_path, ds.name, "nope")
    assert ranks_path(tmp_path, "d", "a/b").name == "a_b.npz"


def test_result_labels_follow_the_protocols():
    g = {"easy": [1, 2], "hard": [3], "junk": [4]}
    ids = [1, 3, 4, 5]
    assert viz.result_labels(g, ids, "easy") == ["positive", "junk", "junk", "negative"]
    assert viz.result_labels(g, ids, "medium") == ["positive", "positive", "junk", "negative"]
    assert viz.result_labels(g, ids, "hard") == ["junk", "positive", "junk", "negative"]


def test_pick_queries_gains_losses_and_random():
    a = np.array([0.5, 0.2, 0.9, np.nan, 0.4, 0.3, 0.6, 0.1])
    b = np.array([0.9, 0.2, 0.3, 0.8, 0.45, 0.1, 0.6, 0.35])
    picks = viz.pick_queries(a, b, n_gain=2, n_loss=2, n_random=2, seed=1)
    assert picks[:2] == [(0, "gain"), (7, "gain")]      # +0.4, +0.25
    assert picks[2:4] == [(2, "loss"), (5, "loss")]     # -0.6, -0.2
    randoms = [q for q, why in picks if why == "random"]
    assert len(randoms) == 2 and set(randoms) <= {1, 4, 6} and 3 not in randoms  # NaN never picked
    assert viz.pick_queries(a, b, 2, 2, 2, seed=1) == picks  # seeded
    with pytest.raises(ValueError, match="one length"):
        viz.pick_queries(a, b[:-1])


def test_thumbnail_is_read_once_and_sized(run):
    ds = run[0]
    path = str(ds.db_paths()[0])
    t1, t2 = viz.thumbnail(path, 48), viz.thumbnail(path, 48)
    assert t1 is t2 and max(t1.shape[:2]) == 48 and t1.dtype == np.uint8 and not t1.flags.writeable


def _frame_hex(ax):
    return mcolors.to_hex(ax.spines["top"].get_edgecolor())


def test_plot_topk_frames_and_captions(run):
    ds, run_dir, rand, _ = run
    r = load_ranks(run_dir, ds.name, "first")
    fig = viz.plot_topk(ds, r["ranks"], [0, 2], scores=r["scores"], k=10, protocol="medium", ap=r["ap"]["medium"],
                        thumb=48)
    axes = np.array(fig.axes).reshape(2, 11)
    for row, q in enumerate([0, 2]):
        qa = axes[row, 0]
        assert _frame_hex(qa) == viz.RESULT_COLOURS["query"]
        assert any(isinstance(p, Rectangle) for p in qa.patches)  # the bbx
        assert f"query {q}" in qa.get_ylabel() and f"AP {100 * r['ap']['medium'][q]:.1f}" in qa.get_ylabel()
        labels = viz.result_labels(ds.gnd[q], rand[:10, q], "medium")
        for c in range(10):
            ax = axes[row, c + 1]
            assert _frame_hex(ax) == viz.RESULT_COLOURS[labels[c]]
            assert ax.get_xlabel() == f"{c + 1}. #{rand[c, q]}  {r['scores'][c, q]:.3f}"
    plt.close(fig)


def test_plot_topk_pairs_rows_per_method(run):
    ds, run_dir, _, oracle = run
    a, b = load_ranks(run_dir, ds.name, "first"), load_ranks(run_dir, ds.name, "first+oracle")
    picks = viz.pick_queries(a["ap"]["hard"], b["ap"]["hard"], 1, 1, 1)
    fig = viz.plot_topk_pairs(ds, a, b, picks, k=4, protocol="hard", thumb=48)
    axes = np.array(fig.axes).reshape(2 * len(picks), 5)
    for i, (q, why) in enumerate(picks):
        top, bottom = axes[2 * i, 0].get_ylabel(), axes[2 * i + 1, 0].get_ylabel()
        assert f"query {q} · {why}" in top and "first stage" in top and "+oracle" in bottom
        assert f"AP {100 * b['ap']['hard'][q]:.1f}" in bottom
        expect = viz.result_labels(ds.gnd[q], oracle[:4, q], "hard")
        assert [_frame_hex(ax) for ax in axes[2 * i + 1, 1:]] == [viz.RESULT_COLOURS[x] for x in expect]
    plt.close(fig)


def test_pick_methods():
    methods = ["gem", "gem+csa", "gem+dba"]
    assert pick_methods(methods, None, "+csa") == ("gem", "gem+csa")
    assert pick_methods(methods, None, None, score={"gem+csa": 0.1, "gem+dba": 0.3}.get) == ("gem", "gem+dba")
    with pytest.raises(ValueError, match="method_b='gem\\+x' is not recorded"):
        pick_methods(methods, None, "+x")


def _pixel(png: bytes, xy=(1, 1)):
    return "#%02x%02x%02x" % Image.open(io.BytesIO(png)).convert("RGB").getpixel(xy)


def _tiles(app, row):
    return app.lists.children[row].children[1].children


def test_browser_defaults_and_query_change(run):
    ds, run_dir, rand, oracle = run
    app = ResultBrowser(run_dir, thumb=64)
    assert (app.dataset.value, app.method_a.value, app.method_b.value) == (ds.name, "first", "first+oracle")
    a = load_ranks(run_dir, ds.name, "first")
    label, q0 = app.query.options[0]
    assert q0 == 0 and f"A {100 * a['ap']['medium'][0]:.1f}" in label
    assert len(_tiles(app, 0)) == len(_tiles(app, 1)) == 10
    before = [t.children[0].value for t in _tiles(app, 0)]
    app.query.value = 3
    after = [t.children[0].value for t in _tiles(app, 0)]
    assert before != after
    assert [t.children[1].description.split(".")[1].split()[0] for t in _tiles(app, 0)] == \
        [f"#{i}" for i in rand[:10, 3]]
    # frame colours of method B's tiles are those of the ground truth
    expect = viz.result_labels(ds.gnd[3], oracle[:10, 3], "medium")
    assert [_pixel(t.children[0].value) for t in _tiles(app, 1)] == [viz.RESULT_COLOURS[x] for x in expect]
    assert "first stage" in app.lists.children[0].children[0].value and "+oracle" in app.lists.children[1].children[0].value


def test_browser_click_protocol_and_k(run):
    ds, run_dir, rand, oracle = run
    app = ResultBrowser(run_dir, thumb=64)
    app.query.value = 1
    _tiles(app, 1)[0].children[1].click()  # first result of B
    i = int(oracle[0, 1])
    rank_a = int(np.flatnonzero(rand[:30, 1] == i)[0]) + 1 if i in rand[:30, 1] else None
    text = app.detail.children[0].value
    assert f"db {i}" in text and "+oracle: rank 1" in text
    assert (f"first stage: rank {rank_a}" if rank_a else "first stage: not in the top 30") in text
    assert bytes(app.detail.children[1].value).startswith(b"\x89PNG")
    app.k.value = 4
    assert len(_tiles(app, 0)) == 4 and app.detail.children == ()
    app.protocol.value = "hard"
    expect = viz.result_labels(ds.gnd[1], oracle[:4, 1], "hard")
    assert [_pixel(t.children[0].value) for t in _tiles(app, 1)] == [viz.RESULT_COLOURS[x] for x in expect]
    assert "AP hard" in app.lists.children[0].children[0].value


def test_browser_errors(run, tmp_path):
    ds, run_dir, _, _ = run
    with pytest.raises(FileNotFoundError, match="no ranked lists recorded"):
        ResultBrowser(tmp_path)
    with pytest.raises(ValueError, match="dataset='roxford5k'"):
        ResultBrowser(run_dir, dataset="roxford5k")
    with pytest.raises(ValueError, match="method_a='nope'"):
        ResultBrowser(run_dir, method_a="nope")
    with pytest.raises(ValueError, match="protocol="):
        ResultBrowser(run_dir, protocol="medium+")


def test_framed_png_border_and_box(run):
    ds = run[0]
    png = framed_png(ds.query_paths()[0], "#ff0000", size=64, border=3, bbx=ds.gnd[0]["bbx"])
    im = Image.open(io.BytesIO(png)).convert("RGB")
    assert max(im.size) == 64 + 6 and im.getpixel((0, 0)) == (255, 0, 0)


def test_browser_on_a_classic_dataset(run, tmp_path):
    """An original-format (Oxford5k-like: ok/junk) copy of the tiny set next to the revisited one:
    its lists are scored under 'classic' only, the browser offers that protocol for it and switches
    back to E/M/H for the revisited set."""
    import pickle

    ds, _, rand, oracle = run
    root = tmp_path / "data"
    folder = root / "test" / "synth-classic"
    folder.mkdir(parents=True)
    (folder / "jpg").symlink_to(ds.root / "jpg", target_is_directory=True)
    gnd = [{"bbx": g["bbx"], "ok": list(g["easy"]) + list(g["hard"]), "junk": list(g["junk"])} for g in ds.gnd]
    cfg = {"imlist": ds.imlist, "qimlist": ds.qimlist, "gnd": gnd}
    (folder / "gnd_synth-classic.pkl").write_bytes(pickle.dumps(cfg))
    run_dir = tmp_path / "run"
    record_ranks(run_dir, "synth-classic", "first", rand, gnd, keep=30, data_root=root)
    record_ranks(run_dir, "synth-classic", "first+oracle", oracle, gnd, keep=30, data_root=root)
    record_ranks(run_dir, ds.name, "first", rand, ds.gnd, keep=30, data_root=ds.root.parents[1])
    r = load_ranks(run_dir, "synth-classic", "first")
    assert list(r["ap"]) == ["classic"]
    np.testing.assert_allclose(r["ap"]["classic"], compute_map(rand, protocol_gnd(ds.gnd, "medium"))[1], rtol=1e-6)
    medium = viz.result_labels(ds.gnd[3], oracle[:10, 3], "medium")
    assert viz.result_labels(gnd[3], oracle[:10, 3], "classic") == medium

    app = ResultBrowser(run_dir, dataset="synth-classic", thumb=64)
    assert list(app.protocol.options) == ["classic"] and app.protocol.value == "classic"
    app.query.value = 3
    expect = viz.result_labels(gnd[3], oracle[:10, 3], "classic")
    assert [_pixel(t.children[0].value) for t in _tiles(app, 1)] == [viz.RESULT_COLOURS[x] for x in expect]
    assert "AP classic" in app.lists.children[1].children[0].value
    app.dataset.value = ds.name                                         # revisited set: E/M/H again
    assert list(app.protocol.options) == ["easy", "medium", "hard"] and app.protocol.value == "medium"
    app.dataset.value = "synth-classic"
    assert app.protocol.value == "classic"
    with pytest.raises(ValueError, match=r"protocol='medium'.*scored under \('classic',\)"):
        ResultBrowser(run_dir, dataset="synth-classic", protocol="medium")
