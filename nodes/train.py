"""In-graph Ortho-Hydra training on ComfyUI's own MODEL (any DiT), with per-sample routing.

ComfyUI's core trainer drives its loop through a custom ``comfy.samplers.Sampler``, so noising, conditioning
and the x0-space loss all come from the model's own ``model_sampling``; we do the same.  Unlike its weight
wrappers, our adapters are forward hooks (object patches), so the router sees every sample.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections import OrderedDict
from dataclasses import dataclass, field

import comfy.lora
import comfy.model_management
import comfy.patcher_extension
import comfy.samplers
import comfy.utils
import folder_paths
import torch
from comfy_api.latest import io
from comfy_extras import nodes_custom_sampler, nodes_train

from ..ortho_hydra import OrthoHydraError, save
from ..ortho_hydra.network import OrthoHydraNetwork
from ..ortho_hydra.training import TIMESTEP_SAMPLING, RouterTrace, draw_noise_levels, mean_balance_loss
from ..ortho_hydra.training_state import (
    RESUME_SUFFIX,
    TrainingState,
    gather_optimizer_state,
    load_training_state,
    restore_optimizer_state,
    resume_path_for,
    save_training_state,
)
from .adapter_files import checked_file_name
from .patcher import SamplingState, apply_adapter, apply_model_wrapper, router_sigma_fn
from .types import OrthoHydraAdapterType, RouterTraceType

log = logging.getLogger("ortho_hydra")
TARGETS = {"attention+mlp": r"(attn|attention|qkv|mlp|ff|fc\d|layer[12]|_proj$)", "mlp": r"(mlp|ff|fc\d|layer[12])",
           "all_linear": r".", "regex": None}
INITS = {"ortho": "ortho", "hydra_zero": "zero", "hydra_jitter": "jitter"}
EVENT = "ortho_hydra.train"


def target_weights(model, targets: str, regex: str) -> dict[str, tuple[str, torch.Tensor]]:
    """{kohya prefix: (module path, W0)} for the Linears to adapt, via ComfyUI's key map."""
    pattern = regex if targets == "regex" else TARGETS[targets]
    try:
        compiled = re.compile(pattern or "")
    except re.error as exc:
        raise OrthoHydraError(f"invalid target regex {pattern!r}: {exc}.", key="target_regex",
                              fix="write a Python regex matched against lora_unet_* layer names") from exc
    sd = model.model.state_dict()
    out = {}
    for name, key in comfy.lora.model_lora_keys_unet(model.model, {}).items():
        if not name.startswith("lora_unet_") or not isinstance(key, str) or key not in sd or sd[key].ndim != 2:
            continue
        short = name[len("lora_unet_"):]
        if targets in ("attention+mlp", "mlp") and "embedder" in short:
            continue  # timestep / pooled-text embedders are not the blocks' attention or MLP
        if compiled.search(short) and "adaLN" not in name and "modulation" not in name:
            out[name] = (key[: -len(".weight")], sd[key])
    if not out:
        raise OrthoHydraError(f"no Linear layer of this model matches the targets ({targets} {pattern!r}).",
                              key="targets", fix="pick attention+mlp, mlp, all_linear, or a regex that matches")
    return out


class TrainingHook:
    """y <- y + Δy from a trainable layer; σ comes from the sampling state the APPLY_MODEL wrapper fills."""

    def __init__(self, layer, state: SamplingState) -> None:
        self.layer = layer
        self.state = state

    def __call__(self, module, args, output):
        sigma = self.state.sigma if self.layer.router_spec.needs_sigma else None
        return output + self.layer.delta(args[0], sigma).to(output.dtype)


@dataclass
class TrainConfig:
    steps: int
    learning_rate: float
    batch_size: int
    grad_accumulation: int
    rank: int
    experts: int
    alpha: float
    init: str
    jitter_std: float
    balance_weight: float
    router_lr_scale: float
    targets: str
    target_regex: str
    timestep_sampling: str
    shift: float
    gradient_checkpointing: bool
    training_dtype: str
    seed: int
    save_every: int
    output_name: str
    fixed_noise: bool = False  # debugging aid: one noise draw and level per image, reused every step
    trace_every: int = 0

    def identity(self) -> dict:
        """What a resume file must agree on."""
        return {k: getattr(self, k) for k in ("rank", "experts", "alpha", "init", "targets", "target_regex")}


