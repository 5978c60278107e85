"""ExpertLayer.delta against a plain LoRA delta of the same rank and the base Linear.

DiT-sized: in = out = 2048, r = 32, E = 4, L = 4096, B = 2, fp32.  Target: routed delta
<= 1.3x the plain LoRA delta (the extra work is one router GEMV and an E-way mix of ups).

    .venv/bin/python -m bench.core [--device cuda] [--rounds 7]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from bench.timing import environment, interleaved, report
from ortho_hydra import OrthoHydraLinear, distill


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--tokens", type=int, default=4096)
    args = parser.parse_args()
    torch.manual_seed(0)
    dim, rank, experts, batch = args.dim, 32, 4, 2
    dev = args.device
    weight = torch.randn(dim, dim) / dim**0.5
    trainable = OrthoHydraLinear(weight, rank=rank, num_experts=experts, seed=0)
    with torch.no_grad():
        trainable.cayley_seeds.normal_(0, 0.1)
        trainable.lam.normal_(0, 1.0)
        trainable.router.weight.normal_(0, 1.0)
    layer = distill(trainable).to(dev)
    w = weight.to(dev)
    a = torch.randn(rank, dim, device=dev) / dim**0.5
    b = torch.randn(dim, rank, device=dev) / rank**0.5  # alpha/r pre-folded: the fastest plain LoRA form
    x = torch.randn(batch, args.tokens, dim, device=dev)

    with torch.inference_mode():
        results = interleaved({
            "base Linear": lambda: F.linear(x, w),
            "plain LoRA delta": lambda: (x @ a.T) @ b.T,
            "ExpertLayer.delta": lambda: layer.delta(x),
        }, rounds=args.rounds, device=dev)
    lora = results["plain LoRA delta"]["median_s"]
    rows = [{"case": name, "median ms": 1e3 * r["median_s"], "min ms": 1e3 * r["min_s"],
             "vs plain LoRA delta": r["median_s"] / lora} for name, r in results.items()]
    report(f"core_{dev.split(':')[0]}", rows, {**environment(dev), "shape": f"B={batch} L={args.tokens} "
                                               f"in=out={dim} r={rank} E={experts} fp32"})
    ratio = results["ExpertLayer.delta"]["median_s"] / lora
    print(f"\nrouted / plain LoRA delta = {ratio:.3f} (target <= 1.3): {'PASS' if ratio <= 1.3 else 'FAIL'}")


if __name__ == "__main__":
    main()
