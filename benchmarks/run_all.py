"""Run every benchmark of ``benchmarks/`` in sequence (``make bench``), each in its own process,
its JSON into ``benchmarks/results/``; then the table of figures in ``benchmarks/README.md`` is
rewritten from those JSONs with the machine and wall times (full runs only, not ``--quick``).

    python benchmarks/run_all.py [--quick] [--only NAME ...] [--no-readme]

A script that fails is reported and the others still run (exit status 1 at the end).
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
README = HERE / "README.md"
# in this order; any other benchmarks/*.py script (not starting with "_") runs after them
ORDER = ["eval_speed", "search_speed", "rerank_speed", "extract_speed", "csa_inference"]
# not in `make bench` (run with --only NAME or on their own): why
SEPARATE = {"index_memory": "index sizes for the README's scale note; faiss PQ/IVF training takes ~6 min per "
                            "dimension on 2 cores (python benchmarks/index_memory.py)",
            "gpu_check": "the CUDA paths' check (make gpu-check; CPU fallbacks without CUDA), not a speed benchmark",
            "rerank_r1m": "DBA and diffusion on the 1M-distractor db's approximate k-NN graph; the graph takes "
                          "minutes to tens of minutes on 2 cores (python benchmarks/rerank_r1m.py)"}
# extra arguments of a full run (sizes that keep `make bench` within ~15 minutes on 2 cores)
FULL_ARGS = {"csa_inference": ["--queries", "16", "--batch", "16"]}
# small sizes for a script that has no --quick flag
QUICK_ARGS = {"index_memory": ["--n", "20000", "--dims", "512"], "rerank_r1m": ["--quick"]}


def scripts() -> list[str]:
    found = {p.stem for p in HERE.glob("*.py") if not p.stem.startswith("_") and p.stem != "run_all"}
    return [s for s in ORDER if s in found] + sorted(found - set(ORDER) - set(SEPARATE))


def run(name: str, quick: bool) -> tuple[int, float, Path]:
    out = RESULTS / f"{name}.json"
    src = (HERE / f"{name}.py").read_text()
    cmd = [sys.executable, str(HERE / f"{name}.py"), "--out", str(out)]
    if quick:
        cmd += ["--quick"] if "--quick" in src else QUICK_ARGS.get(name, [])
    else:
        cmd += FULL_ARGS.get(name, [])
    print(f"\n=== {name}: {' '.join(cmd[1:])}", flush=True)
    t = time.perf_counter()
    rc = subprocess.call(cmd, cwd=HERE.parent)
    return rc, time.perf_counter() - t, out


def _table(res: dict) -> list[list[str]]:
    if isinstance(res.get("table"), list):
        return [[str(a), str(b)] for a, b in res["table"]]
    # a script without a table: its scalar figures
    return [[k, f"{v:.4g}" if isinstance(v, float) else str(v)] for k, v in res.items()
            if isinstance(v, (int, float, str, bool)) and k not in ("benchmark", "quick")]


def markdown(done: list[tuple[str, int, float, Path]], total: float) -> str:
    machine = None
    lines = []
    for name, rc, secs, out in done:
        lines.append(f"\n#### `{name}` ({secs:.0f} s{'' if rc == 0 else f', FAILED with exit status {rc}'})\n")
        if rc != 0 or not out.exists():
            continue
        res = json.loads(out.read_text())
        machine = machine or res.get("machine")
        lines += ["| figure | value |", "| --- | --- |"]
        lines += [f"| {a} | {b} |" for a, b in _table(res)]
        for s in res.get("skipped", []):
            lines.append(f"\nSkipped: {s}.")
        if res.get("notes"):
            lines.append(f"\n{res['notes']}")
    head = [f"Latest `make bench`: {datetime.date.today().isoformat()}, wall time **{total / 60:.1f} min**."]
    if machine:
        gpu = f"GPU {machine['cuda']}" if machine.get("cuda") else "no GPU"
        head.append(f"Machine: {machine['cpu']}, {machine['cores']} cores ({machine['simd'].upper()}), "
                    f"{machine.get('ram_gib', '?')} GiB RAM, {gpu}; torch {machine['torch']} "
                    f"({machine['torch_threads']} threads), numpy {machine['numpy']}, faiss {machine.get('faiss')}.")
    return "\n".join(head + lines) + "\n"


def update_readme(text: str, marker: str = "bench") -> None:
    """Replace the README's text between ``<!-- {marker}:begin -->`` and ``<!-- {marker}:end -->``."""
    from retrieval.io import atomic_write_bytes  # noqa: E402  (the repository root is on sys.path)

    BEGIN, END = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
    body = README.read_text() if README.exists() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    if BEGIN not in body or END not in body:
        body += f"\n{BEGIN}\n{END}\n"
    pre, rest = body.split(BEGIN, 1)
    _, post = rest.split(END, 1)
    atomic_write_bytes(README, f"{pre}{BEGIN}\n{text}{END}{post}".encode())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.strip().split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="every script with --quick (small sizes)")
    ap.add_argument("--only", nargs="*", help="run only these scripts (names without .py)")
    ap.add_argument("--no-readme", action="store_true", help="do not rewrite benchmarks/README.md")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(HERE.parent))
    RESULTS.mkdir(exist_ok=True)
    names = list(args.only) if args.only else scripts()
    for name in names:
        if not (HERE / f"{name}.py").is_file():
            ap.error(f"--only {name}: no benchmarks/{name}.py")
    if not args.only:
        for name, why in SEPARATE.items():
            print(f"not run here: {name} ({why})")
    t0 = time.perf_counter()
    done = []
    for name in names:
        rc, secs, out = run(name, args.quick)
        done.append((name, rc, secs, out))
        print(f"=== {name}: {'ok' if rc == 0 else f'FAILED (exit status {rc})'} in {secs:.0f} s", flush=True)
    total = time.perf_counter() - t0
    print(f"\nmake bench: {len(done)} benchmarks in {total / 60:.1f} min"
          + "".join(f"\n  {n:<16} {s:6.0f} s  {'ok' if rc == 0 else 'FAILED'}" for n, rc, s, _ in done))
    md = markdown(done, total)
    (RESULTS / "summary.md").write_text(md)
    if not args.quick and not args.no_readme and not args.only:
        update_readme(md)
        print(f"figures written into {README}")
    return int(any(rc != 0 for _, rc, _, _ in done))


if __name__ == "__main__":
    sys.exit(main())
