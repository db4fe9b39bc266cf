"""The library's floors (docs/architecture.md): every module imports only from its own floor or
below, so config and weights know nothing of domains, models nothing of editors, editors nothing
of the page; and no library module imports gradio."""

from __future__ import annotations

import ast
from pathlib import Path

LIBRARY = Path(__file__).resolve().parents[1] / "deltaedit"
# The first name under deltaedit/ -> its floor; docs/architecture.md draws the same four.
FLOORS = {
    0: {"errors", "fileio", "imageio", "config", "weights", "weight_registry", "weight_files", "progress",
        "templates"},
    1: {"domain", "models", "clip", "relevance", "grounding", "refine", "delta_choice", "align", "nn"},
    2: {"api", "pipelines", "training", "toy", "analysis", "vocabulary", "bench", "bench_diffusion", "publish"},
    3: {"service", "domain_info", "request_checks", "views", "plan_store", "outputs", "deltaspace_report",
        "request_guard", "upload_guard", "reliability", "commands", "cli", "__main__", "__init__"},
}  # fmt: skip
FLOOR_OF = {name: floor for floor, names in FLOORS.items() for name in names}


def module_parts(path: Path) -> list[str]:
    parts = list(path.relative_to(LIBRARY).with_suffix("").parts)
    return parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts


def imports_of(path: Path) -> list[list[str]]:
    """Every deltaedit module `path` imports, as parts under deltaedit/ (relative imports resolved)."""
    package = module_parts(path)[:-1] if path.name != "__init__.py" else module_parts(path)
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
            target = base + (node.module.split(".") if node.module else [])
            found += [target] if node.module else [target + [alias.name] for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("deltaedit."):
            found.append(node.module.split(".")[1:])
        elif isinstance(node, ast.Import):
            found += [a.name.split(".")[1:] for a in node.names if a.name.startswith("deltaedit.")]
    return [t for t in found if t]


def floor_of(parts: list[str]) -> int:
    assert parts[0] in FLOOR_OF, f"deltaedit/{parts[0]} has no floor in this test and docs/architecture.md"
    return FLOOR_OF[parts[0]]


def test_no_module_imports_a_floor_above_its_own():
    upward = []
    for path in sorted(LIBRARY.rglob("*.py")):
        here = module_parts(path)
        for target in imports_of(path):
            if floor_of(target) > floor_of(here):
                upward.append(f"{'.'.join(here)} -> {'.'.join(target)}")
    assert upward == []


def test_the_foundations_and_the_models_do_not_read_a_domain_by_name_again():
    """Only Domain.open turns a name into a config below the editors: the loaders take a Domain."""
    readers = []
    for path in sorted(LIBRARY.rglob("*.py")):
        here = module_parts(path)
        if floor_of(here) <= 1 and here != ["domain"] and here != ["config"]:
            if "load_domain_config" in path.read_text():
                readers.append(".".join(here))
    assert readers == []


def test_the_library_never_imports_gradio():
    offenders = []
    for path in sorted(LIBRARY.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            if any(n == "gradio" or n.startswith("gradio.") for n in names):
                offenders.append(str(path.relative_to(LIBRARY)))
    assert offenders == []


def test_rooms_stay_small():
    """Issue 29's sizes: no library file over 500 lines and no function over 80 (signature included)."""
    long_files, long_functions = [], []
    for path in sorted(LIBRARY.rglob("*.py")):
        text = path.read_text()
        name = str(path.relative_to(LIBRARY))
        if len(text.splitlines()) > 500:
            long_files.append(f"{name}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > 80:
                    long_functions.append(f"{name}: {node.name} {lines} lines")
    assert long_files == [] and long_functions == []
