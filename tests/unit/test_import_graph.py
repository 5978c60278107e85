"""How the repository's packages depend on each other, read statically: no import cycles; the layers apart (the core
``ortho_hydra/`` imports neither the ComfyUI glue ``comfy_glue/`` nor ``nodes/``, the glue never imports ``nodes/``,
and ``nodes/`` holds V3 node classes only); nothing of the pack edits ``sys.path`` or evicts ComfyUI's ``nodes``;
studies (experiments/) and speed benchmarks (bench/) apart, each run as a module (``python -m``) with no
``sys.path`` edits; every study has its write-up and runner, and the README links it."""

import ast
import re
from pathlib import Path

from imports import ROOT, file_imports, module_name, sources

PACKAGES = ("ortho_hydra", "comfy_glue", "nodes", "ortho_hydra_train", "devkit", "bench", "experiments")
# A module-level function in nodes/ longer than this is logic that belongs in the glue or the core
NODE_HELPER_LINES = 15


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


def layer_imports(package: str, forbidden: tuple[str, ...], root: Path = ROOT) -> dict[str, list[str]]:
    """Per module of ``package``: the imports (relative ones resolved) that reach into ``forbidden`` packages."""
    found = {}
    for path in sources(package, root=root):
        names = sorted(n for n in file_imports(path, root) if n.split(".")[0] in forbidden)
        if names:
            found[str(path.relative_to(root))] = names
    return found


def not_node_classes(path: Path) -> list[str]:
    """What keeps a module of nodes/ from being node classes only: a class that is not a ``ComfyNode``, a module-level
    function longer than :data:`NODE_HELPER_LINES`, an import of a sibling node module, or no node class at all."""
    tree = ast.parse(path.read_text())
    problems, nodes = [], 0
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            if any(isinstance(b, ast.Attribute) and b.attr == "ComfyNode" for b in node.bases):
                nodes += 1
            else:
                problems.append(f"class {node.name} is not a node")
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = node.end_lineno - node.lineno + 1
            if length > NODE_HELPER_LINES:
                problems.append(f"function {node.name} has {length} lines")
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            problems.append(f"imports the node module .{node.module}")
    if not nodes:
        problems.append("defines no node class")
    return problems


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


def test_the_layer_checks_see_a_core_importing_the_glue_and_a_glue_importing_nodes(tmp_path):
    for package, source in (("ortho_hydra", "from comfy_glue.patcher import apply_adapter\n"),
                            ("comfy_glue", "def f():\n    from ..nodes.train import OrthoHydraTrain\n")):
        (tmp_path / package).mkdir()
        (tmp_path / package / "mod.py").write_text(source)
    assert layer_imports("ortho_hydra", ("comfy_glue", "nodes"), tmp_path) == {
        "ortho_hydra/mod.py": ["comfy_glue.patcher.apply_adapter"]}
    assert layer_imports("comfy_glue", ("nodes",), tmp_path) == {"comfy_glue/mod.py": ["nodes.train.OrthoHydraTrain"]}


def test_the_core_imports_neither_the_glue_nor_nodes_and_the_glue_never_imports_nodes():
    assert len(sources("comfy_glue")) > 20 and len(sources("nodes")) > 10
    assert layer_imports("ortho_hydra", ("comfy_glue", "nodes")) == {}
    assert layer_imports("comfy_glue", ("nodes",)) == {}


def test_the_node_check_sees_what_is_not_a_node_class(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("from comfy_api.v0_0_2 import io\nfrom .train import TrainConfig\n\n"
                     "class Holder:\n    pass\n\n\nclass OrthoHydraX(io.ComfyNode):\n    pass\n\n\n"
                     "def loop():\n" + "    x = 1\n" * NODE_HELPER_LINES)
    assert not_node_classes(probe) == ["class Holder is not a node", f"function loop has {NODE_HELPER_LINES + 1} lines",
                                       "imports the node module .train"]
    probe.write_text("def helper():\n    return 1\n")
    assert not_node_classes(probe) == ["defines no node class"]


def test_nodes_holds_node_classes_only():
    modules = [p for p in sources("nodes") if p.name != "__init__.py"]
    found = {p.name: not_node_classes(p) for p in modules}
    assert {name: problems for name, problems in found.items() if problems} == {}
    init = ast.parse((ROOT / "nodes" / "__init__.py").read_text())
    assert [n.name for n in init.body if isinstance(n, ast.ClassDef)] == ["OrthoHydraExtension"]


def evictions_of_nodes(path: Path) -> list[int]:
    """Lines that delete or pop ``sys.modules["nodes"]``."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text())):
        target = None
        if isinstance(node, ast.Delete):
            target = next((t for t in node.targets if isinstance(t, ast.Subscript)), None)
            key = getattr(target, "slice", None) if target is not None else None
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "pop":
            target, key = node.func, (node.args[0] if node.args else None)
        else:
            continue
        if target is not None and "modules" in ast.unparse(target) and isinstance(key, ast.Constant) \
                and key.value == "nodes":
            lines.append(node.lineno)
    return lines


def test_nothing_of_the_pack_edits_sys_path_or_evicts_comfyuis_nodes(tmp_path):
    probe = tmp_path / "boot.py"
    probe.write_text("import sys\n\ndef boot():\n    del sys.modules['nodes']\n    sys.modules.pop('nodes')\n")
    assert evictions_of_nodes(probe) == [4, 5]
    pack = [ROOT / "__init__.py", *sources("ortho_hydra", "comfy_glue", "nodes")]
    edits = {str(p.relative_to(ROOT)): sys_path_edits(p) for p in pack}
    assert {path: lines for path, lines in edits.items() if lines} == {}
    everywhere = [*pack, *sources(*PACKAGES, "tests", "scripts")]
    evictions = {str(p.relative_to(ROOT)): evictions_of_nodes(p) for p in everywhere}
    assert {path: lines for path, lines in evictions.items() if lines} == {}
