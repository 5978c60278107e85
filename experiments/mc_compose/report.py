"""The composition study's numbers: bootstrap intervals, the verdict rule and the table."""

from __future__ import annotations

import torch


def bootstrap(hits: torch.Tensor, resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """(mean, 2.5 %, 97.5 %) of a success rate."""
    values = hits.double()
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(values), (resamples, len(values)), generator=gen)
    means = values[idx].mean(1)
    return float(values.mean()), float(means.quantile(0.025)), float(means.quantile(0.975))


def verdict(results: dict) -> str:
    """OMCD helps if its 'both' success interval lies above the direct blend's."""
    omcd, direct = results["OMCD"]["both"], results["direct blend"]["both"]
    if omcd[1] > direct[2]:
        return (f"**OMCD helps here**: both parts {omcd[0]:.2f} [{omcd[1]:.2f}, {omcd[2]:.2f}] against the direct "
                f"blend's {direct[0]:.2f} [{direct[1]:.2f}, {direct[2]:.2f}].")
    return (f"**OMCD does not help here**, as the paper reports: both parts {omcd[0]:.2f} [{omcd[1]:.2f}, "
            f"{omcd[2]:.2f}] against the direct blend's {direct[0]:.2f} [{direct[1]:.2f}, {direct[2]:.2f}].")


def report(results: dict, samples: int, steps: int, minutes: float, env: dict) -> str:
    lines = ["# Composing two styles: direct blend, MC dropout, OMCD", "",
             f"One label-guided ortho_init adapter ({steps} steps); 'warm' (palette) + 'dots' (texture), {samples} "
             "samples per method; 95 % bootstrap intervals.", "",
             "| method | palette is warm | texture is dots | both |", "|---|---|---|---|"]
    for name, parts in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{parts[p][0]:.2f} [{parts[p][1]:.2f}, {parts[p][2]:.2f}]"
                                                   for p in ("palette", "texture", "both")) + " |")
    lines += ["", verdict(results), "", f"Wall time {minutes:.1f} min; {env}.", ""]
    return "\n".join(lines)
