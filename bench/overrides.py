"""What router overrides cost at sampling time, side by side in one run.

MMDiT depth 8 (hidden 512), adapter on every attention and MLP Linear (r = 16, E = 4), 8 Euler steps
on a 64x64 latent, cfg 3.  Cases: the base model; the adapter with every expert pinned (folded into the
weights: no hooks); router-live; and a schedule (live for 40% of the steps, then expert 2 pinned), which
stays in the hooks and switches from σ without re-patching.

    .venv/bin/python bench/overrides.py [--rounds 3] [--depth 8]

Target: fully folded <= 1.02x the base model.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.models import routed_mmdit, sampling_parser, sampling_ratios
from bench.timing import environment, report
from devkit.host import boot


def main() -> None:
    parser = sampling_parser(__doc__)
    args = parser.parse_args()
    boot(cpu=True)
    import torch

    from devkit.adapters import library
    from devkit.host import import_pack

    pack = import_pack()
    ov = library().overrides
    base, adapter = routed_mmdit(args.depth)
    stack = ov.OverrideStack(num_blocks=ov.count_blocks(list(adapter.layers)))
    pin = dataclasses.replace(adapter, override=stack.then(ov.Override((ov.Keyframe(0.0, ov.GateRule("pin", 1)),))))
    schedule = dataclasses.replace(adapter, override=stack.then(ov.Override(
        (ov.Keyframe(0.0, ov.GateRule("live")), ov.Keyframe(0.4, ov.GateRule("pin", 2))))))
    import tempfile

    import folder_paths

    import nodes as comfy_nodes

    folder_paths.add_model_folder_path("loras", tempfile.mkdtemp(), is_default=True)
    pack.nodes.bake.OrthoHydraBakeLoRA.execute(base, pin, "bench_pinned")  # the same ΔW as a standard LoRA file
    stock = comfy_nodes.LoraLoaderModelOnly().load_lora_model_only(base, "bench_pinned.safetensors", 1.0)[0]
    fresh = base.clone()  # control: every Linear weight a fresh copy of itself, same values, no ComfyUI patching
    for name, module in fresh.model.diffusion_model.named_modules():
        if isinstance(module, torch.nn.Linear):
            key = f"diffusion_model.{name}.weight"
            fresh.add_object_patch(key, torch.nn.Parameter(module.weight.detach().clone(), requires_grad=False))
    folded = pack.nodes.patcher.apply_adapter(base, pin)[0]
    in_place = folded.clone()
    in_place.weight_inplace_update = True  # ComfyUI writes the patched values into the original storage
    models = {
        "base model": base,
        "base, every Linear weight a fresh copy (control)": fresh,
        "pinned, folded into weights": folded,
        "pinned, folded in place (original storage)": in_place,
        "same ΔW via LoraLoaderModelOnly": stock,
        "router-live": pack.nodes.patcher.apply_adapter(base, adapter)[0],
        "scheduled (live 40%, then pin)": pack.nodes.patcher.apply_adapter(base, schedule)[0],
    }
    results, rows = sampling_ratios(models, "base model", args, "vs base (median of per-round ratios)")
    report("overrides_cpu", rows, {**environment("cpu"), "model": f"MMDiT depth {args.depth}",
                                   "sampling": f"{args.steps} steps, latent {args.latent}, cfg 3"})
    ratio = results["pinned, folded into weights"]["ratio"]
    stock_ratio = results["same ΔW via LoraLoaderModelOnly"]["ratio"]
    print(f"\nfolded / base = {ratio:.3f} (target <= 1.02): {'PASS' if ratio <= 1.02 else 'FAIL'}; "
          f"ComfyUI's own LoRA patch of the same ΔW / base = {stock_ratio:.3f}")


if __name__ == "__main__":
    main()
