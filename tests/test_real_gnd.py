"""The real ground truth of ROxf/RPar and Oxford5k/Paris6k (tests/data/real_gnd, see its README):
loading through get_test, the E/M/H protocols against a plain port of revisitop's compute_map (bit
for bit), the classic protocol against a port of the Oxford compute_ap program, and the consumers
of evaluate() (tables, metrics.json, ranked lists, grid summaries) on classic results."""

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_metrics import ref_classic_ap_one, ref_compute_map  # loop ports of revisitop / compute_ap.cpp

import retrieval.run.store as store
from retrieval import datasets
from retrieval.datasets import get_test, load_revisited, validate_gnd
from retrieval.metrics import (CLASSIC, PROTOCOLS, classic_ap, compute_map, evaluate, format_map_table,
                               format_table, gnd_protocols, protocol_gnd)
from retrieval.run import sweep as grid

REAL_GND = Path(__file__).parent / "data" / "real_gnd"
SIZES = {"roxford5k": (4993, 70), "rparis6k": (6322, 70), "oxford5k": (5063, 55), "paris6k": (6392, 55)}


@pytest.fixture(scope="module")
def real_root(tmp_path_factory):
    """A data root holding the four real gnd files in the downloaded layout (no images)."""
    root = tmp_path_factory.mktemp("data")
    for name in SIZES:
        (root / "test" / name).mkdir(parents=True)
        shutil.copyfile(REAL_GND / f"gnd_{name}.pkl", root / "test" / name / f"gnd_{name}.pkl")
    return root


def ranking(rng, gnd_entry_positives, n_db):
    """Full-db ranking: random scores, positives lifted by a random amount (varied APs)."""
    scores = rng.random(n_db)
    pos = np.asarray(gnd_entry_positives, dtype=np.int64)
    scores[pos] += rng.random(pos.size) * rng.uniform(0.2, 1.5)
    return np.argsort(-scores, kind="stable")


# --------------------------------------------------------------------------- references
def revisitop_protocols(gnd):
    """revisitop example_evaluate.py: the ok/junk lists of each protocol."""
    cat = lambda *lists: np.concatenate([np.asarray(x, dtype=np.int64) for x in lists])  # noqa: E731
    return {"easy": [{"ok": cat(g["easy"]), "junk": cat(g["junk"], g["hard"])} for g in gnd],
            "medium": [{"ok": cat(g["easy"], g["hard"]), "junk": cat(g["junk"])} for g in gnd],
            "hard": [{"ok": cat(g["hard"]), "junk": cat(g["junk"], g["easy"])} for g in gnd]}


# --------------------------------------------------------------------------- loading
def test_get_test_loads_the_four_real_sets(real_root):
    assert set(datasets.REAL_TEST) == set(SIZES) and set(datasets.CLASSIC_TEST) == {"oxford5k", "paris6k"}
    for name, (n_db, n_q) in SIZES.items():
        ds = get_test(name, root=real_root)
        assert (ds.name, ds.n_db, ds.n_query) == (name, n_db, n_q)
        assert datasets.resolve_name(name) == name and datasets.train_name(name) == "retrieval-SfM-120k"
        assert all(p.parent == real_root / "test" / name / "jpg" for p in ds.query_paths()[:3] + ds.db_paths()[:3])
        if name in datasets.CLASSIC_TEST:
            assert gnd_protocols(ds.gnd) == (CLASSIC,)
            assert [ds.imlist[i] for i in ds.qidx] == ds.qimlist       # the queries are db images
            assert all(q in g["ok"] for q, g in zip(ds.qidx, ds.gnd))  # ... and their own positives
        else:
            assert gnd_protocols(ds.gnd) == PROTOCOLS and ds.qidx is None
            assert not set(ds.qimlist) & set(ds.imlist)
    # the original queries are the first 55 revisited ones, same boxes
    ox, rox = load_revisited(real_root, "oxford5k"), load_revisited(real_root, "roxford5k")
    assert ox.qimlist == rox.qimlist[:55] and ox.bbxs() == rox.bbxs()[:55]


def test_missing_or_inconsistent_ground_truth(tmp_path, real_root):
    with pytest.raises(FileNotFoundError, match=r"oxford5k is not downloaded .*download oxford5k"):
        get_test("oxford5k", root=tmp_path)
    with pytest.raises(FileNotFoundError, match="download paris6k"):
        get_test("paris6k", root=tmp_path)
    cfg = pickle.loads((REAL_GND / "gnd_oxford5k.pkl").read_bytes())
    validate_gnd(cfg)
    cfg["qidx"] = list(cfg["qidx"])
    cfg["qidx"][3] += 1
    with pytest.raises(ValueError, match=r"qidx\[3\].*does not point at query"):
        validate_gnd(cfg, "gnd_oxford5k.pkl")
    cfg["qidx"] = cfg["qidx"][:-1]
    with pytest.raises(ValueError, match="one integer db index per query"):
        validate_gnd(cfg)


