"""Our adapter stacked with ComfyUI's own LoraLoaderModelOnly, in both orders, against the closed form."""

import comfy.lora
import comfy.model_management as mm
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from devkit import tiny_dit
from devkit.adapters import lora_weights, randomized_adapter
from devkit.host import import_pack

MODULE = "diffusion_model.joint_blocks.1.x_block.mlp.fc1"
PREFIX = "lora_unet_joint_blocks_1_x_block_mlp_fc1"


@pytest.fixture()
def lora_file(base, loras):
    sd = base.model.state_dict()
    out_f, in_f = sd[f"{MODULE}.weight"].shape
    g = torch.Generator().manual_seed(3)
    up, down = torch.randn(out_f, 4, generator=g) * 0.3, torch.randn(4, in_f, generator=g) * 0.3
    save_file({f"{PREFIX}.lora_up.weight": up, f"{PREFIX}.lora_down.weight": down,
               f"{PREFIX}.alpha": torch.tensor(2.0)}, str(loras / "plain.safetensors"))
    assert comfy.lora.model_lora_keys_unet(base.model, {})[PREFIX] == f"{MODULE}.weight"
    return "plain.safetensors", (2.0 / 4) * up @ down


def _stock(model, name):
    import nodes as comfy_nodes

    return comfy_nodes.LoraLoaderModelOnly().load_lora_model_only(model, name, 1.0)[0]


def test_ours_and_comfyuis_lora_stack_in_either_order_to_the_closed_form(base, patcher, lora_file):
    name, delta_w = lora_file
    adapter = randomized_adapter(lora_weights(base, pattern=r"x_block_mlp_fc1$"), experts=3, seed=6)
    ours_first = _stock(patcher.apply_adapter(base, adapter)[0], name)
    theirs_first = patcher.apply_adapter(_stock(base, name), adapter)[0]
    x = torch.randn(2, 5, delta_w.shape[1], generator=torch.Generator().manual_seed(4))
    weight = base.model.get_submodule(MODULE).weight.detach().double()
    bias = base.model.get_submodule(MODULE).bias.detach().double()
    expected = F.linear(x.double(), weight + delta_w.double(), bias) + adapter.layers[PREFIX].delta(x.double())
    for model in (ours_first, theirs_first):
        mm.load_models_gpu([model])
        try:
            got = model.model.get_submodule(MODULE)(x)
        finally:
            mm.unload_all_models()
        torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)
    latent = torch.zeros(1, 16, 16, 16)
    pos, neg = tiny_dit.mmdit_conditioning(seed=1), tiny_dit.mmdit_conditioning(seed=2)
    a = tiny_dit.sample(ours_first, latent, pos, neg, steps=2)
    mm.unload_all_models()
    b = tiny_dit.sample(theirs_first, latent, pos, neg, steps=2)
    mm.unload_all_models()
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert torch.equal(base.model.get_submodule(MODULE).weight.detach().double(), weight)  # base untouched


def test_two_samplers_on_one_base_with_different_adapters_do_not_cross_talk(base, patcher):
    """Interleaved sampling of two patched clones of one base gives exactly what each gives alone."""
    pattern = r"x_block_mlp_fc1$"
    first = randomized_adapter(lora_weights(base, pattern=pattern), experts=3, seed=11)
    second = randomized_adapter(lora_weights(base, pattern=pattern), experts=2, seed=12)
    latent = torch.zeros(1, 16, 16, 16)
    pos, neg = tiny_dit.mmdit_conditioning(seed=1), tiny_dit.mmdit_conditioning(seed=2)

    def sample(model):
        out = tiny_dit.sample(model, latent, pos, neg, steps=2)
        mm.unload_all_models()
        return out

    alone_a = sample(patcher.apply_adapter(base, first)[0])
    alone_b = sample(patcher.apply_adapter(base, second)[0])
    model_a, model_b = patcher.apply_adapter(base, first)[0], patcher.apply_adapter(base, second)[0]
    a1, b1, a2, b2 = sample(model_a), sample(model_b), sample(model_a), sample(model_b)
    assert not torch.equal(alone_a, alone_b)  # the two adapters do differ
    for got, want in ((a1, alone_a), (a2, alone_a), (b1, alone_b), (b2, alone_b)):
        assert torch.equal(got, want)
    assert not base.model.get_submodule(MODULE)._forward_hooks  # nothing left on the shared base


