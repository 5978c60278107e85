"""GPU check: Ortho-Hydra adapters under ComfyUI's dynamic VRAM (ModelPatcherDynamic, ComfyUI >= 0.33, CUDA only).

Run from the repository root on a CUDA machine, with the ComfyUI tree to check and the python of its venv
(comfy-aimdo installed, as ComfyUI's requirements.txt pins it):

    cd comfyui-ortho-hydra && OH_COMFYUI=/path/to/ComfyUI /path/to/venv/bin/python -m scripts.gpu_checks.dynamic_vram

A tiny SD3-style MMDiT is loaded by ComfyUI's own loader with dynamic VRAM turned on as main.py turns it on, and a
router-live adapter and a pinned one (folded into weight patches, which the dynamic loader applies at cast time) are
applied and sampled.  For each:

1. dynamic: the model and every additional model it loads with are dynamic patchers, so ``load_models_gpu`` frees
   memory the all-dynamic way;
2. placed: after ComfyUI's load, every adapter tensor is on the GPU and counted in its patcher's loaded size;
3. exact: each adapted Linear's output in the sample's first model call equals the fp64 reference: W0·x + b + Δ(x)
   router-live, (W0 + ΔW)·x + b pinned;
4. same sample: the sample equals that of the same adapter on a legacy (non-dynamic) copy of the model on the same
   GPU, and differs from the base model's sample by far more;
5. not copied per call: while sampling, no adapter tensor is copied host -> GPU more than once (the load).

``--dry-run`` runs the same on the CPU with the legacy patcher (checks 1, 2 and 5 are reported as skipped there), to
check the script where there is no GPU.  Exit status 0 when every check passed.
"""

from __future__ import annotations

import argparse
import inspect
import sys

TARGETS = r"(attn_qkv|mlp_fc1)$"
ROUTER = dict(mode="live", expert=0, weights="", renormalize=True, temperature=1.0, top_k=1, group="all",
              block_start=-1, block_end=-1, layer_regex="", start_percent=0.0, end_percent=1.0, keyframes="",
              interpolation="step", side="both", profile=None)
PINNED_EXPERT = 1
TOL = 1e-4  # relative to the largest entry: fp32 GEMMs (TF32 off) against fp64


class Report:
    def __init__(self) -> None:
        self.failed = 0

    def check(self, name: str, ok: bool | None, detail: str) -> None:
        status = "SKIP" if ok is None else "PASS" if ok else "FAIL"
        self.failed += ok is False
        print(f"{status} {name}: {detail}", flush=True)


class FirstCall:
    """Forward hook keeping a module's input, output and router σ of its first call, in fp64 on the CPU."""

    def __init__(self, store: dict, path: str, state) -> None:
        self.store, self.path, self.state = store, path, state

    def __call__(self, module, inputs, output) -> None:
        if self.path not in self.store:
            sigma = self.state.sigma
            self.store[self.path] = (inputs[0].detach().double().cpu(), output.detach().double().cpu(),
                                     None if sigma is None else sigma.detach().double().cpu())


