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
                parameters={}, seconds=600.0, notebook_seconds={"01_extract_features": 120.0, "03_rerank": 480.0},
                machine=dict(cpu="Test CPU", cores=2, ram_gib=24.0, gpu=None,
                                                           torch="2", numpy="2", python="3"))
    RunLayout(run_dir).run_file.write_text(json.dumps(prov))
    with pytest.raises(ValueError, match="letters, digits"):
        R.record_run(run_dir, "../x", tmp_path / "results")
    out = R.record_run(run_dir, "demo", tmp_path / "results", note="shared cores")
    assert json.loads((out / "run.json").read_text()) == dict(prov, note="shared cores")
    records = R.load_records(tmp_path / "results")
    assert [r["name"] for r in records] == ["demo"] and records[0]["metrics"]["synth-default"]["gem"]["recorded"][
        "notebook"] == "01_extract_features"
    page = R.render_results(records)
    assert "### 01_extract_features" in page and "### 03_rerank" in page and "Test CPU, 2 cores" in page
    assert "| `gem` | 50.00 | 45.00 | 40.00 | 25.00 | 25.00 |" in page          # E/M/H mAP, M/H mP@10, ×100
    assert "| `+aqe` | 62.50 | 56.25 | 50.00 | 31.25 | 31.25 |" in page
    assert "- note: shared cores" in page
    assert "commit `abc`, 2026-12-06T00:00:00Z, 10.0 min" in page and "minutes per notebook: 01 2.0, 03 8.0" in page
    with pytest.raises(KeyError, match="README_ROWS"):                      # the README's rows must exist
        R.render_readme_table(records[0])
    (tmp_path / "results" / "half").mkdir()
    with pytest.raises(FileNotFoundError, match="incomplete record"):
        R.load_records(tmp_path / "results")


def test_benchmark_table_and_costs_are_rendered_from_the_record(tmp_path):
    run_dir = tmp_path / "run"
    run = Run(run_dir, "03_rerank")
    run.record("synth-default", "gem+lw", _res(0.5), ms_per_query=0.25)
    run.record("synth-default", "gem+lw+dba", _res(0.625), ms_per_query=1.5)
    run.record("synth-default+synth-10k", "gem+lw", _res(0.4), ms_per_query=2.0, descriptor_seconds=123.4)
    stats = dict(queries=70, query_landmarks=14, db=1570, distractors=0, part_queries=9,
                 positives=dict(mean=40.5, min=3, max=60), easy=None, hard=None, junk=dict(mean=9.0, min=1, max=20))
    RunLayout(run_dir).benchmark_file.write_text(json.dumps(dict(
        name="synth-default", val="synth-default-val", stats={"synth-default": stats},
        distractors=dict(set="synth-default-distractors", n=10000, render_seconds=88.0))))
    RunLayout(run_dir).run_file.write_text(json.dumps(dict(command="c", machine={})))
    out = R.record_run(run_dir, "demo", tmp_path / "results")
    assert (out / "benchmark.json").is_file()
    page = R.render_results(R.load_records(tmp_path / "results"))
    assert "| query landmarks | 14 |" in page and "| positives / query | 40.5 (3–60) |" in page
    assert "| `synth-default` | 45.00 | 40.00 |" in page and "| `synth-default+synth-10k` | 36.00 | 32.00 |" in page
    ref = R.PUBLISHED[R.REFERENCE_NETWORK].reported
    assert f"| roxford5k (published) | {ref['roxford5k_M']:.2f} | {ref['roxford5k_H']:.2f} |" in page
    assert "rendering the 10,000 distractors took 88 s" in page and "123 s (03, `gem+lw`" in page
    assert "| `gem+lw+dba` | 62.50 | 56.25 | 50.00 | 31.25 | 31.25 | 1.50 |" in page   # ms / query column


def test_validation_sweeps_are_copied_and_rendered(tmp_path):
    """record copies 03's sweeps (selection/*.json); the page gives each method's choice, its criterion and
    the grid edges, and CSA's training grid with the chosen cell in bold and the sweep's provenance."""
    from retrieval.rerank.select import save_selection

    run_dir = tmp_path / "run"
    Run(run_dir, "03_rerank").record("synth-default", "gem+lw", _res(0.5))
    RunLayout(run_dir).run_file.write_text(json.dumps(dict(command="c", machine={})))
    sweep = [dict(setting={"dba_k": k}, criterion=c) for k, c in ((1, 0.5), (2, 0.75), (3, 0.6))]
    (run_dir / "selection").mkdir()
    (run_dir / "selection" / "gem+lw.json").write_text(json.dumps(
        {"dba": dict(selected={"dba_k": 2}, params={"dba_k": 2}, criterion=0.75, sweep=sweep)}))
    rows = [dict(setting=dict(epochs=e, lr=lr, K=K), criterion=0.1 * e + lr + K / 1000, train_seconds=5.0 * e)
            for e in (10, 30) for lr in (0.1, 0.3) for K in (128, 320)]
    save_selection(run_dir / "selection" / "csa-gem+lw.json",
                   dict(method="csa", selected=dict(epochs=30, lr=0.3, K=320), criterion=3.62, sweep=rows),
                   dict(K=128, L=64, dim=128, first_stage="gem+lw", val="synth-default-val"),
                   provenance=dict(command="python -m retrieval.run demo --only 03", commit="abcdef", date="d",
                                   machine=dict(cpu="Test CPU", cores=2)))
    out = R.record_run(run_dir, "demo", tmp_path / "results")
    assert sorted(p.name for p in (out / "selection").iterdir()) == ["csa-gem+lw.json", "gem+lw.json"]
    page = R.render_results(R.load_records(tmp_path / "results"))
    assert "| dba | dba_k 2 | 75.00 | 3 | - |" in page                       # interior: no edge
    assert "| 30 | 0.3 | 342.80 | **362.00** | 150 |" in page and "| 10 | 0.1 | 122.80 | 142.00 | 50 |" in page
    assert "`synth-default-val`'s lists" in page and "commit `abcdef`" in page and "Test CPU, 2 cores" in page