def test_two_of_our_adapters_on_the_same_layer_add_up_to_the_closed_form(base, patcher):
    """Routed (live) and folded (pinned) adapters stacked on one Linear: W x + b + δ_first(x) + δ_second(x)."""
    from ortho_hydra.overrides import GateRule, Keyframe, Override

    first = randomized_adapter(lora_weights(base, pattern=r"x_block_mlp_fc1$"), experts=3, seed=21)
    second = randomized_adapter(lora_weights(base, pattern=r"x_block_mlp_fc1$"), experts=2, seed=22)
    pinned = second.with_override(Override((Keyframe(0.0, GateRule("pin", 1)),)))
    x = torch.randn(2, 5, base.model.get_submodule(MODULE).in_features, generator=torch.Generator().manual_seed(9))
    weight = base.model.get_submodule(MODULE).weight.detach().double()
    bias = base.model.get_submodule(MODULE).bias.detach().double()
    plain = F.linear(x.double(), weight, bias)
    d_first = first.layers[PREFIX].delta(x.double())
    d_second = second.layers[PREFIX].delta(x.double())
    d_pinned = F.linear(x.double(), second.layers[PREFIX].static_delta_weight(torch.tensor([0.0, 1.0])).double())
    cases = {"live + live": (patcher.apply_adapter(patcher.apply_adapter(base, first)[0], second)[0],
                             plain + d_first + d_second),
             "live + pinned": (patcher.apply_adapter(patcher.apply_adapter(base, first)[0], pinned)[0],
                               plain + d_first + d_pinned),
             "pinned + live": (patcher.apply_adapter(patcher.apply_adapter(base, pinned)[0], first)[0],
                               plain + d_first + d_pinned)}
    for label, (model, expected) in cases.items():
        mm.load_models_gpu([model])
        try:
            got = model.model.get_submodule(MODULE)(x).double()
        finally:
            mm.unload_all_models()
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5, msg=label)
    assert torch.equal(base.model.get_submodule(MODULE).weight.detach().double(), weight)


def test_ours_with_comfyuis_hook_lora_on_the_positive_conditioning(base, patcher, lora_file):
    """CreateHookLora on the positive conditioning only: ComfyUI runs the sides apart, the positive calls see
    (W + ΔW_hook) x + b + ours, the negative ones W x + b + ours, closed form at the module."""
    import comfy.hooks
    from comfy_extras.nodes_hooks import CreateHookLora

    name, delta_w = lora_file
    adapter = randomized_adapter(lora_weights(base, pattern=r"x_block_mlp_fc1$"), experts=3, seed=6)
    hooks = CreateHookLora().create_hook(name, 1.0, 0.0)[0]
    positive = comfy.hooks.set_hooks_for_conditioning(tiny_dit.mmdit_conditioning(seed=1), hooks)
    negative = tiny_dit.mmdit_conditioning(seed=2)
    model = patcher.apply_adapter(base, adapter)[0].clone()
    calls = []

    def capture(module, args, output):  # installed after ours on the same Linear: sees the adapted output
        calls.append((args[0].detach().double().clone(), output.detach().double().clone()))

    import_pack().nodes.hooks.install_forward_hook(model, MODULE, capture)
    tiny_dit.sample(model, torch.zeros(1, 16, 16, 16), positive, negative, steps=1, cfg=2.0)
    mm.unload_all_models()
    weight = base.model.get_submodule(MODULE).weight.detach().double()
    bias = base.model.get_submodule(MODULE).bias.detach().double()
    layer = adapter.layers[PREFIX]
    with_hook = without_hook = 0
    for x, out in calls:
        ours = layer.delta(x)  # the gate depends only on x here (an input router): the same on both sides
        if torch.allclose(out, F.linear(x, weight + delta_w.double(), bias) + ours, rtol=1e-5, atol=1e-5):
            with_hook += 1
        elif torch.allclose(out, F.linear(x, weight, bias) + ours, rtol=1e-5, atol=1e-5):
            without_hook += 1
    print(f"hook LoRA active in {with_hook} of {len(calls)} calls")
    assert with_hook >= 1 and without_hook >= 1 and with_hook + without_hook == len(calls), (with_hook,
                                                                                           without_hook, len(calls))
    assert torch.equal(base.model.get_submodule(MODULE).weight.detach().double(), weight)


