"""ChimeraHydra reference files (single-A and dual-A) applied to a real ComfyUI Cosmos-Predict2 (Anima family) DiT:
hooked Linears add exactly the two pools' delta for the σ and FEI of the step, pins fold, unpatching restores."""

import math

import comfy.model_management as mm
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from devkit import tiny_dit
from devkit.adapters import library
from devkit.host import import_pack

KC, KF, R, SIG, HID = 3, 2, 4, 4, 8
TARGETS = {"lora_unet_blocks_0_mlp_layer1": "blocks.0.mlp.layer1",
           "lora_unet_blocks_1_self_attn_q_proj": "blocks.1.self_attn.q_proj"}


@pytest.fixture(scope="module")
def cosmos():
    return tiny_dit.load_cosmos(num_blocks=2)


def chimera_tensors(model, dual: bool, mode: str = "learned", seed: int = 0, centered: bool = False):
    """A reference-layout file for ``model``'s TARGETS (keys and stamps as the reference trainer writes them)."""
    sd = model.model.diffusion_model.state_dict()
    g = torch.Generator().manual_seed(seed)
    t = {}
    for prefix, module in TARGETS.items():
        out, inn = sd[f"{module}.weight"].shape
        downs = ("lora_down_c", "lora_down_f") if dual else ("lora_down",)
        for d in downs:
            t[f"{prefix}.{d}.weight"] = torch.randn(R, inn, generator=g) / math.sqrt(inn)
        stems = (("lora_ups_c", KC), ("lora_ups_f", KF)) if dual else (("lora_ups", KC + KF),)
        for stem, k in stems:
            for e in range(k):
                t[f"{prefix}.{stem}.{e}.weight"] = 0.3 * torch.randn(out, R, generator=g)
        t[f"{prefix}.router.weight"] = 2 * torch.randn(KC, R, generator=g)
        t[f"{prefix}.router.bias"] = torch.zeros(KC)
        t[f"{prefix}.alpha"] = torch.tensor(2.0)
    if mode == "learned":
        t["freq_router.net.0.weight"] = 2 * torch.randn(HID, 2 + SIG, generator=g)
        t["freq_router.net.0.bias"] = torch.randn(HID, generator=g)
        t["freq_router.net.2.weight"] = 2 * torch.randn(KF, HID, generator=g)
        t["freq_router.net.2.bias"] = torch.randn(KF, generator=g)
    meta = {"ss_network_spec": "chimera_hydra", "ss_use_chimera_hydra": "true", "ss_num_experts_content": str(KC),
            "ss_num_experts_freq": str(KF), "ss_chimera_fei_feature_dim": "2",
            "ss_chimera_sigma_feature_dim": str(SIG if mode == "learned" else 0), "ss_chimera_fei_sigma_low_div": "4",
            "ss_chimera_freq_router_mode": mode}
    if centered:
        meta["ss_chimera_centered_gate"] = "true"
    return t, meta


def write(path, tensors, meta):
    save_file(tensors, str(path), metadata=meta)
    return path


