"""The torchrun (DDP) trainer command: ``torchrun --nproc-per-node N -m ortho_hydra_train --model ... --dataset ...
--config ...`` (or plain ``python -m ortho_hydra_train`` for one process).

It boots ComfyUI as a library, loads the DiT with ComfyUI's own loader and runs the same training loop as the
``OrthoHydraTrain`` node (``comfy_glue/training.py``), with DDP over the adapter's parameters.
"""
