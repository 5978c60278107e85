"""`make demo-assets`: write the files the toy-world demo graphs in example_workflows/demo/ load.

They run on a tiny random SD3-style DiT and a toy world, not on a real model, and read `ortho_hydra_demo_*` files:
the tiny DiT and its "next version" (models/diffusion_models), a fitted demo adapter and four stand-in LoRAs
(models/loras), two-style training latents (input), and the toy world's base model and style latents for demo 06.
By default they go into the test host (.host/ComfyUI); pass another ComfyUI folder to write them there instead:

    .venv/bin/python -m scripts.demo_assets [/path/to/ComfyUI]
"""

from __future__ import annotations

import sys
from pathlib import Path

from devkit import demo_assets, styles_demo
from devkit.host import COMFY_DIR


def main(comfy_dir: Path) -> None:
    log = lambda message: print(f"[demo-assets] {message}")  # noqa: E731
    demo_assets.build(comfy_dir / "models", log=log)
    print(f"[demo-assets] wrote {demo_assets.write_training_latents(comfy_dir / 'input')}")
    styles_demo.build(comfy_dir / "models", comfy_dir / "input", log=log)
    print(f"[demo-assets] the graphs in example_workflows/demo/ now find their files in {comfy_dir}")


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else COMFY_DIR)
