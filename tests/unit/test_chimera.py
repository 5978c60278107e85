"""ChimeraHydra files in the reference trainer's layouts (single-A, dual-A): applied output against an fp64
computation written from the documented formulas, routers in every mode, overrides on the combined axis."""

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from ortho_hydra import OrthoHydraError, load, save
from ortho_hydra.chimera import CONTENT_GATE_KEY, ChimeraLayer
from ortho_hydra.components import require_all_applied
from ortho_hydra.fei import frequency_energy_index
from ortho_hydra.overrides import GateRule, Keyframe, Override, OverrideStack
from ortho_hydra.routing import GateContext

IN, OUT, R, KC, KF, SIG, HID, D_TXT = 24, 20, 4, 3, 2, 4, 8, 16
PREFIXES = ("lora_unet_blocks_0_mlp_layer1", "lora_unet_blocks_1_self_attn_q_proj")


def _net(g, name, inputs, outputs):
    return {f"{name}.net.0.weight": torch.randn(HID, inputs, generator=g),
            f"{name}.net.0.bias": torch.randn(HID, generator=g),
            f"{name}.net.2.weight": torch.randn(outputs, HID, generator=g),
            f"{name}.net.2.bias": torch.randn(outputs, generator=g)}


def chimera_file(path, dual: bool, mode: str = "learned", content: str = "input", centered: bool = False,
                 inv_scale: bool = False, seed: int = 0, extra: dict | None = None, tau: float = 1.0,
                 fei_tau: float = 1.0):
    """A file as the reference trainer writes it (keys and metadata stamps), random but seeded."""
    g = torch.Generator().manual_seed(seed)
    t = {}
    for p in PREFIXES:
        if dual:
            t[f"{p}.lora_down_c.weight"] = torch.randn(R, IN, generator=g) / 3
            t[f"{p}.lora_down_f.weight"] = torch.randn(R, IN, generator=g) / 3
            for i in range(KC):
                t[f"{p}.lora_ups_c.{i}.weight"] = torch.randn(OUT, R, generator=g)
            for j in range(KF):
                t[f"{p}.lora_ups_f.{j}.weight"] = torch.randn(OUT, R, generator=g)
        else:
            t[f"{p}.lora_down.weight"] = torch.randn(R, IN, generator=g) / 3
            for e in range(KC + KF):
                t[f"{p}.lora_ups.{e}.weight"] = torch.randn(OUT, R, generator=g)
        if content == "input":
            t[f"{p}.router.weight"] = torch.randn(KC, R, generator=g)
            t[f"{p}.router.bias"] = torch.randn(KC, generator=g)
        t[f"{p}.alpha"] = torch.tensor(2.0)
        if inv_scale:
            t[f"{p}.inv_scale"] = torch.rand(IN, generator=g) + 0.5
    fei_dim = 2
    if mode == "learned":
        t.update(_net(g, "freq_router", fei_dim + SIG, KF))
    if content != "input":
        t.update(_net(g, "content_router", D_TXT, KC))
    t["lora_unet_blocks_0_cross_attn_o_proj.lora_down.weight"] = torch.randn(2, IN, generator=g)
    t["lora_unet_blocks_0_cross_attn_o_proj.lora_up.weight"] = torch.randn(OUT, 2, generator=g)
    t.update(extra or {})
    meta = {"ss_network_spec": "chimera_hydra", "ss_use_chimera_hydra": "true", "ss_num_experts_content": str(KC),
            "ss_num_experts_freq": str(KF), "ss_chimera_fei_feature_dim": str(fei_dim),
            "ss_chimera_sigma_feature_dim": str(SIG if mode == "learned" else 0), "ss_chimera_fei_sigma_low_div": "4.0",
            "ss_router_tau": str(tau)}
    if mode == "fei":
        meta.update({"ss_chimera_freq_router_mode": "fei", "ss_chimera_freq_router_tau": str(fei_tau)})
    if content != "input":
        meta.update({"ss_chimera_content_router_source": content, "ss_chimera_content_router_layer_norm": "true"})
    if centered:
        meta["ss_chimera_centered_gate"] = "true"
    save_file(t, str(path), metadata=meta)
    return {k: v.double() for k, v in t.items()}, meta


# --- the documented formulas, in fp64, independent of the pack ---------------------------------------------------

