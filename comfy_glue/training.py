"""The training loop on ComfyUI's own MODEL (any DiT), with per-sample routing: the one loop that the trainer node
(``nodes/train.py``), the torchrun command (``ortho_hydra_train``), the studies and the demo all run.

ComfyUI's core trainer drives its loop through a custom ``comfy.samplers.Sampler``, so noising, conditioning
and the x0-space loss all come from the model's own ``model_sampling``; we do the same.  Unlike its weight
wrappers, our adapters are forward hooks (object patches), so the router sees every sample.

Layers: the math and the checkpoint assembly live in ``ortho_hydra`` (``training``, ``training_state``), the
ComfyUI plumbing in :mod:`.train_support`; this module is the run's state and the loop, read top to bottom.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field, replace

import comfy.model_management
import comfy.samplers
import comfy.utils
import folder_paths
import torch
from comfy_extras import nodes_custom_sampler, nodes_train

from ortho_hydra import OrthoHydraError, save
from ortho_hydra.basis import BasisCache
from ortho_hydra.network import OrthoHydraNetwork
from ortho_hydra.replicas import Replicas
from ortho_hydra.sampling import EpochBatches
from ortho_hydra.slots import base_fingerprint, slot_metadata
from ortho_hydra.text_lists import parse_list
from ortho_hydra.training import (
    RouterTrace,
    StepGates,
    UsageBalance,
    balance_starts_at,
    calibration_generator,
    draw_noise_levels,
    fixed_noise,
    guidance_hold,
    guidance_weight,
    label_guidance_loss,
    lr_factor,
    optimizer_groups,
    set_learning_rates,
    step_noise,
    total_loss,
)
from ortho_hydra.training_state import (
    RESUME_SUFFIX,
    capture_training_state,
    load_training_state,
    restore_training_state,
    resume_path_for,
    save_training_state,
)

from .compile_support import require_hook_guards
from .kitchen_autograd import OP_NAME, enable_kitchen_backward
from .model_folders import RESUME_FOLDER, folder_dir, register_folder
from .model_linears import adaptable_linears
from .patcher import apply_adapter
from .train_support import (
    drop_restored_forwards,
    frozen_tensors_out_of_inference,
    install_gradient_checkpointing,
    install_training_hooks,
    notify,
    observing_router_inputs,
    per_image_conditioning,
    wrap_inference_weights,
)

log = logging.getLogger("ortho_hydra")
BASES = BasisCache()  # SVD bases by weight content, for the next run on the same model (one per process)
INITS = {"ortho": "ortho", "ortho_out": "ortho_out", "ortho_init": "ortho_init", "hydra_zero": "zero",
         "hydra_jitter": "jitter", "hydra_jitter_zero_sum": "jitter_zero_sum"}


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 500
    learning_rate: float = 2e-3  # the studies' recipe (toy and glyph worlds); lower it for large real models
    batch_size: int = 1
    grad_accumulation: int = 1
    rank: int = 16
    experts: int = 4
    alpha: float = 0.0
    init: str = "ortho_init"  # frozen-basis "ortho" could not carry the studies' styles (experiments/style_separation)
    jitter_std: float = 0.1
    balance_weight: float = 1e-2  # < 50 % collapsed layers where 1e-5 had 90-97 % (experiments/router_collapse)
    balance_start: float = 0.0  # a step, or a fraction of the run when < 1
    balance_memory: int = 1  # micro-batches the balance term's expert usage is averaged over (UsageBalance)
    router_lr_scale: float = 1.0  # x10 kept AdamW routers re-assigning styles (experiments/style_separation)
    targets: str = "attention+mlp"
    target_regex: str = ""
    timestep_sampling: str = "logit_normal"
    shift: float = 3.0
    gradient_checkpointing: bool = True  # as ComfyUI's trainer: one block's activations at a time (bench/README.md)
    training_dtype: str = "bf16"
    seed: int = 0
    save_every: int = 0
    output_name: str = "ortho_hydra_trained"
    fixed_noise: bool = False  # debugging aid: one noise draw and level per image, reused every step
    trace_every: int = 0
    calibrate_router: bool = True  # standardise each router's input on the data before step 1 (anti-collapse)
    label_guidance: float = 1.0  # weight of the gate/label cross-entropy; applies only when style labels are given
    label_guidance_steps: int = 0  # hold it this long, then decay to 0; 0: 60 % of the run
    label_guidance_detached: bool = True  # the gate/label term sees each layer's input detached (no upstream grads)
    lr_schedule: str = "cosine"  # a constant lr let fast runs undo their fit at the end (style_separation)
    style_names: tuple[str, ...] = ()
    slot: int = 0  # with slots > 0: train one expert on slice `slot` of W0's top slots·rank singular vectors
    slots: int = 0

    def identity(self) -> dict:
        """What a resume file must agree on."""
        keys = ("rank", "experts", "alpha", "init", "targets", "target_regex")
        keys += ("slot", "slots") if self.slots else ()
        return {k: getattr(self, k) for k in keys}


@dataclass
class TrainingRun:
    config: TrainConfig
    network: OrthoHydraNetwork
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    fingerprint: dict
    labels: torch.Tensor | None
    extra_metadata: dict = field(default_factory=dict)
    step: int = 0
    losses: list[float] = field(default_factory=list)
    trace: RouterTrace | None = None
    gates: StepGates = field(default_factory=StepGates)
    router_gates: StepGates = field(default_factory=StepGates)  # gates on detached layer inputs (label guidance)
    hooks: list = field(default_factory=list)
    balance: UsageBalance = field(default_factory=UsageBalance)
    replicas: Replicas = field(default_factory=Replicas)  # one process, or DDP ranks (the torchrun command)
    batches: EpochBatches | None = None  # the data order, set when the loop starts
    resumed_from: str | None = None
    resumed_order: dict | None = None  # the resume file's data order; None if it predates epoch sampling

    @property
    def adapter_path(self) -> str:
        return os.path.join(folder_paths.get_folder_paths("loras")[0], f"{self.config.output_name}.safetensors")

    @property
    def resume_path(self) -> str:
        """The resume file, in its own folder so LoRA lists stay LoRAs (models/ortho_hydra_resume by default)."""
        return os.path.join(folder_dir(RESUME_FOLDER), os.path.basename(resume_path_for(self.adapter_path)))

    def adapter(self):
        cfg = self.config
        adapter = self.network.to_adapter(
            expert_names=_expert_names(cfg.style_names, cfg.experts),
            provenance={"trainer": "comfyui-ortho-hydra OrthoHydraTrain", "steps": self.step, "init": cfg.init,
                        "rank": cfg.rank, "experts": cfg.experts, "lr": cfg.learning_rate, "seed": cfg.seed,
                        "targets": cfg.targets, "label_guidance": cfg.label_guidance},
            extra_metadata=self.extra_metadata)
        return replace(adapter, path=self.adapter_path)

    def checkpoint(self) -> str:
        """Adapter + resume sidecar, both written atomically (by the main process only); returns the adapter path."""
        path = self.adapter_path
        if not self.replicas.is_main:
            return path
        save(self.adapter(), path)
        order = self.batches.state(self.step * self.config.grad_accumulation) if self.batches else {}
        state = capture_training_state(self.network, self.optimizer, self.generator, self.step,
                                       {"config": self.config.identity(), "fingerprint": self.fingerprint,
                                        "losses": self.losses, "balance_usage": self.balance.state(),
                                        "data_order": order})
        save_training_state(self.resume_path, state)
        return path

    def resume(self, path: str) -> None:
        state = load_training_state(path)
        restore_training_state(state, self.network, self.optimizer, self.generator, fingerprint=self.fingerprint,
                               config=self.config.identity(), path=path)
        self.step = state.step
        self.losses = list(state.info.get("losses", []))
        self.balance.load_state(state.info.get("balance_usage", {}))
        self.resumed_order, self.resumed_from = state.info.get("data_order"), path

    def start_batches(self, dataset: int, per_rank: int) -> None:
        """The epoch sampler; on resume, say when the data order cannot continue the saved one."""
        self.batches = EpochBatches(dataset, per_rank, world=self.replicas.world, rank=self.replicas.rank,
                                    seed=self.config.seed)
        if self.resumed_from is None:
            return
        saved, now = self.resumed_order, self.batches.state(self.step * self.config.grad_accumulation)
        if not saved:
            log.warning("%s predates epoch sampling (no data_order); training continues, with the data order "
                        "re-derived from step %d", self.resumed_from, self.step)
        elif (saved.get("dataset"), saved.get("global_batch")) != (now["dataset"], now["global_batch"]):
            log.warning("%s was written for %s images at global batch %s, this run has %d at %d; the data order is "
                        "re-derived from step %d (epoch %d)", self.resumed_from, saved.get("dataset"),
                        saved.get("global_batch"), now["dataset"], now["global_batch"], self.step, now["epoch"])


def _expert_names(style_names: tuple[str, ...], experts: int) -> list[str] | None:
    """Style i names expert i; experts beyond the styles keep a generic name."""
    if not style_names:
        return None
    return [*style_names, *(f"expert {e}" for e in range(len(style_names), experts))]


class OrthoHydraTrainSampler(comfy.samplers.Sampler):
    """The training loop, run by ComfyUI's guider so conditioning and model_sampling are the model's own."""

    def __init__(self, run: TrainingRun, unique_id: str | None = None) -> None:
        self.run = run
        self.unique_id = unique_id

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        # Here the model is loaded where it runs; grad is on whatever mode the host calls the sampler in.
        with torch.inference_mode(False), torch.enable_grad(), frozen_tensors_out_of_inference(model_wrap.inner_model):
            return self.loop(model_wrap, extra_args, latent_image)

    def loop(self, model_wrap, extra_args: dict, latent_image: torch.Tensor) -> torch.Tensor:
        run, cfg = self.run, self.run.config
        model_wrap.conds = nodes_train.process_cond_list(model_wrap.conds)
        conds = model_wrap.conds["positive"]
        dataset = latent_image.shape[0]
        replicas = run.replicas
        batch_size = min(cfg.batch_size, dataset // replicas.world)
        if batch_size < 1:
            raise OrthoHydraError(f"{dataset} images cannot fill one image per process on {replicas.world} "
                                  "processes.", key="batch_size", fix="use fewer processes or more images")
        run.start_batches(dataset, batch_size)
        rows = run.batches.rows  # this process's positions in every global batch
        balance_from = balance_starts_at(cfg.balance_start, cfg.steps)
        pbar = comfy.utils.ProgressBar(cfg.steps)
        pbar.update_absolute(run.step, cfg.steps)
        trace_every = cfg.trace_every or max(1, cfg.steps // 50)
        if run.step == 0 and cfg.calibrate_router:
            self.calibrate(model_wrap, conds, extra_args, latent_image)
        while run.step < cfg.steps:
            comfy.model_management.throw_exception_if_processing_interrupted()
            run.optimizer.zero_grad(set_to_none=True)
            step_loss = 0.0
            for micro in range(cfg.grad_accumulation):
                idx = run.batches.batch(run.step * cfg.grad_accumulation + micro)
                last = micro == cfg.grad_accumulation - 1
                with contextlib.nullcontext() if last else replicas.no_sync():  # all-reduce once per step
                    step_loss += self.fwd_bwd(model_wrap, conds, extra_args, latent_image, idx, rows, micro,
                                              balance_on=run.step >= balance_from) / cfg.grad_accumulation
            step_loss = replicas.mean(step_loss)
            if not torch.isfinite(torch.tensor(step_loss)):
                raise OrthoHydraError(f"the loss became {step_loss} at step {run.step + 1}.", key="learning_rate",
                                      fix="lower the learning rate; the last good checkpoint is kept")
            set_learning_rates(run.optimizer, lr_factor(run.step, cfg.steps, cfg.lr_schedule))
            run.optimizer.step()
            run.step += 1
            run.losses.append(step_loss)
            if run.step % trace_every == 0 or run.step == cfg.steps:
                labels = run.labels[idx] if run.labels is not None else None
                run.trace.record(run.step, run.gates, labels)
                notify({"node": self.unique_id, "step": run.step, "total": cfg.steps, "loss": step_loss,
                        "entropy": run.trace.mean_entropy[-1]})
            if cfg.save_every and run.step % cfg.save_every == 0 and run.step < cfg.steps:
                run.checkpoint()
            pbar.update_absolute(run.step, cfg.steps)
        return torch.zeros_like(latent_image)

    @torch.no_grad()
    def calibrate(self, model_wrap, conds: list, extra_args: dict, latents_all: torch.Tensor,
                  max_samples: int = 64, levels: tuple[float, ...] = (0.25, 0.5, 0.75)) -> None:
        """One forward per noise level over (up to) ``max_samples`` images; fixes each router's standardisation.

        The adapter's delta is 0 at init, so this sees the base model's own activations, at the noise levels
        training will visit.  Deterministic: the first images, noise from the run's seed.
        """
        run, cfg = self.run, self.run.config
        sampling = model_wrap.inner_model.model_sampling
        idx = list(range(min(max_samples, latents_all.shape[0])))
        latents = latents_all[idx]
        gen = calibration_generator(cfg.seed)
        with observing_router_inputs(run.hooks) as inputs:
            for level in levels:
                noise = torch.randn(latents.shape, generator=gen)
                sigmas = torch.full((len(idx),), float(sampling.percent_to_sigma(1.0 - level))).to(latents.device)
                predict_x0(model_wrap, conds, extra_args, latents_all, idx, sigmas, noise)
        for prefix, layer in run.network.items():
            if prefix in inputs:
                layer.calibrate_router(torch.cat(inputs[prefix]))

    def fwd_bwd(self, model_wrap, conds: list, extra_args: dict, latents_all: torch.Tensor, idx: list[int],
                rows: slice, micro: int, balance_on: bool) -> float:
        """One micro-batch: noise it, predict x0, backward the x0-space MSE plus the routing terms.

        ``idx`` is this process's share of the global batch, at positions ``rows`` of it; levels and noise are
        drawn for the whole global batch (the same on every process) and keyed to those positions, so N processes
        compute what one computes at N times the batch.
        """
        run, cfg = self.run, self.run.config
        sampling = model_wrap.inner_model.model_sampling
        latents = latents_all[idx]
        size = run.batches.global_batch
        if cfg.fixed_noise:
            levels, noise = fixed_noise(idx, tuple(latents.shape[1:]), cfg.seed, cfg.timestep_sampling, cfg.shift)
        else:
            levels = draw_noise_levels(size, cfg.timestep_sampling, run.generator, cfg.shift)[rows]
            noise = step_noise(size, tuple(latents.shape[1:]), cfg.seed, run.step, micro, rows)
        sigmas = torch.tensor([float(sampling.percent_to_sigma(1.0 - float(u))) for u in levels]).to(latents.device)
        x0 = sampling.noise_scaling(torch.zeros_like(sigmas), torch.zeros_like(latents), latents, False)
        autocast = torch.autocast(latents.device.type, dtype=torch.bfloat16) \
            if cfg.training_dtype == "bf16" else contextlib.nullcontext()
        run.gates.clear()
        run.router_gates.clear()
        guidance = guidance_weight(run.step, cfg.label_guidance, guidance_hold(cfg.label_guidance_steps, cfg.steps))
        detached = bool(guidance) and run.labels is not None and cfg.label_guidance_detached
        run.gates.needs_graph = bool(balance_on and cfg.balance_weight) or (
            bool(guidance) and run.labels is not None and not detached)
        for hook in run.hooks:
            hook.router_sink = run.router_gates if detached else None
        losses = {}

        def step() -> torch.Tensor:
            with autocast:
                x0_pred = predict_x0(model_wrap, conds, extra_args, latents_all, idx, sigmas, noise)
            losses["mse"] = mse = torch.nn.functional.mse_loss(x0_pred.float(), x0.float())
            balance = run.balance.loss(run.gates) if balance_on and cfg.balance_weight else None
            guided = label_guidance_loss(run.router_gates if detached else run.gates, run.labels[idx]) \
                if guidance and run.labels is not None else None
            return total_loss(mse, (cfg.balance_weight, balance), (guidance, guided))

        total = run.replicas.forward(step)  # DDP sees the forward, so the backward all-reduces the adapter's grads
        (total / cfg.grad_accumulation).backward()
        return losses["mse"].item()


def predict_x0(model_wrap, conds: list, extra_args: dict, latents_all: torch.Tensor, idx: list[int],
               sigmas: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Noise images ``idx`` to ``sigmas`` with the model's own sampling and predict x0, each with its own
    conditioning (one merged entry when possible, else one call per image; see ``per_image_conditioning``)."""
    sampling = model_wrap.inner_model.model_sampling
    latents = latents_all[idx]
    xt = sampling.noise_scaling(sigmas, noise.to(latents), latents, False)
    merged = per_image_conditioning(conds, idx)
    calls = [(merged, idx, slice(None))] if merged is not None else \
        [([conds[i]], [i], slice(row, row + 1)) for row, i in enumerate(idx)]
    outputs = []
    for entries, rows, part in calls:
        model_wrap.conds["positive"] = entries
        batch_extra = nodes_train.make_batch_extra_option_dict(extra_args, rows, full_size=latents_all.shape[0])
        outputs.append(model_wrap(xt[part], sigmas[part], **batch_extra))
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs)


