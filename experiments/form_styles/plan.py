"""The study's plan as data: arms, seeds, learning-rate grid, metrics' settings and the margins.

README.md states the same plan in words; it was written, with these values, before the comparison ran
(``tests/unit/test_form_styles_results.py`` checks that the README's plan table is this module's).

**Revision 1 (before any adapter was trained).**  The first plan (400 steps, lr grid 1e-3 / 3e-3 / 1e-2, all 11
arms, 2 samples per character, 12 sampling steps) was written for a machine with time for it.  Measured on the
2 shared cores before the study ran, one training step (batch 8, through the pack's trainer) takes 0.5-0.8 s, so
one 400-step run with its measurements takes 5-7 minutes and the first plan (88 runs) about 8 hours; the session
had about one hour.  Revised, still before any run: 150 steps, a 2-value lr grid (3e-3, 1e-2) on seed 0, 1 sample
per (style, character) with 10 sampling steps (2 for the positive control), and the arms run in the order of
``RUN_ARMS`` (the fair supervised baseline, then the pack's recommended arm, then HydraLoRA with the same
guidance), each arm complete with its 5 seeds before the next starts.  The other arms stay in ``ARMS`` as
planned and are reported as not run.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Arm:
    label: str
    experts: int
    init: str  # the trainer's init (nodes/train.py INITS)
    guided: bool = False  # label guidance (style i -> expert i)
    named: bool = False  # the style's name is a fifth conditioning token
    matched: bool = False  # rank chosen so the adapter holds as many parameters as the MoE (E=4, r=8)


ARMS: dict[str, Arm] = {
    "lora_r8": Arm("single LoRA r=8", 1, "hydra_zero"),
    "lora_matched": Arm("single LoRA, MoE-sized", 1, "hydra_zero", matched=True),
    "lora_named": Arm("single LoRA, MoE-sized, style name in the conditioning", 1, "hydra_zero", named=True,
                      matched=True),
    "hydra_zero": Arm("HydraLoRA zero", 4, "hydra_zero"),
    "hydra_zero_lg": Arm("HydraLoRA zero + label guidance", 4, "hydra_zero", guided=True),
    "hydra_jitter": Arm("HydraLoRA jitter", 4, "hydra_jitter"),
    "hydra_jitter_lg": Arm("HydraLoRA jitter + label guidance", 4, "hydra_jitter", guided=True),
    "ortho": Arm("Ortho-Hydra", 4, "ortho"),
    "ortho_lg": Arm("Ortho-Hydra + label guidance", 4, "ortho", guided=True),
    "ortho_init": Arm("Ortho-Hydra ortho_init", 4, "ortho_init"),
    "ortho_init_lg": Arm("Ortho-Hydra ortho_init + label guidance", 4, "ortho_init", guided=True),
}
# the arms run, in this order (revision 1): each one's grid and 5 seeds finish before the next begins
RUN_ARMS = ("lora_named", "ortho_init_lg", "hydra_zero_lg")
REFERENCE = "lora_named"  # the fair supervised baseline every MoE arm is compared with
MOE_ARMS = tuple(k for k, a in ARMS.items() if a.experts > 1)


@dataclass(frozen=True)
class Plan:
    rank: int = 8
    experts: int = 4
    steps: int = 150
    batch_size: int = 8
    lrs: tuple[float, ...] = (3e-3, 1e-2)
    selection_seed: int = 0  # runs the lr grid on the validation characters; never reported
    seeds: tuple[int, ...] = (1, 2, 3, 4, 5)
    label_guidance: float = 1.0
    guidance_fraction: float = 0.6  # label guidance held for this share of the steps, then decayed
    loss_sigmas: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75, 0.9)
    purity_sigmas: tuple[float, ...] = (0.25, 0.5, 0.75)
    sample_steps: int = 10
    cfg: float = 2.0
    samples_per_char: int = 1  # pinned samples per (control, character)
    positive_control_lr: float = 1e-2
    positive_control_samples: int = 2  # per character: 14 per style, so 0.9 allows one miss
    sample_seed: int = 4242
    noise_seed: int = 12345
    # decisions, fixed before the comparison ran
    promise_pin: float = 0.90  # an arm "pins styles" when its mean pin accuracy reaches this
    promise_content: float = 0.90
    margin_pin: float = 0.05  # non-inferiority to REFERENCE: lower 95 % bound of (arm - reference) above -margin
    margin_content: float = 0.05
    margin_bleed: float = 0.05  # upper 95 % bound of (arm - reference) below +margin
    margin_loss_ratio: float = 1.05  # upper 95 % bound of arm / reference held-out loss below this
    positive_control_pin: float = 0.90
    positive_control_content: float = 0.90

    @property
    def guidance_steps(self) -> int:
        return round(self.guidance_fraction * self.steps)


PLAN = Plan()
QUICK = Plan(steps=30, lrs=(3e-3,), seeds=(1,), samples_per_char=1, sample_steps=6, positive_control_samples=1)
