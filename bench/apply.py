"""Sampling cost of router-live Ortho-Hydra against the base model and a merged plain LoRA, and
load+patch cost against ComfyUI's own LoraLoaderModelOnly, measured side by side in one run.

MMDiT depth 8 (hidden 512), adapter on every attention and MLP Linear, r = 16, E = 4, 8 Euler
steps on a 64x64 latent (cfg 3, so batch 2 per model call).

    .venv/bin/python -m bench.apply [--rounds 3] [--depth 8] [--device cuda] [--compile [--sdpa]]

--compile also times both compiled the way ComfyUI's TorchCompileModel node does (inductor), as paired per-round
ratios after one warm-up run each.  On the CPU, ComfyUI's default attention graph-breaks torch.compile on a
free-memory query (and recompiles as free RAM changes); --sdpa uses its PyTorch SDPA attention, the GPU default.

Targets: router-live <= 1.15x merged-LoRA sampling; load+patch <= 1.5x LoraLoaderModelOnly.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from bench.models import routed_mmdit, sampling_parser
from bench.timing import environment, interleaved, paired_ratios, report
from devkit.host import boot


def main() -> None:
    parser = sampling_parser(__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", action="store_true", help="also time both compiled (inductor)")
    parser.add_argument("--sdpa", action="store_true", help="ComfyUI's PyTorch SDPA attention, for every case")
    args = parser.parse_args()
    os.environ["OH_DEVICE"] = args.device
    boot(cpu=args.device == "cpu")
    import comfy.model_management as mm
    import torch
    from safetensors.torch import save_file

    import nodes as comfy_nodes
    from devkit import tiny_dit
    from devkit.adapters import library
    from devkit.host import import_pack

    pack = import_pack()
    patcher = pack.nodes.patcher
    if args.sdpa:
        import comfy.ldm.modules.attention as attention
        import comfy.ldm.modules.diffusionmodules.mmdit as mmdit

        mmdit.optimized_attention = attention.attention_pytorch
    lib = library()
    from ortho_hydra.lora_dict import lora_state_dict
    torch.manual_seed(0)
    base, adapter = routed_mmdit(args.depth)
    uniform = torch.full((4,), 0.25)

    # the same adapter as a plain LoRA at the uniform gate: rank r, exact ΔW, in ComfyUI's key naming
    plain = lora_state_dict({prefix: layer.factors(uniform) for prefix, layer in adapter.layers.items()})
    tmp = Path(tempfile.mkdtemp(prefix="oh_bench_"))
    moe_path, lora_path = tmp / "bench_moe.safetensors", tmp / "bench_lora.safetensors"
    lib.save(adapter, moe_path)
    save_file(plain, str(lora_path))
    import folder_paths

    folder_paths.add_model_folder_path("loras", str(tmp))

    merged = comfy_nodes.LoraLoaderModelOnly().load_lora_model_only(base, lora_path.name, 1.0)[0]
    live, plan = patcher.apply_adapter(base, adapter, 1.0)
    print(f"adapter: {len(adapter.layers)} routed Linears, r=16, E=4; {plan.coverage()}")

    latent = torch.zeros(1, 16, args.latent, args.latent)
    pos, neg = tiny_dit.mmdit_conditioning(seed=1), tiny_dit.mmdit_conditioning(seed=2)

    def sampler(model):
        def run():
            mm.load_models_gpu([model])  # patching happens outside the timer below
            return tiny_dit.sample(model, latent, pos, neg, steps=args.steps, cfg=3.0)
        return run

    def timed_sampling(model):
        mm.load_models_gpu([model])
        start = time.perf_counter()
        tiny_dit.sample(model, latent, pos, neg, steps=args.steps, cfg=3.0)
        return time.perf_counter() - start

    for model in (base, merged, live):
        sampler(model)()  # warm-up
    sampling = {"base model": [], "merged plain LoRA (uniform gate)": [], "Ortho-Hydra router-live": []}
    for _ in range(args.rounds):
        for name, model in zip(sampling, (base, merged, live), strict=True):
            sampling[name].append(timed_sampling(model))
    import statistics

    med = {k: statistics.median(v) for k, v in sampling.items()}
    rows = [{"case": k, "median s": med[k], "vs merged LoRA": med[k] / med["merged plain LoRA (uniform gate)"],
             "vs base": med[k] / med["base model"]} for k in sampling]

    compiled_ratio = None
    if args.compile:
        compiled, compiles = compile_like_comfyui({"merged plain LoRA, compiled": merged,
                                                   "Ortho-Hydra router-live, compiled": live}, timed_sampling)
        from torch._dynamo.utils import counters

        settled = counters["frames"]["total"]
        paired = paired_ratios({name: (lambda m=model: timed_sampling(m)) for name, model in compiled.items()},
                               "merged plain LoRA, compiled", rounds=args.rounds)
        if counters["frames"]["total"] != settled:
            print(f"warning: {counters['frames']['total'] - settled} dynamo compiles while timing")
        compiled_ratio = paired["Ortho-Hydra router-live, compiled"]["ratio"]
        for name, r in paired.items():
            rows.append({"case": f"{name} ({compiles[name]} dynamo compiles)", "median s": r["median_s"],
                         "vs merged LoRA": r["ratio"], "vs base": r["median_s"] / med["base model"]})

    def ours():
        pack.nodes.adapter_files._cache.clear()  # a cold parse every time, like a first load
        model = patcher.apply_adapter(base, lib.load(moe_path), 1.0)[0]
        mm.load_models_gpu([model])
        mm.unload_all_models()

    def stock():
        model = comfy_nodes.LoraLoaderModelOnly().load_lora_model_only(base, lora_path.name, 1.0)[0]
        mm.load_models_gpu([model])
        mm.unload_all_models()

    loads = interleaved({"LoraLoaderModelOnly load+patch": stock, "Ortho-Hydra load+apply+patch": ours},
                        rounds=max(5, args.rounds), device=args.device)
    stock_s = loads["LoraLoaderModelOnly load+patch"]["median_s"]
    for name, r in loads.items():
        rows.append({"case": name, "median s": r["median_s"], "vs merged LoRA": float("nan"),
                     "vs base": r["median_s"] / stock_s})
    env = {**environment(args.device), "model": f"MMDiT depth {args.depth} hidden {64 * args.depth}",
           "sampling": f"{args.steps} euler steps, cfg 3, latent {args.latent}x{args.latent}",
           "attention": "sdpa" if args.sdpa else "comfy default"}
    name = f"apply_{args.device.split(':')[0]}" + ("_compile" if args.compile else "") + ("_sdpa" if args.sdpa else "")
    report(name, rows, env)
    live_ratio = med["Ortho-Hydra router-live"] / med["merged plain LoRA (uniform gate)"]
    load_ratio = loads["Ortho-Hydra load+apply+patch"]["median_s"] / stock_s
    print(f"\nrouter-live / merged LoRA sampling = {live_ratio:.3f} (target <= 1.15): "
          f"{'PASS' if live_ratio <= 1.15 else 'FAIL'}")
    if compiled_ratio is not None:
        print(f"compiled: router-live / merged LoRA sampling = {compiled_ratio:.3f} (eager: {live_ratio:.3f}); "
              "'vs base' of compiled rows is against the eager base model")
    print(f"load+patch / LoraLoaderModelOnly = {load_ratio:.3f} (target <= 1.5): "
          f"{'PASS' if load_ratio <= 1.5 else 'FAIL'}")
    print("(in the last two rows, the 'vs base' column is the ratio to LoraLoaderModelOnly)")


def compile_like_comfyui(models: dict, timed_sampling) -> tuple[dict, dict]:
    """Clones compiled as ComfyUI's TorchCompileModel node does, each warmed up (compiled) by one sampling run; also
    how many dynamo frame compilations each warm-up took."""
    from comfy_api.torch_helpers import set_torch_compile_wrapper
    from torch._dynamo.utils import counters

    compiled, compiles = {}, {}
    for name, model in models.items():
        compiled[name] = model.clone()
        set_torch_compile_wrapper(compiled[name], backend="inductor")
        before = counters["frames"]["total"]
        timed_sampling(compiled[name])
        compiles[name] = counters["frames"]["total"] - before
    return compiled, compiles


if __name__ == "__main__":
    main()
