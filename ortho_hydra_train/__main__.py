"""``torchrun --nproc-per-node N -m ortho_hydra_train --model M --dataset D --config C.toml`` (or ``python -m``).

Every rank loads the frozen DiT through ComfyUI's own loader and the cached dataset, and runs the node's training
loop (``comfy_glue/training.py``) with DDP over the adapter's parameters (gloo on CPU, NCCL on GPU).  Rank 0 alone
writes the adapter and its resume sidecar (atomically), logs and draws the training plot.  Any failure ends every
rank with a non-zero exit and one message; the last checkpoint stays loadable.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import tomllib
import torch

from ortho_hydra import OrthoHydraError
from ortho_hydra import dataset_cache as cached
from ortho_hydra_train import host


class CommandError(Exception):
    """A bad input to the command: one line naming the file or key and the fix."""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m ortho_hydra_train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="the diffusion model file (safetensors), as UNETLoader reads")
    parser.add_argument("--dataset", required=True, help="a cached dataset folder (manifest.json + shards)")
    parser.add_argument("--config", required=True, help="a TOML file of OrthoHydraTrain options (steps, rank, ...)")
    parser.add_argument("--output-dir", default=None, help="where the adapter goes (default: ComfyUI's models/loras)")
    parser.add_argument("--resume", default=None, help="a <name>.resume.safetensors sidecar to continue from")
    parser.add_argument("--comfyui", default=None, help="the ComfyUI folder (default: $COMFYUI_DIR, or the one this "
                                                        "pack is installed in)")
    parser.add_argument("--cpu", action="store_true", help="train on the CPU (gloo) even when CUDA is available")
    return parser.parse_args(argv)


def read_config(path: str, fields: dict) -> dict:
    """TOML keys must be ``TrainConfig`` fields; values are converted to the field's type."""
    file = Path(path)
    if not file.is_file():
        raise CommandError(f"{path}: no such config file. Fix: pass --config a TOML file of trainer options")
    try:
        raw = tomllib.loads(file.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise CommandError(f"{path}: not valid TOML ({exc}). Fix: check the file's syntax") from exc
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise CommandError(f"{path}: key '{unknown[0]}' is not a trainer option. Fix: use one of "
                           f"{', '.join(sorted(fields))}")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}


def setup_distributed(cpu: bool):
    """torchrun's environment -> an initialised process group (or None for one process), and the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = torch.cuda.is_available() and not cpu
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world == 1:
        return None, device
    import torch.distributed as dist

    dist.init_process_group("nccl" if use_cuda else "gloo")
    return dist, device


def run(args: argparse.Namespace) -> int:
    dist, device = setup_distributed(args.cpu)
    rank = dist.get_rank() if dist else 0
    try:
        comfy_dir = host.find_comfyui(args.comfyui)
        host.boot(comfy_dir, cpu=device.type == "cpu")
        pack = host.import_pack()
        import comfy.sd
        import comfy.utils
        import folder_paths

        from ortho_hydra.replicas import DataParallelReplicas, Replicas

        train = pack.comfy_glue.training
        fields = {f.name: f for f in dataclasses.fields(train.TrainConfig)}
        config = train.TrainConfig(**read_config(args.config, fields))
        if not Path(args.model).is_file():
            raise CommandError(f"{args.model}: no such model file. Fix: pass --model the diffusion model's "
                               "safetensors file")
        data = cached.read(args.dataset)
        if data.style_names and not config.style_names:
            config = dataclasses.replace(config, style_names=data.style_names)
        if args.output_dir:
            Path(args.output_dir).mkdir(parents=True, exist_ok=True)
            folder_paths.add_model_folder_path("loras", str(Path(args.output_dir).resolve()), is_default=True)
            folder_paths.add_model_folder_path("ortho_hydra_resume", str(Path(args.output_dir).resolve()),
                                               is_default=True)  # the resume file beside the adapter
        model = comfy.sd.load_diffusion_model(args.model)
        channels = model.model.latent_format.latent_channels
        if data.latents.shape[1] != channels:
            raise CommandError(f"{args.dataset}: latents have {data.latents.shape[1]} channels, {args.model} takes "
                               f"{channels} ({type(model.model.latent_format).__name__}). Fix: cache the dataset "
                               "with this model's VAE")
        replicas = DataParallelReplicas() if dist else Replicas()
        if rank == 0:
            total = config.steps
            comfy.utils.set_progress_bar_global_hook(
                lambda value, _total, _preview=None, **_: print(f"step {value}/{total}", flush=True)
                if value and (value % max(1, total // 20) == 0 or value == total) else None)
        started = time.perf_counter()
        _, adapter, losses, trace = train.train(model, data.latents, data.positive, config, resume=args.resume,
                                                labels=data.labels, replicas=replicas)
        seconds = time.perf_counter() - started
        if rank == 0:
            plot = Path(adapter.path).with_suffix(".png")
            image = pack.comfy_glue.images.plot_training(losses["loss"], [trace])
            from PIL import Image

            Image.fromarray((image[0].numpy() * 255).astype("uint8")).save(plot)
            print(f"wrote {adapter.path} ({len(losses['loss'])} steps this run, last loss "
                  f"{losses['loss'][-1]:.4f}) and {plot}", flush=True)
            print(f"trained in {seconds:.2f} s on {replicas.world} process(es)", flush=True)
        return 0
    except (CommandError, FileNotFoundError, OrthoHydraError) as exc:  # one clear line per rank; other errors
        print(f"ortho_hydra_train (rank {rank}): {exc}", file=sys.stderr, flush=True)  # keep their traceback
        return 2
    finally:
        if dist is not None and dist.is_initialized():
            dist.destroy_process_group()


def main(argv: Sequence[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