# --------------------------------------------------------------------------- protocols
@pytest.mark.parametrize("name", ["roxford5k", "rparis6k"])
def test_revisited_protocols_equal_revisitop_bit_for_bit(name, real_root):
    ds = get_test(name, root=real_root)
    rng = np.random.default_rng(15)
    ranks = np.stack([ranking(rng, list(g["easy"]) + list(g["hard"]), ds.n_db) for g in ds.gnd], axis=1)
    kappas = (1, 5, 10)
    res = evaluate(ranks, ds.gnd, kappas)
    assert list(res) == list(PROTOCOLS)
    ref_gnd = revisitop_protocols(ds.gnd)
    for p in PROTOCOLS:
        m, aps, pr, prs = ref_compute_map(ranks, ref_gnd[p], kappas)
        got = compute_map(ranks, protocol_gnd(ds.gnd, p), kappas)
        assert np.array_equal(got[1], aps, equal_nan=True) and np.array_equal(got[3], prs, equal_nan=True)
        assert res[p]["map"] == m and [res[p][f"mp@{k}"] for k in kappas] == list(pr)   # ==, no tolerance
        assert 0.05 < m < 0.95                                                           # a non-trivial ranking
        assert np.mean(aps[~np.isnan(aps)]) != m     # on these rankings a pairwise sum is off in the last bits
    # two ROxf queries have no Easy positives: NaN, excluded from the Easy mean
    easy_aps = compute_map(ranks, protocol_gnd(ds.gnd, "easy"))[1]
    assert np.isnan(easy_aps).sum() == (2 if name == "roxford5k" else 0)


@pytest.mark.parametrize("name", ["oxford5k", "paris6k"])
def test_classic_protocol_equals_the_oxford_program(name, real_root):
    ds = get_test(name, root=real_root)
    rng = np.random.default_rng(7)
    ranks = np.stack([ranking(rng, g["ok"], ds.n_db) for g in ds.gnd], axis=1)
    res = evaluate(ranks, ds.gnd, kappas=(1, 5, 10))
    assert list(res) == [CLASSIC] and set(res[CLASSIC]) == {"map", "mp@1", "mp@5", "mp@10"}
    ref = [ref_classic_ap_one(ranks[:, q].tolist(), g["ok"], g["junk"]) for q, g in enumerate(ds.gnd)]
    _, aps, _, _ = compute_map(ranks, protocol_gnd(ds.gnd, CLASSIC))
    np.testing.assert_allclose(aps, ref, rtol=1e-12, atol=1e-15)
    assert res[CLASSIC]["map"] == pytest.approx(np.mean(ref), rel=1e-12) and 0.05 < res[CLASSIC]["map"] < 0.95
    assert res[CLASSIC]["map"] == classic_ap(ranks, ds.gnd)[0]
    m, _, pr, _ = ref_compute_map(ranks, ds.gnd, (1, 5, 10))          # what cirtorch runs on these files
    assert res[CLASSIC]["map"] == m and [res[CLASSIC][f"mp@{k}"] for k in (1, 5, 10)] == list(pr)
    assert np.mean(aps) != m                         # np.mean would miss it by an ulp or so


# --------------------------------------------------------------------------- consumers
def test_classic_results_through_tables_runs_and_grid(real_root, tmp_path):
    ds = get_test("oxford5k", root=real_root)
    rng = np.random.default_rng(1)
    ranks = np.stack([ranking(rng, g["ok"], ds.n_db) for g in ds.gnd], axis=1)
    res = evaluate(ranks, ds.gnd)
    rev = get_test("roxford5k", root=real_root)
    res_rev = evaluate(np.stack([rng.permutation(rev.n_db) for _ in range(rev.n_query)], axis=1), rev.gnd)

    table = format_table({"gem": res}).splitlines()
    assert table[0].split() == ["name", "metric", "classic"]
    assert table[1].split() == ["gem", "mAP", f"{100 * res[CLASSIC]['map']:.2f}"]
    header = format_map_table({"gem": res, "rox": res_rev}).splitlines()[0]
    assert header.split() == ["method", "E", "M", "H", "classic"]

    run_dir = tmp_path / "run"
    store.record_metrics(run_dir, ds.name, "gem", res)
    store.record_metrics(run_dir, rev.name, "gem", res_rev)
    metrics = store.load_metrics(run_dir)
    assert set(metrics["oxford5k"]["gem"]) == {CLASSIC} and set(metrics["roxford5k"]["gem"]) == set(PROTOCOLS)
    lines = store.summary_table(metrics).splitlines()
    assert lines[0].split()[-4:] == ["E", "M", "H", "classic"]
    assert lines[1].split()[2:] == ["-", "-", "-", f"{100 * res[CLASSIC]['map']:.2f}"]
    assert lines[2].split()[-1] == "-"
    with pytest.raises(ValueError, match="lack protocols"):
        store.record_metrics(run_dir, "x", "m", {"medium": res[CLASSIC]})

    store.record_ranks(run_dir, ds.name, "gem", ranks, ds.gnd, keep=20, data_root=real_root)
    saved = store.load_ranks(run_dir, ds.name, "gem")
    assert list(saved["ap"]) == [CLASSIC]
    np.testing.assert_allclose(saved["ap"][CLASSIC], compute_map(ranks, protocol_gnd(ds.gnd, CLASSIC))[1], rtol=1e-6)

    folder = tmp_path / "g" / "x=1"
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps(metrics))
    rows = grid.collect(tmp_path / "g", ["x=1"], [{"x": 1}])
    ox_row = next(r for r in rows if r["dataset"] == "oxford5k")
    assert ox_row["classic"] == round(100 * res[CLASSIC]["map"], 2) and "M" not in ox_row
    assert ox_row["mp@5_classic"] == round(100 * res[CLASSIC]["mp@5"], 2)
    cols = grid._columns(rows)
    assert cols.index("E") < cols.index("classic") < cols.index("mp@1_E")
    paths = grid.write_summary(tmp_path / "g", rows, notebook=Path("01_extract_features.ipynb"), profile="smoke",
                               failed={})
    header = next(ln for ln in paths["md"].read_text().splitlines() if ln.startswith("| combination"))
    assert [c.strip() for c in header.strip("|").split("|")][-4:] == ["E", "M", "H", "classic"]
    assert paths["png"].stat().st_size > 0
