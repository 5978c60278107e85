"""Example 09 (the glyph half of `make demo`): generated from the glyph world's definitions, and it runs.

The server run uses a two-step base model and 6 training steps: it checks the graph (names stamped, one gallery
row per held-out character, every tile saved, the probes read the tiles), not the result, which the study
measures (experiments/form_styles).
"""

import pytest
from safetensors.torch import load_file

from devkit import form_probe, glyph_demo, workflow
from devkit import glyph_world as gw
from devkit.adapters import library
from devkit.server import ComfyServer, execution_error


def test_the_committed_workflow_is_generated_from_the_data():
    assert workflow.load(glyph_demo.WORKFLOW) == glyph_demo.workflow()  # labels and seeds cannot drift
    graph = glyph_demo.workflow()
    train = next(n for n in graph["nodes"] if n["type"] == "OrthoHydraTrain")
    labels = [int(v) for v in train["widgets_values"][22].split(",")]
    _, _, expected = glyph_demo.training_set()
    assert labels == expected.tolist()
    gallery_seeds = next(n for n in graph["nodes"] if n["type"] == "OrthoHydraDemoConditioning"
                         and n["pos"] == [360, 520])["widgets_values"][3]
    assert gallery_seeds == ",".join(str(gw.COND_SEED + c) for c in gw.split_ids("held_out"))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from devkit.demo_assets import prepare_base_directory

    base = prepare_base_directory(tmp_path_factory.mktemp("glyph_base"))
    glyph_demo.build(base / "models", base / "input", log=lambda *_: None, recipe=gw.recipe(steps=2, warmup=1))
    srv = ComfyServer(base_dir=base, log_path=base / "comfyui.log").start()
    yield srv, base
    srv.stop()


@pytest.mark.study  # trains in a server, then fits the probes: minutes on 2 cores
def test_the_glyph_graph_trains_named_experts_and_renders_held_out_characters(server):
    srv, base = server
    graph = workflow.to_api(workflow.load(glyph_demo.WORKFLOW), srv.get("/object_info"))
    train = next(n for n in graph.values() if n["class_type"] == "OrthoHydraTrain")
    train["inputs"].update(steps=6, label_guidance_steps=4)
    entry = srv.run(graph, timeout=900)
    assert execution_error(entry) is None, execution_error(entry)
    adapter = library().load(base / "models" / "loras" / f"{glyph_demo.OUTPUT_NAME}.safetensors")
    assert adapter.expert_names == gw.STYLES
    saved = [item for out in entry["outputs"].values() for item in out.get("latents", [])]
    tiles = load_file(str(base / "output" / saved[0]["subfolder"] / saved[0]["filename"]))["latent_tensor"]
    held = gw.split_ids("held_out")
    assert tiles.shape == (len(held) * (len(gw.STYLES) + 1), 16, gw.SIZE, gw.SIZE)
    form, content = form_probe.certified_probes()
    verdicts = glyph_demo.verdicts(tiles, form, content)
    assert list(verdicts) == [*gw.STYLES, "live"]
    assert all(len(v["form_probe"]) == len(held) and 0 <= v["content_kept"] <= 1 for v in verdicts.values())
    judge = glyph_demo.judge_png(tiles, base / "judge.png", "test")
    assert judge.is_file()
