"""Per-step expert files (the reference trainer's turbo students): one shared ``lora_down`` and K up-heads per
Linear, head k trained for denoise step k of a K-step schedule, no router.

Here the heads are the experts of a routed layer whose "router" is the step schedule: once per model call the host
looks up the head of the sampler's σ (head k from the σ of step k down to the σ of step k+1, on the model's own
sampling) and the layer's logits are 0 for that head and -inf for the others, so live routing is exactly that head.
Keyed on σ, not on counting model calls, it stays exact when CFG makes two calls per step.  The router node's
overrides act on these logits like on any router's: pins, blends, profiles and the mixer replace the schedule where
they apply (and fold), while live, bias, temperature and top-k keep it.

File layout (as the trainer writes it): per prefix ``lora_down.weight`` (r, in), ``lora_ups.<k>.weight`` (out, r),
optional ``alpha`` and ``inv_scale`` (in,); fused attention prefixes (``…_qkv_proj`` / ``…_kv_proj``) are kept
fused and split by the host's key planning.  Header: ``ss_turbo_per_step_expert`` = "1", ``ss_turbo_step_expert_K``
(K), ``ss_turbo_student_steps`` (the sampler steps it was distilled for; equals K), ``ss_turbo_student_rank`` and
``ss_turbo_student_alpha``.  The trainer stamps neither the scheduler nor the shift: its grid is uniform in flow
time after the model's shift, which ComfyUI's ``simple`` scheduler reproduces on the model's own sampling.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from .errors import OrthoHydraError
from .kind import Capability, FileKeys, Refusal, alpha_or_rank, stored_alpha, truthy
from .layer import GateSink
from .routing import GateContext, GateOverride, finish_gate
from .runtime import ExpertLayer, heads_in_header, layout_groups

log = logging.getLogger(__name__)

STAMP = "ss_turbo_per_step_expert"
K_KEY = "ss_turbo_step_expert_K"
STEPS_KEY = "ss_turbo_student_steps"
DEFAULT_SCHEDULER = "simple"  # reproduces the trainer's shifted uniform grid; the file does not stamp one
STEP_HEAD_KEY = "step_head"  # GateContext.extra: the head of this model call's σ, set by the host
SIGMA_MATCH = 1e-4  # relative: a sampler σ this close to a keyframe's is that step (fp32 round-off is ~1e-7)
_NO_SAVE_FIX = "pin or blend the heads and bake them into a plain LoRA, or keep using the original file"


def is_step_expert_file(metadata: Mapping[str, str]) -> bool:
    """The trainer's stamp, or (a file saved before the stamp) a K above 1 in its header."""
    return truthy(metadata.get(STAMP, "")) or _int_stamp(metadata, K_KEY) > 1


def _int_stamp(metadata: Mapping[str, str], key: str) -> int:
    try:
        return int(str(metadata.get(key, "") or "0").strip())
    except ValueError:
        return -1


