"""A per-step expert turbo student (the reference trainer's layout: fused qkv/kv prefixes, bf16, K heads, no router)
on ComfyUI's own Cosmos-Predict2 MiniTrainDIT: every model call of a K-step run adds exactly head k's delta at step
k, with cfg 1 and with cfg > 1; a pinned head folds; another step count is warned about; unpatching restores."""

import logging

import comfy.model_management as mm
import pytest
import torch
import torch.nn.functional as F

from devkit import tiny_dit
from devkit.host import import_pack
from devkit.step_expert_files import step_expert_metadata, step_expert_tensors, write_step_expert_file

K, RANK, ALPHA = 4, 8, 4.0
PREFIXES = {"lora_unet_blocks_0_self_attn_qkv_proj": (768, 256), "lora_unet_blocks_0_cross_attn_kv_proj": (512, 1024),
            "lora_unet_blocks_1_mlp_layer1": (1024, 256)}
# (file prefix, rows of its fused up that the module computes, module)
WATCHED = [("lora_unet_blocks_1_mlp_layer1", slice(0, 1024), "blocks.1.mlp.layer1"),
           ("lora_unet_blocks_0_self_attn_qkv_proj", slice(256, 512), "blocks.0.self_attn.k_proj"),
           ("lora_unet_blocks_0_cross_attn_kv_proj", slice(256, 512), "blocks.0.cross_attn.v_proj")]


@pytest.fixture(scope="module")
def cosmos():
    return tiny_dit.load_cosmos(num_blocks=2)


@pytest.fixture()
def student(tmp_path):
    tensors = step_expert_tensors(PREFIXES, K, RANK, ALPHA, seed=11, up_scale=0.2)
    path = tmp_path / "turbo_student.safetensors"
    write_step_expert_file(path, tensors, step_expert_metadata(K, RANK, ALPHA))
    return path, {k: v.to(torch.bfloat16) for k, v in tensors.items()}


def _closed_form(linear, tensors, prefix, rows, head, x):
    """W x + b + s · up_head down x in fp64, from the model's weight and the file's (bf16) tensors."""
    x = x.double()
    base = F.linear(x, linear.weight.double(), None if linear.bias is None else linear.bias.double())
    down = tensors[f"{prefix}.lora_down.weight"].double()
    up = tensors[f"{prefix}.lora_ups.{head}.weight"].double()[rows]
    return base + (ALPHA / RANK) * (x @ down.T @ up.T)


def _run(pack, patched, steps, cfg, negative_tokens=6):
    """Every watched module's (input, output, sampler σ, cond/uncond rows) per model call, seen after the adapter."""
    state = pack.comfy_glue.patcher.applied_adapters(patched)[0].state
    seen = {module: [] for _, _, module in WATCHED}
    clone = patched.clone()
    for _, _, module in WATCHED:
        def record(m, args, out, module=module):
            seen[module].append((args[0].detach().clone(), out.detach().clone(), state.extra.get("sampler_sigma"),
                                 list(state.cond_or_uncond or [])))
        pack.comfy_glue.hooks.install_forward_hook(clone, f"diffusion_model.{module}", record)
    tiny_dit.sample(clone, torch.zeros(1, 16, 1, 8, 8), tiny_dit.cosmos_conditioning(seed=1),
                    tiny_dit.cosmos_conditioning(tokens=negative_tokens, seed=2), steps=steps, cfg=cfg)
    mm.unload_all_models()
    return seen


