"""The README's package map names every module of retrieval/ and nothing that does not exist."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _map_block() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("retrieval/\n  config.py")
    return text[start:text.index("```", start)]


def _named(block: str) -> set[str]:
    """Paths the map names: ``  name.py`` / ``  pkg/`` entries at the top, ``x.py`` inside a package's lines."""
    out, package = set(), ""
    for line in block.splitlines()[1:]:
        top = re.match(r"^  (\S+)", line)
        if top:
            entry = top.group(1)
            package = entry if entry.endswith("/") else ""
            if not package:
                out.add(entry)
        if package:
            out |= {package + f for f in re.findall(r"\b([a-z_]+\.py)\b", line)}
    return out


def test_readme_package_map_matches_the_tree():
    named = _named(_map_block())
    tree = {str(p.relative_to(ROOT / "retrieval")) for p in (ROOT / "retrieval").rglob("*.py")
            if p.name not in ("__init__.py", "__main__.py")}
    assert not named - tree, f"the README names files that do not exist: {sorted(named - tree)}"
    assert not tree - named, f"modules missing from the README map: {sorted(tree - named)}"
