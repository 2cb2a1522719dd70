"""The papermill grid runner (`python -m retrieval.run sweep`): one folder per combination, skips
finished ones, goes on after a failed one, collects one table; parameters checked up front."""

import csv
import json

import nbformat
import pytest

from retrieval.run import sweep as G
from retrieval.config import check_parameters
from retrieval.run.__main__ import main


@pytest.fixture
def toy(tmp_path):
    """A small notebook with a parameters cell that records metrics (or fails when asked)."""
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('x = 1\nscale = 0.5\nfail = False\nname = "a"\nrun_dir = "."')
    params.metadata["tags"] = ["parameters"]
    body = nbformat.v4.new_code_cell(
        "from retrieval.run import record_metrics\n"
        "if fail:\n    raise RuntimeError(f'boom at x={x}')\n"
        "v = scale * x / 10\n"
        "record_metrics(run_dir, 'toy', f'm-{name}', {p: {'map': v, 'mp@1': v} for p in ('easy', 'medium', 'hard')})")
    nb.cells = [nbformat.v4.new_markdown_cell("# toy"), params, body]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "toy.ipynb"
    nbformat.write(nb, path)
    return path


def test_grid_runs_skips_and_reports_failures(toy, tmp_path):
    out = tmp_path / "out"
    res = G.run_grid(toy, {"x": [1, 2], "fail": [False, True]}, out=out, log=lambda *a: None)
    assert sorted(res["done"]) == ["x=1,fail=false", "x=2,fail=false"]
    assert set(res["failed"]) == {"x=1,fail=true", "x=2,fail=true"}
    assert all("RuntimeError: boom at x=" in e for e in res["failed"].values())
    for name in res["done"]:
        folder = out / name
        assert (folder / "toy.ipynb").is_file() and json.loads((folder / "status.json").read_text())["state"] == "done"
        assert json.loads((folder / "params.json").read_text())["run_dir"] == str(folder)
    with open(out / "summary.csv") as fh:
        rows = list(csv.DictReader(fh))
    by = {r["combination"]: r for r in rows}
    assert float(by["x=2,fail=false"]["M"]) == pytest.approx(10.0) and by["x=2,fail=false"]["method"] == "m-a"
    assert float(by["x=1,fail=false"]["mp@1_H"]) == pytest.approx(5.0)
    assert by["x=1,fail=true"]["status"] == "failed" and by["x=1,fail=true"]["M"] == ""
    md = (out / "summary.md").read_text()
    assert "2 done, 2 failed" in md and "boom at x=2" in md
    assert (out / "summary.png").stat().st_size > 0 and "<table" in (out / "summary.html").read_text()

    stamp = (out / "x=1,fail=false" / "toy.ipynb").stat().st_mtime_ns
    again = G.run_grid(toy, {"x": [1, 2], "fail": [False, True]}, out=out, log=lambda *a: None)
    assert sorted(again["skipped"]) == sorted(res["done"]) and not again["done"]
    assert set(again["failed"]) == set(res["failed"])                 # failed ones are tried again
    assert (out / "x=1,fail=false" / "toy.ipynb").stat().st_mtime_ns == stamp

    # the command line and a YAML grid reach the same folders (all finished: skipped)
    cfg = tmp_path / "grid.yaml"
    cfg.write_text(f"notebook: {toy}\nout: {out}\ngrid:\n  - {{x: [1, 2], fail: false}}\n")
    assert main(["grid", "--config", str(cfg)]) == 0
    assert main(["grid", str(toy), "-p", "x", "1", "--set", "fail", "true", "--out", str(out)]) == 1


def test_wrong_parameter_type_is_refused_before_running(toy, tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(TypeError, match=r"toy.ipynb: parameter 'x' = 'three' \(str\) does not fit its default 1"):
        G.run_grid(toy, {"x": [1, "three"]}, out=out, log=lambda *a: None)
    with pytest.raises(ValueError, match=r"no parameter\(s\) \['y'\]"):
        G.run_grid(toy, {"y": [1]}, out=out)
    assert not out.exists()                                             # nothing ran
    assert main(["grid", str(toy), "-p", "scale", "[1]", "--out", str(out)]) == 2
    assert "parameter 'scale'" in capsys.readouterr().err


def test_real_notebook_on_the_tiny_preset(tmp_path):
    res = G.run_grid("notebooks/01_extract_features.ipynb", {"pooling": ["mac"]}, out=tmp_path / "g",
                     parameters={"backbone": "resnet18", "weights": None, "poolings": ["mac"]},  # one row
                     profile="smoke", log=lambda *a: None)
    assert res["done"] == ["pooling=mac"], res["failed"]
    (row,) = res["rows"]
    assert row["dataset"] == "synth-tiny" and row["method"] == "mac-resnet18-untrained"
    assert 0 <= row["M"] <= 100 and (tmp_path / "g" / "pooling=mac" / "figures" / "01_per_query_ap.png").is_file()


def test_grid_helpers():
    assert G.expand({"a": [1, 2], "b": "x"}) == [{"a": 1, "b": "x"}, {"a": 2, "b": "x"}]
    assert G.expand([{"a": 1}, {"a": [1, 3]}]) == [{"a": 1}, {"a": 3}]
    with pytest.raises(ValueError, match="no values"):
        G.expand({"a": []})
    assert G.combo_name({"pooling": "gem", "image_size": 128}) == "pooling=gem,image_size=128"
    odd = G.combo_name({"scales": [1.0, 0.7071]})
    assert "/" not in odd and " " not in odd and odd != G.combo_name({"scales": [1.0, 0.5]})
    assert G.parse_value("[1, 2]") == [1, 2] and G.parse_value("gem") == "gem" and G.parse_value("null") is None
    check_parameters({"lr": 1, "network": "x", "scales": (1.0,), "resume": None},
                     {"lr": 1e-3, "network": None, "scales": [1.0], "resume": True})
    with pytest.raises(TypeError, match="'resume'"):
        check_parameters({"resume": 1}, {"resume": True})
    defaults = G.notebook_defaults("notebooks/01_extract_features.ipynb", "smoke")
    assert defaults["image_size"] == 128 and defaults["dataset"] == "synth" and "SMOKE" not in defaults  # the smoke values
    assert defaults["preset"] is None and defaults["data_seed"] is None  # the run's benchmark (00_data)


def test_network_file_and_train_name(tmp_path):
    from retrieval import datasets
    from retrieval.run import RunLayout

    layout = RunLayout(tmp_path)
    assert layout.network_file("gl18-tl-resnet101-gem-w").name == "gl18-tl-resnet101-gem-w-a4d43db.pth"
    assert layout.network_file("gl18-tl-resnet101-gem-w-ms").name == "gl18-tl-resnet101-gem-w-a4d43db.pth"  # 01's -ms
    (tmp_path / "train_global").mkdir()
    (tmp_path / "train_global" / "gem-resnet18.pth").write_bytes(b"x")
    assert layout.network_file("gem-resnet18") == tmp_path / "train_global" / "gem-resnet18.pth"
    with pytest.raises(FileNotFoundError, match="network='gem-resnet50': not a published network"):
        layout.network_file("gem-resnet50")
    assert datasets.train_name("roxford5k") == "retrieval-SfM-120k"
    assert datasets.train_name("synth", "tiny") == datasets.dataset_name("tiny")
    assert datasets.train_name("synth", "tiny", seed=7) == datasets.dataset_name("tiny", seed=7) == "synth-tiny-s7"
    with pytest.raises(FileNotFoundError, match="download roxford5k"):
        datasets.get_test("roxford5k", root=tmp_path)
