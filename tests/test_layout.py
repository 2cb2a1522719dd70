"""Run and RunLayout: every artifact under its run, metrics rows with their origin, parameters routed to the
notebooks that have them, the benchmark of a run travelling from 00 to the later notebooks; and the
end-to-end checks of a run: another image size and benchmark seed, a run folder outside the checkout,
and a network trained by ``torchrun -m retrieval.train`` evaluated by 01."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from retrieval.config import ROOT
from retrieval.datasets import load_revisited
from retrieval.io import load_features
from retrieval.models.whitening import Whitening
from retrieval.rerank import rerank
from retrieval.rerank.select import select_setting
from retrieval.extract import extract_test_set_cached, model_fingerprint
from retrieval.run import Run, RunLayout
from retrieval.models import build_global_net, load_model, save_model
import retrieval.run.notebooks as nbrun
import retrieval.run.store as store
from retrieval.run.__main__ import main as run_cli
from retrieval.metrics import PROTOCOLS


def _res(v):
    return {p: {"map": v, "mp@1": v} for p in PROTOCOLS}


def test_metrics_rows_record_their_origin_and_never_overwrite_another_model(tmp_path):
    a = Run(tmp_path, "02_train_global")
    assert a.record("d", "gem-x", _res(0.5), image_size=240, weights="w1") == "gem-x"
    row = store.load_metrics(tmp_path)["d"]["gem-x"]
    assert row["recorded"] == {"notebook": "02_train_global", "image_size": 240, "weights": "w1"}
    assert row["medium"]["map"] == 0.5
    b = Run(tmp_path, "06_train_token")
    assert b.record("d", "gem-x", _res(0.6), image_size=240, weights="w1") == "gem-x"  # same model: a re-measurement
    assert b.record("d", "gem-x", _res(0.7), image_size=128, weights="w1") == "gem-x [06_train_token]"
    assert a.record("d", "gem-x", _res(0.8), image_size=128, weights="w2") == "gem-x"  # its own row, retrained
    metrics = store.load_metrics(tmp_path)["d"]
    assert metrics["gem-x"]["medium"]["map"] == 0.8 and metrics["gem-x [06_train_token]"]["medium"]["map"] == 0.7
    assert "recorded" not in store.summary_table(store.load_metrics(tmp_path)).split("\n")[0]
    assert "80.00" in store.summary_table(store.load_metrics(tmp_path))


def test_paths_live_under_the_run(tmp_path):
    lay = RunLayout(tmp_path / "r")
    paths = [lay.trained_network("n"), lay.features("synth-x", "n", 240), lay.train_features("synth-x", "n", [64, 128], "val"),
             lay.anchors("synth-x", "n-240-pq8x4"), lay.ranks("d", "a/b"), lay.metrics_file, lay.figure("f.png"),
             lay.whitening("n", 0.5), lay.whitening_choice("n"), lay.benchmark_file,
             lay.task_dir("csa")]
    assert all(p.is_relative_to(tmp_path / "r") for p in paths)
    assert lay.features("s", "n", [64, 128]).name == "n-64+128.npz" and lay.ranks("d", "a/b").name == "a_b.npz"
    assert RunLayout(tmp_path / "r", fig_dir=tmp_path / "figs").figure("f.png") == tmp_path / "figs" / "f.png"
    with pytest.raises(ValueError, match="plain folder name"):
        lay.task_dir("../x")


def test_benchmark_of_the_run_reaches_later_notebooks(tmp_path, monkeypatch):
    monkeypatch.setenv("RETRIEVAL_PROFILE", "smoke")
    lay = Run(tmp_path)
    assert lay.benchmark() == {"preset": "tiny", "difficulty": 1.0, "data_seed": 0}  # no record: the profile's
    lay.record_benchmark("tiny", 1.5, 7)
    assert json.loads((tmp_path / "benchmark.json").read_text())["name"] == "synth-tiny-d1.5-s7"
    assert lay.benchmark() == {"preset": "tiny", "difficulty": 1.5, "data_seed": 7}
    assert lay.train_name("synth") == "synth-tiny-d1.5-s7" and lay.train_name("roxford5k") == "retrieval-SfM-120k"
    assert lay.benchmark(data_seed=3)["data_seed"] == 3  # an explicit value wins (and is reported)


def test_parameters_go_only_to_notebooks_that_have_them():
    nbs = nbrun.notebooks()
    routed = nbrun.route_parameters({"image_size": 160, "data_seed": 7, "train_image_size": 64}, nbs)
    has = {name for name, p in routed.items() if "image_size" in p}
    assert has == {nb.name for nb in nbs if nb.name[:2] in ("01", "02", "03", "04", "05", "06", "07")}
    assert {name for name, p in routed.items() if "data_seed" in p} == has | {"00_data.ipynb"}
    assert {name for name, p in routed.items() if "train_image_size" in p} == {
        "02_train_global.ipynb", "05_asymmetric.ipynb", "06_train_token.ipynb"}
    with pytest.raises(ValueError, match="'imagesize'.*not parameters of any notebook"):
        nbrun.route_parameters({"imagesize": 160}, nbs)
    assert run_cli(["demo", "--only", "01", "-p", "imagesize", "1"]) == 2


def test_two_runs_training_the_same_network_name_never_share_descriptors(tmp_path, tiny_data, monkeypatch):
    monkeypatch.setenv("RETRIEVAL_DATA_DIR", str(tiny_data))
    got = {}
    for seed in (1, 2):
        lay = Run(tmp_path / f"run{seed}")
        torch.manual_seed(seed)
        net = build_global_net("resnet18", "gem").eval()
        net.meta["trained"] = True
        save_model(net, lay.paths.trained_network("gem-resnet18"))
        ds = lay.test_set("synth", "tiny", 0)
        loaded, query, db = lay.network_and_descriptors("gem-resnet18", ds, 48, "cpu")
        assert model_fingerprint(loaded) == model_fingerprint(net)
        assert lay.paths.features(ds.name, "gem-resnet18", 48).is_file()
        got[seed] = query, db, lay
    assert not np.allclose(got[1][1], got[2][1])  # each run its own network's descriptors
    # run 2's file copied into run 1 is not picked up: the cache checks the weights' fingerprint
    lay1 = got[1][2]
    f1, f2 = (got[s][2].paths.features("synth-tiny", "gem-resnet18", 48) for s in (1, 2))
    f1.write_bytes(f2.read_bytes())
    ds = lay1.test_set("synth", "tiny", 0)
    _, query, db = lay1.network_and_descriptors("gem-resnet18", ds, 48, "cpu")
    np.testing.assert_allclose(db, got[1][1], rtol=0, atol=1e-6)
    ref = extract_test_set_cached(load_model(lay1.paths.trained_network("gem-resnet18")), ds, tmp_path / "ref.npz", image_size=48,
                          progress=False)[1]
    np.testing.assert_allclose(db, ref, rtol=0, atol=1e-6)


@pytest.mark.slow
def test_demo_with_another_size_and_benchmark_seed_into_a_folder_outside_the_checkout(tmp_path, kernel_env):
    """`runs demo -p image_size 160 -p data_seed 7` (smoke profile) into a folder outside the checkout: it
    completes, every notebook evaluates on the seed-7 benchmark at 160 px, and nothing lands in the checkout."""
    kernel_env(tmp_path / "data")
    run = tmp_path / "scratch" / "demo"
    assert not run.is_relative_to(ROOT)
    before = sorted(p.name for p in (ROOT / "figures").iterdir())
    assert run_cli(["demo", "--profile", "smoke", "--run-dir", str(run),
                      "-p", "image_size", "160", "-p", "data_seed", "7"]) == 0
    metrics = store.load_metrics(run)
    assert list(metrics) == ["synth-tiny-s7", "synth-tiny-s7+synth-200"]  # 03 also with the rendered distractors
    assert {r["recorded"]["notebook"] for r in metrics["synth-tiny-s7+synth-200"].values()} == {"03_rerank"}
    # every row with distractors also exists without (03's first stage on the plain set is 02's row: same model)
    assert set(metrics["synth-tiny-s7+synth-200"]) <= set(metrics["synth-tiny-s7"])
    rows = metrics["synth-tiny-s7"].values()
    by_nb = {}
    for r in rows:
        by_nb.setdefault(r["recorded"].get("notebook"), set()).add(r["recorded"].get("image_size"))
    assert set(by_nb) == {"01_extract_features", "02_train_global", "03_rerank", "05_asymmetric", "06_train_token",
                          "07_dir_experiments"}  # 04 builds anchors, 08 draws: no mAP rows
    for nb in ("01_extract_features", "02_train_global", "03_rerank", "06_train_token", "07_dir_experiments"):
        assert by_nb[nb] == {160}, (nb, by_nb[nb])
    assert json.loads((run / "benchmark.json").read_text())["name"] == "synth-tiny-s7"
    assert {p.name for p in (run / "features").iterdir()} == {"synth-tiny-s7", "synth-tiny-s7-distractors",
                                                              "synth-tiny-s7-val"}
    # 03's rows carry the settings chosen on the validation benchmark, and they are what the selection
    # function returns given the validation set alone (its cached descriptors, whitened as 03 does)
    (sel_file,) = [f for f in (run / "selection").glob("*.json") if not f.name.startswith("csa-")]
    first, selection = sel_file.stem, json.loads(sel_file.read_text())
    # CSA: its training grid x test K swept on the validation lists (csa_grid="rerun" in the smoke profile);
    # its rows carry the argmax of that recorded sweep, the sweep's configuration names this first stage
    csa = json.loads((run / "selection" / f"csa-{first}.json").read_text())
    sweep = csa["selection"]["sweep"]
    best = max(range(len(sweep)), key=lambda i: (sweep[i]["criterion"], -i))
    assert csa["selection"]["selected"] == sweep[best]["setting"] and set(sweep[best]["setting"]) == {"epochs", "lr", "K"}
    assert csa["config"]["first_stage"] == first and csa["config"]["val"] == "synth-tiny-s7-val"
    assert len(sweep) == 2 * 2 * 2  # the smoke grids: epochs [1, 2] x lr [0.1, 0.3] x K [16, 32]
    for dataset in ("synth-tiny-s7", "synth-tiny-s7+synth-200"):
        assert metrics[dataset][f"{first}+csa"]["recorded"]["setting"] == sweep[best]["setting"]
    network = first.split("+lw")[0]
    alpha = float(first.split("+lw-shrink")[1]) if "+lw-shrink" in first else 0.0  # "+lw": shrinkage 0
    layout = RunLayout(run)
    q, db, _ = load_features(layout.features("synth-tiny-s7-val", network, 160))
    lw = Whitening.load(layout.whitening(network, alpha))
    val = load_revisited(tmp_path / "data", "synth-tiny-s7-val")
    for method, sel in selection.items():
        again = select_setting(method, lw.apply(q), lw.apply(db), val.gnd, rerank, progress=False)
        assert again["selected"] == sel["selected"] and again["params"] == sel["params"], method
        for dataset in ("synth-tiny-s7", "synth-tiny-s7+synth-200"):
            assert metrics[dataset][f"{first}+{method}"]["recorded"]["setting"] == sel["params"], (dataset, method)
            assert metrics[dataset][f"{first}+{method}"]["recorded"]["reference"] == first
            assert len(metrics[dataset][f"{first}+{method}"]["ap"]["hard"]) == 6
    assert (run / "anchors" / "synth-tiny-s7").is_dir() and (run / "figures" / "08_top10.png").is_file()
    assert sorted(p.name for p in (ROOT / "figures").iterdir()) == before
    assert not (ROOT / "data" / "test" / "synth-tiny-s7").exists()


@pytest.mark.slow
def test_network_trained_by_torchrun_loads_and_evaluates_in_01(tmp_path, tiny_data, kernel_env):
    kernel_env(tiny_data)
    run = tmp_path / "run"
    cfg = dict(train_set="synth-tiny", root=str(tiny_data), backbone="resnet18", image_size=64, qsize=4, poolsize=16,
               nnum=2, batch_size=2, epochs=1, lr=1e-3, warmup_epochs=0, device="cpu", log_every=1,
               out_dir=str(RunLayout(run).task_dir("train_global")))
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
                           "-m", "retrieval.train", "--task", "global", "--config", str(tmp_path / "cfg.json")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    exported = RunLayout(run).trained_network("gem-resnet18")
    net = load_model(exported)
    assert net.name == "gem-resnet18" and net.meta["trained"]
    ckpt = load_model(exported.parent / "checkpoint.pt")  # the training checkpoint rebuilds the same network
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ckpt(x), net(x), rtol=0, atol=0)
    metrics = nbrun.run_notebooks(run, "smoke", {"network": "gem-resnet18", "image_size": 64}, only=["01"],
                                 progress=False)
    row = metrics["synth-tiny"]["gem-resnet18"]
    assert row["recorded"]["weights"] == model_fingerprint(net) and 0 <= row["medium"]["map"] <= 1
