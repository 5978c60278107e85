"""The style-separation study's plan: its arms, the targets the verdict reads, and the run's settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from experiments.toy_harness import Split

# arm key -> (display name, experts, trainer init, label guidance on)
ARMS: dict[str, tuple[str, int, str, bool]] = {
    "single": ("single LoRA (E=1)", 1, "hydra_zero", False),
    "hydra_zero": ("HydraLoRA zero", 4, "hydra_zero", False),
    "hydra_jitter": ("HydraLoRA jitter", 4, "hydra_jitter", False),
    "ortho": ("Ortho-Hydra", 4, "ortho", False),
    "ortho_lg": ("Ortho-Hydra + label guidance", 4, "ortho", True),
    "ortho_init": ("Ortho-Hydra ortho_init", 4, "ortho_init", False),
    "ortho_init_lg": ("Ortho-Hydra ortho_init + label guidance", 4, "ortho_init", True),
    "hydra_zero_lg": ("HydraLoRA zero + label guidance", 4, "hydra_zero", True),
}
REFERENCE = "single"  # style bleed is measured against this arm
SUBJECT = "ortho_lg"  # the arm the targets are about
SUBJECT_INIT = "ortho_init_lg"  # its trainable-basis variant, judged the same way (the capacity answer)
PIN_TARGET = 0.9

PIN_SAMPLES = 16
IMG2IMG_DENOISE = 0.6
PIN_SEED, IMG2IMG_SEED = 4242, 777


@dataclass(frozen=True)
class Settings:
    steps: int = 240
    lrs: tuple[float, ...] = (3e-3, 1e-2, 3e-2)
    seeds: tuple[int, ...] = (0, 1, 2)
    arms: tuple[str, ...] = tuple(ARMS)
    rank: int = 8
    batch_size: int = 4  # the trainer predicts each image with its own conditioning (per_image_conditioning)
    grad_accumulation: int = 1
    label_guidance: float = 1.0
    guidance_fraction: float = 0.6  # label_guidance_steps = this x steps
    split: Split = field(default_factory=Split)  # training and held-out renders
    threads: int = 1  # on 2 shared cores, 1 intra-op thread ran these tiny steps 1.5-6x faster than 2

    @property
    def guidance_steps(self) -> int:
        return round(self.guidance_fraction * self.steps)