def style_labels_from(text: str, count: int) -> torch.Tensor | None:
    """Per-image style ids from the ``style_labels`` widget, or None when it is empty."""
    values = parse_list(text, int, key="style_labels", example="0,0,1,1 (one integer per image)")
    if not values:
        return None
    if len(values) != count:
        raise OrthoHydraError(f"{len(values)} style labels for {count} images.", key="style_labels",
                              fix="give one label per image, or leave it empty")
    return torch.tensor(values)


def check_styles(config: TrainConfig, labels: torch.Tensor | None) -> None:
    """Label guidance needs labels, at most one style per expert, and names matching the labels."""
    if labels is not None and (int(labels.min()) < 0 or int(labels.max()) >= config.experts):
        raise OrthoHydraError(f"style labels run from {int(labels.min())} to {int(labels.max())}, but there are "
                              f"{config.experts} experts (label i guides expert i).", key="style_labels",
                              fix=f"use at most {config.experts} styles, or raise experts")
    if config.style_names and len(config.style_names) > config.experts:
        raise OrthoHydraError(f"{len(config.style_names)} style names for {config.experts} experts.",
                              key="style_names", fix=f"give at most {config.experts} styles, or raise experts")
    if config.style_names and labels is not None and int(labels.max()) >= len(config.style_names):
        raise OrthoHydraError(f"label {int(labels.max())} has no style name ({len(config.style_names)} given).",
                              key="style_names", fix="give one name per style label")


