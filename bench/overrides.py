"""What router overrides cost at sampling time, side by side in one run.

MMDiT depth 8 (hidden 512), adapter on every attention and MLP Linear (r = 16, E = 4), 8 Euler steps
on a 64x64 latent, cfg 3.  Cases: the base model; the adapter with every expert pinned (folded into the
weights: no hooks); router-live; and a schedule (live for 40% of the steps, then expert 2 pinned), which
stays in the hooks and switches from σ without re-patching.

    .venv/bin/python -m bench.overrides [--rounds 3] [--depth 8]
    .venv/bin/python -m bench.overrides --profile [--repeats 5]

Target: fully folded <= 1.02x the base model.

``--profile`` runs torch.profiler instead of the timing rounds: one sampling step (cfg 3) of the base and of the
folded model, interleaved (order rotated), ``--repeats`` times each, and prints each op's self CPU time summed
over the repeats, base against folded, with each op's share of its model's total (on a shared machine the shares
are the figures to compare; absolute times drift between runs).
"""

from __future__ import annotations

import dataclasses

from bench.models import routed_mmdit, sampling_parser, sampling_ratios
from bench.timing import environment, report
from devkit.host import boot


def profile_step(models: dict, repeats: int, latent_side: int) -> dict[str, dict[str, tuple[float, int]]]:
    """``{model: {op: (self CPU µs, calls)}}`` for one sampling step per repeat, models interleaved (order rotated
    every repeat)."""
    from collections import defaultdict

    import comfy.model_management as mm
    import torch
    from torch.profiler import ProfilerActivity, profile

    from devkit import tiny_dit

    latent = torch.zeros(1, 16, latent_side, latent_side)
    pos, neg = tiny_dit.mmdit_conditioning(seed=1), tiny_dit.mmdit_conditioning(seed=2)
    totals = {name: defaultdict(lambda: [0.0, 0]) for name in models}
    for model in models.values():  # warm-up
        mm.load_models_gpu([model])
        tiny_dit.sample(model, latent, pos, neg, steps=1, cfg=3.0)
    names = list(models)
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:  # order rotated, as in the timing rounds
            model = models[name]
            mm.load_models_gpu([model])  # patching outside the profile, as the timing rounds do
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                tiny_dit.sample(model, latent, pos, neg, steps=1, cfg=3.0)
            for event in prof.key_averages():
                totals[name][event.key][0] += event.self_cpu_time_total
                totals[name][event.key][1] += event.count
    return {name: {op: (us, calls) for op, (us, calls) in ops.items()} for name, ops in totals.items()}


def profile_rows(totals: dict[str, dict[str, tuple[float, int]]], base: str, other: str,
                 top: int = 15) -> list[dict]:
    """The ``top`` ops by self CPU time in either model: ms, share of that model's total, calls; then the rest."""
    sums = {name: sum(us for us, _ in ops.values()) for name, ops in totals.items()}
    ops = sorted(set(totals[base]) | set(totals[other]),
                 key=lambda op: -max(totals[base].get(op, (0, 0))[0], totals[other].get(op, (0, 0))[0]))

    def row(label, b_us, b_calls, o_us, o_calls):
        return {"op": label, f"{base} ms": b_us / 1e3, f"{base} share %": 100 * b_us / sums[base],
                f"{other} ms": o_us / 1e3, f"{other} share %": 100 * o_us / sums[other],
                "Δ ms": (o_us - b_us) / 1e3, "calls (base / other)": f"{b_calls} / {o_calls}"}

    rows = [row(op, *totals[base].get(op, (0.0, 0)), *totals[other].get(op, (0.0, 0))) for op in ops[:top]]
    rest = [(sum(totals[n].get(op, (0.0, 0))[0] for op in ops[top:]),
             sum(totals[n].get(op, (0.0, 0))[1] for op in ops[top:])) for n in (base, other)]
    rows.append(row(f"({len(ops) - top} other ops)", *rest[0], *rest[1]))
    rows.append(row("total", sums[base], sum(c for _, c in totals[base].values()),
                    sums[other], sum(c for _, c in totals[other].values())))
    return rows


def main() -> None:
    parser = sampling_parser(__doc__)
    parser.add_argument("--profile", action="store_true", help="per-op self CPU time, base vs folded, one step")
    parser.add_argument("--repeats", type=int, default=5, help="profiled steps per model (with --profile)")
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
    if args.profile:
        names = ("base", "folded")
        totals = profile_step(dict(zip(names, (base, folded), strict=True)), args.repeats, args.latent)
        report("overrides_profile_cpu", profile_rows(totals, *names),
               {**environment("cpu"), "model": f"MMDiT depth {args.depth}",
                "profiled": f"1 step x {args.repeats} per model, latent {args.latent}, cfg 3"})
        return
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
