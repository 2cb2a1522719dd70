import json

import pytest

from retrieval.config import profile, resolve
import retrieval.run.notebooks as nbrun
import retrieval.run.store as store
from retrieval.metrics import PROTOCOLS


def _res(e, m, h):
    return {p: {"map": v, "mp@1": v, "mp@5": v, "mp@10": v} for p, v in zip(PROTOCOLS, (e, m, h))}


def test_record_metrics_merges_entries(tmp_path):
    store.record_metrics(tmp_path, "synth-tiny", "gem-resnet18-untrained", _res(0.5, 0.4, 0.2))
    store.record_metrics(tmp_path, "synth-tiny", "+aqe", _res(0.6, 0.5, 0.3))
    store.record_metrics(tmp_path, "roxford5k", "gem-resnet18-untrained", _res(0.1, 0.1, 0.05))
    store.record_metrics(tmp_path, "synth-tiny", "+aqe", _res(0.7, 0.6, 0.3))  # replaces
    data = json.loads((tmp_path / "metrics.json").read_text())
    assert set(data) == {"synth-tiny", "roxford5k"}
    assert set(data["synth-tiny"]) == {"gem-resnet18-untrained", "+aqe"}
    assert data["synth-tiny"]["+aqe"]["easy"]["map"] == 0.7
    assert data["synth-tiny"]["gem-resnet18-untrained"]["hard"]["mp@5"] == 0.2
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temp files left


def test_record_metrics_rejects_partial_results(tmp_path):
    with pytest.raises(ValueError, match="hard"):
        store.record_metrics(tmp_path, "d", "m", {k: v for k, v in _res(1, 1, 1).items() if k != "hard"})


def test_load_metrics_reports_corrupt_file(tmp_path):
    (tmp_path / "metrics.json").write_text("{not json")
    with pytest.raises(ValueError, match="metrics.json"):
        store.load_metrics(tmp_path)


def test_summary_table_lists_every_method():
    table = store.summary_table({"synth": {"a": _res(0.5, 0.25, 0.125)}, "rox": {"b": _res(1, 1, 1)}})
    lines = table.splitlines()
    assert len(lines) == 3
    assert lines[1].split()[-3:] == ["50.00", "25.00", "12.50"]
    assert lines[2].split()[:2] == ["rox", "b"]


def test_notebooks_are_found_in_order():
    names = [p.name for p in nbrun.notebooks()]
    assert names == sorted(names) and names[0].startswith("00_")


def test_profile_validation(monkeypatch):
    monkeypatch.setenv("RETRIEVAL_PROFILE", "fast")
    with pytest.raises(ValueError, match="RETRIEVAL_PROFILE"):
        profile()
    monkeypatch.setenv("RETRIEVAL_PROFILE", "smoke")
    assert profile() == "smoke"


def test_resolve_is_relative_to_repo_root(tmp_path):
    assert resolve("runs/demo").parts[-2:] == ("runs", "demo")
    assert resolve(tmp_path) == tmp_path


def test_papermill_runs_a_notebook_with_overridden_parameters(tmp_path, monkeypatch):
    """The path `make demo` takes: papermill injects parameters, the notebook writes metrics.json."""
    monkeypatch.delenv("RETRIEVAL_PROFILE", raising=False)
    metrics = nbrun.run_notebooks(tmp_path / "run", profile="smoke", only=["01"], progress=False,
                                 parameters={"pooling": "mac", "backbone": "resnet18", "weights": None,
                                             "poolings": ["mac"], "fig_dir": str(tmp_path / "fig")})
    assert list(metrics) == ["synth-tiny"]  # the smoke profile picked the tiny preset
    res = metrics["synth-tiny"]["mac-resnet18-untrained"]
    assert set(res) == set(PROTOCOLS) | {"recorded"}
    assert res["recorded"]["notebook"] == "01_extract_features" and res["recorded"]["image_size"] == 128
    assert all(0.0 <= v <= 1.0 for p in PROTOCOLS for v in res[p].values())
    assert (tmp_path / "run" / "01_extract_features.ipynb").is_file()
    assert (tmp_path / "fig" / "01_per_query_ap.png").stat().st_size > 0
    assert "RETRIEVAL_PROFILE" not in __import__("os").environ  # restored


def test_whitening_choice_round_trip(tmp_path):
    from retrieval.run import Run

    run = Run(tmp_path)
    whitening_path, record_whitening_choice = run.whitening, run.record_whitening_choice

    with pytest.raises(FileNotFoundError, match="02_train_global"):
        whitening_path("gem-x", "val")
    record_whitening_choice("gem-x", 0.25, {0.0: 0.4, 0.25: 0.5})
    path, alpha = whitening_path("gem-x", "val")
    assert alpha == 0.25 and path == tmp_path / "train_global" / "whitening_lw0.25_gem-x.npz"
    assert whitening_path("gem-x", 0.5) == (tmp_path / "train_global" / "whitening_lw0.5_gem-x.npz", 0.5)


def test_a_later_pass_keeps_the_passes_before_it(tmp_path, monkeypatch):
    """run.json of a run completed by ``--only`` passes names every pass (its command, commit, notebooks); a
    whole run starts the record afresh."""
    import papermill
    monkeypatch.setattr(papermill, "execute_notebook", lambda *a, **k: None)  # the notebooks themselves: elsewhere
    run = tmp_path / "run"
    nbrun.run_notebooks(run, profile="smoke", progress=False, command=["first"])
    nbrun.run_notebooks(run, profile="smoke", only=["03"], progress=False, command=["second"])
    nbrun.run_notebooks(run, profile="smoke", only=["05", "07"], progress=False, command=["third"])
    rec = json.loads((run / "run.json").read_text())
    assert rec["command"] == "third" and rec["notebooks"] == ["05_asymmetric.ipynb", "07_dir_experiments.ipynb"]
    assert [e["command"] for e in rec["earlier"]] == ["second", "first"] and len(rec["earlier"][1]["notebooks"]) == 9
    assert all("earlier" not in e for e in rec["earlier"])
    nbrun.run_notebooks(run, profile="smoke", progress=False, command=["again"])
    assert "earlier" not in json.loads((run / "run.json").read_text())
