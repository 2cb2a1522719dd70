"""Committed run records and the pages rendered from them: the docs agree with results/, a record round
trips, a run without its provenance is refused, and every rendered number is the record's."""

import json

import pytest

from retrieval.metrics import PROTOCOLS
from retrieval.run import Run, RunLayout
from retrieval.run import report as R


def test_the_docs_are_what_the_committed_records_render():
    """docs/results.md and the README's demo table, rendered again from results/, are unchanged: no number
    in them was typed by hand or left behind by a newer run."""
    assert R.load_records(), "no committed run record under results/"
    assert R.write_pages(check=True) == [], ("pages differ from their records: run `python -m retrieval.run "
                                             "report` (after `record`) and commit the result")


def _res(m):
    return {p: {"map": m * (1 - 0.1 * i), "mp@1": m, "mp@5": m, "mp@10": m / 2} for i, p in enumerate(PROTOCOLS)}


def test_record_round_trip_and_rendered_numbers(tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(FileNotFoundError, match="run.json not found"):
        R.record_run(run_dir, "x", tmp_path / "results")
    Run(run_dir, "01_extract_features").record("synth-default", "gem", _res(0.5), image_size=240, weights="w")
    Run(run_dir, "03_rerank").record("synth-default", "+aqe", _res(0.625))
    prov = dict(command="python -m retrieval.run demo", commit="abc", date="2026-12-06T00:00:00Z", profile="full",
                parameters={}, seconds=600.0, machine=dict(cpu="Test CPU", cores=2, ram_gib=24.0, gpu=None,
                                                           torch="2", numpy="2", python="3"))
    RunLayout(run_dir).run_file.write_text(json.dumps(prov))
    with pytest.raises(ValueError, match="letters, digits"):
        R.record_run(run_dir, "../x", tmp_path / "results")
    out = R.record_run(run_dir, "demo", tmp_path / "results")
    assert json.loads((out / "run.json").read_text()) == prov
    records = R.load_records(tmp_path / "results")
    assert [r["name"] for r in records] == ["demo"] and records[0]["metrics"]["synth-default"]["gem"]["recorded"][
        "notebook"] == "01_extract_features"
    page = R.render_results(records)
    assert "### 01_extract_features" in page and "### 03_rerank" in page and "Test CPU, 2 cores" in page
    assert "| `gem` | 50.00 | 45.00 | 40.00 | 25.00 | 25.00 |" in page          # E/M/H mAP, M/H mP@10, ×100
    assert "| `+aqe` | 62.50 | 56.25 | 50.00 | 31.25 | 31.25 |" in page
    assert "commit `abc`, 2026-12-06T00:00:00Z, 10.0 min" in page
    with pytest.raises(KeyError, match="README_ROWS"):                      # the README's rows must exist
        R.render_readme_table(records[0])
    (tmp_path / "results" / "half").mkdir()
    with pytest.raises(FileNotFoundError, match="incomplete record"):
        R.load_records(tmp_path / "results")
