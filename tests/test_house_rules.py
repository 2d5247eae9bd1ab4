"""House rules (issue 21, point 8), checked over every .py file of jaxspo/, tests/, benchmarks/ and launch/: no file
over 400 lines, no function over 60, no import of a private name (``from x import _y``) from another module."""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FOLDERS = ("jaxspo", "tests", "benchmarks", "launch")
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60

LONG_FUNCTION_EXCEPTIONS: set[str] = set()  # none today; name a function here only with the reason
LONG_FILE_EXCEPTIONS: set[str] = set()  # none today; name a file here only with the reason


def python_files() -> list[Path]:
    files = []
    for folder in FOLDERS:
        files += [p for p in (REPO / folder).rglob("*.py") if ".venvs" not in p.parts]
    return sorted(files)


def long_functions(path: Path, limit: int = MAX_FUNCTION_LINES) -> dict[str, int]:
    """``file::function`` (``Class.method`` for methods, ``outer.inner`` for nested ones) → lines, above ``limit``."""
    found = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                lines = child.end_lineno - child.lineno + 1
                if not isinstance(child, ast.ClassDef) and lines > limit:
                    found[f"{path.relative_to(REPO)}::{name}"] = lines
                visit(child, f"{name}.")
            else:
                visit(child, prefix)

    visit(ast.parse(path.read_text(), str(path)), "")
    return found


def private_imports(path: Path) -> list[str]:
    """``file:line: from module import _name`` for every private (one leading underscore) name imported."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    module = "." * node.level + (node.module or "")
                    found.append(f"{path.relative_to(REPO)}:{node.lineno}: from {module} import {alias.name}")
    return found


def test_the_rules_see_what_they_check(tmp_path, monkeypatch):
    monkeypatch.setattr(f"{__name__}.REPO", tmp_path)
    sample = tmp_path / "sample.py"
    body = "\n".join(f"        x{i} = {i}" for i in range(60))
    sample.write_text(f"from a.b import _hidden, shown\n\n\nclass C:\n    def m(self):\n{body}\n        return 1\n")
    assert long_functions(sample) == {"sample.py::C.m": 62}
    assert private_imports(sample) == ["sample.py:1: from a.b import _hidden"]
    assert len(python_files()) == 0


def test_no_file_is_longer_than_400_lines():
    long = {
        str(p.relative_to(REPO)): n for p in python_files() if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES
    }
    for name in LONG_FILE_EXCEPTIONS:
        assert name in long, f"{name} is no longer over {MAX_FILE_LINES} lines: drop it from the exceptions"
        del long[name]
    assert not long, f"split these files into modules of at most {MAX_FILE_LINES} lines: {long}"


def test_no_function_is_longer_than_60_lines():
    found = {}
    for path in python_files():
        found |= long_functions(path)
    for name in LONG_FUNCTION_EXCEPTIONS:
        assert name in found, f"{name} is no longer over {MAX_FUNCTION_LINES} lines: drop it from the exceptions"
        del found[name]
    assert not found, f"split these functions (at most {MAX_FUNCTION_LINES} lines each): {found}"


@pytest.mark.parametrize("folder", FOLDERS)
def test_no_module_imports_a_private_name_from_another(folder):
    found = [
        line for path in python_files() if path.relative_to(REPO).parts[0] == folder for line in private_imports(path)
    ]
    assert not found, "make these names public (with a good name) or move them to a shared module:\n" + "\n".join(found)
