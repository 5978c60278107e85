"""Train an arm with the pack's own trainer on the glyph world and measure it on held-out characters.

Reusable: ``GlyphStudy`` holds the base model, the certified probes and the three character splits; other
studies (the seed-paper re-tests) train and measure through the same two methods, :meth:`GlyphStudy.train` and
:meth:`GlyphStudy.measure`.
"""

from __future__ import annotations

import contextlib
import itertools
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from devkit import form_probe as fp
from devkit import glyph_world as gw
from devkit.host import loras_folder

from .plan import ARMS, PLAN, Arm, Plan

STYLES = len(gw.STYLES)


def host():
    from devkit.host import boot, import_pack

    boot(cpu=True)
    return import_pack()


@dataclass
class Split:
    """One split's styled pictures (every character in every style), ready for the model."""

    chars: str
    latents: torch.Tensor
    content: torch.Tensor
    style: torch.Tensor
    x_in: torch.Tensor  # process_in'd
    noises: list[torch.Tensor]


def matched_rank(targets: dict, rank: int, experts: int) -> int:
    """The LoRA rank whose down + up parameters equal the MoE's down + E ups + routers, over the adapted layers."""
    moe = sum(rank * w.shape[1] + experts * rank * w.shape[0] + experts * (rank + 1) for _, w in targets.values())
    per_rank = sum(w.shape[1] + w.shape[0] for _, w in targets.values())
    return round(moe / per_rank)


def match_experts(confusion: torch.Tensor) -> list[int]:
    """The style of each expert (rows) maximising matched samples, one style per expert (brute force, E <= 6)."""
    experts, styles = confusion.shape[0], STYLES
    best, best_map = -1, list(range(experts))
    for perm in itertools.permutations(range(styles), experts):
        score = sum(int(confusion[e, s]) for e, s in enumerate(perm))
        if score > best:
            best, best_map = score, list(perm)
    return best_map


