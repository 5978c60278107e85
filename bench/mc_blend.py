"""What the stochastic blends cost at sampling time, against router-live, side by side in one run.

MMDiT depth 8 (hidden 512), adapter on every attention and MLP Linear (r = 16, E = 4), 8 Euler steps on a 64x64
latent, cfg 3: router-live, an OMCD blend and an MC-dropout blend of all four experts (fresh masks per element,
per layer, per call, as the method requires).

    .venv/bin/python -m bench.mc_blend [--rounds 3] [--depth 8]

Target: OMCD <= 1.05x router-live.
"""

from __future__ import annotations

from bench.models import routed_mmdit, sampling_parser, sampling_ratios, stochastic_blend_model
from bench.timing import environment, report
from devkit.host import boot


def main() -> None:
    args = sampling_parser(__doc__).parse_args()
    boot(cpu=True)

    from devkit.host import import_pack

    base, adapter = routed_mmdit(args.depth)
    models = {
        "router-live": import_pack().nodes.patcher.apply_adapter(base, adapter)[0],
        "OMCD blend": stochastic_blend_model(base, adapter, "omcd"),
        "MC-dropout blend": stochastic_blend_model(base, adapter, "mc_dropout"),
    }
    results, rows = sampling_ratios(models, "router-live", args, "vs router-live")
    report("mc_blend_cpu", rows, {**environment("cpu"), "model": f"MMDiT depth {args.depth}",
                                  "sampling": f"{args.steps} steps, latent {args.latent}, cfg 3"})
    ratio = results["OMCD blend"]["ratio"]
    print(f"\nOMCD / router-live = {ratio:.3f} (target <= 1.05): {'PASS' if ratio <= 1.05 else 'FAIL'}")


if __name__ == "__main__":
    main()
