"""1 against 2 processes of the torchrun trainer command on the CPU, at the same global batch.

The toy world's cached base (hidden 128, depth 2) and its 24 styled latents; Ortho-Hydra E=4, rank 8,
attention+mlp, fp32, 40 steps, global batch 8.  Arms, interleaved over rounds (the machine is shared and noisy):
``1 process`` (batch 8, 2 intra-op threads: both cores) and ``2 processes`` (torchrun, gloo, batch 4 each, 1 thread
each).  The time is what the command reports for ``train`` (ComfyUI boot and model load excluded); the
calibration pass and the checkpoint writes are in it for both.

    .venv/bin/python -m bench.ddp --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CONFIG = """steps = {steps}
learning_rate = 3e-3
rank = 8
experts = 4
init = "ortho_init"
training_dtype = "fp32"
batch_size = {batch}
seed = 0
output_name = "bench_ddp"
"""


def prepare(folder: Path) -> Path:
    from devkit.host import boot

    boot(cpu=True)
    from devkit import toy_world as tw
    from ortho_hydra import dataset_cache as dataset

    latents, contents, styles = tw.dataset(1, seed=0)
    dataset.write(folder / "data", latents, tw.per_image_conditioning(contents.tolist()), labels=styles.tolist(),
                  style_names=list(tw.STYLES))
    return tw.build_base_model()


def run_arm(model: Path, folder: Path, processes: int, steps: int, global_batch: int) -> float:
    config = folder / f"p{processes}.toml"
    config.write_text(CONFIG.format(steps=steps, batch=global_batch // processes))
    env = {**os.environ, "OMP_NUM_THREADS": "2" if processes == 1 else "1",
           "COMFYUI_DIR": str(ROOT / ".host" / "ComfyUI")}
    launcher = [sys.executable] if processes == 1 else [sys.executable, "-m", "torch.distributed.run",
                                                         "--nproc-per-node", str(processes)]
    out = subprocess.run([*launcher, "-m", "ortho_hydra_train", "--model", str(model), "--dataset",
                          str(folder / "data"), "--config", str(config), "--output-dir",
                          str(folder / f"out{processes}")], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=1800)
    match = re.search(r"trained in ([0-9.]+) s", out.stdout)
    if out.returncode != 0 or match is None:
        raise RuntimeError(out.stderr[-3000:])
    return float(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--global-batch", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = prepare(folder)
        times: dict[int, list[float]] = {1: [], 2: []}
        for r in range(args.rounds):
            for processes in ((1, 2) if r % 2 == 0 else (2, 1)):
                times[processes].append(run_arm(model, folder, processes, args.steps, args.global_batch))
                print(f"round {r + 1}: {processes} process(es): {times[processes][-1]:.1f} s", flush=True)
    one, two = statistics.median(times[1]), statistics.median(times[2])
    result = {"steps": args.steps, "global_batch": args.global_batch, "rounds": args.rounds, "seconds": times,
              "ms_per_step": {"1": 1000 * one / args.steps, "2": 1000 * two / args.steps},
              "speedup_2_over_1": one / two, "load_average_end": os.getloadavg()}
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "ddp.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
