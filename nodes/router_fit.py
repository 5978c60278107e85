"""The router-fit node: an adapter's routers fitted from labelled example latents (:mod:`comfy_glue.router_fit`)."""

from __future__ import annotations

import torch
from comfy_api.v0_0_2 import io

from ortho_hydra import OrthoHydraError

from ..comfy_glue import menus
from ..comfy_glue.router_fit import fit_bank_router
from ..comfy_glue.training import style_labels_from
from ..comfy_glue.types import OrthoHydraAdapterType, StyleSetType, reported


class OrthoHydraFitRouter(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OrthoHydraFitRouter",
            display_name="Ortho-Hydra Fit Mixer from Examples",
            category=menus.MIXER,
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
        return reported(fitted, text, text=text)
