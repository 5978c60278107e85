"""The pack inside a real headless ComfyUI: /prompt graphs, error responses, and the server staying up."""

import copy
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from devkit import bank_demo, demo_assets, styles_demo, toy_world, transfer_demo, workflow
from devkit.adapters import library, randomized_adapter
from devkit.host import ROOT
from devkit.server import ComfyServer, execution_error, output_images


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = demo_assets.prepare_base_directory(tmp_path_factory.mktemp("comfy_base"))
    styles_demo.build(base / "models", base / "input", log=lambda *_: None)
    loras = base / "models" / "loras"
    save_file({"model.diffusion_model.x.weight": torch.zeros(2, 2)}, str(loras / "foreign.safetensors"))
    torch.save({"w": torch.zeros(1)}, loras / "evil.ckpt")
    cosmos = randomized_adapter({"lora_unet_blocks_0_mlp_layer1": torch.randn(64, 32)}, rank=2, experts=2)
    library().save(cosmos, loras / "cosmos_blocks_moe.safetensors")
    srv = ComfyServer(base_dir=base, log_path=base / "comfyui.log").start()
    yield srv, base
    srv.stop()


@pytest.fixture(scope="module")
def example(server):
    srv, _ = server
    return workflow.to_api(workflow.load(ROOT / "example_workflows" / "demo" / "01_load_and_apply.json"),
                           srv.get("/object_info"))


def _with(graph, class_type, **inputs):
    graph = copy.deepcopy(graph)
    for node in graph.values():
        if node["class_type"] == class_type:
            node["inputs"].update(inputs)
    return graph


def test_pack_nodes_are_registered_with_tooltips(server):
    srv, _ = server
    info = srv.get("/object_info")
    ours = {k: v for k, v in info.items() if k.startswith("OrthoHydra")}
    assert {"OrthoHydraLoader", "OrthoHydraApply", "OrthoHydraLoadAndApply"} <= set(ours)
    for name, node in ours.items():
        for section in ("required", "optional"):
            for input_name, spec in node["input"].get(section, {}).items():
                assert len(spec) > 1 and spec[1].get("tooltip"), f"{name}.{input_name} has no tooltip"
    assert "ortho_hydra_demo_moe.safetensors" in ours["OrthoHydraLoader"]["input"]["required"]["lora_name"][1][
        "options"]


def test_example_graph_renders_and_differs_from_base(server, example):
    srv, base = server
    entry = srv.run(example, timeout=300)
    assert execution_error(entry) is None
    images = output_images(entry, base / "output")
    assert len(images) == 2 and all(p.is_file() for p in images)
    base_entry = srv.run(_with(_with(example, "OrthoHydraLoadAndApply", strength=0.0), "SaveImage",
                               filename_prefix="base"), timeout=300)
    base_images = output_images(base_entry, base / "output")
    for a, b in zip(images, base_images, strict=True):
        pa, pb = np.asarray(Image.open(a)).astype(int), np.asarray(Image.open(b)).astype(int)
        assert pa.shape == pb.shape and np.abs(pa - pb).mean() > 1.0


@pytest.mark.parametrize("name, fragment", [
    ("missing_moe.safetensors", "is not in models/loras"),
    ("foreign.safetensors", "no routed layers"),
    ("evil.ckpt", "pickle"),
])
def test_bad_files_are_refused_at_prompt_time_with_our_message(server, example, name, fragment):
    srv, _ = server
    status, body = srv.queue(_with(example, "OrthoHydraLoadAndApply", lora_name=name))
    assert status == 400
    text = json.dumps(body)
    assert fragment in text and name in text and "Fix:" in text, text
    assert srv.get("/system_stats")["system"]


def test_wrong_architecture_fails_the_run_naming_both_sides_and_server_keeps_serving(server, example):
    srv, base = server
    entry = srv.run(_with(example, "OrthoHydraLoadAndApply", lora_name="cosmos_blocks_moe.safetensors"))
    error = execution_error(entry)
    assert error is not None
    message = error["exception_message"]
    assert "adapter targets blocks.N.*" in message and "model is SD3 joint_blocks.N.*" in message
    assert "cosmos_blocks_moe.safetensors" in message
    again = srv.run(example, timeout=300)  # still serving, and a good graph still runs
    assert execution_error(again) is None and output_images(again, base / "output")


@pytest.mark.parametrize("name", ["02_pin_blend_gallery.json", "03_capture_and_replay_style.json",
                                  "04_train_then_apply.json", "05_router_trace.json",
                                  "07_transfer_to_new_base.json", "08_lora_bank_mixer.json"])
