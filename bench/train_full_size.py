"""Training at real size: memory per phase and seconds per step, ours (checkpointing off / on) beside ComfyUI's
TrainLoraNode at the same rank.

Cosmos-Predict2 2B (Anima's architecture: 28 blocks, width 2048), random bf16 weights built through ComfyUI's own
classes, loaded inside ``torch.inference_mode()`` and then by ``load_models_gpu``, as ComfyUI's executor loads a model
a sampler has used.  One latent (512 px: 1 x 16 x 1 x 64 x 64, 1,024 image tokens), 32 text tokens, batch 1, PyTorch
attention (ComfyUI's default on NVIDIA).  Ours: E 4, r 16 on the 280 attention and MLP Linears, the node's other
defaults (bf16 autocast, fp32 adapter, router calibration).  TrainLoraNode: LoRA r 16 on every weight (it has no target
choice), its defaults (bf16), two copies of the latent (ComfyUI 0.3.75's node sets its ``multi_res`` flag only for two
latents or more; at batch 1 each step still trains on one).

Each configuration runs in its own process, one after another.  Phases: setup (from the call to the calibration pass,
or to TrainLoraNode's first step), calibration (ours only), steps (all of them, the first included: the optimizer's
state is allocated there).  Memory is the phase's peak minus the resident memory with the model loaded, taken just
before the trainer is called:

* CPU: the kernel's high-water mark of resident memory (``VmHWM``), reset at each phase boundary by writing 5 to
  ``/proc/self/clear_refs``; glibc maps every block above 64 KiB on its own (``MALLOC_MMAP_THRESHOLD_``), so a freed
  tensor leaves the resident set at once and the mark follows live memory.
* GPU (``--device cuda``): ``torch.cuda.max_memory_allocated``, reset at each boundary, minus ``memory_allocated``
  with the model loaded on the GPU.

On a CPU without bf16 GEMM kernels (below AVX-512, as the 2-core machine's EPYC; PyTorch then falls back to loops
at 0.2-8 GFLOP/s, against ~25 in fp32 there, and its attention backward runs 5x slower in bf16) every bf16 matrix
product and the attention backward are computed in fp32 and rounded back (``--bf16-gemm``): stored tensors stay
bf16, as on a GPU, and each such op briefly holds fp32 copies of its operands and result, whose largest size the JSON
reports (``gemm_upcast_transient_gib``): a phase's peak can exceed a native bf16 run's by at most that.

Seconds per step: the median interval between the trainers' own per-step progress updates, the first step dropped, in
wall time and in the process's CPU time (with one thread, what other jobs on a shared machine cannot stretch; step
time ratios use it).
``--before DIR`` adds our trainer from another checkout (the commit before issue 31) beside the current one.  Our
checkpointed run also times a second setup, whose bases come from the cache.

    .venv/bin/python -m bench.train_full_size --steps 3                  # 2B at 512 px: bench/results/train_full_size.*
    .venv/bin/python -m bench.train_full_size --name train_full_size_depth --blocks 4 8 --px 512 1024 \\
        --configs ours-on --steps 2                                      # memory against depth, for 1024 px at 2B
    .venv/bin/python -m bench.train_full_size --name train_full_size_before --blocks 4 \\
        --configs ours-on ours-off before-on before-off --before DIR      # step time against the earlier trainer
    .venv/bin/python -m bench.train_full_size --quick                    # toy size, a minute (a test runs it)
    .venv/bin/python -m bench.train_full_size --device cuda              # on a CUDA machine (not run yet)
    .venv/bin/python -m bench.train_full_size --docs                     # README blocks from the committed JSON
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
GIB = 2**30
NAME, DEPTH, BEFORE = "train_full_size", "train_full_size_depth", "train_full_size_before"
FULL = {"blocks": [28], "channels": 2048, "px": [512], "steps": 4}
QUICK = {"blocks": [2], "channels": 256, "px": [128], "steps": 3}
CONFIGS = {  # key: (table name, trainer, checkpointing)
    "ours-on": ("ours, checkpointing on", "ours", True),
    "ours-off": ("ours, checkpointing off", "ours", False),
    "core-on": ("TrainLoraNode, checkpointing on", "core", True),
    "core-off": ("TrainLoraNode, checkpointing off", "core", False),
    "before-on": ("before, checkpointing on", "ours", True),
    "before-off": ("before, checkpointing off", "ours", False),
}
DEFAULT_CONFIGS = ["ours-on", "ours-off", "core-on", "core-off"]
TARGETS = {"training_overhead_gib": 1.0, "setup_overhead_gib": 1.5}  # issue 31: ours with checkpointing, 2B, 512 px
BEGIN, END = "<!-- train_full_size: begin -->", "<!-- train_full_size: end -->"


# --- one configuration, in its own process ---------------------------------------------------------------------------

class Phases:
    """Peak memory over the model and seconds, per phase; ``mark`` ends the current phase and starts the next."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        self.rows: dict[str, dict[str, float]] = {}
        self.current: str | None = None
        self.baseline = self._now()

    def _now(self) -> int:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            return torch.cuda.memory_allocated()
        return _status("VmRSS")

    def _peak(self) -> int:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated()
        return _status("VmHWM")

    def _reset(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.reset_peak_memory_stats()
        else:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")

    def mark(self, phase: str | None) -> None:
        if self.current is not None and self.current not in self.rows:
            self.rows[self.current] = {"peak_over_model_gib": (self._peak() - self.baseline) / GIB,
                                       "seconds": time.perf_counter() - self.started}
        self._reset()
        self.current, self.started = phase, time.perf_counter()


def _status(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def fp32_gemm_mode():
    """A dispatch mode computing every bf16 matrix product, and the attention backward, in fp32 (results rounded back
    to bf16); ``transient`` is the largest size, in bytes, of the fp32 copies and results one such op held."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves, tree_map

    aten = torch.ops.aten
    # PyTorch's CPU kernels for these run bf16 at a tenth of their fp32 speed or less without AVX-512
    upcast = {aten.mm.default, aten.addmm.default, aten.bmm.default, aten.baddbmm.default,
              aten._scaled_dot_product_flash_attention_for_cpu_backward.default}

    def bf16(value) -> bool:
        return isinstance(value, torch.Tensor) and value.dtype == torch.bfloat16

    class Fp32Gemm(TorchDispatchMode):
        transient = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func not in upcast or not any(map(bf16, tree_leaves(args))):
                return func(*args, **kwargs)
            wide = tree_map(lambda a: a.float() if bf16(a) else a, args)
            out = func(*wide, **kwargs)
            copies = [w for w, a in zip(tree_leaves(wide), tree_leaves(args), strict=True) if w is not a]
            results = [o for o in tree_leaves(out) if isinstance(o, torch.Tensor)]
            Fp32Gemm.transient = max(Fp32Gemm.transient, sum(t.nbytes for t in copies + results))
            return tree_map(lambda o: o.to(torch.bfloat16) if isinstance(o, torch.Tensor) and o.dtype == torch.float32
                            else o, out)

    return Fp32Gemm


class _SetupDone(Exception):
    """Stops the second (cached) setup where the calibration would start."""


def child(spec: dict) -> dict:
    import comfy.cli_args  # run_child put the host on PYTHONPATH

    from devkit.host import boot

    comfy.cli_args.args.use_pytorch_cross_attention = True  # read when comfy.model_management is imported
    boot(cpu=spec["device"] == "cpu")
    import comfy.model_management as mm
    import comfy.utils
    import folder_paths
    import torch

    from devkit import tiny_dit
    from devkit.host import import_pack

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    folder_paths.add_model_folder_path("loras", tempfile.mkdtemp(prefix="train_full_size_"), is_default=True)
    with torch.inference_mode():  # as ComfyUI's executor loads a model, and as a sampler leaves it loaded
        model = tiny_dit.load_cosmos(num_blocks=spec["blocks"], seed=0, channels=spec["channels"],
                                     dtype=torch.bfloat16)
        mm.load_models_gpu([model])
    side = spec["px"] // 8
    latents = torch.randn(1, 16, 1, side, side, generator=torch.Generator().manual_seed(0))
    positive = tiny_dit.cosmos_conditioning(tokens=32, seed=1)
    stamps: list[tuple[float, float]] = []
    update = comfy.utils.ProgressBar.update_absolute

    def stamped(bar, value, total=None, preview=None):  # both trainers advance a ProgressBar once per step
        if value:
            stamps.append((time.perf_counter(), time.process_time()))
        return update(bar, value, total, preview)

    comfy.utils.ProgressBar.update_absolute = stamped
    out = {"parameters": sum(p.numel() for p in model.model.parameters()),
           "weight_bytes": sum(p.nbytes for p in model.model.parameters()),
           "inference_weights": all(p.is_inference() for p in model.model.parameters())}
    gemm = fp32_gemm_mode() if spec["bf16_gemm"] == "fp32" else None
    import gc

    gc.collect()
    phases = Phases(spec["device"])
    out["resident_with_model_gib"] = phases.baseline / GIB
    if spec["trainer"] == "core":
        _run_core(spec, model, latents, positive, phases, gemm)
    else:
        out.update(_run_ours(spec, model, latents, positive, phases, training_loop(import_pack(Path(spec["root"]))),
                             gemm))
    intervals = [b[0] - a[0] for a, b in itertools.pairwise(stamps)]
    cpu = [b[1] - a[1] for a, b in itertools.pairwise(stamps)]  # the process's CPU time: what other jobs cannot stretch
    out.update(phases=phases.rows, step_seconds=intervals, step_cpu_seconds=cpu,
               s_per_step=statistics.median(intervals) if intervals else None,
               cpu_s_per_step=statistics.median(cpu) if cpu else None)
    if gemm is not None:
        out["gemm_upcast_transient_gib"] = gemm.transient / GIB
    return out


def _within(gemm):
    import contextlib

    return gemm() if gemm is not None else contextlib.nullcontext()


def _run_core(spec: dict, model, latents, positive, phases: Phases, gemm) -> None:
    import torch
    from comfy_extras import nodes_train

    from devkit.host import import_pack

    # ComfyUI 0.33's own trainer cannot backward through Cosmos attention either (the kitchen op has no autograd
    # formula); with the pack installed, the backward it registers serves every trainer in the process
    import_pack().comfy_glue.kitchen_autograd.enable_kitchen_backward()

    sample = nodes_train.TrainSampler.sample

    def marked(sampler, *args, **kwargs):
        phases.mark("steps")
        result = sample(sampler, *args, **kwargs)
        phases.mark(None)
        return result

    nodes_train.TrainSampler.sample = marked
    phases.mark("setup")
    with torch.inference_mode(), _within(gemm):
        nodes_train.TrainLoraNode.execute(**with_node_defaults(nodes_train.TrainLoraNode, dict(
            model=[model], latents=[{"samples": latents}, {"samples": latents}], positive=[positive],
            batch_size=[1], steps=[spec["steps"]], grad_accumulation_steps=[1], learning_rate=[1e-4],
            rank=[spec["rank"]], optimizer=["AdamW"], loss_function=["MSE"], seed=[0], training_dtype=["bf16"],
            lora_dtype=["bf16"], algorithm=["LoRA"], gradient_checkpointing=[spec["checkpointing"]],
            existing_lora=["[None]"])))


def with_node_defaults(node, given: dict) -> dict:
    """``given`` plus every other input of a V3 list-input node at its own default: ComfyUI 0.33's TrainLoraNode has
    five inputs 0.3.75's lacks (quantized backward, checkpoint depth, offloading, buckets, bypass)."""
    for item in node.define_schema().inputs:
        if item.id not in given and getattr(item, "default", None) is not None:
            given[item.id] = [item.default]
    return given


def training_loop(pack):
    """The pack's training-loop module: ``comfy_glue.training``, or ``nodes.train`` in a checkout from before the glue
    moved out of nodes/ (a --before run)."""
    glue = getattr(pack, "comfy_glue", None)
    return glue.training if glue is not None and hasattr(glue, "training") else pack.nodes.train


def _run_ours(spec: dict, model, latents, positive, phases: Phases, train, gemm) -> dict:
    import torch

    sampler = train.OrthoHydraTrainSampler
    calibrate, fwd_bwd, sample = sampler.calibrate, sampler.fwd_bwd, sampler.sample

    def calibrating(self, *args, **kwargs):
        phases.mark("calibration")
        return calibrate(self, *args, **kwargs)

    def stepping(self, *args, **kwargs):
        if phases.current != "steps":
            phases.mark("steps")
        return fwd_bwd(self, *args, **kwargs)

    def sampling(self, *args, **kwargs):
        result = sample(self, *args, **kwargs)
        phases.mark(None)
        return result

    sampler.calibrate, sampler.fwd_bwd, sampler.sample = calibrating, stepping, sampling
    config = train.TrainConfig(steps=spec["steps"], batch_size=1, rank=spec["rank"], experts=4,
                               init="ortho",  # the init bench/results were measured with
                               targets="attention+mlp", gradient_checkpointing=spec["checkpointing"],
                               output_name="train_full_size", seed=0)
    phases.mark("setup")
    with torch.inference_mode(), _within(gemm):
        train.train(model, latents, positive, config)
    extra = {}
    if spec.get("cached_setup"):  # the same run again: its setup finds every basis in the cache
        again = Phases(spec["device"])

        def stop(self, *args, **kwargs):
            again.mark(None)
            raise _SetupDone

        sampler.calibrate = stop
        again.mark("setup")
        try:
            with torch.inference_mode(), _within(gemm):
                train.train(model, latents, positive, config)
        except _SetupDone:
            pass
        extra["cached_setup"] = again.rows["setup"]
    bases = getattr(train, "BASES", None)
    if bases is not None:
        extra["basis_cache"] = {"svds": bases.computed, "hits": bases.hits}
    return extra


# --- the runs ---------------------------------------------------------------------------------------------------------

def runs(args) -> list[dict]:
    size = QUICK if args.quick else FULL
    gemm = args.bf16_gemm
    if gemm == "auto":
        import torch

        native = args.device != "cpu" or torch.backends.cpu.get_cpu_capability() not in ("DEFAULT", "AVX2")
        gemm = "native" if native else "fp32"
    base = {"channels": size["channels"], "steps": args.steps or size["steps"], "rank": 16, "device": args.device,
            "threads": args.threads, "root": str(ROOT), "bf16_gemm": gemm}
    out = []
    for blocks, px, key in itertools.product(args.blocks or size["blocks"], args.px or size["px"],
                                             args.configs or DEFAULT_CONFIGS + (["before-on", "before-off"]
                                                                                if args.before else [])):
        name, trainer, checkpointing = CONFIGS[key]
        spec = {**base, "config": key, "name": name, "trainer": trainer, "checkpointing": checkpointing,
                "blocks": blocks, "px": px, "cached_setup": key == "ours-on"}
        if key.startswith("before"):
            if not args.before:
                raise SystemExit(f"{key} needs --before DIR (another checkout of the pack)")
            spec["root"] = str(Path(args.before).resolve())
        out.append(spec)
    return out


def run_child(spec: dict) -> dict:
    from devkit.host import COMFY_DIR

    path = os.pathsep.join([str(COMFY_DIR), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "PYTHONPATH": path.rstrip(os.pathsep)}
    if spec["threads"]:
        env["OMP_NUM_THREADS"] = str(spec["threads"])
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "bench.train_full_size", "--child", json.dumps(spec)],
                          capture_output=True, text=True,
                          env=env, cwd=ROOT)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        return {**spec, "error": proc.stderr[-3000:], "wall_seconds": wall}
    return {**spec, **json.loads(proc.stdout.strip().splitlines()[-1]), "wall_seconds": wall}


# --- tables, targets and the README texts, all from the results -------------------------------------------------------

def _gib(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def _phase(run: dict, phase: str) -> float | None:
    return run.get("phases", {}).get(phase, {}).get("peak_over_model_gib")


def need_gib(run: dict) -> float:
    """What a run needs beside the model's weights: its largest phase peak over the model."""
    return max(v["peak_over_model_gib"] for v in run["phases"].values())


def table(results: dict) -> str:
    """One row per run: peak over the model per phase (GiB), s/step, setup seconds."""
    lines = ["| configuration | blocks | px | setup GiB | calibration GiB | steps GiB | s/step | CPU s/step "
             "| setup s |", "|---|---|---|---|---|---|---|---|---|"]
    for run in results["runs"]:
        if "error" in run:
            lines.append(f"| {run['name']} | {run['blocks']} | {run['px']} | failed (see the JSON) | | | | | |")
            continue
        cached = run.get("cached_setup")
        setup_s = f"{run['phases']['setup']['seconds']:.0f}" + (f" (cached: {cached['seconds']:.0f})" if cached
                                                                 else "")
        step, cpu = (("—" if run.get(key) is None else f"{run[key]:.1f}") for key in ("s_per_step", "cpu_s_per_step"))
        lines.append(f"| {run['name']} | {run['blocks']} | {run['px']} | {_gib(_phase(run, 'setup'))} | "
                     f"{_gib(_phase(run, 'calibration'))} | {_gib(_phase(run, 'steps'))} | {step} | {cpu} | "
                     f"{setup_s} |")
    return "\n".join(lines) + "\n"


def find(results: dict, config: str, blocks: int | None = None, px: int | None = None) -> dict | None:
    return next((r for r in results["runs"] if r["config"] == config and "error" not in r
                 and (blocks is None or r["blocks"] == blocks) and (px is None or r["px"] == px)), None)


def verdict(results: dict) -> dict:
    """The issue's targets (ours with checkpointing, 28 blocks, 512 px) when the run covers them, and the ratios
    between configurations run at the same depth and resolution."""
    out = {}
    ours = find(results, "ours-on", blocks=28, px=512)
    if ours is not None:
        out = {"training_overhead_gib": _phase(ours, "steps"), "setup_overhead_gib": _phase(ours, "setup")}
        for key, limit in TARGETS.items():
            out[f"{key}_target"] = limit
            out[f"{key}_met"] = out[key] <= limit
    first = next((r for r in results["runs"] if "error" not in r), None)
    if first is None:
        return out
    at = {"blocks": first["blocks"], "px": first["px"]}
    ours, off, core = find(results, "ours-on", **at), find(results, "ours-off", **at), find(results, "core-on", **at)
    if ours and core:
        out["training_overhead_vs_trainloranode_on"] = _phase(ours, "steps") / _phase(core, "steps")
    if ours and off:
        out["step_time_checkpointing_on_vs_off"] = _step_ratio(ours, off)
    for state in ("on", "off"):
        now, before = find(results, f"ours-{state}", **at), find(results, f"before-{state}", **at)
        if now and before:
            out[f"step_time_vs_before_{state}"] = _step_ratio(now, before)
    return out


def _step_ratio(a: dict, b: dict) -> float:
    """Per-step CPU time when both runs have it (one thread: other jobs on the machine cannot stretch it), else
    wall time."""
    key = "cpu_s_per_step" if a.get("cpu_s_per_step") and b.get("cpu_s_per_step") else "s_per_step"
    return a[key] / b[key]


def targets_text(results: dict) -> str:
    v = results["verdict"]
    lines = []
    for key, label in (("training_overhead_gib", "training overhead (steps), ours with checkpointing"),
                       ("setup_overhead_gib", "setup overhead, ours with checkpointing")):
        if key in v:
            lines.append(f"- {label}: {v[key]:.2f} GiB, target <= {v[key + '_target']:.1f} GiB: "
                         f"{'met' if v[key + '_met'] else 'missed'}")
    labels = {"training_overhead_vs_trainloranode_on": "training overhead, ours / TrainLoraNode, both checkpointing",
              "step_time_checkpointing_on_vs_off": "step time, ours with / without checkpointing",
              "step_time_vs_before_on": "step time, ours / the trainer before issue 31, checkpointing on",
              "step_time_vs_before_off": "step time, ours / the trainer before issue 31, checkpointing off"}
    lines += [f"- {label}: {v[key]:.2f}x" for key, label in labels.items() if key in v]
    transient = [r["gemm_upcast_transient_gib"] for r in results["runs"] if "gemm_upcast_transient_gib" in r]
    if transient:
        lines.append(f"- bf16 products computed in fp32 on this CPU: the largest fp32 operand copies one product "
                     f"held, {max(transient):.2f} GiB, bound what that adds to any peak")
    return "\n".join(lines) + "\n" if lines else ""


def depth_fit(depth: dict, full: dict) -> dict:
    """Per resolution and phase, the line ``a + b · blocks`` through the depth runs (ours, checkpointing on), its
    value at the full model's depth, and at the resolution the full run measured, the relative error of that
    prediction against it."""
    blocks = full["runs"][0]["blocks"]
    out = {"blocks": blocks, "px": {}}
    for px in sorted({r["px"] for r in depth["runs"]}):
        points = sorted((r["blocks"], r) for r in depth["runs"] if r["px"] == px and "error" not in r)
        (b0, r0), (b1, r1) = points[0], points[-1]
        predicted = {}
        for phase in r0["phases"]:
            y0, y1 = _phase(r0, phase), _phase(r1, phase)
            predicted[phase] = y0 + (y1 - y0) / (b1 - b0) * (blocks - b0)
        row = {"from_blocks": [b0, b1], "predicted_gib": predicted, "predicted_need_gib": max(predicted.values())}
        measured = find(full, "ours-on", blocks=blocks, px=px)
        if measured is not None:
            row["measured_need_gib"] = need_gib(measured)
            row["relative_error"] = row["predicted_need_gib"] / row["measured_need_gib"] - 1
        out["px"][str(px)] = row
    return out


def depth_text(fit: dict) -> str:
    lines = []
    for px, row in fit["px"].items():
        line = (f"- {px} px: the line through {row['from_blocks'][0]} and {row['from_blocks'][1]} blocks gives "
                f"{row['predicted_need_gib']:.2f} GiB at {fit['blocks']} blocks")
        if "measured_need_gib" in row:
            line += (f"; measured at {fit['blocks']} blocks: {row['measured_need_gib']:.2f} GiB "
                     f"({100 * row['relative_error']:+.0f} %)")
        lines.append(line)
    return "\n".join(lines) + "\n"


def load(name: str) -> dict | None:
    return load_from(RESULTS, name)


def load_from(folder: Path, name: str) -> dict | None:
    path = folder / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def bench_readme_block(full: dict, depth: dict | None, before: dict | None) -> str:
    text = f"Command: `{full['command']}`\n\n{table(full)}\n{targets_text(full)}"
    if depth is not None:
        text += (f"\nMemory against depth (ours, checkpointing on), for the resolutions the 2B run does not cover: "
                 f"`{depth['command']}`\n\n{table(depth)}\n{depth_text(depth_fit(depth, full))}")
    if before is not None:
        text += (f"\nAt {before['runs'][0]['blocks']} blocks (512 px): checkpointing on and off, and beside the "
                 f"trainer before issue 31 ({before['before']}): `{before['command']}`\n\n{table(before)}\n"
                 f"{targets_text(before)}")
    return text


def readme_paragraph(full: dict, depth: dict) -> str:
    """The README's paragraph; every figure comes from the results (a test checks it)."""
    ours = find(full, "ours-on")
    fit = depth_fit(depth, full)
    low, high = sorted(fit["px"], key=int)
    need_low, need_high = need_gib(ours), fit["px"][high]["predicted_need_gib"]
    per = GIB / ours["parameters"]
    env = full["environment"]
    where = env.get("gpu", "GPU") if env["device"].startswith("cuda") else "2-core CPU"
    blocks = " and ".join(str(b) for b in fit["px"][high]["from_blocks"])
    return (f"**Memory for training.**  Training Cosmos-Predict2 2B ({ours['parameters'] / 1e9:.2f} B parameters) "
            f"with the defaults (E 4, r 16, attention+MLP, batch 1, gradient checkpointing on) needs its bf16 weights "
            f"({ours['weight_bytes'] / GIB:.1f} GiB) plus {need_low:.2f} GiB at {low} px and about {need_high:.2f} GiB "
            f"at {high} px: the largest of the setup, calibration and step peaks, measured on the {where} by "
            f"`python -m bench.train_full_size` ({high} px extrapolated from {blocks}-block models).  "
            f"For another DiT, count "
            f"2 bytes per parameter for the bf16 weights plus about {need_low * per:.2f} bytes per parameter at {low} "
            f"px ({need_high * per:.2f} at {high} px); the activations grow with the image's tokens.  Setup took "
            f"{ours['phases']['setup']['seconds']:.0f} s on that {where} (an SVD per adapted Linear) and "
            f"{ours['cached_setup']['seconds']:.0f} s the second time on the same model (bases from the cache).  "
            f"Per-phase tables, with ComfyUI's `TrainLoraNode` beside ours: [bench/README.md](bench/README.md).\n")


def replace_block(text: str, block: str) -> str:
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    return text[:start] + "\n" + block + text[end:]


def read_block(text: str) -> str:
    return text[text.index(BEGIN) + len(BEGIN) + 1:text.index(END)]


def sync_docs() -> None:
    """bench/README.md's block and README.md's paragraph, from the committed results."""
    full, depth, before = load(NAME), load(DEPTH), load(BEFORE)
    path = ROOT / "bench" / "README.md"
    path.write_text(replace_block(path.read_text(), bench_readme_block(full, depth, before)))
    if depth is not None:
        path = ROOT / "README.md"
        path.write_text(replace_block(path.read_text(), readme_paragraph(full, depth)))


def write(results: dict, out_dir: Path, name: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    results["verdict"] = verdict(results)
    for path, text in ((out_dir / f"{name}.json", json.dumps(results, indent=1) + "\n"),
                       (out_dir / f"{name}.md", f"Command: `{results['command']}`\n\n{table(results)}\n"
                                                f"{targets_text(results)}")):
        partial = path.with_suffix(path.suffix + ".partial")
        partial.write_text(text)
        partial.replace(path)  # a run killed mid-write leaves the last complete results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="toy size (2 blocks, 256 wide, 128 px)")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda for the GPU variant")
    parser.add_argument("--blocks", type=int, nargs="+", help="model depths (default 28)")
    parser.add_argument("--px", type=int, nargs="+", help="image sides in pixels (default 512)")
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), help="default: ours and TrainLoraNode, "
                                                                             "checkpointing on and off")
    parser.add_argument("--steps", type=int, default=0, help="steps per run, the first not timed (default 4)")
    parser.add_argument("--threads", type=int, default=0, help="torch / OpenMP threads per run (0: torch's default)")
    parser.add_argument("--before", help="another checkout of the pack, for the before-* configurations")
    parser.add_argument("--before-label", help="what the tables call that checkout (e.g. its commit)")
    parser.add_argument("--bf16-gemm", choices=["auto", "native", "fp32"], default="auto",
                        help="fp32: bf16 products computed in fp32 (auto: on CPUs without bf16 GEMM kernels)")
    parser.add_argument("--append", action="store_true",
                        help="add these runs to the results file's (a 2B run takes an hour here: one config a call)")
    parser.add_argument("--name", default=NAME, help="results file name")
    parser.add_argument("--out", help="results folder (default bench/results, bench/out for --quick)")
    parser.add_argument("--docs", action="store_true", help="only rewrite the README blocks from the committed JSON")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))), flush=True)
        return
    if args.docs:
        sync_docs()
        return
    out_dir = Path(args.out) if args.out else (ROOT / "bench" / "out" if args.quick else RESULTS)
    from bench.timing import environment

    size = QUICK if args.quick else FULL
    results = {"command": ("python -m bench.train_full_size " + " ".join(sys.argv[1:])).strip(),
               "environment": {**environment(args.device), "cpu_capability": _capability(),
                               "load_average_before": list(os.getloadavg())},
               "model": f"Cosmos-Predict2, width {size['channels']}, random bf16", "runs": []}
    earlier = load_from(out_dir, args.name) if args.append else None
    if earlier is not None:  # each run is its own process either way; the commands are kept in order
        earlier["command"] += "; " + results["command"]
        results = earlier
    if args.before:
        results["before"] = args.before_label or str(Path(args.before).resolve())
    for spec in runs(args):
        print(f"{spec['name']}, {spec['blocks']} blocks, {spec['px']} px ...", flush=True)
        run = run_child(spec)
        results["runs"].append(run)
        results["environment"]["load_average_after"] = list(os.getloadavg())
        write(results, out_dir, args.name)
        print(run.get("error") or f"  {run['phases']} s/step {run['s_per_step']}", flush=True)
    print(table(results))
    print(targets_text(results))


def _capability() -> str:
    import torch

    return torch.backends.cpu.get_cpu_capability()


if __name__ == "__main__":
    main()
