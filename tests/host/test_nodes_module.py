"""ComfyUI's ``nodes`` module stays ComfyUI's: the pack's node package is only ever ``<pack>.nodes``, whether ComfyUI
imports the pack, the tests do, or the torchrun command does; and the pack's ``nodes/`` folder cannot load under the
top-level name even with the pack root first on ``sys.path``."""

import json
import subprocess
import sys
from pathlib import Path

from devkit.host import COMFY_DIR, PACK_MODULE, ROOT, import_pack

COMFY_NODES = (COMFY_DIR / "nodes.py").resolve()


def ours_by_name(modules: dict) -> dict[str, str]:
    """Loaded modules whose file is in this repository's nodes/ or comfy_glue/ folders, by their import name."""
    found = {}
    for name, module in list(modules.items()):
        file = getattr(module, "__file__", None)
        if file and Path(file).resolve().parent.parent == ROOT and Path(file).resolve().parent.name in (
                "nodes", "comfy_glue"):
            found[name] = str(Path(file).resolve().relative_to(ROOT))
    return found


def test_after_importing_the_pack_nodes_is_comfyuis_and_ours_live_under_the_pack():
    pack = import_pack()
    assert Path(sys.modules["nodes"].__file__).resolve() == COMFY_NODES
    ours = ours_by_name(sys.modules)
    assert f"{PACK_MODULE}.nodes" in ours and f"{PACK_MODULE}.comfy_glue.training" in ours
    assert {name for name in ours if not name.startswith(f"{PACK_MODULE}.")} == set()
    assert pack.nodes.OrthoHydraExtension.__module__ == f"{PACK_MODULE}.nodes"


def test_the_pack_nodes_folder_cannot_load_as_top_level_nodes_even_first_on_sys_path():
    # the worst case the old layout allowed: the pack root ahead of ComfyUI on sys.path, nothing of ComfyUI's imported
    code = ("import importlib, sys; sys.path[:0] = [sys.argv[1], sys.argv[2]]\n"
            "try:\n    importlib.import_module('nodes')\nexcept ImportError as exc:\n    print('refused:', exc)\n"
            "else:\n    print('loaded', sys.modules['nodes'].__file__)\n")
    out = subprocess.run([sys.executable, "-c", code, str(ROOT), str(COMFY_DIR)], capture_output=True, text=True,
                         cwd=str(ROOT.parent), timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("refused:") and "relative import" in out.stdout, out.stdout


def test_the_torchrun_commands_imports_leave_comfyuis_nodes_in_place(tmp_path):
    # the command's own entry point, run from the pack root (as `python -m ortho_hydra_train`): it boots ComfyUI
    # and imports the pack, then stops at the missing config file
    code = ("import json, sys\nfrom ortho_hydra_train.__main__ import main\n"
            "code = main(['--model', 'none.safetensors', '--dataset', 'none', '--config', sys.argv[2], '--cpu', "
            "'--comfyui', sys.argv[1]])\n"
            "ours = {n: getattr(m, '__file__', None) for n, m in list(sys.modules.items())}\n"
            "print(json.dumps({'code': code, 'nodes': sys.modules['nodes'].__file__, 'modules': ours}))\n")
    out = subprocess.run([sys.executable, "-c", code, str(COMFY_DIR), str(tmp_path / "missing.toml")],
                         capture_output=True, text=True, cwd=str(ROOT), timeout=600)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["code"] == 2 and "missing.toml: no such config file" in out.stderr
    assert Path(report["nodes"]).resolve() == COMFY_NODES
    loaded = {name: type("M", (), {"__file__": file}) for name, file in report["modules"].items() if file}
    ours = ours_by_name(loaded)
    assert f"{PACK_MODULE}.comfy_glue.training" in ours
    assert {name for name in ours if not name.startswith(f"{PACK_MODULE}.")} == set()


def test_readme_node_table_is_every_node_under_one_menu_root_with_its_registered_name():
    """The README's node table names each registered node once, with the display name and menu the node declares,
    and every menu sits under the one root ``Ortho-Hydra/``."""
    import re

    schemas = {node.define_schema().node_id: node.define_schema() for node in import_pack().nodes.NODES}
    rows = re.findall(r"^\| (.+?) \(`(OrthoHydra\w+)`\) \| ([^|]+?) \|", (ROOT / "README.md").read_text(), re.M)
    assert sorted(node_id for _, node_id, _ in rows) == sorted(schemas)
    for display, node_id, menu in rows:
        assert (display, menu) == (schemas[node_id].display_name, schemas[node_id].category)
        assert menu.startswith("Ortho-Hydra/") and schemas[node_id].display_name.startswith("Ortho-Hydra ")


def test_the_trainer_shows_its_essentials_and_folds_the_research_knobs_where_the_host_can():
    """On hosts whose node API has advanced inputs (ComfyUI 0.33; its front end folds them until "show advanced"),
    the trainer shows about a dozen widgets; everywhere the widget order is the saved graphs' order."""
    import pytest

    pack = import_pack()
    schema = pack.nodes.train.OrthoHydraTrain.define_schema()
    widgets = [i for i in schema.inputs if i.get_io_type() in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")]
    assert [i.id for i in widgets][:6] == ["steps", "learning_rate", "batch_size", "grad_accumulation", "rank",
                                           "experts"]  # positions saved graphs rely on
    if not pack.comfy_glue.types.ADVANCED:
        pytest.skip("this ComfyUI's node API has no advanced inputs; every widget shows")
    shown = [i.id for i in widgets if not getattr(i, "advanced", None)]
    assert set(shown) == {"steps", "learning_rate", "batch_size", "rank", "experts", "gradient_checkpointing",
                          "seed", "save_every", "output_name", "style_labels", "resume", "style_names",
                          "label_guidance"}
    assert {"init", "balance_weight", "slots", "fixed_noise", "jitter_std", "lr_schedule"} <= {
        i.id for i in widgets if getattr(i, "advanced", None)}
