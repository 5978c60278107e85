"""Per-step expert turbo students: reading the trainer's layout, refusing broken files, the σ step schedule."""

import logging
from dataclasses import replace

import pytest
import torch

import ortho_hydra
from devkit.step_expert_files import step_expert_metadata, step_expert_tensors, write_step_expert_file
from ortho_hydra import OrthoHydraError
from ortho_hydra.kind import Capability
from ortho_hydra.moe_format import describe
from ortho_hydra.overrides import GateRule, Keyframe, Override, Scope
from ortho_hydra.routing import GateContext
from ortho_hydra.step_experts import STEP_HEAD_KEY, StepExpertLayer, StepSchedule, step_schedule

K, RANK, ALPHA = 4, 8, 4.0
SHAPES = {"lora_unet_blocks_0_self_attn_qkv_proj": (3 * 32, 32), "lora_unet_blocks_1_mlp_layer1": (64, 32)}
# a shift-3 flow grid for 4 steps (σ at t = 1, .75, .5, .25), as ComfyUI's simple scheduler gives it, then 0
GRID = [1.0, 0.9, 0.75, 0.5, 0.0]


@pytest.fixture()
def student(tmp_path):
    tensors = step_expert_tensors(SHAPES, K, RANK, ALPHA, seed=3)
    path = tmp_path / "turbo_student.safetensors"
    write_step_expert_file(path, tensors, step_expert_metadata(K, RANK, ALPHA))
    return path, {k: v.to(torch.bfloat16) for k, v in tensors.items()}


def _closed_form(tensors, prefix, head, x):
    """s · up_k down x in fp64 from the file's own (bf16) tensors."""
    down = tensors[f"{prefix}.lora_down.weight"].double()
    up = tensors[f"{prefix}.lora_ups.{head}.weight"].double()
    return (ALPHA / RANK) * (x.double() @ down.T @ up.T)


def test_heads_load_as_experts_of_a_routerless_layer(student):
    path, _ = student
    adapter = ortho_hydra.load(path)
    assert set(adapter.layers) == set(SHAPES) and not adapter.plain_layers
    assert adapter.num_experts == K and adapter.rank == RANK
    assert adapter.display_expert_names() == ["step 1/4", "step 2/4", "step 3/4", "step 4/4"]
    for prefix, layer in adapter.layers.items():
        assert isinstance(layer, StepExpertLayer)
        assert layer.alpha == ALPHA and layer.ups.shape == (K, SHAPES[prefix][0], RANK)
        assert not layer.router_weight.any() and not layer.router_bias.any()
    summary = adapter.summary()
    assert "per-step experts" in summary and "router source denoise step" in summary
    info = describe(path)
    assert info["num_experts"] == K and info["rank"] == RANK and info["spec"] == "per_step_experts"
    assert info["expert_names"][0] == "step 1/4"


def _at(prefix, schedule, sigma):
    """The context the host gives a layer in a model call at sampler σ."""
    return GateContext(layer=prefix, sigma=None, extra={"sampler_sigma": sigma, STEP_HEAD_KEY: schedule.head_at(sigma)})


def test_each_head_under_its_step_sigma_is_the_closed_form(student):
    path, tensors = student
    adapter = ortho_hydra.load(path)
    schedule = step_schedule(adapter.layers, adapter.metadata).bind(GRID)
    x = torch.randn(2, 7, 32, dtype=torch.float64)
    prefix = "lora_unet_blocks_1_mlp_layer1"
    layer = adapter.layers[prefix].to(dtype=torch.float64)
    deltas = []
    for step, sigma in enumerate(GRID[:K]):
        got = layer.delta(x, override=adapter.override, context=_at(prefix, schedule, sigma))
        want = _closed_form(tensors, prefix, step, x)
        assert torch.allclose(got, want, rtol=1e-10, atol=1e-12), step
        deltas.append(got)
    assert all((deltas[i] - deltas[i + 1]).abs().max() > 1e-3 for i in range(K - 1))  # the heads differ
    # outside sampling no step is known: the first head
    assert torch.allclose(layer.delta(x), _closed_form(tensors, prefix, 0, x), rtol=1e-10, atol=1e-12)