def host_copies(adapter_shapes: set[tuple[int, ...]]):
    """A dispatch mode counting host -> accelerator copies of tensors shaped like an adapter tensor."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    class HostCopies(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func in (torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default):
                source = args[1] if func is torch.ops.aten.copy_.default else args[0]
                if (isinstance(out, torch.Tensor) and source.device.type == "cpu" and out.device.type != "cpu"
                        and tuple(source.shape) in adapter_shapes):
                    self.count += 1
            return out

    return HostCopies()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="run on the CPU with the legacy patcher")
    parser.add_argument("--steps", type=int, default=4, help="sampling steps")
    args = parser.parse_args(argv)
    if args.dry_run:
        from devkit.host import boot

        boot(cpu=True)
    else:
        from devkit.dynamic_vram import boot_dynamic

        if not boot_dynamic(cpu=False):
            print("dynamic VRAM did not start: it needs CUDA, comfy-aimdo and ComfyUI >= 0.33", file=sys.stderr)
            return 2
    import comfy.model_management as mm
    import comfy.sd
    import torch
    import torch.nn.functional as F

    from devkit import tiny_dit
    from devkit.adapters import lora_weights, randomized_adapter
    from devkit.host import import_pack

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    pack = import_pack()
    apply, hooks = pack.comfy_glue.patcher.apply_adapter, pack.comfy_glue.hooks
    report = Report()
    on_gpu = not args.dry_run

    def load(dynamic: bool):
        state = tiny_dit.mmdit_state_dict(depth=2, seed=0)
        takes = "disable_dynamic" in inspect.signature(comfy.sd.load_diffusion_model_state_dict).parameters
        return comfy.sd.load_diffusion_model_state_dict(state, **({"disable_dynamic": not dynamic} if takes else {}))

    def sample(model):
        return tiny_dit.sample(model, torch.zeros(1, 16, 16, 16), tiny_dit.mmdit_conditioning(seed=1),
                               tiny_dit.mmdit_conditioning(seed=2), steps=args.steps)

    model, legacy = load(dynamic=on_gpu), load(dynamic=False)
    report.check("model is dynamic", model.is_dynamic() if on_gpu else None,
                 f"{type(model).__name__} on {model.load_device}")
    raw = {k: v.double() for k, v in tiny_dit.mmdit_state_dict(depth=2, seed=0).items()}
    live = randomized_adapter(lora_weights(model, pattern=TARGETS), rank=4, experts=3, seed=0)
    pinned = pack.nodes.router.OrthoHydraRouter.execute(live, **{**ROUTER, "mode": "pin",
                                                                 "expert": PINNED_EXPERT}).args[0]
    base_sample = sample(legacy)
    mm.unload_all_models()
    for name, adapter in (("router-live", live), ("pinned", pinned)):
        patched, plan = apply(model, adapter)
        applied = pack.comfy_glue.patcher.applied_adapters(patched)[-1]
        nested = patched.get_nested_additional_models()
        report.check(f"{name}: all dynamic", all(m.is_dynamic() for m in [patched, *nested]) if on_gpu else None,
                     ", ".join(type(m).__name__ for m in [patched, *nested]))
        mm.load_models_gpu([patched, *nested])
        params = [p for m in nested for p in m.model.parameters()]
        placed = all(p.device == patched.load_device for p in params) and all(
            m.loaded_size() == m.model_size() for m in nested)
        report.check(f"{name}: placed", placed if on_gpu and params else None,
                     f"{len(params)} adapter tensors, {sum(m.loaded_size() for m in nested)} bytes counted as loaded")

        probe, seen = patched.clone(), {}
        for target in plan.targets.values():  # installed after ours: they see the adapted output
            hooks.install_forward_hook(probe, target.module, FirstCall(seen, target.module, applied.state))
        shapes = {tuple(p.shape) for p in params}
        with host_copies(shapes) as copies:
            out = sample(probe)
        mm.unload_all_models()
        worst = 0.0
        for target in plan.targets.values():
            (leg,) = target.legs
            layer = leg.layer
            x, got, sigma = seen[target.module]
            key = target.module.removeprefix("diffusion_model.")
            weight, bias = raw[f"{key}.weight"], raw[f"{key}.bias"]
            if adapter is pinned:
                gate = torch.zeros(layer.num_experts)
                gate[PINNED_EXPERT] = 1.0
                up, down = layer.factors(gate)
                expected = F.linear(x, weight + up.double() @ down.double(), bias)
            else:
                expected = F.linear(x, weight, bias) + layer.delta(x, sigma=sigma)
            worst = max(worst, float((got - expected).abs().max() / expected.abs().max()))
        report.check(f"{name}: fp64 reference", worst <= TOL and len(seen) == len(plan.targets),
                     f"{len(seen)} Linears, worst relative error {worst:.2e} (tolerance {TOL:.0e})")

        reference = sample(apply(legacy, adapter)[0])
        mm.unload_all_models()
        scale = float(reference.abs().max())
        gap, effect = float((out - reference).abs().max()) / scale, float((reference - base_sample).abs().max()) / scale
        report.check(f"{name}: same sample as legacy", gap <= TOL and effect > 100 * TOL,
                     f"relative gap {gap:.2e}, adapter effect {effect:.2e}")
        notices = {id(h.weights.notice): h.weights.notice for path, d in patched.object_patches.items()
                   if path.endswith("._forward_hooks") for h in d.values()
                   if isinstance(h, pack.comfy_glue.patcher.RoutedHook)}
        moves = sum(notice.moves for notice in notices.values())  # PlacedModule.ensure_on's one-time moves
        report.check(f"{name}: not copied per call", copies.count <= len(params) and moves == 0 if on_gpu else None,
                     f"{copies.count} host->GPU copies of adapter-shaped tensors over {args.steps} steps "
                     f"({len(params)} tensors), {moves} one-time moves")
    print(f"{'all checks passed' if not report.failed else f'{report.failed} checks failed'}", flush=True)
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
