"""Our adapter stacked with ComfyUI's own LoraLoaderModelOnly, in both orders, against the closed form."""

import comfy.lora
import comfy.model_management as mm
import folder_paths
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
def lora_file(base, tmp_path):
    folder_paths.add_model_folder_path("loras", str(tmp_path), is_default=True)
    sd = base.model.state_dict()
    out_f, in_f = sd[f"{MODULE}.weight"].shape
    g = torch.Generator().manual_seed(3)
    up, down = torch.randn(out_f, 4, generator=g) * 0.3, torch.randn(4, in_f, generator=g) * 0.3
    save_file({f"{PREFIX}.lora_up.weight": up, f"{PREFIX}.lora_down.weight": down,
               f"{PREFIX}.alpha": torch.tensor(2.0)}, str(tmp_path / "plain.safetensors"))
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