def test_every_example_workflow_uses_registered_nodes_and_runs(server, name):
    srv, base = server
    info = srv.get("/object_info")
    wf = workflow.load(ROOT / "example_workflows" / "demo" / name)
    missing = {n["type"] for n in wf["nodes"]} - set(info)
    assert not missing
    entry = srv.run(workflow.to_api(wf, info), timeout=600)
    assert execution_error(entry) is None, execution_error(entry)
    images = output_images(entry, base / "output")
    assert images and all(p.is_file() for p in images)
    shown = 0
    cached = {n for kind, data in entry["status"]["messages"] if kind == "execution_cached" for n in data["nodes"]}
    for node_id, node in entry["prompt"][2].items():  # every pack node with a report that ran shows it (UI text)
        outputs = set(info[node["class_type"]].get("output_name", []))
        if node_id in cached:  # answered from an earlier example's run: the host records no UI without a client
            continue
        if node["class_type"].startswith("OrthoHydra") and ({"summary", "report", "path"} & outputs
                                                            or node["class_type"] == "OrthoHydraTrain"):
            text = entry["outputs"].get(node_id, {}).get("text", [""])
            assert text[0].strip(), f"{node['class_type']} ran and showed no text"
            shown += 1
    assert shown, "no pack node with a report in this example"
    if name.startswith("04"):  # trained in the server's inference-mode executor, checkpoint + resume file kept
        assert (base / "models" / "loras" / "ortho_hydra_demo_trained.safetensors").is_file()
        assert (base / "models" / "ortho_hydra_resume" / "ortho_hydra_demo_trained.resume.safetensors").is_file()
        assert not list((base / "models" / "loras").glob("*.resume.safetensors"))  # LoRA lists stay LoRAs
        assert len(images) == 3
    if name.startswith("07"):  # the transferred file, then v2 sampled with the naive copy and with it
        assert workflow.load(transfer_demo.WORKFLOW) == transfer_demo.workflow()
        written = base / "models" / "loras" / f"{transfer_demo.OUTPUT_NAME}.safetensors"
        assert "\"mode\": \"subspace\"" in library().load(str(written)).metadata["oh_transfer"]
        assert sorted(p.name.split("_000")[0] for p in images) == ["ortho_hydra_v2_naive_copy"] * 2 + [
            "ortho_hydra_v2_transferred"] * 2  # a batch of 2 from each branch
    if name.startswith("08"):  # a 0.6 / 0.4 blend of LoRAs 1 and 2 and LoRA 1 pinned: different pictures
        assert workflow.load(bank_demo.WORKFLOW) == bank_demo.workflow()
        blend, pin = (np.asarray(Image.open(next(p for p in images if label in p.name)), dtype=np.float64)
                      for label in ("bank_blend", "bank_pin_1"))
        assert np.abs(blend - pin).mean() > 1.0
    if name.startswith("03"):
        assert (base / "models" / "ortho_hydra_profiles" / "demo_style.json").is_file()
        assert (base / "models" / "loras" / "ortho_hydra_demo_style_baked.safetensors").is_file()


def test_styles_workflow_is_generated_from_the_data_and_trains_named_experts(server):
    """Example 06 (what `make demo` runs), shortened to 6 steps: names stamped, a row per content, every tile saved."""
    assert workflow.load(styles_demo.WORKFLOW) == styles_demo.workflow()  # labels and seeds cannot drift
    srv, base = server
    info = srv.get("/object_info")
    graph = workflow.to_api(workflow.load(styles_demo.WORKFLOW), info)
    train = next(n for n in graph.values() if n["class_type"] == "OrthoHydraTrain")
    train["inputs"].update(steps=6, label_guidance_steps=4)
    entry = srv.run(graph, timeout=600)
    assert execution_error(entry) is None, execution_error(entry)
    adapter = library().load(base / "models" / "loras" / "ortho_hydra_toy_styles.safetensors")
    assert adapter.expert_names == toy_world.STYLES
    latents = [item for out in entry["outputs"].values() for item in out.get("latents", [])]
    from safetensors.torch import load_file

    saved = load_file(str(base / "output" / latents[0]["subfolder"] / latents[0]["filename"]))["latent_tensor"]
    assert saved.shape == (len(toy_world.CONTENTS) * (adapter.num_experts + 1), 16, toy_world.SIZE, toy_world.SIZE)


