"""What router telemetry costs: router-live sampling with and without the trace recorder, side by side.

MMDiT depth 8 (hidden 512), 61 routed Linears (r = 16, E = 4), 8 Euler steps on a 64x64 latent, cfg 3.
The recorder is what OrthoHydraRouterTrace switches on.

    .venv/bin/python -m bench.trace [--rounds 3]

Target: <= 1.05x router-live sampling without the trace.
"""

from __future__ import annotations

import contextlib
import time

from bench.models import routed_mmdit, sampling_parser
from bench.timing import environment, paired_ratios, report
from devkit.host import boot


def main() -> None:
    parser = sampling_parser(__doc__)
    args = parser.parse_args()
    boot(cpu=True)
    import comfy.model_management as mm
    import torch

    from devkit import tiny_dit
    from devkit.host import import_pack

    pack = import_pack()
    patcher, recording = pack.nodes.patcher, pack.nodes.gate_recording.recording
    base, adapter = routed_mmdit(args.depth)
    live, _ = patcher.apply_adapter(base, adapter)
    latent = torch.zeros(1, 16, args.latent, args.latent)
    pos, neg = tiny_dit.mmdit_conditioning(seed=1), tiny_dit.mmdit_conditioning(seed=2)

    def timed(trace: bool) -> float:
        mm.load_models_gpu([live])
        with recording(live) if trace else contextlib.nullcontext():
            start = time.perf_counter()
            tiny_dit.sample(live, latent, pos, neg, steps=args.steps, cfg=3.0)
            return time.perf_counter() - start

    timed(False), timed(True)
    results = paired_ratios({"router-live": lambda: timed(False),
                             "router-live + trace recording": lambda: timed(True)}, "router-live", args.rounds)
    rows = [{"case": k, "median s": r["median_s"], "vs untraced (median of per-round ratios)": r["ratio"],
             "ratio range": f"{r['ratio_min']:.3f}..{r['ratio_max']:.3f}"} for k, r in results.items()]
    # what recording adds where it happens, free of whole-run drift: one hook call on one real layer input
    target = next(iter(patcher.applied_adapters(live)[-1].adapter.layers))
    module_path = patcher.make_plan(base, adapter).targets
    path = next(t.module for t in module_path.values() if t.legs[0].layer.name == target)
    mm.load_models_gpu([live])
    module = live.model.get_submodule(path)
    hook = next(h for h in module._forward_hooks.values() if isinstance(h, patcher.RoutedHook))
    x = torch.randn(2, (args.latent // 2) ** 2 + 8, module.in_features)
    out = module(x)

    def hook_calls(trace: bool, n: int = 200) -> float:
        with recording(live) if trace else contextlib.nullcontext():
            start = time.perf_counter()
            for _ in range(n):
                hook(module, (x,), out)
            return (time.perf_counter() - start) / n

    hook_calls(False), hook_calls(True)
    per_hook = paired_ratios({"hook call": lambda: hook_calls(False), "hook call + record": lambda: hook_calls(True)},
                             "hook call", 10)
    rows += [{"case": k, "median s": r["median_s"], "vs untraced (median of per-round ratios)": r["ratio"],
              "ratio range": f"{r['ratio_min']:.3f}..{r['ratio_max']:.3f}"} for k, r in per_hook.items()]
    report("trace_cpu", rows, {**environment("cpu"), "model": f"MMDiT depth {args.depth}"})
    ratio = results["router-live + trace recording"]["ratio"]
    print(f"\ntraced / untraced sampling = {ratio:.3f} (target <= 1.05): {'PASS' if ratio <= 1.05 else 'FAIL'}")
    added = per_hook["hook call + record"]["median_s"] - per_hook["hook call"]["median_s"]
    print(f"recording adds {added * 1e6:.1f} us per hook call ({per_hook['hook call + record']['ratio']:.3f}x the "
          "hook), i.e. this much of each routed Linear's work")


if __name__ == "__main__":
    main()
