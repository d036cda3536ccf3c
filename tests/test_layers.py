"""The house's floors: no module imports from a higher layer (scripts > cli > bench > training >
serve, datagen, local_s3 > pipelines, models > common; handlers are archived flat and import
nothing of the project)."""

from __future__ import annotations

import ast

import pytest

from tests.helpers import REPO

#: Top-level packages, from the top floor down; packages on one floor may import each other.
LAYERS = [
    ("scripts",),
    ("cli",),
    ("bench",),
    ("training",),
    ("serve", "datagen", "local_s3"),
    ("pipelines", "models"),
    ("common",),
]
FLOOR = {package: floor for floor, packages in enumerate(LAYERS) for package in packages}


def project_imports(path) -> list[tuple[int, str]]:
    """``(line, top-level package)`` of each import of a project package in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        found += [(node.lineno, n.split(".")[0]) for n in names if n.split(".")[0] in FLOOR]
    return found


def modules():
    return sorted(
        p
        for package in [*FLOOR, "handlers"]
        for p in (REPO / package).rglob("*.py")
        if "__pycache__" not in p.parts
    )


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_module_imports_from_a_higher_floor(path):
    package = path.relative_to(REPO).parts[0]
    imports = project_imports(path)
    if package == "handlers":  # archived flat into TorchServe: only each other
        assert not imports, f"{path}: handlers import nothing of the project: {imports}"
        return
    upward = [(line, name) for line, name in imports if FLOOR[name] < FLOOR[package]]
    assert not upward, f"{path.relative_to(REPO)} imports from a higher floor: {upward}"
