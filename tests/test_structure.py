"""The layout the architecture promises: small functions and classes, a test file for every agent module,
no import of `agent` from `hgad`, no history in the code and docs."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from .conftest import ROOT

PACKAGES = ("agent", "hgad", "calibration")


def _modules(package: str) -> list[Path]:
    return sorted(p for p in (ROOT / package).rglob("*.py") if "__pycache__" not in p.parts)


def test_no_function_over_60_lines_and_no_class_over_250():
    long = []
    for package in PACKAGES:
        for path in _modules(package):
            for node in ast.walk(ast.parse(path.read_text())):
                size = (node.end_lineno or 0) - node.lineno + 1 if hasattr(node, "lineno") else 0
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and size > 60:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({size} lines)")
                if isinstance(node, ast.ClassDef) and size > 250:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} class {node.name} ({size} lines)")
    assert not long, long


def test_every_agent_module_has_a_test_file_of_its_own_that_imports_it():
    missing = []
    for path in _modules("agent"):
        if path.name == "__init__.py":
            continue
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        test = ROOT / "tests" / f"test_{module.replace('.', '_')}.py"
        text = test.read_text() if test.is_file() else ""
        package, name = module.rsplit(".", 1)
        forms = (
            rf"from {re.escape(module)} import|import {re.escape(module)}\b|from {re.escape(package)} import {name}\b"
        )
        if not re.search(rf"^({forms})", text, re.M):
            missing.append(f"{module} -> {test.name}")
    assert not missing, missing


def test_the_model_library_never_imports_the_agent():
    for path in _modules("hgad") + _modules("calibration"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                assert not node.module.startswith("agent"), f"{path}: imports {node.module}"


def test_code_and_docs_tell_the_system_as_it_is_not_its_history():
    # The names of development data sets and of past work sessions belong in commit messages.
    words = re.compile(r"\b(photo" r"12|synth" r"6|(this|last|previous|earlier|next) session|session \d+)\b", re.I)
    files = [ROOT / "README.md", *(ROOT / "docs").rglob("*.md")]
    files += [p for p in ROOT.rglob("*.py") if not ({".venv", "benchmarks", "__pycache__"} & set(p.parts))]
    found = [f"{p.relative_to(ROOT)}: {m.group(0)}" for p in files for m in words.finditer(p.read_text())]
    assert not found, found[:10]