def guidance_line(config: TrainConfig, labels: torch.Tensor | None) -> str:
    """What label guidance did in a run, for the node's report: it applies only where style labels were given."""
    if config.label_guidance <= 0:
        return "label guidance: off (weight 0)"
    if labels is None:
        return "label guidance: off (no style labels connected)"
    hold = guidance_hold(config.label_guidance_steps, config.steps)
    return f"label guidance: weight {config.label_guidance:g}, held {hold} steps, then decayed"


def train(model, latents: torch.Tensor, positive: list, config: TrainConfig, *, resume: str | None = None,
          labels: torch.Tensor | None = None, unique_id: str | None = None, replicas: Replicas | None = None):
    """Run training and return (router-live MODEL, adapter, loss map, router trace).

    The node and the torchrun command (``ortho_hydra_train``) both call this; the command passes DDP replicas.
    Callable inside ``torch.inference_mode()`` or ``torch.no_grad()`` (ComfyUI runs nodes in inference mode), on a
    model loaded either way.
    """
    count = latents.shape[0]
    if len(positive) == 1 and count > 1:
        positive = positive * count
    if len(positive) != count:
        raise OrthoHydraError(f"{len(positive)} conditionings for {count} latents.", key="positive",
                              fix="give one conditioning per image, or a single one for all")
    if labels is not None and labels.numel() != count:
        raise OrthoHydraError(f"{labels.numel()} style labels for {count} images.", key="style_labels",
                              fix="give one label per image")
    check_styles(config, labels)
    if labels is None and config.label_guidance:
        config = replace(config, label_guidance=0.0)  # recorded as it ran: guidance needs labels
    try:
        lr_factor(0, config.steps, config.lr_schedule)
    except ValueError as exc:
        raise OrthoHydraError(f"{exc}.", key="lr_schedule", fix="pick one of the listed schedules") from exc
    if not enable_kitchen_backward():
        raise OrthoHydraError(f"this ComfyUI's fused attention op {OP_NAME} has no backward, and registering one "
                              "failed.", key="model", fix="train on ComfyUI 0.3.75, or report this ComfyUI version")
    targets = adaptable_linears(model, config.targets, config.target_regex)
    fingerprint = {prefix: list(w.shape) for prefix, (_, w) in targets.items()}
    mp = model.clone()
    mp.set_model_compute_dtype(torch.bfloat16 if config.training_dtype == "bf16" else torch.float32)
    with torch.inference_mode(False), torch.enable_grad():
        run = _new_run(config, targets, fingerprint, labels, mp.load_device)
        if replicas is not None:
            run.replicas = replicas
        if resume:
            run.resume(resume)
            run.trace.steps.clear()
        run.replicas.attach(run.network)
        run.hooks = install_training_hooks(mp, run.network, {p: module for p, (module, _) in targets.items()},
                                           run.gates)
        require_hook_guards()  # a compiled model must not reuse a graph traced without these hooks
        mp.model.requires_grad_(False)
        wrap_inference_weights(mp)  # only tensors the sampler cannot view out of inference mode (subclasses)
        checkpointed = install_gradient_checkpointing(mp, run.hooks[0].state) if config.gradient_checkpointing \
            else []
        comfy.model_management.load_models_gpu([mp], memory_required=1e20, force_full_load=True)
        guider = nodes_custom_sampler.Guider_Basic(mp)
        guider.set_conds(positive)
        sampler = OrthoHydraTrainSampler(run, unique_id)
        latents = latents.to(torch.float32).clone()  # a normal tensor: ComfyUI runs nodes in inference mode
        try:
            guider.sample(torch.zeros_like(latents), latents, sampler, torch.arange(count, dtype=torch.float32),
                          seed=config.seed)
        except (comfy.model_management.InterruptProcessingException, KeyboardInterrupt):  # node cancel, Ctrl-C
            path = run.checkpoint()
            log.info("Ortho-Hydra training interrupted at step %d; checkpoint kept at %s", run.step, path)
            raise
        except torch.OutOfMemoryError as exc:
            path = run.checkpoint()
            raise OrthoHydraError(f"out of GPU memory at step {run.step} (checkpoint kept at {path}).",
                                  key="batch_size",
                                  fix="enable gradient_checkpointing, lower batch_size, or lower rank") from exc
        finally:
            comfy.model_management.unload_all_models()
            drop_restored_forwards(mp.model, checkpointed)
        run.checkpoint()
        run.network.requires_grad_(False)
        adapter = run.adapter()
    live, _ = apply_adapter(model, adapter)
    return live, adapter, {"loss": list(run.losses)}, run.trace