@dataclass
class TrainingRun:
    config: TrainConfig
    network: OrthoHydraNetwork
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    fingerprint: dict
    labels: torch.Tensor | None
    step: int = 0
    losses: list[float] = field(default_factory=list)
    trace: RouterTrace | None = None

    @property
    def adapter_path(self) -> str:
        return os.path.join(folder_paths.get_folder_paths("loras")[0], f"{self.config.output_name}.safetensors")

    def adapter(self):
        return self.network.to_adapter(provenance={
            "trainer": "comfyui-ortho-hydra OrthoHydraTrain", "steps": self.step, "init": self.config.init,
            "rank": self.config.rank, "experts": self.config.experts, "lr": self.config.learning_rate,
            "seed": self.config.seed, "targets": self.config.targets})

    def checkpoint(self) -> str:
        """Adapter + resume sidecar, both written atomically; returns the adapter path."""
        path = self.adapter_path
        save(self.adapter(), path)
        names = {id(p): f"{prefix}/{n}" for prefix, layer in self.network.items() for n, p in layer.named_parameters()}
        state = TrainingState(
            step=self.step,
            module_states={prefix: {k: v.detach().cpu() for k, v in layer.state_dict().items()}
                           for prefix, layer in self.network.items()},
            optimizer_state=gather_optimizer_state(self.optimizer, names),
            rng={"generator": self.generator.get_state()},
            info={"config": self.config.identity(), "fingerprint": self.fingerprint, "losses": self.losses,
                  "param_groups": [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]})
        save_training_state(resume_path_for(path), state)
        return path

    def resume(self, path: str) -> None:
        state = load_training_state(path)
        config, fingerprint = state.info.get("config"), state.info.get("fingerprint")
        if fingerprint != self.fingerprint:
            theirs = set(fingerprint or {})
            detail = (f"it adapts {len(theirs)} layers, this model/target choice {len(self.fingerprint)}"
                      if theirs != set(self.fingerprint) else "the layer shapes differ")
            raise OrthoHydraError(f"this resume file was written for another model ({detail}).", path=path,
                                  key="fingerprint", fix="resume with the same base model and target layers")
        if config != self.config.identity():
            diff = {k: (config.get(k), v) for k, v in self.config.identity().items() if config.get(k) != v}
            raise OrthoHydraError(f"settings differ from the run being resumed: {diff} (file, node).", path=path,
                                  key="config", fix="use the settings of the original run")
        for prefix, layer in self.network.items():
            layer.load_state_dict({k: v.to(next(layer.parameters()).device) for k, v in
                                   state.module_states[prefix].items()})
        params = {f"{prefix}/{n}": p for prefix, layer in self.network.items() for n, p in layer.named_parameters()}
        restore_optimizer_state(self.optimizer, state.optimizer_state, params, path)
        self.generator.set_state(state.rng["generator"])
        self.step = state.step
        self.losses = list(state.info.get("losses", []))


def _as_normal_tensor(weight: torch.Tensor) -> torch.Tensor:
    return weight.clone() if weight.is_inference() else weight


def _wrap_inference_weights(mp) -> int:
    """Tensors loaded while ComfyUI executed in inference mode cannot be saved for backward.

    In this training clone only, ComfyUI-op weights get a weight wrapper that hands the forward a normal copy,
    and any other parameter or buffer (norm scales, rope tables) a normal copy through an object patch; both
    are reverted on unpatch.
    """
    count = 0
    for name, module in mp.model.named_modules():
        tensors = list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False))
        for attr, tensor in tensors:
            if tensor is None or not tensor.is_inference():
                continue
            key = f"{name}.{attr}" if name else attr
            if hasattr(module, "weight_function") and attr in ("weight", "bias"):
                mp.add_weight_wrapper(key, _as_normal_tensor)
            elif isinstance(tensor, torch.nn.Parameter):
                mp.add_object_patch(key, torch.nn.Parameter(tensor.clone(), requires_grad=False))
            else:
                mp.add_object_patch(key, tensor.clone())
            count += 1
    if count:
        mp.force_cast_weights = True
    return count