# negative prompt of 7 tokens against 6: ComfyUI cannot batch them, so CFG runs two model calls per step
@pytest.mark.parametrize(("cfg", "negative_tokens", "calls_per_step"), [(1.0, 6, 1), (3.5, 6, 1), (3.5, 7, 2)])
def test_every_call_adds_the_head_of_its_step_and_unpatching_restores(cosmos, student, cfg, negative_tokens,
                                                                      calls_per_step):
    pack = import_pack()
    path, tensors = student
    adapter = pack.ortho_hydra.load(path)
    before = {k: v.clone() for k, v in cosmos.model.state_dict().items()}
    patched, plan = pack.comfy_glue.patcher.apply_adapter(cosmos, adapter, strength=1.0)
    assert plan.unmatched == []
    applied = pack.comfy_glue.patcher.applied_adapters(patched)[0]
    assert applied.folded == 0 and applied.hooked >= 3 and "step schedule" in applied.placement()
    seen = _run(pack, patched, K, cfg, negative_tokens)
    for prefix, rows, module in WATCHED:
        calls = seen[module]
        assert len(calls) == K * calls_per_step
        # the step of a call, independently of the pack's schedule: the rank of its σ among the run's distinct σ
        distinct = sorted({c[2] for c in calls}, reverse=True)
        assert len(distinct) == K
        if cfg > 1:  # both halves of CFG went through the model, each with its step's head
            assert {r for c in calls for r in c[3]} == {0, 1}
        linear = cosmos.model.diffusion_model.get_submodule(module)
        heads_seen = []
        for x, y, sigma, _ in calls:
            step = distinct.index(sigma)
            want = _closed_form(linear, tensors, prefix, rows, step, x)
            others = [(y.double() - _closed_form(linear, tensors, prefix, rows, h, x)).abs().max()
                      for h in range(K) if h != step]
            torch.testing.assert_close(y.double(), want, rtol=1e-4, atol=1e-4)
            assert min(others) > 1e-2  # a neighbouring head would have been told apart
            heads_seen.append(step)
        assert sorted(set(heads_seen)) == list(range(K))
    assert applied.state.step_schedule.off_grid_calls == 0
    after = cosmos.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    for _, _, module in WATCHED:
        assert len(cosmos.model.diffusion_model.get_submodule(module)._forward_hooks) == 0


def test_a_pinned_head_folds_into_the_weights(cosmos, student):
    pack = import_pack()
    from ortho_hydra.overrides import GateRule, Keyframe, Override

    path, tensors = student
    adapter = pack.ortho_hydra.load(path).with_override(Override((Keyframe(0.0, GateRule("pin", expert=2)),)))
    patched, _ = pack.comfy_glue.patcher.apply_adapter(cosmos, adapter, strength=1.0)
    applied = pack.comfy_glue.patcher.applied_adapters(patched)[0]
    assert applied.hooked == 0 and applied.folded >= 3
    seen = _run(pack, patched, K, 1.0)
    for prefix, rows, module in WATCHED:
        linear = cosmos.model.diffusion_model.get_submodule(module)
        for x, y, _, _ in seen[module]:
            torch.testing.assert_close(y.double(), _closed_form(linear, tensors, prefix, rows, 2, x),
                                       rtol=1e-4, atol=1e-4)


def test_another_step_count_is_warned_about(cosmos, student, caplog):
    pack = import_pack()
    adapter = pack.ortho_hydra.load(student[0])
    patched, _ = pack.comfy_glue.patcher.apply_adapter(cosmos, adapter, strength=1.0)
    with caplog.at_level(logging.WARNING):
        _run(pack, patched, 2 * K, 1.0)
    schedule = pack.comfy_glue.patcher.applied_adapters(patched)[0].state.step_schedule
    assert schedule.off_grid_calls >= K - 1  # the 8-step grid's in-between σ
    assert "WARNING" in schedule.describe()
    assert any("not one of the 4 steps" in r.getMessage() for r in caplog.records)


def test_load_and_apply_node_states_the_schedule_and_the_step_count_to_use(cosmos, loras):
    pack = import_pack()
    tensors = step_expert_tensors(PREFIXES, K, RANK, ALPHA, seed=11)
    write_step_expert_file(loras / "turbo_student.safetensors", tensors, step_expert_metadata(K, RANK, ALPHA))
    node = pack.nodes.load_apply.OrthoHydraLoadAndApply
    patched, summary = node.execute(cosmos, "turbo_student.safetensors", 1.0, "training", True).args
    assert "per-step experts: 3 layers with 4 heads" in summary and "NOT APPLIED" not in summary
    assert "Sample with 4 steps of the 'simple' scheduler" in summary
    schedule = pack.comfy_glue.patcher.applied_adapters(patched)[0].state.step_schedule
    assert schedule.grid_text() in summary and "stamped ss_turbo_student_steps=4" in summary
    # the grid is the simple scheduler's on this model's own sampling, computed here without the pack
    import comfy.samplers
    want = comfy.samplers.calculate_sigmas(cosmos.get_model_object("model_sampling"), "simple", K)[:K].tolist()
    assert schedule.sigmas == pytest.approx(want, rel=1e-7)


