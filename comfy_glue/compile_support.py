"""Router-live hooks under ``torch.compile`` (ComfyUI's TorchCompileModel node).

Why this exists: by default torch dynamo does not guard on a module's hook dicts while they are empty
(``torch._dynamo.config.skip_nnmodule_hook_guards``).  A graph traced before our forward hooks were installed
therefore keeps matching after they are, and the adapter silently vanishes from the output.  That happens when a
compiled base model samples before an adapter is applied to it, and also when a model is compiled after the apply,
since every ``torch.compile`` of the same diffusion model with an equal backend shares one dynamo cache (it hangs on
the code object of ``forward``, not on the compiled wrapper ComfyUI keeps per clone).

Turning the flag off makes dynamo guard that each hook dict it saw empty is still empty, so adding, removing or
replacing hooks sends the call to a graph traced with exactly those hooks: a recompile or two per distinct wiring,
none per step, and bypassing the adapter falls back to the base graph.  The flag is process-wide and read when a
graph is traced; it only adds guards, so other compiled models stay correct.  Graphs traced while it was on lack
those guards, so the first switch also clears dynamo's in-memory cache of compiled code (retraced on next call).
"""

from __future__ import annotations

import logging

import torch._dynamo

log = logging.getLogger("ortho_hydra")


def require_hook_guards() -> None:
    """Make every graph dynamo traces from now on guard on forward hooks; clear graphs traced without."""
    config = torch._dynamo.config
    if not getattr(config, "skip_nnmodule_hook_guards", False):
        return
    config.skip_nnmodule_hook_guards = False
    torch._dynamo.reset()
    log.info("Ortho-Hydra: torch.compile now guards on nn.Module hooks (skip_nnmodule_hook_guards=False), so "
             "compiled models see router-live adapters; dynamo's compiled-code cache was cleared once.")
