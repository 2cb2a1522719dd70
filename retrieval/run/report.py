"""Committed run records, and the results pages rendered from them.

``python -m retrieval.run record RUN_DIR --name NAME`` copies a finished run's ``metrics.json`` and
``run.json`` (machine, commit, date, command: :mod:`.provenance`) into ``results/NAME/`` (small JSON,
committed); ``python -m retrieval.run report`` renders ``docs/results.md`` and the README's demo table from
every record under ``results/``. No results number in the docs is typed by hand: ``report --check`` (and
``tests/test_report.py``) fails when a page differs from what its records render.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
from pathlib import Path

from ..bootstrap import compare_rows, format_interval
from ..catalog import PUBLISHED
from ..config import ROOT, resolve
from ..io import atomic_write_bytes, atomic_write_json
from ..metrics import ALL_PROTOCOLS, PROTOCOL_LABELS
from ..rerank.select import at_edge
from .layout import RunLayout
from .store import load_metrics
from .verdicts import render_verdicts

RESULTS = ROOT / "results"
RESULTS_PAGE = ROOT / "docs" / "results.md"
README = ROOT / "README.md"
README_MARKS = ("<!-- results:demo:start -->", "<!-- results:demo:end -->")
# the README's short table: (notebook, method) rows of the demo record, in this order; a method is a glob
# pattern (fnmatch), and where several rows match, the shortest name is taken (the first stage's "+dba",
# not "+alpha_qe+alpha_dba")
README_ROWS = (("01_extract_features", "gem-efficientnet_lite0-untrained"),
               ("01_extract_features", "gem-efficientnet_lite0-imagenet"),
               ("02_train_global", "gem-efficientnet_lite0"),
               ("02_train_global", "gem-efficientnet_lite0+lw-shrink*"),
               ("03_rerank", "*+aqe"), ("03_rerank", "*+dba"), ("03_rerank", "*+diffusion"),
               ("03_rerank", "*+superglobal"), ("03_rerank", "*+csa"),
               ("05_asymmetric", "ssp-efficientnet_lite0->gem-efficientnet_lite0"),
               ("06_train_token", "token-efficientnet_lite0"),
               ("07_dir_experiments", "rmac@80+160+240"))
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def record_run(run_dir: str | os.PathLike, name: str, results_dir: str | os.PathLike = RESULTS,
               note: str | None = None) -> Path:
    """Copy ``<run_dir>/metrics.json``, ``run.json``, ``benchmark.json`` and the validation sweeps
    ``selection/*.json`` into ``<results_dir>/<name>/`` (atomically); the folder is the committed record of
    that run. FileNotFoundError when the run has no ``run.json`` (a run
    of :func:`~retrieval.run.notebooks.run_notebooks` that finished writes it). ``note``: a line on the run's
    conditions (e.g. shared cores), kept in the record's ``run.json`` and shown with its provenance."""
    if not _NAME.match(name):
        raise ValueError(f"name={name!r}: letters, digits, '.', '_' and '-' only")
    layout = RunLayout(run_dir)
    if not layout.run_file.is_file():
        raise FileNotFoundError(f"{layout.run_file} not found: record a run that python -m retrieval.run demo "
                                "finished (it writes run.json: machine, commit, date, command)")
    out = resolve(results_dir) / name
    run = json.loads(layout.run_file.read_text())
    atomic_write_json(out / "run.json", dict(run, note=note) if note else run)
    atomic_write_json(out / "metrics.json", load_metrics(run_dir))
    if layout.benchmark_file.is_file():  # the benchmark's sets and sizes (00_data)
        atomic_write_json(out / "benchmark.json", json.loads(layout.benchmark_file.read_text()))
    for sweep in sorted((layout.root / "selection").glob("*.json")):  # 03's validation sweeps (reused by later runs)
        atomic_write_json(out / "selection" / sweep.name, json.loads(sweep.read_text()))
    return out


def load_records(results_dir: str | os.PathLike = RESULTS) -> list[dict]:
    """Every record under ``results_dir``, by name: ``{"name", "run", "metrics"}``."""
    out = []
    for folder in sorted(p for p in Path(results_dir).glob("*") if p.is_dir()):
        files = {f: folder / f"{f}.json" for f in ("run", "metrics")}
        missing = [str(p) for p in files.values() if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"incomplete record {folder}: missing {missing}")
        bench = folder / "benchmark.json"
        out.append(dict(name=folder.name, **{k: json.loads(p.read_text()) for k, p in files.items()},
                        benchmark=json.loads(bench.read_text()) if bench.is_file() else None,
                        selections={f.stem: json.loads(f.read_text()) for f in sorted(folder.glob("selection/*.json"))}))
    return out


def _machine(m: dict) -> str:
    return (f"{m.get('cpu')}, {m.get('cores')} cores, {m.get('ram_gib')} GiB RAM, {m.get('gpu') or 'no GPU'}; "
            f"torch {m.get('torch')}, numpy {m.get('numpy')}, Python {m.get('python')}")


def _columns(rows: list[dict]) -> list[str]:
    found = {p for r in rows for p in r}
    return [p for p in ALL_PROTOCOLS if p in found]


def _intervals(rows: list[tuple[str, str, dict]], groups: dict, every: dict | None = None) -> tuple[dict, list[str]]:
    """Per dataset of ``rows`` whose queries' landmarks ``groups`` knows (by the test set's name): each row
    that recorded a ``reference`` row, its Medium / Hard difference to that row with the 95 % interval
    (:func:`compare_rows`), and per reference one claim line, the best of its rows (itself included)
    against the runner-up: holds / inconclusive. A reference may be another notebook's row of the same
    dataset (``every``: the record's metrics). Returns ``({(dataset, label): (ΔM, ΔH, reference)}, claims)``."""
    cells, claims = {}, []
    for dataset in dict.fromkeys(d for d, _, _ in rows):
        g = groups.get(dataset.split("+")[0])
        if g is None:
            continue
        mine = {label: res for d, label, res in rows if d == dataset}
        others = {f"`{m}`": res for m, res in ((every or {}).get(dataset) or {}).items()}
        by_ref: dict[str, list[str]] = {}
        for label, res in list(mine.items()):
            ref = (res.get("recorded") or {}).get("reference")
            if ref is not None and f"`{ref}`" not in mine and f"`{ref}`" in others:
                mine[f"`{ref}`"] = others[f"`{ref}`"]  # another notebook's row (e.g. 02's network for 03)
            if ref is not None and f"`{ref}`" in mine:
                by_ref.setdefault(f"`{ref}`", []).append(label)
        for ref, labels in by_ref.items():
            cmp = compare_rows({n: mine[n] for n in [ref, *labels]}, g, reference=ref)
            if cmp["reference"] is None:
                continue
            cells[(dataset, ref)] = ("(reference)", "(reference)", "")
            for label, iv in cmp["rows"].items():
                cells[(dataset, label)] = (format_interval(iv.get("medium")), format_interval(iv.get("hard")), ref)
            # the claim: among the rows at their chosen settings (a "before selection" row is a reference point)
            cmp = compare_rows({n: mine[n] for n in [ref, *labels] if "before selection" not in n}, g, reference=ref)
            if cmp["best"] is not None:
                b = cmp["best_vs_runner_up"]
                claims.append(f"- `{dataset}`: best {cmp['best']} − runner-up {cmp['runner_up']}: M "
                              f"{format_interval(b.get('medium'))}, H {format_interval(b.get('hard'))} → **{cmp['verdict']}**")
    return cells, claims


def _table(rows: list[tuple[str, str, dict]], with_dataset: bool, groups: dict | None = None,
           every: dict | None = None) -> list[str]:
    """Markdown rows of ``(dataset, label, results)``: mAP ×100 per protocol, then mP@10 ×100 of Medium and
    Hard (or classic), ms per query where recorded, the setting chosen on the validation benchmark where
    recorded, and, where per-query APs and ``groups`` (query landmarks per test set) allow, each row's
    Medium / Hard difference to its recorded reference row with its 95 % interval, then the claims."""
    cols = _columns([r for _, _, r in rows])
    p10 = [p for p in cols if p != "easy"]
    timed = any("ms_per_query" in (r.get("recorded") or {}) for _, _, r in rows)
    offline = any("offline_seconds" in (r.get("recorded") or {}) for _, _, r in rows)
    chosen = any((r.get("recorded") or {}).get("setting") for _, _, r in rows)
    cells, claims = _intervals(rows, groups or {}, every)
    head = (["dataset"] if with_dataset else []) + ["method"] + [f"{PROTOCOL_LABELS[p]} mAP" for p in cols] + \
        [f"{PROTOCOL_LABELS[p]} mP@10" for p in p10] + (["ms / query"] if timed else []) + \
        (["offline s"] if offline else []) + (["ΔM [95 % CI]", "ΔH [95 % CI]", "vs"] if cells else []) + \
        (["setting (validation)"] if chosen else [])
    n_num = len(cols) + len(p10) + timed + offline + 2 * bool(cells)
    n_text = bool(cells) + chosen  # the reference's name, the setting
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join(["---"] * (len(head) - n_num - n_text) + ["---:"] * n_num
                                                              + ["---"] * n_text) + " |"]
    for dataset, method, res in rows:
        rec = res.get("recorded") or {}
        vals = [f"{100 * res[p]['map']:.2f}" if p in res else "-" for p in cols]
        vals += [f"{100 * res[p]['mp@10']:.2f}" if p in res and "mp@10" in res[p] else "-" for p in p10]
        vals += [f"{rec['ms_per_query']:.2f}" if rec.get("ms_per_query") is not None else "-"] if timed else []
        vals += [f"{rec['offline_seconds']:.1f}" if rec.get("offline_seconds") is not None else "-"] if offline else []
        vals += list(cells.get((dataset, method), ("-", "-", ""))) if cells else []
        vals += [", ".join(f"{k} {v}" for k, v in (rec.get("setting") or {}).items()) or "-"] if chosen else []
        lines.append("| " + " | ".join(([dataset] if with_dataset else []) + [method] + vals) + " |")
    if claims:
        lines += ["", "Differences: ×100, 95 % interval of a paired bootstrap over the query landmarks (10,000 "
                  "resamples); a claim **holds** when both intervals exclude 0 on the same side.", ""] + claims
    return lines


def _by_notebook(metrics: dict) -> dict[str, list[tuple[str, str, dict]]]:
    out: dict[str, list] = {}
    for dataset, methods in metrics.items():
        for method, res in methods.items():
            notebook = (res.get("recorded") or {}).get("notebook", "(no notebook recorded)")
            out.setdefault(notebook, []).append((dataset, f"`{method}`", res))
    return dict(sorted(out.items()))


def _provenance(record: dict) -> list[str]:
    run = record["run"]
    seconds = run.get("seconds")
    took = f", {seconds / 60:.1f} min" if isinstance(seconds, (int, float)) else ""
    params = run.get("parameters") or {}
    per = run.get("notebook_seconds") or {}
    return [f"- command: `{run.get('command')}` (profile `{run.get('profile')}`"
            + (f", parameters `{json.dumps(params, sort_keys=True)}`" if params else "") + ")",
            f"- commit `{run.get('commit')}`, {run.get('date')}{took}",
            f"- machine: {_machine(run.get('machine') or {})}"] + \
        ([f"- note: {run['note']}"] if run.get("note") else []) + \
        (["- minutes per notebook: " + ", ".join(f"{nb[:2]} {s / 60:.1f}" for nb, s in per.items())] if per else []) + \
        [f"- an earlier pass: `{e.get('command')}` (commit `{e.get('commit')}`, {e.get('date')}, notebooks "
         + ", ".join(nb[:2] for nb in e.get("notebooks") or []) + (f", {e['seconds'] / 60:.1f} min"
                                                                   if isinstance(e.get("seconds"), (int, float)) else "")
         + ")" for e in run.get("earlier") or []]


_STATS_ROWS = (("queries", "queries"), ("query landmarks", "query_landmarks"), ("part queries", "part_queries"),
               ("db images", "db"), ("distractors", "distractors"), ("positives / query", "positives"),
               ("easy / query", "easy"), ("hard / query", "hard"), ("junk / query", "junk"))
# the published network closest to the demo's first stage (GeM fine-tuned on landmarks + learned whitening)
REFERENCE_NETWORK = "rSfM120k-tl-resnet101-gem-w"


def _benchmark(record: dict) -> list[str]:
    """The benchmark's size table (``benchmark.json`` stats: mean (min–max) per query) and its first stage's
    Medium/Hard mAP beside a published GeM network's on ROxf (:data:`REFERENCE_NETWORK`, cirtorch README)."""
    bench = record.get("benchmark") or {}
    stats = bench.get("stats") or {}
    if not stats:
        return []

    def cell(v):
        if v is None:
            return "-"
        return f"{v['mean']:.1f} ({v['min']}–{v['max']})" if isinstance(v, dict) else f"{v:,}"

    names = list(stats)
    lines = ["### The benchmark", "", f"Rendered by `00_data` (`{bench.get('name')}`; validation benchmark "
             f"`{bench.get('val')}`, distractors `{(bench.get('distractors') or {}).get('set')}`); per query: "
             "mean (min–max). Positives = easy + hard.", "",
             "| | " + " | ".join(f"`{n}`" for n in names) + " |", "| --- |" + " ---: |" * len(names)]
    lines += [f"| {label} | " + " | ".join(cell(stats[n].get(key)) for n in names) + " |" for label, key in _STATS_ROWS]
    names = {m for ms in record["metrics"].values() for m, r in ms.items()  # 03's first stage (the row may be 02's)
             if (r.get("recorded") or {}).get("notebook") == "03_rerank" and "+" not in m.split("+lw")[-1]}
    first = [(d, m, r) for d, ms in record["metrics"].items() for m, r in ms.items() if m in names]
    if first:
        ref = PUBLISHED[REFERENCE_NETWORK].reported
        lines += ["", f"First stage (`{first[0][1]}`, 03) against `{REFERENCE_NETWORK}` on ROxf (reported, cirtorch "
                  "README; multi-scale): mAP ×100.", "", "| set | M mAP | H mAP |", "| --- | ---: | ---: |"]
        lines += [f"| `{d}` | {100 * r['medium']['map']:.2f} | {100 * r['hard']['map']:.2f} |" for d, _, r in first]
        lines += [f"| roxford5k (published) | {ref['roxford5k_M']:.2f} | {ref['roxford5k_H']:.2f} |"]
    cost = []
    if (bench.get("distractors") or {}).get("render_seconds"):
        cost.append(f"rendering the {bench['distractors']['n']:,} distractors took "
                    f"{bench['distractors']['render_seconds']:.0f} s (00)")
    cost += [f"the descriptors of `{d}` {r['recorded']['descriptor_seconds']:.0f} s (03, `{m}`, extracted once per network)"
             for d, m, r in first if "+" in d and (r.get("recorded") or {}).get("descriptor_seconds")]
    if cost:
        lines += ["", "Cost on this record's machine: " + "; ".join(cost) + "."]
    return lines + [""]


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def _selections(record: dict) -> list[str]:
    """03's validation sweeps: per method the chosen setting, its criterion and the grid edges it sits on;
    CSA's training grid (epochs × lr, each model at every test K) with its training time and provenance."""
    sels = record.get("selections") or {}
    if not sels:
        return []
    lines = ["### Settings chosen on the validation benchmark (03)", "",
             "Criterion: mean of Medium and Hard mAP ×100 on the validation benchmark; ties to the cheaper setting. "
             "At an edge: the chosen value is the first or last of its grid (more may lie beyond; α = 0 and the "
             "smallest k are the ends of their range).", ""]
    for name, sel in sels.items():
        if name.startswith("csa-"):
            continue
        lines += [f"First stage `{name}`:", "", "| method | chosen | val (M+H)/2 | settings swept | at an edge |",
                  "| --- | --- | ---: | ---: | --- |"]
        for method, s in sel.items():
            chosen = ", ".join(f"{k} {v}" for k, v in s["selected"].items())
            lines.append(f"| {method} | {chosen} | {_pct(s['criterion'])} | {len(s['sweep'])} | "
                         f"{', '.join(at_edge(s)) or '-'} |")
        lines.append("")
    for name, rec in sels.items():
        if not name.startswith("csa-"):
            continue
        sel, prov = rec["selection"], rec.get("provenance") or {}
        ks = list(dict.fromkeys(r["setting"]["K"] for r in sel["sweep"]))
        trained = list(dict.fromkeys((r["setting"]["epochs"], r["setting"]["lr"]) for r in sel["sweep"]))
        crit = {(r["setting"]["epochs"], r["setting"]["lr"], r["setting"]["K"]): r for r in sel["sweep"]}
        pick = sel["selected"]
        lines += [f"CSA's training grid on `{rec['config'].get('val')}`'s lists (first stage `{rec['config'].get('first_stage')}`"
                  f"; training lists of {rec['config'].get('K')} candidates, L {rec['config'].get('L')}, width "
                  f"{rec['config'].get('dim')}): val (M+H)/2 mAP ×100 per test K; chosen in bold.", "",
                  "| epochs | lr | " + " | ".join(f"K {k}" for k in ks) + " | training s |",
                  "| ---: | ---: |" + " ---: |" * (len(ks) + 1)]
        for e, lr in trained:
            cells = []
            for k in ks:
                v = _pct(crit[(e, lr, k)]["criterion"]) if (e, lr, k) in crit else "-"
                cells.append(f"**{v}**" if (e, lr, k) == (pick["epochs"], pick["lr"], pick["K"]) else v)
            secs = next(r["train_seconds"] for r in sel["sweep"] if (r["setting"]["epochs"], r["setting"]["lr"]) == (e, lr))
            lines.append(f"| {e} | {lr:g} | " + " | ".join(cells) + f" | {secs:.0f} |")
        lines += ["", f"Swept by `{prov.get('command')}` (commit `{str(prov.get('commit'))[:12]}`, {prov.get('date')}, "
                  f"{_machine(prov.get('machine') or {})}){'; ' + prov['note'] if prov.get('note') else ''}; later runs "
                  f"train only the chosen (epochs, lr) (`csa_grid`), choosing K on their own model.", ""]
    return lines


def render_results(records: list[dict]) -> str:
    """``docs/results.md``: every record's provenance and its rows, one table per notebook."""
    lines = ["# Results", "",
             "Rendered by `python -m retrieval.run report` from the committed run records under `results/`",
             "(`python -m retrieval.run record RUN_DIR --name NAME` makes one); do not edit by hand.",
             "mAP and mP@10 ×100; E/M/H: the revisited protocols' Easy, Medium and Hard.", ""]
    lines += render_verdicts(records)
    for record in records:
        datasets = sorted(record["metrics"])
        lines += [f"## `{record['name']}` ({', '.join(datasets)})", ""] + _provenance(record) + [""]
        lines += _benchmark(record) + _selections(record)
        groups = (record.get("benchmark") or {}).get("query_landmarks") or {}
        for notebook, rows in _by_notebook(record["metrics"]).items():
            lines += [f"### {notebook}", ""] + _table(rows, len(datasets) > 1, groups, record["metrics"]) + [""]
    return "\n".join(lines).rstrip() + "\n"


def render_readme_table(record: dict) -> str:
    """The README's short table: :data:`README_ROWS` of the ``demo`` record (KeyError naming a missing row)."""
    rows = []
    for notebook, pattern in README_ROWS:
        found = sorted(((len(m), m, d, r) for d, ms in record["metrics"].items() for m, r in ms.items()
                        if fnmatch.fnmatchcase(m, pattern) and (r.get("recorded") or {}).get("notebook") == notebook
                        and "+" not in d),  # the test set itself, not with distractors
                       key=lambda x: x[:2])
        if not found:
            raise KeyError(f"results/{record['name']}: no row {pattern!r} of {notebook} (README_ROWS names it)")
        _, method, dataset, res = found[0]
        rows.append((dataset, f"`{method}` ({notebook[:2]})", res))
    run = record["run"]
    lines = _table(rows, with_dataset=False)
    return "\n".join(lines + ["", f"From `results/{record['name']}/` (commit `{str(run.get('commit'))[:12]}`, "
                                  f"{run.get('date', '')[:10]}, {_machine(run.get('machine') or {})}); every row: "
                                  "`docs/results.md`."]) + "\n"


def _with_block(text: str, block: str, where: Path) -> str:
    start, end = README_MARKS
    if start not in text or end not in text:
        raise ValueError(f"{where}: the markers {start} ... {end} are missing")
    head, rest = text.split(start, 1)
    return head + start + "\n" + block + end + rest.split(end, 1)[1]


def render_pages(results_dir: str | os.PathLike = RESULTS) -> dict[Path, str]:
    """``{page: its rendered text}`` for ``docs/results.md`` and the README (its demo block)."""
    records = load_records(results_dir)
    pages = {RESULTS_PAGE: render_results(records)}
    demo = [r for r in records if r["name"] == "demo"]
    if demo:
        pages[README] = _with_block(README.read_text(), render_readme_table(demo[0]), README)
    return pages


def write_pages(results_dir: str | os.PathLike = RESULTS, check: bool = False) -> list[Path]:
    """Write the rendered pages (``check``: write nothing); returns the pages that differed."""
    changed = []
    for path, text in render_pages(results_dir).items():
        if not path.is_file() or path.read_text() != text:
            changed.append(path)
            if not check:
                atomic_write_bytes(path, text.encode())
    return changed