def check_slots(config: TrainConfig) -> None:
    """Slot training (Orthogonal Adaptation on W0's basis) is one expert with a frozen output basis."""
    if not config.slots:
        return
    if config.experts != 1 or config.init not in ("ortho", "ortho_out"):
        raise OrthoHydraError(f"slot training needs experts = 1 and init ortho_out or ortho (got {config.experts} "
                              f"experts, init {config.init}).", key="slots",
                              fix="set experts to 1 and init to ortho_out, or slots to 0")
    if not 0 <= config.slot < config.slots:
        raise OrthoHydraError(f"slot {config.slot} is outside 0..{config.slots - 1}.", key="slot",
                              fix=f"pick a slot from 0 to {config.slots - 1}")


def _new_run(config: TrainConfig, targets: dict, fingerprint: dict, labels: torch.Tensor | None,
             device) -> TrainingRun:
    # The model's own weights, wherever and in whatever dtype they are: the network takes one fp32 copy at a time.
    weights = {p: w.detach() for p, (_, w) in targets.items()}
    check_slots(config)
    try:
        network = OrthoHydraNetwork(weights, config.rank, config.experts, alpha=config.alpha or None,
                                    init=INITS[config.init], seed=config.seed, jitter_std=config.jitter_std,
                                    basis_cache=BASES,
                                    **({"slot": config.slot, "slots": config.slots} if config.slots else {}))
    except ValueError as exc:
        raise OrthoHydraError(f"{exc}.", key="rank", fix="lower the rank (it must fit min(in, out))") from exc
    extra = slot_metadata(config.slot, config.slots, base_fingerprint(weights)) if config.slots else {}
    network.to(device)
    optimizer = torch.optim.AdamW(optimizer_groups(network, config.learning_rate, config.router_lr_scale),
                                  weight_decay=0.0)
    run = TrainingRun(config, network, optimizer, torch.Generator().manual_seed(config.seed), fingerprint, labels,
                      extra_metadata=extra, balance=UsageBalance(config.balance_memory))
    run.trace = RouterTrace(num_experts=config.experts, init=config.init, replicated_layers=list(network.replicated))
    return run


def resume_choices() -> list[str]:
    register_folder(RESUME_FOLDER)
    return [n for n in folder_paths.get_filename_list(RESUME_FOLDER) if n.endswith(RESUME_SUFFIX)]
