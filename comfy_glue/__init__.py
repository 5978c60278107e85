"""ComfyUI glue: everything between ComfyUI's objects (ModelPatcher, samplers, folder_paths, the server) and the
pure-torch core ``ortho_hydra`` that is not a node class.  The patch plan, hooks, weight holders and their
placement, gate recording, level sampling, key space, weight storage, multi-GPU support and the training loop live
here; ``nodes/`` declares the V3 node classes that call into it.

Imported relatively, as ``<pack>.comfy_glue``, never as a top-level name; it never imports ``nodes``.
"""