def test_schedule_heads_by_sigma_and_step_count():
    schedule = StepSchedule(4, 4, "test").bind(GRID)
    assert [schedule.head_at(s) for s in GRID[:4]] == [0, 1, 2, 3]
    assert schedule.head_at(5.0) == 0  # above the first step
    assert schedule.head_at(0.8) == 1 and schedule.head_at(0.6) == 2 and schedule.head_at(0.1) == 3
    with pytest.raises(ValueError, match="descending"):
        StepSchedule(4, 4, "test").bind([1.0, 0.5, 0.5, 0.2, 0.0])


def test_stamped_steps_drive_the_schedule(student, tmp_path):
    _, tensors = student
    adapter = ortho_hydra.load(student[0])
    assert step_schedule(adapter.layers, adapter.metadata).steps_source.startswith("stamped")
    bare = tmp_path / "no_steps.safetensors"
    meta = step_expert_metadata(K, RANK, ALPHA)
    del meta["ss_turbo_student_steps"]
    write_step_expert_file(bare, tensors, meta)
    loaded = ortho_hydra.load(bare)
    schedule = step_schedule(loaded.layers, loaded.metadata)
    assert schedule.steps == K and "no ss_turbo_student_steps" in schedule.steps_source
    assert step_schedule({}, meta) is None


def test_off_grid_sigma_is_counted_and_logged_once(caplog):
    schedule = StepSchedule(4, 4, "test").bind(GRID)
    for sigma in GRID[:4]:
        schedule.observe(sigma * (1 + 1e-7))  # fp32 round-off is on the grid
    assert schedule.off_grid_calls == 0 and "WARNING" not in schedule.describe()
    with caplog.at_level(logging.WARNING):
        for sigma in (0.95, 0.83, 0.95):  # e.g. an 8-step run
            schedule.observe(sigma)
    assert schedule.off_grid_calls == 3 and schedule.off_grid_example == 0.95
    assert len([r for r in caplog.records if "not one of the 4 steps" in r.getMessage()]) == 1
    assert "WARNING: 3 model calls" in schedule.describe()


def test_pins_and_blends_replace_the_schedule_and_live_rules_keep_it(student):
    path, _ = student
    adapter = ortho_hydra.load(path)
    schedule = step_schedule(adapter.layers, adapter.metadata).bind(GRID)
    mlp, qkv = "lora_unet_blocks_1_mlp_layer1", "lora_unet_blocks_0_self_attn_qkv_proj"
    x = torch.randn(3, 5, 32)

    def gate(a, prefix, sigma):
        return a.layers[prefix].gate(x, override=a.override, context=_at(prefix, schedule, sigma))

    assert adapter.override.constant_gate(mlp, K) is None  # the schedule alone is live
    for step, sigma in enumerate(GRID[:K]):
        assert torch.equal(gate(adapter, mlp, sigma), torch.eye(K)[step].expand(3, -1))
    pinned = adapter.with_override(Override((Keyframe(0.0, GateRule("pin", expert=2)),)))
    assert torch.equal(pinned.override.constant_gate(mlp, K), torch.tensor([0.0, 0, 1, 0]))
    assert torch.equal(gate(pinned, mlp, GRID[0]), torch.tensor([[0.0, 0, 1, 0]] * 3))
    blended = adapter.with_override(Override((Keyframe(0.0, GateRule("blend", weights=(1, 0, 0, 1))),),
                                             scope=Scope(regex="mlp")))
    assert torch.allclose(blended.override.constant_gate(mlp, K), torch.tensor([0.5, 0, 0, 0.5]))
    assert blended.override.constant_gate(qkv, K) is None  # outside the scope: the schedule
    assert torch.equal(gate(blended, qkv, GRID[2]), torch.eye(K)[2].expand(3, -1))
    # pin head 3 for the first half, then live: live after the pin is the schedule again, not a uniform mix
    half = adapter.with_override(Override((Keyframe(0.0, GateRule("pin", expert=3)), Keyframe(0.5, GateRule()))))
    half = replace(half, override=half.override.bind({0.0: GRID[0], 0.5: 0.8}.get))  # live from σ 0.8 down
    assert torch.equal(gate(half, mlp, GRID[1]), torch.eye(K)[3].expand(3, -1))
    assert torch.equal(gate(half, mlp, GRID[3]), torch.eye(K)[3].expand(3, -1))  # step 3 = head 3 either way
    assert torch.equal(gate(half, mlp, GRID[2]), torch.eye(K)[2].expand(3, -1))
    for rule in (GateRule("temperature", temperature=0.5), GateRule("top_k", top_k=2),
                 GateRule("bias", weights=(5.0, 0, 0, 0))):
        ruled = adapter.with_override(Override((Keyframe(0.0, rule),)))
        assert torch.equal(gate(ruled, mlp, GRID[1]), torch.eye(K)[1].expand(3, -1)), rule.mode


