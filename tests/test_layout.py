"""The tree is the map: the README's Layout lists exactly the package's modules, every subpackage sits in
a layer of the architecture contract (.importlinter, checked by `lint-imports` in CI), and no module has
outgrown one job."""

from __future__ import annotations

import configparser
import re

from tests.conftest import REPO

PACKAGE = REPO / "krishna_ai"
MAX_LINES = 400


def tree() -> set[str]:
    """Every module and subpackage of krishna_ai (as README paths: `core/style.py`, `core/`), bar the
    package plumbing (`__init__`, `__main__`) and the migrations' own files."""
    out = set()
    for path in PACKAGE.rglob("*"):
        rel = path.relative_to(PACKAGE)
        if "__pycache__" in rel.parts or (rel.parts[0] == "history" and "migrations" in rel.parts[1:-1]):
            continue
        if path.is_dir() and (path / "__init__.py").is_file():
            out.add(rel.as_posix() + "/")
        elif path.suffix == ".py" and path.name not in ("__init__.py", "__main__.py") \
                and "migrations" not in rel.parts:
            out.add(rel.as_posix())
    return out


def readme_layout() -> set[str]:
    """The krishna_ai/ entries of the README's Layout block, their paths rebuilt from the indentation."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = text.split("## Layout", 1)[1].split("```", 2)[1]
    out, stack = set(), []
    inside = False
    for line in block.splitlines():
        m = re.match(r"^( *)(\S+)(?:\s{2,}.*)?$", line)
        if not m:
            continue
        depth, name = len(m.group(1)) // 2, m.group(2)
        if depth == 0:
            inside = name == "krishna_ai/"
            stack = []
            continue
        if not inside or len(m.group(1)) > 2 * (len(stack) + 1):  # a description's continuation line
            continue
        stack = stack[:depth - 1] + [name]
        out.add("".join(stack))
    return out


def test_readme_layout_lists_every_module_and_no_other():
    listed, actual = readme_layout(), tree()
    assert not actual - listed, f"in the tree, not in the README's Layout: {sorted(actual - listed)}"
    assert not listed - actual, f"in the README's Layout, not in the tree: {sorted(listed - actual)}"


def test_readme_layout_parser_sees_nesting():
    listed = readme_layout()
    assert {"core/", "core/style.py", "history/migrations/", "runtime/engine.py"} <= listed
    assert "style.py" not in listed and "migrations/" not in listed


def test_no_module_over_the_limit():
    long = {p.relative_to(REPO).as_posix(): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"split by concern: {long}"


def test_every_subpackage_is_in_a_layer_of_the_contract():
    config = configparser.ConfigParser()
    config.read(REPO / ".importlinter", encoding="utf-8")
    layers = config["importlinter:contract:layers"]["layers"]
    named = set(re.findall(r"krishna_ai\.(\w+)", layers))
    subpackages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert named == subpackages


def test_every_test_the_readme_names_exists():
    """The README's security table (and any other place) names tests as `tests/FILE.py::NAME`: each must exist."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    named = re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", readme)
    assert len(named) >= 15
    missing = [f"{f}::{t}" for f, t in named
               if not (REPO / f).is_file() or f"def {t}(" not in (REPO / f).read_text(encoding="utf-8")]
    assert missing == []
