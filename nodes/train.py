"""The trainer node: its widgets are ``TrainConfig``'s fields (each default read from the dataclass), and it runs the
one training loop, :func:`comfy_glue.training.train`."""

from __future__ import annotations

import folder_paths
import torch
from comfy_api.v0_0_2 import io

from ortho_hydra.text_lists import split_list
from ortho_hydra.training import LR_SCHEDULES, TIMESTEP_SAMPLING

from ..comfy_glue import menus
from ..comfy_glue.adapter_files import checked_file_name
from ..comfy_glue.model_folders import RESUME_FOLDER
from ..comfy_glue.model_linears import TARGETS
from ..comfy_glue.training import (
    INITS,
    TrainConfig,
    guidance_line,
    resume_choices,
    style_labels_from,
    train,
)
from ..comfy_glue.types import ADVANCED, OrthoHydraAdapterType, RouterTraceType, StyleSetType, reported

DEFAULT = TrainConfig()  # every widget's default is this field's default


class OrthoHydraTrain(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OrthoHydraTrain",
            display_name="Ortho-Hydra Train",
            category=menus.TRAIN,
            description="Fine-tunes a mixture-of-experts adapter on this MODEL inside the graph, with per-sample "
                        "routing. Checkpoints go out every save_every steps, at the end and when interrupted: the "
                        "adapter to models/loras, its resume file to models/ortho_hydra_resume.",
            is_experimental=True,
            hidden=[io.Hidden.unique_id],
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model (DiT) to train on; its weights stay frozen."),
                io.Latent.Input("latents", tooltip="The training images, VAE-encoded (one batch)."),
                io.Conditioning.Input("positive", tooltip="One conditioning per image, or one for all."),
                io.Int.Input("steps", default=DEFAULT.steps, min=1, max=1_000_000,
                             tooltip="Total optimizer steps (when resuming: train up to this step)."),
                io.Float.Input("learning_rate", default=DEFAULT.learning_rate, min=1e-7, max=1.0, step=1e-6,
                               tooltip="AdamW learning rate for the rotations, λ (or ups/down for Hydra)."),
                io.Int.Input("batch_size", default=DEFAULT.batch_size, min=1, max=256,
                             tooltip="Images per micro-batch."),
                io.Int.Input("grad_accumulation", **ADVANCED, default=DEFAULT.grad_accumulation, min=1, max=256,
                             tooltip="Micro-batches per step."),
                io.Int.Input("rank", default=DEFAULT.rank, min=1, max=1024, tooltip="Rank r of each expert."),
                io.Int.Input("experts", default=DEFAULT.experts, min=1, max=64, tooltip="Number of experts E."),
                io.Float.Input("alpha", **ADVANCED, default=DEFAULT.alpha, min=0.0, max=4096.0,
                               tooltip="LoRA alpha; 0 means alpha = r."),
                io.Combo.Input("init", **ADVANCED, options=list(INITS), default=DEFAULT.init,
                               tooltip="ortho: Ortho-Hydra (frozen disjoint SVD bases, Cayley-rotated); ortho_init: "
                                       "the same slices as a start, then trained freely (more capacity, no "
                                       "subspace guarantee); hydra_zero / hydra_jitter (i.i.d., as published) / "
                                       "hydra_jitter_zero_sum: the HydraLoRA baselines."),
                io.Float.Input("jitter_std", **ADVANCED, default=DEFAULT.jitter_std, min=0.0, max=10.0, step=0.01,
                               tooltip="hydra_jitter / hydra_jitter_zero_sum: std of the expert ups at init."),
                io.Float.Input("balance_weight", **ADVANCED,
                               default=DEFAULT.balance_weight, min=0.0, max=1.0, step=1e-5,
                               tooltip="Switch load-balancing weight. Too small and routers collapse onto one "
                                       "expert (toy world: 90-97% of layers at 1e-5, 10-46% at 1e-2 with the "
                                       "held-out loss unchanged or better)."),
                io.Float.Input("router_lr_scale", **ADVANCED,
                               default=DEFAULT.router_lr_scale, min=0.0, max=1000.0, step=0.1,
                               tooltip="Router learning rate = learning_rate x this. Above 1 the routers keep "
                                       "re-assigning samples under AdamW (toy world: x10 doubled the held-out loss "
                                       "of label-guided training)."),
                io.Combo.Input("targets", **ADVANCED, options=list(TARGETS), default=DEFAULT.targets,
                               tooltip="Which Linears get experts."),
                io.String.Input("target_regex", **ADVANCED, default=DEFAULT.target_regex,
                                tooltip="targets=regex: matched against lora_unet_* names."),
                io.Combo.Input("timestep_sampling", **ADVANCED,
                               options=list(TIMESTEP_SAMPLING), default=DEFAULT.timestep_sampling,
                               tooltip="How noise levels are drawn."),
                io.Float.Input("shift", **ADVANCED, default=DEFAULT.shift, min=1.0, max=20.0, step=0.1,
                               tooltip="timestep_sampling=shift."),
                io.Boolean.Input("gradient_checkpointing", default=DEFAULT.gradient_checkpointing,
                                 tooltip="Keep only each DiT block's inputs and re-run the block in the backward pass: "
                                         "the activations of one block at a time instead of all of them, for one more "
                                         "forward pass per step. On by default, as in ComfyUI's own trainer; the loss "
                                         "and the trained adapter are the same either way."),
                io.Combo.Input("training_dtype", **ADVANCED, options=["fp32", "bf16"], default=DEFAULT.training_dtype,
                               tooltip="Autocast dtype of the forward; adapter weights stay fp32."),
                io.Int.Input("seed", default=DEFAULT.seed, min=0, max=2**31 - 1, control_after_generate=True,
                             tooltip="Seed for init, batches and noise. A new trainer starts 'fixed' (set by the "
                                     "pack's front end), so queueing again does not retrain over the same file."),
                io.Int.Input("save_every", default=DEFAULT.save_every, min=0, max=1_000_000,
                             tooltip="Checkpoint every N steps (0: only at the end)."),
                io.String.Input("output_name", default=DEFAULT.output_name,
                                tooltip="Name of the adapter file in models/loras."),
                io.Boolean.Input("fixed_noise", **ADVANCED, default=DEFAULT.fixed_noise,
                                 tooltip="Debugging aid: reuse one noise draw and level per image every step, to "
                                         "check the set-up can overfit a fixed batch."),
                io.String.Input("style_labels", default="", tooltip="Optional per-image style ids (e.g. 0,0,1,1): "
                                                                    "the purity diagnostic, and label guidance."),
                io.Combo.Input("resume", options=["none", *resume_choices()], default="none",
                               tooltip="Continue from a *.resume.safetensors an earlier run wrote to "
                                       "models/ortho_hydra_resume."),
                io.String.Input("style_names", default="", tooltip="Optional style names, comma-separated, in label "
                                                                   "order; stamped as expert names (style i -> "
                                                                   "expert i). Taken from 'styles' when connected."),
                io.Float.Input("label_guidance", default=DEFAULT.label_guidance, min=0.0, max=100.0, step=0.01,
                               tooltip="Weight of the cross-entropy between each image's gate and its style's "
                                       "expert (label i -> expert i). Applies only when style labels are connected "
                                       "(style_labels or styles); the node's report says whether it ran. 0 turns "
                                       "it off."),
                io.Int.Input("label_guidance_steps", **ADVANCED,
                             default=DEFAULT.label_guidance_steps, min=0, max=1_000_000,
                             tooltip="Hold the label guidance this many steps, then decay it to 0 over half as "
                                     "many, so the router carries the style alone at the end. 0: hold it for 60 % "
                                     "of the run."),
                io.Float.Input("balance_start", **ADVANCED,
                               default=DEFAULT.balance_start, min=0.0, max=1_000_000.0, step=0.01,
                               tooltip="Switch the balance term on at this step, or at this fraction of the run "
                                       "when < 1 (the Ortho-Hydra paper: 0.4)."),
                io.Int.Input("balance_memory", **ADVANCED, default=DEFAULT.balance_memory, min=1, max=100_000,
                             tooltip="Micro-batches over which the balance term counts each expert's share of "
                                     "samples (1: this micro-batch only). Longer memory made no measurable "
                                     "difference on the toy world at batch 1; kept for large-batch parity."),
                io.Int.Input("slots", **ADVANCED, default=DEFAULT.slots, min=0, max=64,
                             tooltip="Orthogonal slots: 0 is off. With N > 0 the adapter is one expert whose "
                                     "output basis is slice 'slot' of W0's top N·rank singular vectors, so "
                                     "adapters trained on different slots (by anyone, separately) merge without "
                                     "sharing output directions. Needs experts 1 and init ortho_out."),
                io.Int.Input("slot", **ADVANCED, default=DEFAULT.slot, min=0, max=63,
                             tooltip="Which slice of the N slots this adapter trains on (0 .. slots-1)."),
                io.Combo.Input("lr_schedule", **ADVANCED, options=list(LR_SCHEDULES), default=DEFAULT.lr_schedule,
                               tooltip="How the learning rate moves over the run: cosine and linear decay it to 0 "
                                       "by the last step. At a constant lr the last steps of a fast run can undo "
                                       "its fit (toy world: 1 seed in 5 lost a style at lr 1e-2; cosine lost "
                                       "none)."),
                StyleSetType.Input("styles", optional=True,
                                   tooltip="Labels and style names from the style-folders loader; overrides "
                                           "style_labels and style_names."),
            ],
            outputs=[io.Model.Output(display_name="model"), OrthoHydraAdapterType.Output(display_name="adapter"),
                     io.Custom("LOSS_MAP").Output(display_name="loss_map"),
                     RouterTraceType.Output(display_name="router_trace")],
        )

    @classmethod
    def execute(cls, model, latents, positive, output_name: str, style_labels: str, style_names: str, resume: str,
                styles=None, **settings) -> io.NodeOutput:
        checked_file_name(output_name, "output_name")
        count = latents["samples"].shape[0]
        if styles is not None:
            labels, names = torch.tensor(list(styles.labels)), tuple(styles.names)
        else:
            labels, names = style_labels_from(style_labels, count), tuple(split_list(style_names))
        config = TrainConfig(output_name=output_name, style_names=names, **settings)
        resume_path = None if resume == "none" else folder_paths.get_full_path_or_raise(RESUME_FOLDER, resume)
        live, adapter, loss_map, trace = train(model, latents["samples"], positive, config, resume=resume_path,
                                               labels=labels, unique_id=cls.hidden.unique_id)
        losses = loss_map.get("loss", [])
        final = f"; final loss {losses[-1]:.4f}" if losses else ""
        return reported(live, adapter, loss_map, trace,
                        text=f"trained {len(losses)} steps{final}; saved as {config.output_name}\n"
                             f"{guidance_line(config, labels)}\n{adapter.summary()}")