def _notify(payload: dict) -> None:
    """Feed the node's live chart; a no-op without a server (tests, scripts)."""
    with contextlib.suppress(Exception):
        from server import PromptServer

        if PromptServer.instance is not None:
            PromptServer.instance.send_sync(EVENT, payload)


class OrthoHydraTrainSampler(comfy.samplers.Sampler):
    """The training loop, run by ComfyUI's guider so conditioning and model_sampling are the model's own."""

    def __init__(self, run: TrainingRun, unique_id: str | None = None) -> None:
        self.run = run
        self.unique_id = unique_id

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        run, cfg = self.run, self.run.config
        model_wrap.conds = nodes_train.process_cond_list(model_wrap.conds)
        conds = model_wrap.conds["positive"]
        sampling = model_wrap.inner_model.model_sampling
        dataset = latent_image.shape[0]
        pbar = comfy.utils.ProgressBar(cfg.steps)
        pbar.update_absolute(run.step, cfg.steps)
        trace_every = cfg.trace_every or max(1, cfg.steps // 50)
        while run.step < cfg.steps:
            comfy.model_management.throw_exception_if_processing_interrupted()
            run.optimizer.zero_grad(set_to_none=True)
            step_loss = 0.0
            for micro in range(cfg.grad_accumulation):
                idx = torch.randperm(dataset, generator=run.generator)[: cfg.batch_size].tolist()
                latents = latent_image[idx]
                if cfg.fixed_noise:
                    levels, noise_b = fixed_noise_for(idx, latents, cfg)
                else:
                    levels = draw_noise_levels(len(idx), cfg.timestep_sampling, run.generator, cfg.shift)
                    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + run.step * 97 + micro)
                    noise_b = torch.randn(latents.shape, generator=gen)
                noise_b = noise_b.to(latents)
                batch_sigmas = torch.tensor([float(sampling.percent_to_sigma(1.0 - float(u))) for u in levels])
                batch_sigmas = batch_sigmas.to(latents.device)
                xt = sampling.noise_scaling(batch_sigmas, noise_b, latents, False)
                x0 = sampling.noise_scaling(torch.zeros_like(batch_sigmas), torch.zeros_like(noise_b), latents, False)
                model_wrap.conds["positive"] = [conds[i] for i in idx]
                batch_extra = nodes_train.make_batch_extra_option_dict(extra_args, idx, full_size=dataset)
                autocast = torch.autocast(xt.device.type, dtype=torch.bfloat16) \
                    if cfg.training_dtype == "bf16" else contextlib.nullcontext()
                with autocast:
                    x0_pred = model_wrap(xt, batch_sigmas, **batch_extra)
                loss = torch.nn.functional.mse_loss(x0_pred.float(), x0.float())
                balance = mean_balance_loss(run.network.gates())
                total = loss + cfg.balance_weight * balance if balance is not None and cfg.balance_weight else loss
                (total / cfg.grad_accumulation).backward()
                step_loss += loss.item() / cfg.grad_accumulation
            if not torch.isfinite(torch.tensor(step_loss)):
                raise OrthoHydraError(f"the loss became {step_loss} at step {run.step + 1}.", key="learning_rate",
                                      fix="lower the learning rate; the last good checkpoint is kept")
            run.optimizer.step()
            run.step += 1
            run.losses.append(step_loss)
            if run.step % trace_every == 0 or run.step == cfg.steps:
                labels = run.labels[idx] if run.labels is not None else None
                run.trace.record(run.step, run.network.gates(), labels)
                _notify({"node": self.unique_id, "step": run.step, "total": cfg.steps, "loss": step_loss,
                         "entropy": run.trace.mean_entropy[-1]})
            if cfg.save_every and run.step % cfg.save_every == 0 and run.step < cfg.steps:
                run.checkpoint()
            pbar.update_absolute(run.step, cfg.steps)
        return torch.zeros_like(latent_image)


