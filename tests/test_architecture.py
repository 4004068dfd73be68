"""The layering is a contract: .importlinter holds it (layers, no cycles, no torch on the page side) and this test
runs it, so an import that climbs a layer or closes a cycle fails CI. Imports inside functions stay only where they
keep torch out of page start-up (or, in the memory probe, keep the other model kind's libraries out of the process
it measures), each with a comment saying so; pages import only Streamlit, ui and lab.views."""
from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest
from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parent.parent
PAGE_IMPORTS = ("streamlit", "altair", "pandas", "ui", "lab.views")


def test_import_contracts_hold(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    code = lint_imports(config_filename=str(ROOT / ".importlinter"), no_cache=True)
    out = capsys.readouterr().out
    assert code == 0, out
    assert "0 broken" in out and "3 kept" in out, out  # every contract was checked, not skipped


def _function_imports(path: Path) -> list[tuple[int, str]]:
    """(line, statement) of every import inside a function of `path` that has no lazy/optional comment on its
    line or above its group of imports."""
    lines = path.read_text().splitlines()
    tree = ast.parse("\n".join(lines))
    found = {}
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    found[node.lineno] = node
    missing = []
    for line, node in sorted(found.items()):
        above = line - 1
        while above >= 1 and (above in found or not lines[above - 1].strip()):  # the group of imports it is in
            above -= 1
        comment = lines[above - 1].strip() if above >= 1 else ""
        if "# lazy" in lines[line - 1] or comment.startswith(("# lazy:", "# optional:")):
            continue
        missing.append((line, ast.unparse(node)))
    return missing


@pytest.mark.parametrize("path", sorted(p.relative_to(ROOT) for p in [*ROOT.glob("lab/**/*.py"), *ROOT.glob("ui/*.py")]
                                        if "migrations" not in p.parts), ids=str)
def test_imports_inside_functions_say_why(path):
    assert _function_imports(ROOT / path) == [], (
        f"{path}: an import inside a function must keep torch (or a module that loads it) out of page start-up, "
        f"with a '# lazy: <why>' comment; otherwise import it at the top of the module")


def test_a_lazy_import_without_a_comment_is_found(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    import torch\n    return torch\n\n\ndef g():\n    # lazy: pages read this\n"
                      "    import torch\n    import diffusers\n    return torch, diffusers\n")
    assert _function_imports(sample) == [(2, "import torch")]


@pytest.mark.parametrize("path", sorted(p.name for p in [*ROOT.glob("pages/*.py"), ROOT / "app.py"]))
def test_pages_are_thin(path):
    """A page draws what ui and lab.views give it; it never reaches the engine, the runner or torch."""
    file = ROOT / "pages" / path if (ROOT / "pages" / path).exists() else ROOT / path
    tree = ast.parse(file.read_text())
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):  # `from lab import x` names the module lab.x
            named = {f"{node.module}.{a.name}" for a in node.names}
            modules |= named if node.module in ("lab", "ui") else {node.module}
    outside = sorted(m for m in modules if not any(m == p or m.startswith(p + ".") for p in PAGE_IMPORTS))
    assert outside == [], f"{path} imports {outside}; a page imports only {', '.join(PAGE_IMPORTS)}"
    assert os.path.getsize(file) < 12_000


@pytest.mark.parametrize("path", sorted(p.relative_to(ROOT) for p in ROOT.glob("lab/**/*.py")
                                        if "migrations" not in p.parts), ids=str)
def test_every_module_says_what_it_is(path):
    assert ast.get_docstring(ast.parse((ROOT / path).read_text())), f"{path} has no module docstring"