def _expected(t, meta, prefix, x, sigma, fei, dual, pi_c=None):
    """Δy in fp64 from the documented formulas (see ortho_hydra.chimera), for one hooked call."""
    t = {k: v.double() for k, v in t.items()}
    x = x.double()
    d_c = t[f"{prefix}.lora_down_c.weight"] if dual else t[f"{prefix}.lora_down.weight"]
    d_f = t[f"{prefix}.lora_down_f.weight"] if dual else d_c
    if dual:
        ups = [t[f"{prefix}.lora_ups_c.{i}.weight"] for i in range(KC)] + \
              [t[f"{prefix}.lora_ups_f.{j}.weight"] for j in range(KF)]
    else:
        ups = [t[f"{prefix}.lora_ups.{e}.weight"] for e in range(KC + KF)]
    ups = torch.stack(ups)
    lx_c, lx_f = x @ d_c.T, x @ d_f.T
    batch = x.shape[0]
    pooled = lx_c.reshape(batch, -1, R).square().mean(1).sqrt()
    if pi_c is None:
        pi_c = torch.softmax(pooled @ t[f"{prefix}.router.weight"].T + t[f"{prefix}.router.bias"], -1)
    pi_c = pi_c.double()
    fei = fei.double().expand(batch, -1)
    if meta["ss_chimera_freq_router_mode"] == "fei":
        pi_f = fei[:, :KF]
    else:
        w = torch.exp(-math.log(10000) * torch.arange(SIG // 2, dtype=torch.float64) / (SIG // 2))
        a = sigma.double().reshape(-1).expand(batch)[:, None] * w
        h = torch.cat([fei, a.cos(), a.sin()], -1)
        h = F.silu(h @ t["freq_router.net.0.weight"].T + t["freq_router.net.0.bias"])
        pi_f = torch.softmax(h @ t["freq_router.net.2.weight"].T + t["freq_router.net.2.bias"], -1)
    if meta.get("ss_chimera_centered_gate") == "true":
        pi_c, pi_f = pi_c - 1 / KC, pi_f - 1 / KF
    scale = 1.0 if dual else 2.0 / R
    out = torch.einsum("b...r,bc,cor->b...o", lx_c, pi_c, ups[:KC]) + \
        torch.einsum("b...r,bf,for->b...o", lx_f, pi_f, ups[KC:])
    return scale * out


def _captured(pack, patched, module, extra=None):
    """(input, output, router σ, FEI[, state.extra[extra]]) of ``module`` in one sampling step, seen after the
    adapter's hook."""
    seen = []
    state = pack.nodes.patcher.applied_adapters(patched)[0].state
    clone = patched.clone()
    pack.nodes.hooks.install_forward_hook(
        clone, module, lambda m, args, out: seen.append((args[0].detach().clone(), out.detach().clone(),
                                                         state.sigma.clone(), state.fei.clone())
                                                        + ((state.extra[extra].clone(),) if extra else ())))
    tiny_dit.sample(clone, torch.zeros(1, 16, 1, 8, 8), tiny_dit.cosmos_conditioning(seed=1),
                    tiny_dit.cosmos_conditioning(seed=2), steps=1, cfg=1.0)
    mm.unload_all_models()
    return seen[0]


@pytest.mark.parametrize(("dual", "mode", "centered"), [(False, "learned", False), (True, "learned", True),
                                                        (True, "fei", False)])
def test_hooked_linears_add_both_pools_exactly_and_unpatching_restores(cosmos, tmp_path, dual, mode, centered):
    pack = import_pack()
    lib = library()
    t, meta = chimera_tensors(cosmos, dual, mode, centered=centered)
    adapter = lib.load(write(tmp_path / "c_chimera.safetensors", t, meta))
    before = {k: v.clone() for k, v in cosmos.model.state_dict().items()}
    patched, plan = pack.nodes.patcher.apply_adapter(cosmos, adapter, strength=0.8)
    assert plan.unmatched == [] and len(plan.matched) == 2
    for prefix, module in TARGETS.items():
        x, y, sigma, fei = _captured(pack, patched, f"diffusion_model.{module}")
        linear = cosmos.model.diffusion_model.get_submodule(module)
        base = F.linear(x.double(), linear.weight.double(), linear.bias.double() if linear.bias is not None else None)
        delta = _expected(t, meta, prefix, x, sigma, fei, dual)
        assert delta.abs().max() > 1e-2
        torch.testing.assert_close(y.double(), base + 0.8 * delta, rtol=1e-4, atol=1e-4)
    after = cosmos.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    for module in TARGETS.values():
        assert len(cosmos.model.diffusion_model.get_submodule(module)._forward_hooks) == 0


def test_a_pinned_frequency_expert_folds_into_the_weights(cosmos, tmp_path):
    pack = import_pack()
    lib = library()
    t, meta = chimera_tensors(cosmos, dual=True)
    adapter = lib.load(write(tmp_path / "p_chimera.safetensors", t, meta))
    ov = lib.overrides
    pinned = adapter.with_override(ov.Override((ov.Keyframe(0.0, ov.GateRule("pin", expert=KC + 1)),)))
    prefix, module = "lora_unet_blocks_0_mlp_layer1", "blocks.0.mlp.layer1"
    w0 = cosmos.model.diffusion_model.get_submodule(module).weight.detach().clone()  # patched in place on load
    patched, _ = pack.nodes.patcher.apply_adapter(cosmos, pinned, strength=1.0)
    mm.load_models_gpu([patched])
    try:
        linear = patched.model.diffusion_model.get_submodule(module)
        assert len(linear._forward_hooks) == 0  # folded: no hook
        x = torch.randn(2, 5, linear.in_features)
        # pin freq expert 1 (axis index K_c + 1): that expert alone, the content pool off; dual-A scale is 1
        expected = F.linear(x, w0) + (x @ t[f"{prefix}.lora_down_f.weight"].T) @ t[f"{prefix}.lora_ups_f.1.weight"].T
        assert linear.bias is None
        torch.testing.assert_close(linear(x), expected, rtol=1e-4, atol=1e-4)
    finally:
        mm.unload_all_models()


def test_cross_attention_content_router_needs_the_llm_adapter(cosmos, tmp_path):
    pack = import_pack()
    lib = library()
    t, meta = chimera_tensors(cosmos, dual=True)
    for k in [k for k in t if ".router." in k]:
        del t[k]
    g = torch.Generator().manual_seed(3)
    t.update({"content_router.net.0.weight": torch.randn(HID, 1024, generator=g),
              "content_router.net.0.bias": torch.zeros(HID), "content_router.net.2.weight": torch.randn(KC, HID),
              "content_router.net.2.bias": torch.zeros(KC)})
    meta["ss_chimera_content_router_source"] = "crossattn_emb"
    adapter = lib.load(write(tmp_path / "x_chimera.safetensors", t, meta))
    assert "cross-attention router" in adapter.summary()
    with pytest.raises(lib.OrthoHydraError, match="llm_adapter") as err:
        pack.nodes.patcher.apply_adapter(cosmos, adapter)
    assert err.value.key == "content_router.net.0.weight"


def test_cross_attention_content_router_on_a_model_with_an_llm_adapter(tmp_path):
    """A stand-in text adapter the DiT calls on its context before the blocks, as Anima's does."""
    pack = import_pack()
    lib = library()
    model = tiny_dit.load_cosmos(num_blocks=2, seed=5)
    dm = model.model.diffusion_model
    dm.llm_adapter = torch.nn.Linear(1024, 1024)
    torch.nn.init.normal_(dm.llm_adapter.weight, std=0.05)
    text = []
    dm.llm_adapter.register_forward_hook(lambda m, a, out: text.append(out.detach().clone()))
    dm.register_forward_pre_hook(lambda m, args, kwargs: (m.llm_adapter(kwargs["context"]), None)[1],
                                 with_kwargs=True)
    t, meta = chimera_tensors(model, dual=True)
    for k in [k for k in t if ".router." in k]:
        del t[k]
    g = torch.Generator().manual_seed(3)
    net = {"content_router.net.0.weight": 3 * torch.randn(HID, 1024, generator=g),
           "content_router.net.0.bias": torch.randn(HID, generator=g),
           "content_router.net.2.weight": 2 * torch.randn(KC, HID, generator=g),
           "content_router.net.2.bias": torch.randn(KC, generator=g)}
    t.update(net)
    meta.update({"ss_chimera_content_router_source": "crossattn_emb", "ss_chimera_content_router_layer_norm": "true"})
    adapter = lib.load(write(tmp_path / "x_chimera.safetensors", t, meta))
    patched, _ = pack.nodes.patcher.apply_adapter(model, adapter, strength=1.0)
    prefix, module = "lora_unet_blocks_0_mlp_layer1", "blocks.0.mlp.layer1"
    x, y, sigma, fei, pi_c = _captured(pack, patched, f"diffusion_model.{module}",
                                       extra=lib.chimera.CONTENT_GATE_KEY)
    ctx = text[-1].double()
    pooled = (ctx.square().sum(1) / 512).sqrt()  # RMS over the context zero-padded to 512 tokens
    pooled = (pooled - pooled.mean(-1, keepdim=True)) / (pooled.var(-1, unbiased=False, keepdim=True) + 1e-5).sqrt()
    n = {k: v.double() for k, v in net.items()}
    hidden = F.silu(pooled @ n["content_router.net.0.weight"].T + n["content_router.net.0.bias"])
    expected_pi = torch.softmax(hidden @ n["content_router.net.2.weight"].T + n["content_router.net.2.bias"], -1)
    torch.testing.assert_close(pi_c.double(), expected_pi, rtol=1e-5, atol=1e-6)
    assert float(expected_pi.max() - expected_pi.min()) > 0.05  # not the uniform fallback
    linear = dm.get_submodule(module)
    base = F.linear(x.double(), linear.weight.double())
    torch.testing.assert_close(y.double(), base + _expected(t, meta, prefix, x, sigma, fei, True, pi_c=expected_pi),
                               rtol=1e-4, atol=1e-4)
    assert len(dm.llm_adapter._forward_hooks) == 1  # unpatched: only the test's own recorder is left


def test_router_node_refuses_norm_control_on_chimera_pools(cosmos, tmp_path):
    pack = import_pack()
    lib = library()
    t, meta = chimera_tensors(cosmos, dual=False)
    adapter = lib.load(write(tmp_path / "n_chimera.safetensors", t, meta))
    ov = lib.overrides
    blend = ov.Override((ov.Keyframe(0.0, ov.GateRule("blend", weights=(1, 0, 0, 1, 0))),))
    with pytest.raises(lib.OrthoHydraError, match="norm_control does not apply to ChimeraHydra") as err:
        pack.nodes.router.norm_controlled(adapter, blend)
    assert err.value.key == "norm_control"


def test_router_fitting_is_refused_for_chimera_adapters(cosmos, tmp_path):
    pack = import_pack()
    lib = library()
    t, meta = chimera_tensors(cosmos, dual=True)
    adapter = lib.load(write(tmp_path / "f_chimera.safetensors", t, meta))
    with pytest.raises(lib.OrthoHydraError, match="fitting routers is not available for ChimeraHydra"):
        pack.nodes.router_fit.fit_bank_router(cosmos, adapter, torch.zeros(2, 16, 1, 8, 8), [],
                                              torch.tensor([0, 1]), holdout=0.5, steps=1, seed=0)


def test_load_and_apply_node_lists_the_pools_as_applied_and_strict_refuses_only_the_rest(cosmos, loras):
    pack = import_pack()
    t, meta = chimera_tensors(cosmos, dual=True, mode="fei")
    write(loras / "node_chimera.safetensors", t, meta)
    node = pack.nodes.load_apply.OrthoHydraLoadAndApply
    _, summary = node.execute(cosmos, "node_chimera.safetensors", 1.0, "training", True).args
    assert "ChimeraHydra (dual-A, 2 layers): applied" in summary and "NOT APPLIED" not in summary
    assert "2 adapter layers matched onto 2 model Linears" in summary
    write(loras / "tokens_chimera.safetensors", {**t, "soft_tokens.embedding": torch.zeros(4, 8)}, meta)
    with pytest.raises(library().OrthoHydraError, match=r"soft tokens \(1 keys\)"):
        node.execute(cosmos, "tokens_chimera.safetensors", 1.0, "training", True)
    _, summary = node.execute(cosmos, "tokens_chimera.safetensors", 1.0, "training", False).args
    assert "ChimeraHydra (dual-A, 2 layers): applied" in summary and "NOT APPLIED: soft tokens (1 keys)" in summary
