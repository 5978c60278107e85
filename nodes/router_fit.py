"""Fit an adapter's routers from labelled example latents, in the graph: live routing then picks the expert
(for an expert bank: the LoRA) whose style the input has.

The features are each routed layer's router input (``router_input``, what its router reads at inference),
collected by forward hooks installed on a clone through ModelPatcher while ComfyUI's own sampling machinery predicts
the noised examples (as the trainer does), at a few noise levels.  The fit itself is
:func:`ortho_hydra.router_fit.fit_router`, per layer.
"""

from __future__ import annotations

import dataclasses

import torch
from comfy_api.v0_0_2 import io

from ortho_hydra import Adapter, OrthoHydraError, metrics
from ortho_hydra.kind import Capability
from ortho_hydra.router_fit import fit_router, with_router
from ortho_hydra.routing import RouterSpec, router_logits

from .hooks import install_forward_hook
from .level_sampling import LEVELS, predict_at_levels
from .patcher import make_plan
from .train import style_labels_from
from .types import OrthoHydraAdapterType, StyleSetType


class _FeatureHook:
    def __init__(self, layer, store: list) -> None:
        self.layer, self.store = layer, store

    def __call__(self, module, args, output):
        self.store.append(self.layer.router_input(args[0]).cpu())
        return output


@torch.no_grad()
def collect_features(model, adapter: Adapter, latents: torch.Tensor, positive: list, seed: int
                     ) -> dict[str, torch.Tensor]:
    """``{layer: (len(LEVELS) · N, r)}`` pooled router inputs, rows level-major then image order."""
    plan = make_plan(model, adapter)
    mp = model.clone()
    stores: dict[str, list] = {}
    for target in plan.targets.values():
        for leg in target.legs:
            if leg.layer.routed:
                stores[leg.layer.name] = []
                install_forward_hook(mp, target.module, _FeatureHook(leg.layer, stores[leg.layer.name]))
    predict_at_levels(mp, latents, positive, seed)
    return {name: torch.cat(rows) for name, rows in stores.items() if rows}


def fit_bank_router(model, adapter: Adapter, latents: torch.Tensor, positive: list, labels: torch.Tensor, *,
                    holdout: float, steps: int, seed: int) -> tuple[Adapter, dict]:
    """Fit every routed layer's router on a training split; report held-out routing on the rest."""
    for layer in adapter.layers.values():
        layer.require(Capability.ROUTER_FIT, path=adapter.path, key="adapter")
    count = latents.shape[0]
    if labels.numel() != count:
        raise OrthoHydraError(f"{labels.numel()} labels for {count} latents.", key="labels",
                              fix="give one expert index per latent")
    if int(labels.min()) < 0 or int(labels.max()) >= adapter.num_experts:
        raise OrthoHydraError(f"labels run {int(labels.min())}..{int(labels.max())}, the adapter has "
                              f"{adapter.num_experts} experts.", key="labels", fix="label i asks for expert i")
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(count, generator=gen)
    held = order[: round(holdout * count)]
    train = order[len(held):]
    if len(train) < 2 or len(set(labels[train].tolist())) < 2:
        raise OrthoHydraError("too few training examples (need two labels at least after the hold-out).",
                              key="holdout", fix="give more latents or lower holdout")
    features = collect_features(model, adapter, latents.float(), positive, seed)
    rows = lambda idx: torch.cat([idx + k * count for k in range(len(LEVELS))])  # noqa: E731
    layers, accuracy, purity = dict(adapter.layers), [], []
    for name, feats in features.items():
        weight, bias = fit_router(feats[rows(train)], labels[train].repeat(len(LEVELS)), adapter.num_experts,
                                  steps=steps, seed=seed)
        layers[name] = with_router(layers[name], weight, bias)
        if len(held):  # the fitted router reads only the pooled columns (see with_router)
            picked = router_logits(feats[rows(held)], weight, bias, RouterSpec(), None).argmax(-1)
            truth = labels[held].repeat(len(LEVELS))
            accuracy.append(float((picked == truth).double().mean()))
            purity.append(metrics.style_purity(truth, picked, adapter.num_experts))
    report = {"layers": len(features), "train": len(train), "held_out": len(held),
              "held_out_accuracy": sum(accuracy) / len(accuracy) if accuracy else float("nan"),
              "held_out_purity": sum(purity) / len(purity) if purity else float("nan")}
    return dataclasses.replace(adapter, layers=layers), report


class OrthoHydraFitRouter(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OrthoHydraFitRouter",
            display_name="Fit Ortho-Hydra Router from Examples",
            category="loaders/ortho_hydra",
            description="Fits only the routers of an adapter (for example an expert bank of LoRAs) so that live "
                        "routing sends each input to the expert whose examples it resembles. Give latents of each "
                        "style with their expert index; the weights of the experts are not touched.",
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model the adapter is for."),
                OrthoHydraAdapterType.Input("adapter", tooltip="The adapter whose routers to fit."),
                io.Latent.Input("latents", tooltip="Example latents (VAE-encoded images), every style mixed."),
                io.Conditioning.Input("positive", tooltip="One conditioning per latent, or one for all."),
                io.String.Input("labels", default="", tooltip="The expert each latent belongs to (e.g. 0,0,1,1). "
                                                              "Taken from 'styles' when connected."),
                io.Float.Input("holdout", default=0.25, min=0.0, max=0.9, step=0.05,
                               tooltip="Share of the latents kept out of the fit to report held-out routing."),
                io.Int.Input("steps", default=300, min=10, max=10_000, tooltip="Optimiser steps per layer."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, tooltip="Noise, split and init seed."),
                StyleSetType.Input("styles", optional=True, tooltip="Labels from the style-folders loader "
                                                                    "(style i -> expert i)."),
            ],
            outputs=[OrthoHydraAdapterType.Output(display_name="adapter"),
                     io.String.Output(display_name="report")],
        )

    @classmethod
    def execute(cls, model, adapter, latents, positive, labels: str, holdout: float, steps: int, seed: int,
                styles=None) -> io.NodeOutput:
        samples = latents["samples"]
        label_t = torch.tensor(list(styles.labels)) if styles is not None else style_labels_from(labels,
                                                                                                  samples.shape[0])
        if label_t is None:
            raise OrthoHydraError("no labels: the fit needs the expert of every latent.", key="labels",
                                  fix="type the labels or connect the style-folders loader")
        fitted, report = fit_bank_router(model, adapter, samples, positive, label_t, holdout=holdout, steps=steps,
                                         seed=seed)
        text = (f"fitted {report['layers']} routers on {report['train']} latents; held-out ({report['held_out']}) "
                f"routing accuracy {report['held_out_accuracy']:.2f}, purity (NMI) {report['held_out_purity']:.2f}")
        return io.NodeOutput(fitted, text)
