"""Per-step expert turbo students in the reference trainer's layout, with random heads, for tests and demos.

The layout (see ``ortho_hydra.step_experts``): per prefix a shared ``lora_down.weight`` (r, in), K
``lora_ups.<k>.weight`` (out, r) and an ``alpha``; the header stamps the kind, K, the student's steps, rank and alpha.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from safetensors.torch import save_file


def step_expert_tensors(shapes: Mapping[str, tuple[int, int]], num_heads: int, rank: int, alpha: float,
                        seed: int = 0, up_scale: float = 0.05) -> dict[str, torch.Tensor]:
    """``shapes``: {prefix: (out, in)}.  Each head's up is distinct, so a wrong head shows in any output."""
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for prefix, (out, inn) in shapes.items():
        tensors[f"{prefix}.lora_down.weight"] = torch.randn(rank, inn, generator=g) / inn ** 0.5
        for k in range(num_heads):
            tensors[f"{prefix}.lora_ups.{k}.weight"] = torch.randn(out, rank, generator=g) * up_scale
        tensors[f"{prefix}.alpha"] = torch.tensor(float(alpha))
    return tensors


def step_expert_metadata(num_heads: int, rank: int, alpha: float, steps: int | None = None) -> dict[str, str]:
    return {"ss_turbo_per_step_expert": "1", "ss_turbo_step_expert_K": str(num_heads),
            "ss_turbo_student_steps": str(num_heads if steps is None else steps),
            "ss_turbo_student_rank": str(rank), "ss_turbo_student_alpha": str(alpha),
            "ss_turbo_objective": "dpdmd"}


def write_step_expert_file(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor],
                           metadata: Mapping[str, str], dtype: torch.dtype = torch.bfloat16) -> None:
    """As the trainer saves: every tensor in ``dtype`` (bf16 by default)."""
    save_file({k: v.to(dtype).contiguous() for k, v in tensors.items()}, os.fspath(path), metadata=dict(metadata))
