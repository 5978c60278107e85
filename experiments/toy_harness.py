"""The toy-world harness the studies share: the host, the data split, sampling, pins and the held-out loss.

The world itself (pictures, conditioning, the cached base model, the style probe) is ``devkit/toy_world.py``; this
module is what every study on it does the same way, so that their numbers are measured alike:

* :func:`host` boots ComfyUI on the CPU and returns (toy_world, tiny_dit, pack);
* :func:`build_world` loads the base model, fits the probe and renders the training and held-out sets
  (:class:`Split`), with fixed noise for the held-out loss;
* :func:`generate` samples (euler, 8 steps, cfg 2, zero negative), :func:`pinned` pins one expert;
* :func:`heldout` is the x0 MSE at fixed noise levels (``LOSS_SIGMAS``), with every routed layer's gates;
* :func:`per_style_mean` / :func:`sigma_style_means` read per-sample values per style (and per σ);
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

LOSS_SIGMAS = (0.1, 0.25, 0.5, 0.75, 0.9)  # held-out denoising loss levels (flow σ)
PURITY_SIGMAS = (0.25, 0.5, 0.75)  # routing purity and collapse levels
SAMPLE_STEPS, CFG = 8, 2.0  # toy_world.sample_base's sampler: euler, simple, zero negative
NOISE_SEED = 12345  # the held-out loss's fixed noise


@dataclass(frozen=True)
class Split:
    """Which renders train the adapters and which are held out (``toy_world.dataset`` per pair and seed)."""

    train_per_pair: int = 1  # renders per (content, style) in the training set
    heldout_per_pair: int = 2
    train_seed: int = 0
    heldout_seed: int = 101


@dataclass
class World:
    """Training and held-out data, the probe and its report, the base model and its reference numbers."""

    base: object
    probe: object
    probe_report: dict
    train_x: torch.Tensor
    train_content: torch.Tensor
    train_style: torch.Tensor
    held_x: torch.Tensor
    held_content: torch.Tensor
    held_style: torch.Tensor
    held_x_in: torch.Tensor  # process_in'd: what the model sees
    held_cond: list  # one batched conditioning entry: the held-out contents
    noises: list[torch.Tensor]
    base_ref: dict = field(default_factory=dict)
    base_seconds: float = 0.0  # loading (or, when its recipe changed, first training) the base model


def host():
    """Boot ComfyUI on the CPU; (toy_world, tiny_dit, pack) modules."""
    from devkit.host import boot, import_pack

    boot(cpu=True)
    from devkit import tiny_dit, toy_world

    return toy_world, tiny_dit, import_pack()


def build_world(tw, pack, log, split: Split | None = None) -> World:
    split = split or Split()
    started = time.perf_counter()
    base = tw.load_base_model(log=log)
    base_seconds = time.perf_counter() - started
    log(f"base model ready ({base_seconds:.1f}s)")
    started = time.perf_counter()
    probe, probe_report = tw.fit_probe(include_neutral=True)
    log(f"probe: held-out accuracy {probe_report['held_out_accuracy']:.3f} (5 classes incl. neutral; degraded "
        f"{probe_report['held_out_accuracy_degraded']:.3f}, strongly degraded "
        f"{probe_report['held_out_accuracy_strongly_degraded']:.3f}) ({time.perf_counter() - started:.1f}s)")
    train_x, train_c, train_s = tw.dataset(split.train_per_pair, seed=split.train_seed)
    held_x, held_c, held_s = tw.dataset(split.heldout_per_pair, seed=split.heldout_seed)
    held_x_in = tw.latent_format().process_in(held_x.clone())
    gen = torch.Generator().manual_seed(NOISE_SEED)
    noises = [torch.randn(held_x_in.shape, generator=gen) for _ in LOSS_SIGMAS]
    return World(base, probe, probe_report, train_x, train_c, train_s, held_x, held_c, held_s, held_x_in,
                 tw.conditioning(held_c.tolist()), noises, base_seconds=base_seconds)


def generate(tiny_dit, tw, model, contents: Sequence[int], seed: int) -> torch.Tensor:
    """One batched txt2img call (euler, 8 steps, cfg 2, zero negative): one sample per content id."""
    latent = torch.zeros(len(contents), 16, tw.SIZE, tw.SIZE)
    return tiny_dit.sample(model, latent, tw.conditioning(list(contents)), tw.unconditional(len(contents)),
                           steps=SAMPLE_STEPS, cfg=CFG, seed=seed)


def pinned(pack, base, adapter, expert: int):
    from ortho_hydra.overrides import GateRule, Keyframe, Override

    pin = adapter.with_override(Override((Keyframe(0.0, GateRule("pin", expert)),)))
    return pack.nodes.patcher.apply_adapter(base, pin)[0]


@torch.no_grad()
def heldout(pack, model, world: World, routed: bool) -> tuple[torch.Tensor, dict[float, dict[str, torch.Tensor]],
                                                              torch.Tensor]:
    """Per-sample x0 MSE averaged over LOSS_SIGMAS (fixed noise), per σ the gates of every routed layer, and the
    per-σ per-sample MSE (len(LOSS_SIGMAS), N) whose mean over σ is the first value."""
    import comfy.model_management as mm

    mm.load_models_gpu([model])
    inner = model.model
    options = model.model_options.get("transformer_options", {})
    x0 = world.held_x_in
    context, pooled = world.held_cond[0][0], world.held_cond[0][1]["pooled_output"]
    per_sigma = torch.zeros(len(LOSS_SIGMAS), x0.shape[0], dtype=torch.float64)
    recorder = pack.nodes.gate_recording.recording(model) if routed else contextlib.nullcontext()
    with recorder as rec:
        for k, (sigma, noise) in enumerate(zip(LOSS_SIGMAS, world.noises, strict=True)):
            xs = (1 - sigma) * x0 + sigma * noise
            out = inner.apply_model(xs, torch.full((x0.shape[0],), sigma), c_crossattn=context, y=pooled,
                                    transformer_options=options)
            per_sigma[k] = (out.float() - x0).pow(2).mean((1, 2, 3)).double()
        records = rec.records() if routed else {}
    gates: dict[float, dict[str, torch.Tensor]] = {s: {} for s in LOSS_SIGMAS}
    for layer, entries in records.items():
        if len(entries) != len(LOSS_SIGMAS):
            raise RuntimeError(f"{layer}: {len(entries)} gate records for {len(LOSS_SIGMAS)} model calls")
        for sigma, entry in zip(LOSS_SIGMAS, entries, strict=True):
            gates[sigma][layer] = entry["gate"]
    return per_sigma.mean(0), gates, per_sigma


def per_style_mean(values: torch.Tensor, labels: torch.Tensor, num_styles: int) -> list[float]:
    """Mean of per-sample ``values`` within each style label 0..num_styles-1."""
    return [float(values[labels == s].mean()) for s in range(num_styles)]


def sigma_style_means(per_sigma: torch.Tensor, sigmas: Sequence[float], labels: torch.Tensor,
                      num_styles: int) -> dict[str, list[float]]:
    """Per noise level (key ``f"{σ:g}"``): the mean of ``per_sigma[k]`` (per-sample values at σ_k) within each style."""
    if per_sigma.shape[0] != len(sigmas):
        raise ValueError(f"{per_sigma.shape[0]} rows of per-σ values for {len(sigmas)} noise levels")
    return {f"{sigma:g}": per_style_mean(row, labels, num_styles) for sigma, row in zip(sigmas, per_sigma, strict=True)}
