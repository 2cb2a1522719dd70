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
