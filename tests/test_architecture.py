"""The architecture as a test: stage packages import only downward, few function-local imports, small files."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "depthprune"
ORDER = ["core", "models", "data", "importance", "pruning", "retraining", "evaluation", "quantization", "speed",
         "report", "pipeline", "commands"]
"""The data flow, bottom to top: each stage package may import only itself and the stages before it."""
MAX_LOCAL_IMPORTS = 15
MAX_LINES = 400


def stage_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "depthprune" or len(parts) == 1:
        return None
    if parts[1] in ("errors",):
        return "core"
    if parts[1] == "cli":
        return "commands"
    return parts[1] if parts[1] in ORDER else None


def modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts).removesuffix(".__init__")
        yield name, path, ast.parse(path.read_text())


def imports(tree):
    """(imported module, line number, inside a function?) for every import statement of a module."""
    out = []

    def visit(node, in_function: bool):
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                out.extend((a.name, child.lineno, in_function) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                out.append((child.module, child.lineno, in_function))
            visit(child, inner)

    visit(tree, False)
    return out


def test_stage_packages_import_only_downward():
    upward = []
    for name, path, tree in modules():
        here = stage_of(name)
        if here is None:
            continue
        for target, line, _ in imports(tree):
            there = stage_of(target)
            if there is not None and ORDER.index(there) > ORDER.index(here):
                upward.append(f"{path.relative_to(PACKAGE)}:{line} ({here}) imports {target} ({there})")
    assert not upward, "\n".join(upward)


def test_function_local_imports_are_few_and_explained():
    local = []
    for _, path, tree in modules():
        lines = path.read_text().splitlines()
        for target, line, in_function in imports(tree):
            if in_function:
                local.append((f"{path.relative_to(PACKAGE)}:{line} {target}", lines[line - 1]))
    unexplained = [where for where, text in local if "#" not in text]
    assert not unexplained, "function-local imports need a reason comment:\n" + "\n".join(unexplained)
    assert len(local) <= MAX_LOCAL_IMPORTS, "\n".join(where for where, _ in local)


def test_no_file_over_the_size_limit():
    long = [f"{p.relative_to(PACKAGE)}: {n} lines" for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES]
    assert not long, "\n".join(long)
