"""No module imports another module, and no module's distribution depends on another's:
modules meet only through the core's hooks and services (``agent.sockets`` for sockets), so
``pip install hostsflow hostsflow-systemd`` alone gives markTraffic, and a fault in one module
can never take another down with it.  Read from the sources and the pyproject files."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODULES = sorted(p.parent for p in REPO.glob("plugins/*/pyproject.toml"))
PACKAGES = {d.name: f"hostsflow_{d.name}" for d in MODULES}


def imported(path: Path) -> set[str]:
    """Top-level package names a Python file imports."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out


def test_no_module_imports_another():
    assert len(MODULES) >= 5
    found = {}
    for d in MODULES:
        own = PACKAGES[d.name]
        others = set(PACKAGES.values()) - {own}
        for f in (d / own).rglob("*.py"):
            bad = imported(f) & others
            if bad:
                found[str(f.relative_to(REPO))] = sorted(bad)
    assert not found, found


def test_no_distribution_depends_on_another_module():
    names = {tomllib.loads((d / "pyproject.toml").read_text())["project"]["name"]
             for d in MODULES}
    for d in MODULES:
        project = tomllib.loads((d / "pyproject.toml").read_text())["project"]
        deps = {re.split(r"[<>=!~ \[]", dep, maxsplit=1)[0] for dep in project["dependencies"]}
        assert not deps & (names - {project["name"]}), (project["name"], deps)
        assert "hostsflow" in deps, project["name"]