def test_web_extension_route_and_docs_are_served(server):
    srv, _ = server
    import urllib.error
    import urllib.request

    body = srv.get("/ortho_hydra/experts?lora_name=ortho_hydra_demo_moe.safetensors")
    assert body["num_experts"] == 2 and body["expert_names"] == demo_assets.STYLE_NAMES
    for bad in ("..%2F..%2Fcomfy%2Fsd.py", "evil.ckpt", "nope"):
        with pytest.raises(urllib.error.HTTPError) as err:
            srv.get(f"/ortho_hydra/experts?lora_name={bad}")
        assert err.value.code == 400
    assert srv.get("/system_stats")["system"]
    with urllib.request.urlopen(srv.url + "/extensions/comfyui-ortho-hydra/ortho_hydra.js", timeout=30) as resp:
        script = resp.read().decode()
    assert "registerExtension" in script and "/ortho_hydra/experts" in script
    extensions = srv.get("/extensions")
    assert any(e.endswith("ortho_hydra.js") for e in extensions)
    with urllib.request.urlopen(srv.url + "/extensions/comfyui-ortho-hydra/docs/OrthoHydraRouter.md",
                                timeout=30) as resp:
        assert resp.read().decode().startswith("# Ortho-Hydra Expert Mixer")


def _refused(srv, graph) -> str:
    """How the server turned a bad graph down: 'queue' (400 at /prompt) or 'run' (an execution error)."""
    status, body = srv.queue(graph)
    if status == 400:
        return "queue"
    assert status == 200, body
    if body.get("node_errors"):  # ComfyUI runs the outputs that validated and names the failed branch here
        srv.wait(body["prompt_id"], timeout=300)
        return "queue"
    entry = srv.wait(body["prompt_id"], timeout=300)
    messages = {kind for kind, _ in entry.get("status", {}).get("messages", [])}
    assert messages & {"execution_error", "execution_interrupted"}, f"accepted a bad graph: {entry['status']}"
    return "run"


def test_twenty_bad_graphs_then_a_good_one_and_the_model_is_clean(server, example):
    """Bad names, bad keyframes, wrong types and values, an interrupt mid-sampling: each is turned down, the
    server keeps serving, and the good graph afterwards gives the very pictures it gave before."""
    srv, base = server
    info = srv.get("/object_info")
    router = workflow.to_api(workflow.load(ROOT / "example_workflows" / "demo" / "02_pin_blend_gallery.json"), info)
    before = [np.asarray(Image.open(p)) for p in output_images(srv.run(example, timeout=300), base / "output")]
    bad = [
        _with(example, "OrthoHydraLoadAndApply", lora_name="missing_moe.safetensors"),
        _with(example, "OrthoHydraLoadAndApply", lora_name="foreign.safetensors"),
        _with(example, "OrthoHydraLoadAndApply", lora_name="evil.ckpt"),
        _with(example, "OrthoHydraLoadAndApply", lora_name="../../secret_moe.safetensors"),
        _with(example, "OrthoHydraLoadAndApply", strength="strong"),
        _with(example, "OrthoHydraLoadAndApply", strength=1e9),
        _with(example, "OrthoHydraLoadAndApply", router_correction="bogus"),
        _with(example, "KSampler", steps=0),
        _with(example, "KSampler", sampler_name="no_such_sampler"),
        _with(router, "OrthoHydraRouter", mode="bogus"),
        _with(router, "OrthoHydraRouter", keyframes="0.0 pin 99"),
        _with(router, "OrthoHydraRouter", keyframes="garbage in, garbage out"),
        _with(router, "OrthoHydraRouter", keyframes="0.7 live\n0.2 pin 0"),
        _with(router, "OrthoHydraRouter", layer_regex="(["),
        _with(router, "OrthoHydraRouter", mode="blend", weights="1, 2, 3, 4, 5"),
        _with(router, "OrthoHydraRouter", mode="pin", expert=99),
        _with(router, "OrthoHydraRouter", block_start=5, block_end=1),
        _with(router, "OrthoHydraRouter", mode="temperature", temperature=-1.0),
        _with(router, "OrthoHydraRouter", side="bogus"),
    ]
    ways = []
    for i, graph in enumerate(bad):
        try:
            ways.append(_refused(srv, graph))
        except AssertionError as exc:
            raise AssertionError(f"bad graph {i}: {exc}") from None
    # the twentieth: a long sampling run interrupted mid-way.  ComfyUI clears the interrupt flag when a prompt starts
    # executing, so one interrupt sent right after queueing can land before that and be lost: keep interrupting
    # until the prompt has ended.
    status, body = srv.queue(_with(example, "KSampler", steps=2000))
    assert status == 200
    entry = srv.interrupt_until_done(body["prompt_id"], timeout=300)
    assert {kind for kind, _ in entry["status"]["messages"]} & {"execution_interrupted", "execution_error"}
    assert len(ways) + 1 == 20 and "queue" in ways and "run" in ways
    after = [np.asarray(Image.open(p)) for p in output_images(srv.run(example, timeout=300), base / "output")]
    assert len(after) == len(before) and all(np.array_equal(a, b) for a, b in zip(after, before, strict=True))