@dataclass
class StepExpertLayer(ExpertLayer):
    """A routed layer whose K experts are step heads; its router is zeros, the step schedule chooses the head."""

    refusals: ClassVar[Mapping[Capability, Refusal]] = {
        Capability.SAVE: Refusal("{name} holds per-step heads chosen by the denoise step; a _moe file has no place "
                                 "for that schedule, so the heads would load as an untrained router's uniform mix.",
                                 _NO_SAVE_FIX),
        Capability.ROUTER_FIT: Refusal("{name} has no router: its heads are chosen by the denoise step.",
                                       "pin, blend or schedule the heads with the Ortho-Hydra Expert Mixer node"),
        Capability.TRANSFER: Refusal("{name} holds per-step turbo heads distilled against one base model.",
                                     "distill the turbo student again on the other base model"),
    }

    @classmethod
    def read(cls, file: FileKeys) -> dict[str, StepExpertLayer]:
        if not is_step_expert_file(file.metadata):
            return {}
        stamped_k = _int_stamp(file.metadata, K_KEY)
        if stamped_k < 0:
            raise OrthoHydraError(f"{K_KEY} is {file.metadata.get(K_KEY)!r}, not a whole number.", path=file.path,
                                  key=K_KEY, fix="re-save the student from the trainer")
        groups, _ = layout_groups(file.remaining())
        layers = {}
        for prefix, group in sorted(groups.items()):
            if not any(k.startswith("lora_ups.") for k in group):
                continue
            layers[prefix] = _step_layer(prefix, group, file, stamped_k)
            file.take(f"{prefix}.{suffix}" for suffix in group)
        if not layers:
            raise OrthoHydraError("the header says this is a per-step expert student but no "
                                  "'<prefix>.lora_ups.<k>.weight' keys are in it (a truncated or emptied file).",
                                  path=file.path, key="lora_ups", fix="re-save the student from the trainer")
        return layers

    @classmethod
    def describe_header(cls, entries: Mapping[str, dict], metadata: Mapping[str, str], path: str) -> dict | None:
        if not is_step_expert_file(metadata):
            return None
        heads, ranks = heads_in_header(entries)
        if not heads:
            return None
        counts = set(heads.values())
        num_heads = max(counts)
        return {"num_experts": num_heads, "expert_names": head_names(num_heads), "rank": max(ranks, default=0),
                "routed_layers": len(heads), "spec": "per_step_experts", "router_source": "denoise step",
                "consistent": len(counts) == 1}

    @classmethod
    def summary_lines(cls, layers: list) -> list[str]:
        num_heads = layers[0].num_experts
        return [f"per-step experts: {len(layers)} layers with {num_heads} heads, no router; head k serves step k "
                f"of the {num_heads}-step schedule it was distilled for, chosen by the sampler's σ (exact at any "
                f"CFG). Sample with {num_heads} steps of the '{DEFAULT_SCHEDULER}' scheduler; other step counts "
                "or schedulers are logged as a warning and take the head of the nearest earlier step."]

    def default_expert_names(self) -> list[str]:
        return head_names(self.num_experts)

    def gate_from_projection(self, lx: torch.Tensor, sigma: torch.Tensor | None = None,
                             override: GateOverride | None = None, context: GateContext | None = None,
                             fei: torch.Tensor | None = None, sink: GateSink | None = None) -> torch.Tensor:
        """The gate (B, K): the step's head (head 0 outside sampling, where no step is known), then any override."""
        if context is None:
            context = GateContext(layer=self.name, sigma=sigma)
        head = min(int(context.extra.get(STEP_HEAD_KEY, 0)), self.num_experts - 1)
        logits = torch.full((lx.shape[0], self.num_experts), -math.inf, device=lx.device)
        logits[:, head] = 0.0
        gate = finish_gate(logits, context, override)
        if sink is not None:
            sink(self.name, gate, context)
        return gate


def head_names(num_heads: int) -> list[str]:
    return [f"step {k + 1}/{num_heads}" for k in range(num_heads)]


def _step_layer(prefix: str, group: Mapping[str, torch.Tensor], file: FileKeys, stamped_k: int) -> StepExpertLayer:
    path = file.path
    router_keys = sorted(k for k in group if k.startswith("router."))
    if router_keys:
        raise OrthoHydraError(f"a per-step expert layer has a {router_keys[0]}, which the trainer never writes for "
                              "step heads (is this a Hydra file with a stray turbo header?).", path=path,
                              key=f"{prefix}.{router_keys[0]}",
                              fix=f"remove {STAMP} / {K_KEY} from a Hydra file's header, or re-save the student")
    ups_keys = sorted((k for k in group if k.startswith("lora_ups.")), key=lambda k: int(k.split(".")[1]))
    indices = [int(k.split(".")[1]) for k in ups_keys]
    if indices != list(range(len(indices))):
        raise OrthoHydraError(f"head indices {indices} are not 0..K-1 (a head is missing).", path=path,
                              key=f"{prefix}.lora_ups.*", fix="the file is truncated; re-save the student")
    if stamped_k > 1 and len(indices) != stamped_k:
        raise OrthoHydraError(f"{len(indices)} heads but the header stamps K = {stamped_k}.", path=path,
                              key=f"{prefix}.lora_ups.*", fix="the file is truncated or mixed; re-save the student")
    down = group.get("lora_down.weight")
    if down is None:
        raise OrthoHydraError(f"{len(indices)} heads but no shared lora_down.weight.", path=path,
                              key=f"{prefix}.lora_down.weight", fix="the file is truncated; re-save the student")
    if down.ndim != 2:
        raise OrthoHydraError(f"expected (r, in), got {tuple(down.shape)}.", path=path,
                              key=f"{prefix}.lora_down.weight", fix="the file is damaged; re-save the student")
    rank, in_features = down.shape
    ups = [group[k] for k in ups_keys]
    for key, up in zip(ups_keys, ups, strict=True):
        if up.ndim != 2 or up.shape != (ups[0].shape[0], rank):
            raise OrthoHydraError(f"expected ({ups[0].shape[0]}, {rank}) like head 0 and lora_down (r = {rank}), "
                                  f"got {tuple(up.shape)}.", path=path, key=f"{prefix}.{key}",
                                  fix="the file is damaged or mixed from two students; re-save it")
    inv_scale = group.get("inv_scale")
    if inv_scale is not None and inv_scale.reshape(-1).shape != (in_features,):
        raise OrthoHydraError(f"expected ({in_features},), got {tuple(inv_scale.shape)}.", path=path,
                              key=f"{prefix}.inv_scale", fix="the file is damaged; re-save the student")
    alpha = stored_alpha(group.get("alpha"))
    if not alpha:
        try:
            alpha = float(file.metadata.get("ss_turbo_student_alpha", "0") or 0)
        except ValueError:
            alpha = 0.0
    num_heads = len(ups)
    # the router tensors are never read (the step picks the head); zeros keep the routed-layer fields whole
    return StepExpertLayer(
        name=prefix, down=down.float(), ups=torch.stack(ups).float(),
        router_weight=torch.zeros(num_heads, rank), router_bias=torch.zeros(num_heads),
        alpha=alpha_or_rank(alpha, rank), inv_scale=None if inv_scale is None else inv_scale.reshape(-1).float())


