"""gateway/store/fast.py (SQLAlchemy private attributes, DBAPI cursors) is reached only
through the store's public names: nothing outside gateway/store imports it."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
FAST = "gateway.store.fast"


def _imports_fast(tree: ast.AST) -> list[int]:
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            if any(a.name == FAST or a.name.startswith(FAST + ".") for a in node.names):
                lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (
                node.module == FAST or (node.module == "gateway.store"
                                        and any(a.name == "fast" for a in node.names))):
            lines.append(node.lineno)
    return lines


class TestFastPathContained:
    def test_detector_sees_each_import_form(self):
        """The scan recognises `import`, `from ... import` and `from gateway.store import fast`."""
        for src in ("import gateway.store.fast", "from gateway.store.fast import Prepared",
                    "from gateway.store import fast", "def f():\n    import gateway.store.fast"):
            assert _imports_fast(ast.parse(src)), src
        assert not _imports_fast(ast.parse("from gateway.store import Prepared, repo"))

    def test_only_the_store_imports_fast(self):
        """No module of gateway/, bench/ or tests/ outside gateway/store imports it."""
        store = REPO / "gateway" / "store"
        offenders = []
        for top in ("gateway", "bench", "tests"):
            for path in sorted((REPO / top).rglob("*.py")):
                if path.is_relative_to(store):
                    continue
                for line in _imports_fast(ast.parse(path.read_text(encoding="utf-8"))):
                    offenders.append(f"{path.relative_to(REPO)}:{line}")
        assert offenders == []