def test_bake_refuses_the_live_schedule_and_bakes_a_pinned_head(cosmos, student):
    pack = import_pack()
    from ortho_hydra.overrides import GateRule, Keyframe, Override

    path, tensors = student
    adapter = pack.ortho_hydra.load(path)
    plan = pack.comfy_glue.patcher.make_plan(cosmos, adapter)
    with pytest.raises(pack.ortho_hydra.OrthoHydraError, match="no constant gate"):
        pack.ortho_hydra.bake.baked_lora(plan, pack.nodes.bake.constant_gates(adapter, plan))
    pinned = adapter.with_override(Override((Keyframe(0.0, GateRule("pin", expert=1)),)))
    baked = pack.ortho_hydra.bake.baked_lora(plan, pack.nodes.bake.constant_gates(pinned, plan))
    assert len([k for k in baked if k.endswith("lora_up.weight")]) == 6  # q, k, v; k, v; the MLP
    for prefix, rows, module in WATCHED:
        name = "lora_unet_" + module.replace(".", "_")
        up, down = baked[f"{name}.lora_up.weight"].double(), baked[f"{name}.lora_down.weight"].double()
        got = float(baked[f"{name}.alpha"]) / down.shape[0] * up @ down
        want = (ALPHA / RANK) * tensors[f"{prefix}.lora_ups.1.weight"].double()[rows] @ \
            tensors[f"{prefix}.lora_down.weight"].double()
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_router_node_blend_of_heads_folds_and_a_timed_pin_hands_back_to_the_schedule(cosmos, student, loras):
    """Loader → Router → Apply, as a graph runs them: a blend of heads 0 and 3 is constant (folded, every call the
    blend); a pin of head 3 until 50 % is live, then each call has its own step's head again."""
    pack = import_pack()
    path, tensors = student
    (loras / path.name).write_bytes(path.read_bytes())
    adapter = pack.nodes.load_apply.OrthoHydraLoader.execute(path.name).args[0]
    router = pack.nodes.router.OrthoHydraRouter
    common = {"expert": 0, "renormalize": True, "temperature": 1.0, "top_k": 1, "group": "all", "block_start": -1,
              "block_end": -1, "layer_regex": "", "start_percent": 0.0, "end_percent": 1.0, "keyframes": "",
              "interpolation": "step", "side": "both"}
    blended = router.execute(adapter, mode="blend", weights="1, 0, 0, 1", **common).args[0]
    patched = pack.nodes.load_apply.OrthoHydraApply.execute(cosmos, blended, 1.0).args[0]
    assert pack.comfy_glue.patcher.applied_adapters(patched)[0].hooked == 0
    seen = _run(pack, patched, K, 1.0)
    for prefix, rows, module in WATCHED:
        linear = cosmos.model.diffusion_model.get_submodule(module)
        for x, y, _, _ in seen[module]:
            want = (_closed_form(linear, tensors, prefix, rows, 0, x)
                    + _closed_form(linear, tensors, prefix, rows, 3, x)) / 2
            torch.testing.assert_close(y.double(), want, rtol=1e-4, atol=1e-4)
    timed = router.execute(adapter, mode="pin", weights="", **{**common, "expert": 3, "end_percent": 0.5}).args[0]
    patched = pack.nodes.load_apply.OrthoHydraApply.execute(cosmos, timed, 1.0).args[0]
    seen = _run(pack, patched, K, 1.0)
    prefix, rows, module = WATCHED[0]
    linear = cosmos.model.diffusion_model.get_submodule(module)
    sampling = cosmos.get_model_object("model_sampling")
    end = float(sampling.percent_to_sigma(0.5))
    distinct = sorted({c[2] for c in seen[module]}, reverse=True)
    heads = [3 if sigma > end else distinct.index(sigma) for _, _, sigma, _ in seen[module]]
    assert heads[0] == 3 and heads[-2:] == [2, 3]  # pinned early, the schedule's own heads late
    for (x, y, _, _), head in zip(seen[module], heads, strict=True):
        torch.testing.assert_close(y.double(), _closed_form(linear, tensors, prefix, rows, head, x), rtol=1e-4,
                                   atol=1e-4)