def fei64(z, div=4.0):
    z = z.double()
    std = min(z.shape[-2:]) / div
    half = max(1, math.ceil(3 * std))
    x = torch.arange(-half, half + 1, dtype=torch.float64)
    k = torch.exp(-x * x / (2 * std * std))
    k = k / k.sum()
    c = z.shape[1]
    lp = F.conv2d(F.pad(z, (half, half, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    lp = F.conv2d(F.pad(lp, (0, 0, half, half), mode="reflect"), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    e = torch.stack([lp.square().flatten(1).sum(-1), (z - lp).square().flatten(1).sum(-1)], -1)
    return e / e.sum(-1, keepdim=True)


def mlp64(t, name, h, tau):
    hidden = F.silu(h @ t[f"{name}.net.0.weight"].T + t[f"{name}.net.0.bias"])
    return torch.softmax((hidden @ t[f"{name}.net.2.weight"].T + t[f"{name}.net.2.bias"]) / tau, -1)


def sinus64(sigma, dim):
    half = dim // 2
    w = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float64) / half)
    a = sigma.double()[:, None] * w
    return torch.cat([a.cos(), a.sin()], -1)


def pi_f64(t, meta, sigma, fei):
    if meta.get("ss_chimera_freq_router_mode") == "fei":
        tau = float(meta["ss_chimera_freq_router_tau"])
        p = fei[:, :KF] ** (1 / tau)
        return p / p.sum(-1, keepdim=True)
    return mlp64(t, "freq_router", torch.cat([fei, sinus64(sigma, SIG)], -1), float(meta["ss_router_tau"]))


def pi_c_text64(t, meta, text):
    padded = torch.cat([text.double(), torch.zeros(text.shape[0], 512 - text.shape[1], text.shape[2],
                                                   dtype=torch.float64)], 1)
    pooled = padded.square().mean(1).sqrt()
    pooled = (pooled - pooled.mean(-1, keepdim=True)) / (pooled.var(-1, unbiased=False, keepdim=True) + 1e-5).sqrt()
    return mlp64(t, "content_router", pooled, float(meta["ss_router_tau"]))


def delta64(t, meta, p, x, sigma, fei, pi_c=None, weights=None):
    """Δy from the module docstring's formula; ``weights`` (w_c, w_f) replaces the live gates."""
    dual = f"{p}.lora_down_c.weight" in t
    xs = x.double() * (t[f"{p}.inv_scale"] if f"{p}.inv_scale" in t else 1.0)
    d_c = t[f"{p}.lora_down_c.weight"] if dual else t[f"{p}.lora_down.weight"]
    d_f = t[f"{p}.lora_down_f.weight"] if dual else d_c
    lx_c, lx_f = xs @ d_c.T, xs @ d_f.T
    if dual:
        ups_c = torch.stack([t[f"{p}.lora_ups_c.{i}.weight"] for i in range(KC)])
        ups_f = torch.stack([t[f"{p}.lora_ups_f.{j}.weight"] for j in range(KF)])
        scale = 1.0
    else:
        ups = torch.stack([t[f"{p}.lora_ups.{e}.weight"] for e in range(KC + KF)])
        ups_c, ups_f = ups[:KC], ups[KC:]
        scale = 2.0 / R
    if weights is None:
        if pi_c is None:
            pooled = lx_c.square().mean(1).sqrt()
            pi_c = torch.softmax(pooled @ t[f"{p}.router.weight"].T + t[f"{p}.router.bias"], -1)
        w_c, w_f = pi_c, pi_f64(t, meta, sigma, fei)
        if meta.get("ss_chimera_centered_gate") == "true":
            w_c, w_f = w_c - 1 / KC, w_f - 1 / KF
    else:
        w_c, w_f = (w.double().expand(x.shape[0], -1) for w in weights)
    out = torch.einsum("blr,bc,cor->blo", lx_c, w_c, ups_c) + torch.einsum("blr,bf,for->blo", lx_f, w_f, ups_f)
    return scale * out


def _inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 7, IN, generator=g)
    x[2] *= 4
    latent = torch.randn(3, 4, 16, 12, generator=g)
    latent[1] = F.avg_pool2d(latent[1:2], 3, 1, 1)[0]  # a smoother sample: a different FEI
    return x, torch.tensor([0.9, 0.4, 0.1]), latent


CASES = {
    "single_A_learned": {"dual": False},
    "dual_A_learned_centered_inv_scale": {"dual": True, "centered": True, "inv_scale": True, "tau": 0.7},
    "single_A_fei_hardwired": {"dual": False, "mode": "fei", "fei_tau": 0.5},
    "dual_A_fei_hardwired_tau1": {"dual": True, "mode": "fei"},
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_applied_output_matches_the_formulas_in_fp64(tmp_path, case):
    t, meta = chimera_file(tmp_path / "a_chimera.safetensors", **CASES[case])
    adapter = load(tmp_path / "a_chimera.safetensors")
    x, sigma, latent = _inputs()
    fei = frequency_energy_index(latent, 4.0)
    torch.testing.assert_close(fei.double(), fei64(latent), rtol=1e-5, atol=1e-6)
    assert sorted(adapter.layers) == sorted(PREFIXES) and list(adapter.plain_layers) == [
        "lora_unet_blocks_0_cross_attn_o_proj"]
    for p in PREFIXES:
        layer = adapter.layers[p]
        assert isinstance(layer, ChimeraLayer) and layer.num_experts == KC + KF
        got = layer.delta(x, sigma=sigma, fei=fei).double()
        expected = delta64(t, meta, p, x, sigma, fei64(latent))
        assert expected.abs().max() > 1.0
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


def test_cross_attention_content_router_in_fp64(tmp_path):
    t, meta = chimera_file(tmp_path / "x_chimera.safetensors", dual=True, content="crossattn_emb", tau=0.8)
    adapter = load(tmp_path / "x_chimera.safetensors")
    layer = adapter.layers[PREFIXES[0]]
    assert layer.router_weight is None and layer.content_router is not None
    x, sigma, latent = _inputs()
    text = torch.randn(3, 9, D_TXT, generator=torch.Generator().manual_seed(4))
    pi_c = layer.content_router.gate(text)
    torch.testing.assert_close(pi_c.double(), pi_c_text64(t, meta, text), rtol=1e-5, atol=1e-6)
    context = GateContext(layer=layer.name, sigma=sigma, extra={CONTENT_GATE_KEY: pi_c})
    got = layer.delta(x, sigma=sigma, fei=frequency_energy_index(latent), context=context).double()
    expected = delta64(t, meta, PREFIXES[0], x, sigma, fei64(latent), pi_c=pi_c_text64(t, meta, text))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
    with pytest.raises(OrthoHydraError, match=r"\(B, L, 16\)"):
        layer.content_router.gate(torch.randn(1, 4, 10))


def _stack(rule: GateRule) -> OverrideStack:
    return OverrideStack((Override((Keyframe(0.0, rule),)),))


@pytest.mark.parametrize("dual", [False, True])
def test_overrides_act_on_the_combined_axis(tmp_path, dual):
    t, meta = chimera_file(tmp_path / "o_chimera.safetensors", dual=dual, centered=dual)
    adapter = load(tmp_path / "o_chimera.safetensors")
    assert adapter.num_experts == KC + KF
    assert adapter.display_expert_names() == ["content 0", "content 1", "content 2", "freq 0", "freq 1"]
    layer = adapter.layers[PREFIXES[0]]
    x, sigma, latent = _inputs()
    fei = frequency_energy_index(latent)
    one = torch.nn.functional.one_hot
    center = (1 / KC, 1 / KF) if dual else (0.0, 0.0)
    cases = [  # (override, content weights, freq weights) before centering; an off pool stays exactly 0
        (GateRule("pin", expert=KC + 1), None, one(torch.tensor(1), KF).double()),
        (GateRule("pin", expert=1), one(torch.tensor(1), KC).double(), None),
        (GateRule("blend", weights=(1, 0, 3, 0, 2)), torch.tensor([0.25, 0, 0.75]), torch.tensor([0.0, 1.0])),
    ]
    for rule, w_c, w_f in cases:
        weights = tuple(torch.zeros(k, dtype=torch.float64) if w is None else w.double() - c
                        for w, k, c in ((w_c, KC, center[0]), (w_f, KF, center[1])))
        expected = delta64(t, meta, PREFIXES[0], x, sigma, None, weights=weights)
        got = layer.delta(x, sigma=sigma, fei=fei, override=_stack(rule)).double()
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()), msg=rule.mode)
        gate = _stack(rule).constant_gate(layer.name, layer.num_experts)
        folded = (x.double() @ layer.delta_weight(gate).double().T)
        if layer.inv_scale is None:  # the constant gate folds into an exact weight
            torch.testing.assert_close(folded, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
    # live through an override stack that covers nothing, and a temperature of 1: the trained gates
    live = layer.delta(x, sigma=sigma, fei=fei)
    through = layer.delta(x, sigma=sigma, fei=fei, override=_stack(GateRule("temperature", temperature=1.0)))
    torch.testing.assert_close(through, live, rtol=1e-5, atol=1e-5)
    seen = []
    layer.delta(x, sigma=sigma, fei=fei, sink=lambda name, g, ctx: seen.append(g))
    torch.testing.assert_close(seen[0].sum(-1), torch.ones(3))  # recorders see one distribution over both pools


def test_summary_lists_the_pools_as_applied_and_strict_refuses_only_the_rest(tmp_path):
    chimera_file(tmp_path / "s_chimera.safetensors", dual=True, mode="fei")
    adapter = load(tmp_path / "s_chimera.safetensors")
    summary = adapter.summary()
    assert "ChimeraHydra (dual-A, 2 layers): applied" in summary and "hardwired FEI" in summary
    assert "0..2 content, 3..4 frequency" in summary and "NOT APPLIED" not in summary
    require_all_applied(adapter.metadata, adapter.path)  # nothing left out
    chimera_file(tmp_path / "t_chimera.safetensors", dual=False,
                 extra={"soft_tokens.embedding": torch.zeros(4, 8)})
    mixed = load(tmp_path / "t_chimera.safetensors")
    assert "NOT APPLIED: soft tokens (1 keys)" in mixed.summary()
    with pytest.raises(OrthoHydraError, match="soft tokens") as err:
        require_all_applied(mixed.metadata, mixed.path)
    assert "ComfyUI-Anima_lora-Adapter" in str(err.value)


def test_bad_files_are_refused_naming_the_key(tmp_path):
    path = tmp_path / "bad_chimera.safetensors"
    t, meta = chimera_file(path, dual=True)
    t = {k: v.float() for k, v in t.items() if k != "freq_router.net.2.bias"}
    save_file(t, str(path), metadata=meta)
    with pytest.raises(OrthoHydraError, match=r"no freq_router\.net\.2\.bias") as err:
        load(path)
    assert err.value.key == "freq_router.net.2.bias" and err.value.path == str(path)
    t, meta = chimera_file(path, dual=True)
    save_file({k: v.float() for k, v in t.items()}, str(path), metadata={**meta, "ss_num_experts_freq": "3"})
    with pytest.raises(OrthoHydraError, match="2 outputs for 3 experts"):
        load(path)
    save_file({k: v.float() for k, v in t.items()}, str(path),
              metadata={k: v for k, v in meta.items() if k != "ss_use_chimera_hydra"})
    with pytest.raises(OrthoHydraError, match="ss_use_chimera_hydra"):
        load(path)
    t, meta = chimera_file(path, dual=False, mode="fei")
    save_file({k: v.float() for k, v in t.items()}, str(path), metadata={**meta, "ss_num_experts_freq": "1"})
    with pytest.raises(OrthoHydraError, match="K_f = FEI width"):
        load(path)


def test_stochastic_blends_are_refused_and_saving_is_refused(tmp_path):
    chimera_file(tmp_path / "m_chimera.safetensors", dual=True)
    adapter = load(tmp_path / "m_chimera.safetensors")
    layer = adapter.layers[PREFIXES[0]]
    x, sigma, latent = _inputs()
    omcd = _stack(GateRule("omcd", weights=(1, 0, 0, 1, 0), keep=(0.2, 0.2, 0.2, 0.2, 0.2)))
    with pytest.raises(OrthoHydraError, match="omcd / mc_dropout"):
        layer.delta(x, sigma=sigma, fei=frequency_energy_index(latent), override=omcd)
    with pytest.raises(OrthoHydraError, match="writing ChimeraHydra layers is not supported"):
        save(adapter, tmp_path / "again_moe.safetensors")


def test_style_profile_fingerprint_covers_chimera_layers_without_a_layer_router(tmp_path):
    from ortho_hydra.profiles import adapter_fingerprint

    chimera_file(tmp_path / "a_chimera.safetensors", dual=True, content="crossattn_emb")
    chimera_file(tmp_path / "b_chimera.safetensors", dual=True, content="crossattn_emb", seed=1)
    a, b = load(tmp_path / "a_chimera.safetensors"), load(tmp_path / "b_chimera.safetensors")
    assert adapter_fingerprint(a) != adapter_fingerprint(b)


def test_fera_files_stay_refused_naming_the_reference_node(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {"global_router.net.0.weight": torch.randn(8, 4, generator=g),
               "lora_unet_blocks_0_mlp_layer1.lora_downs.0.weight": torch.randn(R, IN, generator=g),
               "lora_unet_blocks_0_mlp_layer1.lora_ups.0.weight": torch.randn(OUT, R, generator=g)}
    save_file(tensors, str(tmp_path / "fera.safetensors"), metadata={"ss_network_spec": "stacked_experts_global_fei"})
    with pytest.raises(OrthoHydraError, match="FeRA") as err:
        load(tmp_path / "fera.safetensors")
    assert "ComfyUI-Anima_lora-Adapter" in str(err.value) and err.value.key == "global_router"


@pytest.mark.parametrize("dual", [False, True])
def test_header_description_gives_the_combined_axis(tmp_path, dual):
    from ortho_hydra.moe_format import describe

    chimera_file(tmp_path / "d_chimera.safetensors", dual=dual)
    info = describe(tmp_path / "d_chimera.safetensors")
    assert info["num_experts"] == KC + KF and info["rank"] == R and info["routed_layers"] == len(PREFIXES)
    assert info["expert_names"] == ["content 0", "content 1", "content 2", "freq 0", "freq 1"]