class GlyphStudy:
    def __init__(self, plan: Plan = PLAN, log=print, base_recipe: dict | None = None,
                 models_dir: str | None = None):
        self.plan, self.log = plan, log
        self.pack = host()
        started = time.perf_counter()
        self.base = gw.load_base_model(models_dir, base_recipe, log=log)
        self.base_seconds = time.perf_counter() - started
        self.base_build_seconds = gw.build_seconds(gw.model_path(models_dir, base_recipe))  # stamped at build time
        self.form, self.content = fp.certified_probes()
        self.probe_report = self.form.report
        self.targets = self.pack.comfy_glue.model_linears.adaptable_linears(self.base, "attention+mlp")
        self.matched_rank = matched_rank(self.targets, plan.rank, plan.experts)
        self.splits = {part: self._split(part, k) for k, part in enumerate(("train", "validation", "held_out"))}
        self._tmp = tempfile.TemporaryDirectory(prefix="form_styles_")

    def _split(self, part: str, offset: int) -> Split:
        chars = "".join(gw.SPLIT[part])
        latents, content, style = gw.dataset(gw.ids(chars), range(STYLES))
        x_in = gw.latent_format().process_in(latents.clone())
        gen = torch.Generator().manual_seed(self.plan.noise_seed + offset)
        noises = [torch.randn(x_in.shape, generator=gen) for _ in self.plan.loss_sigmas]
        return Split(chars, latents, content, style, x_in, noises)

    # ------------------------------------------------------------------------------------------------ training

    def rank_of(self, arm: Arm) -> int:
        return self.matched_rank if arm.matched else self.plan.rank

    def train(self, arm: Arm | str, lr: float, seed: int, styles: Sequence[int] | None = None,
              steps: int | None = None):
        """Train ``arm`` on the training characters in ``styles`` (default all); (live model, adapter, losses, s)."""
        arm = ARMS[arm] if isinstance(arm, str) else arm
        plan, train = self.plan, self.pack.comfy_glue.training
        data = self.splits["train"]
        keep = torch.ones(len(data.style), dtype=torch.bool) if styles is None else \
            torch.isin(data.style, torch.tensor(list(styles)))
        latents, content, style = data.latents[keep], data.content[keep], data.style[keep]
        steps = steps or plan.steps
        config = train.TrainConfig(
            steps=steps, learning_rate=lr, batch_size=plan.batch_size, rank=self.rank_of(arm), experts=arm.experts,
            init=arm.init, training_dtype="fp32", seed=seed, output_name=f"form_styles_{seed}_{lr:g}",
            label_guidance=plan.label_guidance if arm.guided else 0.0,
            label_guidance_steps=round(plan.guidance_fraction * steps) if arm.guided else 0,
            style_names=tuple(gw.STYLES) if arm.experts > 1 else (),
            gradient_checkpointing=False)  # a 2-block toy: recomputing activations only costs time
        positive = gw.per_image_conditioning(content.tolist(), style.tolist() if arm.named else None)
        labels = style if arm.experts > 1 else None
        started = time.perf_counter()
        with loras_folder(self._tmp.name):
            live, adapter, loss_map, _ = train.train(self.base, latents, positive, config, labels=labels)
        return live, adapter, loss_map["loss"], time.perf_counter() - started

    # -------------------------------------------------------------------------------------------- instruments

    def pinned(self, adapter, expert: int):
        from ortho_hydra.overrides import GateRule, Keyframe, Override

        pin = adapter.with_override(Override((Keyframe(0.0, GateRule("pin", expert)),)))
        return self.pack.comfy_glue.patcher.apply_adapter(self.base, pin)[0]

    @torch.no_grad()
    def loss(self, model, split: Split, named: bool = False, routed: bool = False):
        """Per-sample x0 MSE averaged over the plan's σ (fixed noise), and per σ the gates of every routed layer."""
        import comfy.model_management as mm

        mm.load_models_gpu([model])
        cond = gw.conditioning(split.content.tolist(), split.style.tolist() if named else None)
        context, pooled = cond[0][0], cond[0][1]["pooled_output"]
        options = model.model_options.get("transformer_options", {})
        per_sigma = torch.zeros(len(self.plan.loss_sigmas), len(split.x_in), dtype=torch.float64)
        recorder = self.pack.comfy_glue.gate_recording.recording(model) if routed else contextlib.nullcontext()
        with recorder as rec:
            for k, (sigma, noise) in enumerate(zip(self.plan.loss_sigmas, split.noises, strict=True)):
                xs = (1 - sigma) * split.x_in + sigma * noise
                out = model.model.apply_model(xs, torch.full((len(xs),), sigma), c_crossattn=context, y=pooled,
                                              transformer_options=options)
                per_sigma[k] = (out.float() - split.x_in).pow(2).mean((1, 2, 3)).double()
            records = rec.records() if routed else {}
        gates = {s: {layer: entries[k]["gate"] for layer, entries in records.items()}
                 for k, s in enumerate(self.plan.loss_sigmas)}
        return per_sigma.mean(0), gates

    def samples(self, model, chars: str, seed_offset: int = 0, style: int | None = None,
                repeats: int | None = None) -> tuple[torch.Tensor, list]:
        """``repeats`` (default the plan's ``samples_per_char``) samples of every character (one batched call per
        repeat); (latents, content ids)."""
        contents = gw.ids(chars)
        repeats = repeats or self.plan.samples_per_char
        out = [gw.sample(model, contents, seed=self.plan.sample_seed + 1000 * r + seed_offset, style=style,
                         steps=self.plan.sample_steps, cfg=self.plan.cfg) for r in range(repeats)]
        return torch.cat(out), contents * repeats

    def read(self, latents: torch.Tensor, contents: Sequence[int], target: int | None) -> dict:
        """The probes on samples meant to be in style ``target`` (None: no style asked for)."""
        maps, refs = gw.ink(latents), fp.content_references(contents)
        probs = self.form.probabilities_ink(maps, refs)
        called = self.form.predict_ink(maps, refs)
        read = self.content.predict_ink(maps)
        entry = {"called": called.tolist(), "content_ok": (read == torch.tensor(list(contents))).tolist(),
                 "style_mass": probs[:, :STYLES].mean(0).tolist()}
        if target is not None:
            entry["pin"] = (called == target).double().mean().item()
            entry["bleed"] = (probs[:, :STYLES].sum(-1) - probs[:, target]).mean().item()
        return entry

    # ------------------------------------------------------------------------------------------------ measure

    def controls(self, arm: Arm, adapter, live) -> tuple[list, list[int]]:
        """For each style k: (model, conditioning style) that asks the arm for style k, and the expert mapping."""
        if arm.named:
            model = self.pinned(adapter, 0)
            return [(model, k) for k in range(STYLES)], []
        if arm.experts == 1:
            model = self.pinned(adapter, 0)
            return [(model, None)] * STYLES, []
        experts = [self.pinned(adapter, e) for e in range(arm.experts)]
        if arm.guided:
            mapping = list(range(arm.experts))  # label guidance names expert i after style i
        else:  # unnamed experts: match them to styles on the validation characters, judge on held-out ones
            confusion = torch.zeros(arm.experts, STYLES + 1, dtype=torch.long)
            for e, model in enumerate(experts):
                lat, contents = self.samples(model, self.splits["validation"].chars, seed_offset=7)
                for c in self.form.predict(lat, contents).tolist():
                    confusion[e, c] += 1
            mapping = match_experts(confusion[:, :STYLES])
        by_style = {s: e for e, s in enumerate(mapping)}
        return [(experts[by_style[k]], None) for k in range(STYLES)], mapping

    def measure(self, arm: Arm | str, adapter, live) -> dict:
        """Every metric on the held-out characters (see README.md), plus the validation loss."""
        arm = ARMS[arm] if isinstance(arm, str) else arm
        held = self.splits["held_out"]
        routed = arm.experts > 1
        losses, gates = self.loss(live, held, named=arm.named, routed=routed)
        val_losses, _ = self.loss(live, self.splits["validation"], named=arm.named)
        record = {"heldout_loss": float(losses.mean()), "validation_loss": float(val_losses.mean()),
                  "style_loss": [float(losses[held.style == s].mean()) for s in range(STYLES)]}
        if routed:
            from ortho_hydra.metrics import style_purity

            labels = held.style.repeat(len(self.plan.purity_sigmas))
            per_layer = [style_purity(labels, torch.cat([gates[s][layer] for s in self.plan.purity_sigmas]).argmax(-1),
                                      arm.experts) for layer in gates[self.plan.purity_sigmas[0]]]
            record["purity"] = statistics.fmean(per_layer)
        controls, mapping = self.controls(arm, adapter, live)
        per_style = []
        for k, (model, style) in enumerate(controls):
            lat, contents = self.samples(model, held.chars, style=style)
            per_style.append(self.read(lat, contents, k))
        record.update({
            "mapping": mapping, "per_style": per_style,
            "pin": statistics.fmean(p["pin"] for p in per_style),
            "bleed": statistics.fmean(p["bleed"] for p in per_style),
            "content": statistics.fmean(sum(p["content_ok"]) / len(p["content_ok"]) for p in per_style),
        })
        return record

    def validation_loss(self, arm: Arm | str, live) -> float:
        arm = ARMS[arm] if isinstance(arm, str) else arm
        return float(self.loss(live, self.splits["validation"], named=arm.named)[0].mean())

    def base_reference(self) -> dict:
        """The untouched base model: held-out loss, and its samples of held-out characters read by both probes."""
        held = self.splits["held_out"]
        losses, _ = self.loss(self.base, held)
        lat, contents = self.samples(self.base, held.chars)
        read = self.read(lat, contents, None)
        return {"heldout_loss": float(losses.mean()),
                "style_loss": [float(losses[held.style == s].mean()) for s in range(STYLES)],
                "samples_rejected": sum(c == fp.REJECT for c in read["called"]) / len(read["called"]),
                "content": sum(read["content_ok"]) / len(read["content_ok"])}
