"""What a source file imports, read from its syntax tree (nothing is executed): the static import tests' one reader."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def module_name(path: Path, root: Path = ROOT) -> str:
    """``experiments/style_separation/run.py`` -> ``experiments.style_separation.run`` (a package: its folder)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every absolute name an import statement anywhere in ``source`` brings in: ``import a.b`` gives ``a.b``;
    ``from a import b`` gives ``a.b`` (a submodule or a name in ``a``); relative imports are resolved against
    ``module``.  Type-checking-only and function-level imports count: they are dependencies all the same."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join([*base, *([node.module] if node.module else [])])
            else:
                prefix = node.module or ""
            names.update(f"{prefix}.{alias.name}" for alias in node.names)
    return names


def file_imports(path: Path, root: Path = ROOT) -> set[str]:
    return imported_names(path.read_text(), module_name(path, root), path.name == "__init__.py")


def sources(*packages: str, root: Path = ROOT) -> list[Path]:
    return sorted(p for package in packages for p in (root / package).rglob("*.py"))