@dataclass
class StepSchedule:
    """Which head serves which sampler σ, and a watch over the σ the sampler actually calls the model with."""

    num_heads: int
    steps: int  # the sampler steps the heads were distilled for
    steps_source: str  # where ``steps`` came from, for the summary
    scheduler: str = DEFAULT_SCHEDULER
    sigmas: tuple[float, ...] = ()  # the K step σ on the model's sampling, once bound
    off_grid_calls: int = 0
    off_grid_example: float | None = None
    _warned: bool = field(default=False, repr=False)

    def bind(self, sigmas: Sequence[float]) -> StepSchedule:
        """A copy keyed on ``sigmas``: the scheduler's σ list for ``steps`` steps on the model (K+1 values, the
        last 0)."""
        values = tuple(float(s) for s in sigmas)[: self.steps]
        if len(values) < self.num_heads or any(b >= a for a, b in itertools.pairwise(values)):
            raise ValueError(f"the {self.scheduler} schedule for {self.steps} steps gives σ {list(values)}: not "
                             f"{self.num_heads} descending values")
        return StepSchedule(self.num_heads, self.steps, self.steps_source, self.scheduler, values)

    def head_at(self, sampler_sigma: float) -> int:
        """The head of the last step whose σ is at or above ``sampler_sigma`` (head 0 above the first step)."""
        head = 0
        for k, s in enumerate(self.sigmas[: self.num_heads]):
            if sampler_sigma <= s + SIGMA_MATCH * max(abs(s), 1e-3):
                head = k
        return head

    def on_grid(self, sampler_sigma: float) -> bool:
        return any(abs(sampler_sigma - s) <= SIGMA_MATCH * max(abs(s), 1e-3) for s in self.sigmas)

    def observe(self, sampler_sigma: float) -> None:
        """Called once per model call: count and (once) log a σ that is none of the K steps' — the sampler runs
        another step count, scheduler or denoise than the heads were distilled for.  K distinct σ all match, so more
        distinct σ than K always shows up here."""
        if self.on_grid(sampler_sigma):
            return
        self.off_grid_calls += 1
        if self.off_grid_example is None:
            self.off_grid_example = sampler_sigma
        if not self._warned:
            self._warned = True
            log.warning("Ortho-Hydra per-step experts: the sampler called the model at σ = %.6g, which is not one of "
                        "the %d steps the heads were distilled for (%s); it gets the head of the nearest earlier step "
                        "and the result is off the distilled trajectory. Sample with %d steps of the '%s' scheduler "
                        "at denoise 1.", sampler_sigma, self.num_heads, self.grid_text(), self.steps, self.scheduler)

    def grid_text(self) -> str:
        return "σ " + ", ".join(f"{s:.4g}" for s in self.sigmas)

    def describe(self) -> str:
        text = (f"step schedule: head k at step k of {self.steps} '{self.scheduler}' steps on this model's sampling "
                f"({self.grid_text()}; steps {self.steps_source}; scheduler not stamped by the trainer, so "
                f"'{self.scheduler}', which gives its shifted uniform flow grid)")
        if self.off_grid_calls:
            text += (f"; WARNING: {self.off_grid_calls} model calls at σ off this grid (first "
                     f"{self.off_grid_example:.4g}): the sampler's step count or scheduler differs from the "
                     f"{self.num_heads} steps of the heads")
        return text


def step_schedule(layers: Mapping[str, object], metadata: Mapping[str, str]) -> StepSchedule | None:
    """The schedule of an adapter's per-step heads, or None when it has none."""
    heads = {layer.num_experts for layer in layers.values() if isinstance(layer, StepExpertLayer)}
    if not heads:
        return None
    num_heads = max(heads)
    stamped = _int_stamp(metadata, STEPS_KEY)
    if stamped >= num_heads:
        return StepSchedule(num_heads, stamped, f"stamped {STEPS_KEY}={stamped}")
    return StepSchedule(num_heads, num_heads, f"K = {num_heads} (no {STEPS_KEY} stamp)")