def _flow_percent_to_sigma(shift: float, percent: float) -> float:
    """A keyframe's start percent as a flow model's σ, from the definition: t = 1 − percent, σ = s·t / (1 + (s−1)·t)."""
    if percent <= 0.0:
        return 1.0
    if percent >= 1.0:
        return 0.0
    t = 1.0 - percent
    return shift * t / (1.0 + (shift - 1.0) * t)


def _keyframe_strengths(frames: list[tuple[float, float]], sigmas: list[float], shift: float) -> list[float]:
    """The keyframe strength in force at each step, written from the keyframe definition: keyframes sorted by start
    percent, the first one from the start, each later one from the first step whose σ is at or below its start σ.

    The steps are chosen so that no step crosses two starts and no start lies within 1e-4 of a step's σ, so
    ComfyUI's guaranteed steps and its float rounding cannot change which keyframe is in force (asserted here).
    """
    frames = sorted(frames)
    starts = [_flow_percent_to_sigma(shift, p) for p, _ in frames]
    out, previous = [], 0
    for step, sigma in enumerate(sigmas):
        assert all(abs(start - sigma) > 1e-4 for start in starts[1:]), "a keyframe starts on a step"
        live = [i for i, start in enumerate(starts) if start >= sigma] or [0]
        assert step == 0 or live[-1] - previous <= 1, "a step crosses two keyframe starts"
        previous = live[-1]
        out.append(frames[live[-1]][1])
    return out


def _chained_keyframes():
    """CreateHookKeyframe chained: 1.0 from the start, 0.4 from 35 %, −0.6 from 70 %."""
    from comfy_extras.nodes_hooks import CreateHookKeyframe

    frames = [(0.0, 1.0), (0.35, 0.4), (0.7, -0.6)]
    group = None
    for percent, strength in frames:
        group = CreateHookKeyframe().create_hook_keyframe(strength, percent, prev_hook_kf=group)[0]
    return group, frames


def _interpolated_keyframes():
    """CreateHookKeyframesInterpolated, ease_in from 1.0 to 0.1 over 0 … 100 % in 4 keyframes: the strengths are
    1.0 + (0.1 − 1.0)·u² at u = k/3, starting at k/3 of the run (written here from that definition)."""
    from comfy_extras.nodes_hooks import CreateHookKeyframesInterpolated

    group = CreateHookKeyframesInterpolated().create_hook_keyframes(1.0, 0.1, "ease_in", 0.0, 1.0, 4)[0]
    frames = [(k / 3, 1.0 + (0.1 - 1.0) * (k / 3) ** 2) for k in range(4)]
    return group, frames