def test_capabilities_it_cannot_have_are_refused_by_name(student, tmp_path):
    adapter = ortho_hydra.load(student[0])
    with pytest.raises(OrthoHydraError, match="per-step heads") as err:
        ortho_hydra.save(adapter, tmp_path / "out_moe.safetensors")
    assert err.value.key in SHAPES and err.value.fix
    layer = next(iter(adapter.layers.values()))
    for capability in (Capability.ROUTER_FIT, Capability.TRANSFER):
        assert not layer.supports(capability)
    assert layer.supports(Capability.NORM_CONTROL)


def _write(tmp_path, tensors, meta, name="bad.safetensors"):
    path = tmp_path / name
    write_step_expert_file(path, tensors, meta)
    return path


@pytest.mark.parametrize("damage, key, message", [
    ("drop_head", "lora_unet_blocks_1_mlp_layer1.lora_ups.*", "not 0..K-1"),
    ("drop_last_head", "lora_unet_blocks_1_mlp_layer1.lora_ups.*", "header stamps K = 4"),
    ("drop_down", "lora_unet_blocks_1_mlp_layer1.lora_down.weight", "no shared lora_down"),
    ("bad_up_shape", "lora_unet_blocks_1_mlp_layer1.lora_ups.2.weight", "like head 0"),
    ("router", "lora_unet_blocks_1_mlp_layer1.router.weight", "never writes"),
    ("no_heads", "lora_ups", "truncated or emptied"),
])
def test_broken_files_are_refused_naming_file_key_and_fix(student, tmp_path, damage, key, message):
    _, tensors = student
    tensors = dict(tensors)
    prefix = "lora_unet_blocks_1_mlp_layer1"
    if damage == "drop_head":
        del tensors[f"{prefix}.lora_ups.1.weight"]
    elif damage == "drop_last_head":
        del tensors[f"{prefix}.lora_ups.3.weight"]
    elif damage == "drop_down":
        del tensors[f"{prefix}.lora_down.weight"]
    elif damage == "bad_up_shape":
        tensors[f"{prefix}.lora_ups.2.weight"] = torch.zeros(64, RANK + 1)
    elif damage == "router":
        tensors[f"{prefix}.router.weight"] = torch.zeros(K, RANK)
    elif damage == "no_heads":
        tensors = {k: v for k, v in tensors.items() if ".lora_ups." not in k}
    path = _write(tmp_path, tensors, step_expert_metadata(K, RANK, ALPHA))
    with pytest.raises(OrthoHydraError, match=message) as err:
        ortho_hydra.load(path)
    assert err.value.path == str(path) and err.value.key == key and err.value.fix


def test_a_hydra_file_is_not_taken_for_step_experts(tmp_path):
    """Without the turbo stamp, ``lora_ups`` keys are a Hydra layer that needs its router (the header decides)."""
    tensors = step_expert_tensors({"lora_unet_blocks_1_mlp_layer1": (64, 32)}, K, RANK, ALPHA)
    path = _write(tmp_path, tensors, {"ss_network_spec": "hydra"})
    with pytest.raises(OrthoHydraError, match=r"no router\.weight"):
        ortho_hydra.load(path)
    tensors["lora_unet_blocks_1_mlp_layer1.router.weight"] = torch.zeros(K, RANK)
    tensors["lora_unet_blocks_1_mlp_layer1.router.bias"] = torch.zeros(K)
    hydra = ortho_hydra.load(_write(tmp_path, tensors, {"ss_network_spec": "hydra"}, "hydra.safetensors"))
    assert not any(isinstance(layer, StepExpertLayer) for layer in hydra.layers.values())
    assert step_schedule(hydra.layers, hydra.metadata) is None
    # the unstamped-K form of an older student (K > 1, no per-step flag) is still one
    meta = step_expert_metadata(K, RANK, ALPHA)
    del meta["ss_turbo_per_step_expert"]
    del tensors["lora_unet_blocks_1_mlp_layer1.router.weight"], tensors["lora_unet_blocks_1_mlp_layer1.router.bias"]
    older = ortho_hydra.load(_write(tmp_path, tensors, meta, "older.safetensors"))
    assert isinstance(next(iter(older.layers.values())), StepExpertLayer)
