"""Fitting an expert bank's routers from labelled latents on the real host, checked by routing it live."""

import dataclasses

import comfy.model_management as mm
import torch

from devkit import tiny_dit
from devkit.adapters import lora_weights, randomized_adapter
from devkit.host import import_pack


def _two_styles(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents of two visibly different kinds: a positive or a negative offset on half the channels."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(count) % 2
    x = torch.randn(count, 16, 16, 16, generator=g) * 0.5
    x[:, :8] += (labels.float() * 2 - 1).view(-1, 1, 1, 1) * 1.5
    return x, labels


def test_fitted_routers_send_held_out_latents_to_their_expert(base):
    pack = import_pack()
    adapter = randomized_adapter(lora_weights(base, pattern=r"x_block_mlp_fc1$"), rank=4, experts=2, seed=4)
    latents, labels = _two_styles(24, seed=1)
    positive = tiny_dit.mmdit_conditioning(seed=3)
    node = pack.nodes.router_fit.OrthoHydraFitRouter
    fitted, report = node.execute(base, adapter, {"samples": latents}, positive, ",".join(map(str, labels.tolist())),
                                  holdout=0.25, steps=200, seed=0).args
    assert "held-out (6) routing accuracy" in report
    for name, layer in fitted.layers.items():  # only the routers changed
        assert torch.equal(layer.ups, adapter.layers[name].ups) and torch.equal(layer.down, adapter.layers[name].down)
    # independent check: route fresh latents of both kinds live through the fitted adapter and read the gates
    fresh, truth = _two_styles(8, seed=2)
    live, _ = pack.nodes.patcher.apply_adapter(base, fitted)
    sigma = float(live.get_model_object("model_sampling").percent_to_sigma(0.5))
    noisy = (1 - sigma) * fresh + sigma * torch.randn(fresh.shape, generator=torch.Generator().manual_seed(5))
    with pack.nodes.gate_recording.recording(live) as rec:
        mm.load_models_gpu([live])
        live.model.apply_model(noisy, torch.full((8,), sigma), c_crossattn=positive[0][0].expand(8, -1, -1),
                               y=positive[0][1]["pooled_output"].expand(8, -1),
                               transformer_options=live.model_options.get("transformer_options", {}))
    mm.unload_all_models()
    for name, entries in rec.records().items():
        picked = entries[0]["gate"].argmax(-1)
        assert (picked == truth).double().mean() >= 0.85, (name, picked.tolist(), truth.tolist())


def test_a_router_fitted_on_an_adapter_with_inv_scale_routes_live_as_it_was_fitted(base):
    """The fit reads the router input that inference reads, ``inv_scale`` included: routed live over the fit's own
    latents, noise and levels, the fitted router gives the gates the fit predicted on its features (fp64 softmax)."""
    pack = import_pack()
    name = "lora_unet_joint_blocks_0_x_block_mlp_fc1"  # one Linear: nothing upstream changes its input when live
    adapter = randomized_adapter(lora_weights(base, prefixes=[name]), rank=4, experts=2, seed=4)
    layer = adapter.layers[name]
    inv_scale = 0.1 + 2.5 * torch.rand(layer.in_features, generator=torch.Generator().manual_seed(9))
    adapter = dataclasses.replace(adapter, layers={name: dataclasses.replace(layer, inv_scale=inv_scale)})
    latents, labels = _two_styles(10, seed=1)
    positive = tiny_dit.mmdit_conditioning(seed=3)
    fitted, _ = pack.nodes.router_fit.fit_bank_router(base, adapter, latents, positive, labels, holdout=0.0,
                                                      steps=100, seed=0)
    features = pack.nodes.router_fit.collect_features(base, adapter, latents, positive, seed=0)[name].double()
    router = fitted.layers[name]
    predicted = torch.softmax(features @ router.router_weight.double().T + router.router_bias.double(), -1)
    live, _ = pack.nodes.patcher.apply_adapter(base, fitted)
    with pack.nodes.gate_recording.recording(live) as rec:
        pack.nodes.level_sampling.predict_at_levels(live, latents, positive, seed=0)
    routed = torch.cat([entry["gate"] for entry in rec.records()[name]]).double()
    assert routed.shape == predicted.shape == (3 * 10, 2)
    assert (predicted - routed).abs().max() < 1e-5, (predicted - routed).abs().max()
    assert predicted.argmax(-1).unique().numel() == 2  # the fit does route, so matching gates mean something
