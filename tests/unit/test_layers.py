"""The import graph keeps its layers: the ingress and the worker never import each other, the
shared kernel (`shardgate`) imports neither, and nothing at runtime imports the tooling."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUNTIME = ("ingress", "partition", "shardgate", "sgproto", "sgtools")

# package -> top-level packages of this project it must never import
FORBIDDEN = {
    "ingress": {"partition", "sgtools"},
    "partition": {"ingress", "sgtools"},
    "shardgate": {"ingress", "partition", "sgtools"},
    "sgproto": {"ingress", "partition", "shardgate", "sgtools"},
    "sgtools": set(),
}


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported module) for every import in a file, relative ones resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = path.relative_to(ROOT).with_suffix("").parts[:-1]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package[: len(package) - node.level + 1])
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((node.lineno, module))
    return found


def _violations() -> list[str]:
    bad = []
    for top in RUNTIME:
        for path in sorted((ROOT / top).rglob("*.py")):
            for line, module in _imports(path):
                if module.split(".")[0] in FORBIDDEN[top]:
                    bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    return bad


def test_no_import_crosses_a_forbidden_layer() -> None:
    assert _violations() == []


@pytest.mark.parametrize(("source", "target"), [("ingress", "partition"), ("shardgate", "ingress")])
def test_the_walker_sees_a_forbidden_arrow(tmp_path: Path, source: str, target: str,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The check itself catches both plain and nested imports (so it cannot pass vacuously)."""
    fake_root = tmp_path
    for top in RUNTIME:
        (fake_root / top).mkdir()
    (fake_root / source / "mod.py").write_text(f"def f():\n    from {target}.x import y\n    return y\n")
    monkeypatch.setattr(__import__(__name__, fromlist=["ROOT"]), "ROOT", fake_root)
    assert _violations() == [f"{source}/mod.py:2 imports {target}.x"]
