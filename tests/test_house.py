"""The house plan holds: arrows point down only (import-linter's contract in .importlinter), no module
imports a private name of another, and modules and functions stay small enough to read."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "chatrlhf"
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 500, 60


def _modules() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py") if "migrations" not in p.parts)


def test_layer_contract_holds():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert exe, "import-linter is a dev dependency: pip install -e '.[dev]'"
    r = subprocess.run([exe, "--config", str(ROOT / ".importlinter")], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]


def test_no_module_imports_a_private_name_of_another():
    bad = []
    for p in _modules():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("chatrlhf"):
                bad += [f"{p.relative_to(SRC)}: {node.module}.{a.name}" for a in node.names
                        if a.name.startswith("_") and not a.name.startswith("__")]
    assert not bad, bad


@pytest.mark.parametrize("kind", ["module", "function"])
def test_modules_and_functions_stay_small(kind):
    big = []
    for p in _modules():
        text = p.read_text()
        if kind == "module" and len(text.splitlines()) > MAX_MODULE_LINES:
            big.append(f"{p.relative_to(SRC)}: {len(text.splitlines())} lines")
        if kind == "function":
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    n = node.end_lineno - node.lineno + 1
                    if n > MAX_FUNCTION_LINES:
                        big.append(f"{p.relative_to(SRC)}:{node.lineno} {node.name}: {n} lines")
    assert not big, big
