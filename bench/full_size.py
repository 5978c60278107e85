"""Router-live at real size: Cosmos-Predict2 2B (Anima's architecture: 28 blocks, width 2048) on the CPU.

Random bf16 weights (ComfyUI's own MiniTrainDIT through its model config), an adapter with experts (E=4, r=16)
on every attention and MLP Linear of every block, named as ComfyUI maps them, checked for full coverage.  One
denoise step (one model call, cfg 1) on a 1 x 16 x 1 x 64 x 64 latent (1024 image tokens, a 512 px image) and 32
text tokens; base and
router-live interleaved over rounds, ratio of medians.  The adapter's extra work per Linear is a rank-16 down
GEMM, a 4-way gate and the rank-16 up GEMMs: about (E + 1)·r / min(in, out) ≈ 4 % of a 2048-wide Linear's FLOPs,
so ~1.03x is the physical floor.

``--omcd`` adds a third model, the same adapter under an OMCD blend of its four experts (fresh 16-bit draws per
element, per layer, per call), timed against router-live in the same rounds: the real-width counterpart of
``bench/mc_blend.py``, whose depth-8 toy model is only 512 wide.

    .venv/bin/python -m bench.full_size --rounds 3        # ~4 GB of bf16 weights; a few minutes on 2 cores
    .venv/bin/python -m bench.full_size --rounds 4 --omcd
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

ROUTED = r"blocks_\d+_(self_attn|cross_attn)_(q|k|v|output)_proj$|blocks_\d+_mlp_layer[12]$"


def random_adapter(model, rank: int, experts: int):
    """Random routed layers for every matching Linear, from the key map and live shapes (no weight copies)."""
    import re

    import comfy.lora
    import torch

    from devkit.host import import_pack
    from ortho_hydra import Adapter, ExpertLayer, RouterSpec

    shapes = import_pack().nodes.key_space.weight_shapes(model)
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    g = torch.Generator().manual_seed(0)
    layers = {}
    for name, key in sorted(key_map.items()):
        if not (isinstance(key, str) and name.startswith("lora_unet_") and re.search(ROUTED, name)):
            continue
        out_f, in_f = shapes[key]
        layers[name] = ExpertLayer(name=name, down=torch.randn(rank, in_f, generator=g) / in_f ** 0.5,
                                   ups=0.01 * torch.randn(experts, out_f, rank, generator=g),
                                   router_weight=torch.randn(experts, rank, generator=g),
                                   router_bias=torch.zeros(experts), alpha=float(rank),
                                   router=RouterSpec(source="input"))
    return Adapter(layers=layers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--blocks", type=int, default=28)
    parser.add_argument("--channels", type=int, default=2048)
    parser.add_argument("--latent", type=int, default=64, help="latent side: 64 -> 32 x 32 = 1024 image tokens")
    parser.add_argument("--omcd", action="store_true", help="also time an OMCD blend against router-live")
    args = parser.parse_args()
    from devkit.host import boot

    boot(cpu=True)
    import comfy.model_management as mm
    import torch

    from bench.models import stochastic_blend_model
    from bench.timing import environment, paired_ratios, round_ratio
    from devkit import tiny_dit
    from devkit.host import import_pack

    started = time.perf_counter()
    base = tiny_dit.load_cosmos(num_blocks=args.blocks, seed=0, channels=args.channels, dtype=torch.bfloat16)
    params = sum(p.numel() for p in base.model.parameters())
    adapter = random_adapter(base, rank=16, experts=4)
    live, plan = import_pack().nodes.patcher.apply_adapter(base, adapter)
    assert not plan.unmatched and len(plan.targets) == len(adapter.layers), plan.coverage()
    build = time.perf_counter() - started
    print(f"built {params / 1e9:.2f} B parameters, {plan.coverage()} ({build:.0f} s)", flush=True)
    latent = torch.zeros(1, 16, 1, args.latent, args.latent)
    pos, neg = tiny_dit.cosmos_conditioning(tokens=32, seed=1), tiny_dit.cosmos_conditioning(tokens=32, seed=2)

    def step(model) -> float:
        mm.load_models_gpu([model])
        start = time.perf_counter()
        tiny_dit.sample(model, latent, pos, neg, steps=1, cfg=1.0)
        return time.perf_counter() - start

    models = {"base": base, "router-live": live}
    if args.omcd:
        models["OMCD blend"] = stochastic_blend_model(base, adapter, "omcd")
    for model in models.values():
        step(model)  # warm-up
    results = paired_ratios({name: (lambda m=model: step(m)) for name, model in models.items()}, "base",
                            args.rounds)
    if args.omcd:
        omcd = results["OMCD blend"]["vs_router_live"] = round_ratio(results, "OMCD blend", "router-live")
        print(f"OMCD / router-live at width {args.channels} = {omcd['ratio']:.3f} (per round {omcd['ratio_min']:.3f}"
              f"..{omcd['ratio_max']:.3f}; target <= 1.05)", flush=True)
    out = {"parameters_billion": params / 1e9, "routed_linears": len(adapter.layers), "rounds": args.rounds,
           "latent": list(latent.shape), "build_seconds": build,
           "results": results, "environment": environment()}
    (ROOT / "bench" / "out").mkdir(parents=True, exist_ok=True)
    (ROOT / "bench" / "out" / "full_size.json").write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