def fixed_noise_for(idx: list[int], latents: torch.Tensor, cfg: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The same noise level and noise for an image at every step (seeded by image index)."""
    levels, noises = [], []
    for i, latent in zip(idx, latents, strict=True):
        gen = torch.Generator().manual_seed(cfg.seed * 7919 + i)
        levels.append(draw_noise_levels(1, cfg.timestep_sampling, gen, cfg.shift)[0])
        noises.append(torch.randn(latent.shape, generator=gen))
    return torch.stack(levels), torch.stack(noises)


def _flatten(latents: list[dict]) -> torch.Tensor:
    tensors = [lat["samples"] for lat in latents]
    shapes = {tuple(t.shape[1:]) for t in tensors}
    if len(shapes) > 1:
        raise OrthoHydraError(f"latents have different shapes {sorted(shapes)}.", key="latents",
                              fix="train on latents of one resolution")
    return torch.cat(tensors, dim=0)


def _labels(text: str, count: int) -> torch.Tensor | None:
    if not text.strip():
        return None
    try:
        values = [int(v) for v in text.replace(";", ",").split(",") if v.strip()]
    except ValueError as exc:
        raise OrthoHydraError(f"style labels must be comma-separated integers, got {text!r}.", key="style_labels",
                              fix="one integer per image, e.g. 0,0,1,1") from exc
    if len(values) != count:
        raise OrthoHydraError(f"{len(values)} style labels for {count} images.", key="style_labels",
                              fix="give one label per image, or leave it empty")
    return torch.tensor(values)


def train(model, latents: torch.Tensor, positive: list, config: TrainConfig, *, resume: str | None = None,
          style_labels: str = "", unique_id: str | None = None):
    """Run training and return (router-live MODEL, adapter, loss map, router trace)."""
    count = latents.shape[0]
    if len(positive) == 1 and count > 1:
        positive = positive * count
    if len(positive) != count:
        raise OrthoHydraError(f"{len(positive)} conditionings for {count} latents.", key="positive",
                              fix="give one conditioning per image, or a single one for all")
    if config.batch_size > count:
        config.batch_size = count
    labels = _labels(style_labels, count)
    targets = target_weights(model, config.targets, config.target_regex)
    fingerprint = {prefix: list(w.shape) for prefix, (_, w) in targets.items()}
    mp = model.clone()
    dtype = torch.bfloat16 if config.training_dtype == "bf16" else torch.float32
    mp.set_model_compute_dtype(dtype)
    with torch.inference_mode(False), torch.enable_grad():
        try:
            network = OrthoHydraNetwork({p: w.detach().float().clone() for p, (_, w) in targets.items()},
                                        config.rank, config.experts, alpha=config.alpha or None,
                                        init=INITS[config.init], seed=config.seed, jitter_std=config.jitter_std)
        except ValueError as exc:
            raise OrthoHydraError(f"{exc}.", key="rank", fix="lower the rank (it must fit min(in, out))") from exc
        network.to(mp.load_device)
        router = [p for n, p in network.named_parameters() if ".router." in n]
        others = [p for n, p in network.named_parameters() if ".router." not in n]
        optimizer = torch.optim.AdamW([{"params": others, "lr": config.learning_rate},
                                       {"params": router, "lr": config.learning_rate * config.router_lr_scale}],
                                      weight_decay=0.0)
        run = TrainingRun(config, network, optimizer, torch.Generator().manual_seed(config.seed), fingerprint, labels)
        run.trace = RouterTrace(num_experts=config.experts, init=config.init,
                                replicated_layers=list(network.replicated))
        if resume:
            run.resume(resume)
            run.trace.steps.clear()
        state = SamplingState()
        for prefix, layer in network.items():
            module = targets[prefix][0]
            hooks = dict(mp.get_model_object(f"{module}._forward_hooks"))
            hooks[id(layer)] = TrainingHook(layer, state)
            mp.add_object_patch(f"{module}._forward_hooks", OrderedDict(hooks))
        mp.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, "ortho_hydra_train",
                                apply_model_wrapper(state, router_sigma_fn(mp.get_model_object("model_sampling"))))
        checkpointed = []
        if config.gradient_checkpointing:
            checkpointed = list(nodes_train.find_all_highest_child_module_with_forward(mp.model.diffusion_model))
            for m in checkpointed:
                nodes_train.patch(m)
        mp.model.requires_grad_(False)
        _wrap_inference_weights(mp)
        comfy.model_management.load_models_gpu([mp], memory_required=1e20, force_full_load=True)
        guider = nodes_custom_sampler.Guider_Basic(mp)
        guider.set_conds(positive)
        sampler = OrthoHydraTrainSampler(run, unique_id)
        latents = latents.to(torch.float32).clone()  # a normal tensor: ComfyUI runs nodes in inference mode
        try:
            guider.sample(torch.zeros_like(latents), latents, sampler, torch.arange(count, dtype=torch.float32),
                          seed=config.seed)
        except comfy.model_management.InterruptProcessingException:
            path = run.checkpoint()
            log.info("Ortho-Hydra training interrupted at step %d; checkpoint kept at %s", run.step, path)
            raise
        except torch.OutOfMemoryError as exc:
            path = run.checkpoint()
            raise OrthoHydraError(f"out of GPU memory at step {run.step} (checkpoint kept at {path}).",
                                  key="batch_size",
                                  fix="enable gradient_checkpointing, lower batch_size, or lower rank") from exc
        finally:
            for m in checkpointed:
                nodes_train.unpatch(m)
            comfy.model_management.unload_all_models()
        run.checkpoint()
        network.requires_grad_(False)
        adapter = run.adapter()
        adapter.path = run.adapter_path
    live, _ = apply_adapter(model, adapter)
    return live, adapter, {"loss": list(run.losses)}, run.trace


class OrthoHydraTrain(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OrthoHydraTrain",
            display_name="Train Ortho-Hydra",
            category="training/ortho_hydra",
            description="Fine-tunes a mixture-of-experts adapter on this MODEL inside the graph, with per-sample "
                        "routing. Checkpoints (adapter + resume file) go to models/loras every save_every steps, at "
                        "the end, and when interrupted.",
            is_experimental=True,
            hidden=[io.Hidden.unique_id],
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model (DiT) to train on; its weights stay frozen."),
                io.Latent.Input("latents", tooltip="The training images, VAE-encoded (one batch)."),
                io.Conditioning.Input("positive", tooltip="One conditioning per image, or one for all."),
                io.Int.Input("steps", default=500, min=1, max=1_000_000, tooltip="Total optimizer steps (when "
                                                                                "resuming: train up to this step)."),
                io.Float.Input("learning_rate", default=2e-4, min=1e-7, max=1.0, step=1e-6,
                               tooltip="AdamW learning rate for the rotations, λ (or ups/down for Hydra)."),
                io.Int.Input("batch_size", default=1, min=1, max=256, tooltip="Images per micro-batch."),
                io.Int.Input("grad_accumulation", default=1, min=1, max=256, tooltip="Micro-batches per step."),
                io.Int.Input("rank", default=16, min=1, max=1024, tooltip="Rank r of each expert."),
                io.Int.Input("experts", default=4, min=1, max=64, tooltip="Number of experts E."),
                io.Float.Input("alpha", default=0.0, min=0.0, max=4096.0, tooltip="LoRA alpha; 0 means alpha = r."),
                io.Combo.Input("init", options=list(INITS), default="ortho",
                               tooltip="ortho: Ortho-Hydra (disjoint SVD bases); hydra_zero / hydra_jitter: the "
                                       "HydraLoRA baselines."),
                io.Float.Input("jitter_std", default=0.1, min=0.0, max=10.0, step=0.01,
                               tooltip="hydra_jitter: std of the expert ups at init."),
                io.Float.Input("balance_weight", default=1e-5, min=0.0, max=1.0, step=1e-7,
                               tooltip="Switch load-balancing weight; keep it tiny (2e-6..5e-5): >= 1e-4 pins the "
                                       "gates to uniform."),
                io.Float.Input("router_lr_scale", default=10.0, min=0.0, max=1000.0, step=0.1,
                               tooltip="Router learning rate = learning_rate x this."),
                io.Combo.Input("targets", options=list(TARGETS), default="attention+mlp",
                               tooltip="Which Linears get experts."),
                io.String.Input("target_regex", default="", tooltip="targets=regex: matched against lora_unet_* "
                                                                    "names."),
                io.Combo.Input("timestep_sampling", options=list(TIMESTEP_SAMPLING), default="logit_normal",
                               tooltip="How noise levels are drawn."),
                io.Float.Input("shift", default=3.0, min=1.0, max=20.0, step=0.1, tooltip="timestep_sampling=shift."),
                io.Boolean.Input("gradient_checkpointing", default=False, tooltip="Trade compute for memory."),
                io.Combo.Input("training_dtype", options=["fp32", "bf16"], default="bf16",
                               tooltip="Autocast dtype of the forward; adapter weights stay fp32."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, control_after_generate=True,
                             tooltip="Seed for init, batches and noise."),
                io.Int.Input("save_every", default=0, min=0, max=1_000_000, tooltip="Checkpoint every N steps "
                                                                                    "(0: only at the end)."),
                io.String.Input("output_name", default="ortho_hydra_trained",
                                tooltip="Name of the adapter file in models/loras."),
                io.Boolean.Input("fixed_noise", default=False,
                                 tooltip="Debugging aid: reuse one noise draw and level per image every step, to "
                                         "check the set-up can overfit a fixed batch."),
                io.String.Input("style_labels", default="", tooltip="Optional per-image style ids (e.g. 0,0,1,1), "
                                                                    "used only for the purity diagnostic."),
                io.Combo.Input("resume", options=["none", *resume_choices()], default="none",
                               tooltip="Continue from a *.resume.safetensors written by an earlier run."),
            ],
            outputs=[io.Model.Output(display_name="model"), OrthoHydraAdapterType.Output(display_name="adapter"),
                     io.Custom("LOSS_MAP").Output(display_name="loss_map"),
                     RouterTraceType.Output(display_name="router_trace")],
        )

    @classmethod
    def execute(cls, model, latents, positive, steps: int, learning_rate: float, batch_size: int,
                grad_accumulation: int, rank: int, experts: int, alpha: float, init: str, jitter_std: float,
                balance_weight: float, router_lr_scale: float, targets: str, target_regex: str,
                timestep_sampling: str, shift: float, gradient_checkpointing: bool, training_dtype: str, seed: int,
                save_every: int, output_name: str, fixed_noise: bool, style_labels: str,
                resume: str) -> io.NodeOutput:
        checked_file_name(output_name, "output_name")
        config = TrainConfig(steps, learning_rate, batch_size, grad_accumulation, rank, experts, alpha, init,
                             jitter_std, balance_weight, router_lr_scale, targets, target_regex, timestep_sampling,
                             shift, gradient_checkpointing, training_dtype, seed, save_every, output_name,
                             fixed_noise)
        resume_path = None if resume == "none" else folder_paths.get_full_path_or_raise("loras", resume)
        live, adapter, loss_map, trace = train(model, latents["samples"], positive, config, resume=resume_path,
                                               style_labels=style_labels, unique_id=cls.hidden.unique_id)
        return io.NodeOutput(live, adapter, loss_map, trace)


def resume_choices() -> list[str]:
    return [n for n in folder_paths.get_filename_list("loras") if n.endswith(RESUME_SUFFIX)]
