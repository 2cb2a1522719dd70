"""Every name a notebook's ``parameters`` cell assigns is one papermill can read, so ``run demo -p NAME``
reaches it (papermill's parser refuses some lines, e.g. a comment mixing quote characters)."""

import ast
import json
from pathlib import Path

import papermill as pm
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_parameter_is_readable_by_papermill(path):
    cells = json.loads(path.read_text())["cells"]
    (cell,) = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    tree = ast.parse("".join(cell["source"]))
    assigned = {t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets
                if isinstance(t, ast.Name)}
    assert assigned and assigned <= set(pm.inspect_notebook(str(path))), sorted(
        assigned - set(pm.inspect_notebook(str(path))))


def test_the_demo_parameters_reach_a_notebook():
    """Every ``-p NAME`` of the Makefile's ``DEMO_PARAMS`` is a parameter of some notebook (``run demo``
    refuses the others, so a misspelt name would stop ``make demo`` after the venv is built)."""
    import re
    import shlex

    text = (NOTEBOOKS[0].parents[1] / "Makefile").read_text().replace("\\\n", " ")
    (line,) = [l for l in text.splitlines() if l.startswith("DEMO_PARAMS ?=")]
    words = shlex.split(line.split("?=", 1)[1])
    names = [words[i + 1] for i, w in enumerate(words) if w == "-p"]
    assert len(names) >= 8 and all(re.fullmatch(r"[a-z_0-9]+", n) for n in names), names
    declared = set().union(*(pm.inspect_notebook(str(p)) for p in NOTEBOOKS))
    assert set(names) <= declared, sorted(set(names) - declared)
