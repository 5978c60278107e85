"""How the repository's packages depend on each other, read statically: no import cycles; studies (experiments/) and
speed benchmarks (bench/) apart, each run as a module (``python -m``) with no ``sys.path`` edits; every study has
its write-up and runner, and the README links it."""

import ast
import re
from pathlib import Path

from imports import ROOT, file_imports, module_name, sources

PACKAGES = ("ortho_hydra", "ortho_hydra_train", "devkit", "bench", "experiments")


def dependency_graph(paths: list[Path], root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> the modules of ``paths`` it imports (a name imported from a module counts as that module)."""
    modules = {module_name(p, root): p for p in paths}
    graph = {}
    for name, path in modules.items():
        deps = set()
        for imported in file_imports(path, root):
            while imported and imported not in modules:
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                deps.add(imported)
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def sys_path_edits(path: Path) -> list[int]:
    """Lines that touch ``sys.path``."""
    tree = ast.parse(path.read_text())
    return [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr == "path"
            and isinstance(n.value, ast.Name) and n.value.id == "sys"]


def test_a_cycle_through_a_type_checking_import_is_found(tmp_path):
    # the shape bench/deuniformization*.py had: the driver imports its data module, which imports the driver's
    # Config for its annotations only
    (tmp_path / "study").mkdir()
    (tmp_path / "study" / "__init__.py").write_text("")
    (tmp_path / "study" / "run.py").write_text("from study.data import make_data\n\nclass Config: ...\n")
    (tmp_path / "study" / "data.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from study.run import Config\n")
    (tmp_path / "study" / "report.py").write_text("from .data import make_data\n")
    graph = dependency_graph(sorted((tmp_path / "study").glob("*.py")), tmp_path)
    assert graph["study.report"] == {"study.data"}
    assert cycles(graph) == [["study.data", "study.run"]]


def test_our_packages_import_each_other_without_cycles():
    graph = dependency_graph(sources(*PACKAGES))
    assert len(graph) > 60 and graph["experiments.style_separation.run"] >= {"experiments.toy_harness"}
    assert cycles(graph) == []


def test_studies_and_speed_benchmarks_do_not_import_each_other():
    crossing = {str(p.relative_to(ROOT)): sorted(n for n in file_imports(p) if n.split(".")[0] == other)
                for folder, other in (("bench", "experiments"), ("experiments", "bench")) for p in sources(folder)}
    assert {path: names for path, names in crossing.items() if names} == {}


def test_studies_and_benchmarks_run_as_modules_without_sys_path_edits(tmp_path):
    probe = tmp_path / "script.py"
    probe.write_text("import sys\nfrom pathlib import Path\nsys.path.insert(0, str(Path(__file__).parent))\n")
    assert sys_path_edits(probe) == [3]
    edits = {str(p.relative_to(ROOT)): sys_path_edits(p) for p in sources("bench", "experiments")}
    assert {path: lines for path, lines in edits.items() if lines} == {}


def test_every_study_has_its_write_up_and_runner_and_the_readme_links_it():
    studies = sorted(p.parent for p in (ROOT / "experiments").glob("*/__init__.py"))
    assert len(studies) >= 7
    readme = (ROOT / "README.md").read_text()
    for study in studies:
        assert (study / "README.md").is_file(), study.name
        assert re.search(r"^def main\(", (study / "run.py").read_text(), re.M), study.name
        assert f"](experiments/{study.name}/README.md)" in readme, study.name
