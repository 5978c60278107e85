"""Sampling cost of router-live Ortho-Hydra against the base model and a merged plain LoRA, and
load+patch cost against ComfyUI's own LoraLoaderModelOnly, measured side by side in one run.

MMDiT depth 8 (hidden 512), adapter on every attention and MLP Linear, r = 16, E = 4, 8 Euler
steps on a 64x64 latent (cfg 3, so batch 2 per model call).

    .venv/bin/python bench/apply.py [--rounds 3] [--depth 8] [--device cuda]

Targets: router-live <= 1.15x merged-LoRA sampling; load+patch <= 1.5x LoraLoaderModelOnly.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.models import routed_mmdit, sampling_parser
from bench.timing import environment, interleaved, report
from devkit.host import boot


def main() -> None:
    parser = sampling_parser(__doc__)
    parser.add_argument("--device", default="cpu")
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
    lib = library()
    torch.manual_seed(0)
    base, adapter = routed_mmdit(args.depth)
    uniform = torch.full((4,), 0.25)

    # the same adapter as a plain LoRA at the uniform gate: rank r, exact ΔW, in ComfyUI's key naming
    plain = {}
    for prefix, layer in adapter.layers.items():
        plain[f"{prefix}.lora_down.weight"] = layer.down.contiguous()
        plain[f"{prefix}.lora_up.weight"] = (torch.einsum("e,eor->or", uniform, layer.ups) * layer.scale).contiguous()
        plain[f"{prefix}.alpha"] = torch.tensor(float(layer.rank))
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
           "sampling": f"{args.steps} euler steps, cfg 3, latent {args.latent}x{args.latent}"}
    report(f"apply_{args.device.split(':')[0]}", rows, env)
    live_ratio = med["Ortho-Hydra router-live"] / med["merged plain LoRA (uniform gate)"]
    load_ratio = loads["Ortho-Hydra load+apply+patch"]["median_s"] / stock_s
    print(f"\nrouter-live / merged LoRA sampling = {live_ratio:.3f} (target <= 1.15): "
          f"{'PASS' if live_ratio <= 1.15 else 'FAIL'}")
    print(f"load+patch / LoraLoaderModelOnly = {load_ratio:.3f} (target <= 1.5): "
          f"{'PASS' if load_ratio <= 1.5 else 'FAIL'}")
    print("(in the last two rows, the 'vs base' column is the ratio to LoraLoaderModelOnly)")


if __name__ == "__main__":
    main()