@pytest.mark.parametrize("keyframes", [_chained_keyframes, _interpolated_keyframes], ids=["chained", "interpolated"])
@pytest.mark.parametrize("pinned", [False, True], ids=["live", "pinned"])
def test_ours_with_a_keyframed_hook_lora_follows_the_keyframe_strength_per_step(base, patcher, lora_file, keyframes,
                                                                               pinned):
    """A hook LoRA whose strength changes across the steps (SetHookKeyframes), on the positive conditioning only,
    with our adapter router-live (or pinned and folded) on the same Linear.  Every model call is checked at the
    module against its own closed form: positive (W + s_t·ΔW_hook) x + b + ours, negative W x + b + ours, with s_t
    the hook's strength times the keyframe strength in force at that call's σ."""
    import comfy.hooks
    import comfy.patcher_extension
    from comfy_extras.nodes_hooks import CreateHookLora, SetHookKeyframes

    from ortho_hydra.overrides import GateRule, Keyframe, Override

    name, delta_w = lora_file
    steps, hook_strength = 6 if keyframes is _chained_keyframes else 5, 0.8
    adapter = randomized_adapter(lora_weights(base, pattern=r"x_block_mlp_fc1$"), experts=3, seed=6)
    if pinned:
        adapter = adapter.with_override(Override((Keyframe(0.0, GateRule("pin", 2)),)))
    group, frames = keyframes()
    hooks = SetHookKeyframes().set_hook_keyframes(CreateHookLora().create_hook(name, hook_strength, 0.0)[0],
                                                  hook_kf=group)[0]
    positive = comfy.hooks.set_hooks_for_conditioning(tiny_dit.mmdit_conditioning(seed=1), hooks)
    negative = tiny_dit.mmdit_conditioning(seed=2)
    model = patcher.apply_adapter(base, adapter)[0].clone()
    current, calls = {}, []

    def probe(executor, x, t, *args, **kwargs):  # which σ and which side each model call is
        options = args[3] if len(args) > 3 else kwargs.get("transformer_options", {})
        current.update(sigma=float(t.reshape(-1)[0]), sides=list(options.get("cond_or_uncond") or []))
        return executor(x, t, *args, **kwargs)

    def capture(module, args, output):  # installed after ours on the same Linear: sees the adapted output
        calls.append((current["sigma"], current["sides"], args[0].detach().double().clone(),
                      output.detach().double().clone()))

    model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, "test_probe", probe)
    import_pack().nodes.hooks.install_forward_hook(model, MODULE, capture)
    tiny_dit.sample(model, torch.zeros(1, 16, 16, 16), positive, negative, steps=steps, cfg=2.0)
    mm.unload_all_models()

    sampling = base.get_model_object("model_sampling")
    shift = float(sampling.shift)
    # the steps' σ as the simple scheduler defines them: the model's σ at timestep 1000 − ⌊i·1000/steps⌋
    step_sigmas = [_flow_percent_to_sigma(shift, int(i * 1000 / steps) / 1000) for i in range(steps)]
    strengths = dict(zip(step_sigmas, _keyframe_strengths(frames, step_sigmas, shift), strict=True))
    assert len(set(strengths.values())) >= 3  # the keyframes really change the strength during this run
    weight = base.model.get_submodule(MODULE).weight.detach().double()
    bias = base.model.get_submodule(MODULE).bias.detach().double()
    layer = adapter.layers[PREFIX]
    pin = layer.static_delta_weight(torch.tensor([0.0, 0.0, 1.0])).double()
    seen = {0: [], 1: []}
    for sigma, sides, x, out in calls:
        assert len(set(sides)) == 1, sides  # ComfyUI runs the hooked positive apart from the negative
        step = min(step_sigmas, key=lambda s: abs(s - sigma))
        assert abs(step - sigma) < 1e-5, (sigma, step_sigmas)
        s_t = hook_strength * strengths[step] if sides[0] == 0 else 0.0
        ours = F.linear(x, pin) if pinned else layer.delta(x)
        expected = F.linear(x, weight + s_t * delta_w.double(), bias) + ours
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5,
                                   msg=f"σ {sigma:.4f}, side {sides[0]}, s_t {s_t}")
        seen[sides[0]].append(step)
    assert sorted(seen[0]) == sorted(step_sigmas) and sorted(seen[1]) == sorted(step_sigmas)  # every step, each side
    assert torch.equal(base.model.get_submodule(MODULE).weight.detach().double(), weight)
