"""pyproject.toml and environment.yml must name the same packages (with the same lower bounds)."""

import re
import tomllib
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
# conda name -> pip name, where they differ (faiss-gpu on conda, faiss-cpu from pip)
CONDA_TO_PIP = {"pytorch": "torch", "faiss-gpu": "faiss-cpu"}
CONDA_ONLY = {"python", "pip"}


def _split(req: str) -> tuple[str, str]:
    m = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$", req)
    return m.group(1).lower(), m.group(2).replace(" ", "")


def pip_requirements() -> dict:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    # the "gpu" extra is pip's route to faiss-gpu, which environment.yml names in place of faiss-cpu
    reqs = list(meta["dependencies"]) + [r for name, extra in meta["optional-dependencies"].items()
                                         if name != "gpu" for r in extra]
    return dict(_split(r) for r in reqs)


def conda_requirements() -> dict:
    names, in_deps = {}, False
    for line in (ROOT / "environment.yml").read_text().splitlines():
        if re.match(r"^dependencies:\s*$", line):
            in_deps = True
            continue
        if in_deps and re.match(r"^\S", line):
            break
        m = re.match(r"^\s+-\s+([^\s#:]+.*?)\s*(#.*)?$", line)
        if in_deps and m:
            name, bound = _split(m.group(1))
            if name not in CONDA_ONLY:
                names[CONDA_TO_PIP.get(name, name)] = bound
    return names


def test_pyproject_and_environment_name_the_same_packages():
    pip, conda = pip_requirements(), conda_requirements()
    assert set(pip) == set(conda), (f"only in pyproject.toml: {sorted(set(pip) - set(conda))}; "
                                    f"only in environment.yml: {sorted(set(conda) - set(pip))}")
    assert pip == conda, "lower bounds differ between pyproject.toml and environment.yml"


def test_environment_parser_sees_the_core_stack():
    conda = conda_requirements()
    for name in ("torch", "torchvision", "faiss-cpu", "papermill", "nbval", "jupyterlab", "ipywidgets"):
        assert name in conda


@pytest.mark.parametrize("path", sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")), ids=lambda p: p.name)
def test_notebook_has_title_and_parameters_cell(path):
    nb = nbformat.read(path, 4)
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "papermill needs exactly one cell tagged 'parameters'"
    # every code cell other than the checked ones is stored without outputs
    for c in nb.cells:
        if c.cell_type == "code" and "nbval-check-output" not in c.metadata.get("tags", []):
            assert not c.outputs, f"{path.name}: stored outputs in an unchecked cell"


@pytest.mark.parametrize("path", sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")), ids=lambda p: p.name)
def test_papermill_sees_every_parameter(path):
    """papermill's parser (used by `papermill --help-notebook`) must see every assignment of the
    parameters cell (e.g. an '=' inside a comment makes it skip the line)."""
    import ast

    from papermill.translators import PythonTranslator

    cell = next(c for c in nbformat.read(path, 4).cells if "parameters" in c.metadata.get("tags", []))
    assigned = [t.id for node in ast.parse(cell.source).body if isinstance(node, ast.Assign)
                for t in node.targets if isinstance(t, ast.Name)]
    assert [p[0] for p in PythonTranslator.inspect(cell)] == assigned
