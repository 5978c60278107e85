"""Ortho-Hydra: a mixture-of-experts LoRA for diffusion transformers, in pure torch.

Public API (stable):

- ``load(path, router_correction="training") -> Adapter``
- ``save(adapter, path, metadata=None, dtype=None)``
- ``Adapter.layers: dict[str, ExpertLayer]``, ``Adapter.num_experts``, ``Adapter.rank``
- ``ExpertLayer.gate(x, sigma=None, override=None)``, ``ExpertLayer.delta(x, sigma=None, override=None)``,
  ``ExpertLayer.static_delta_weight(gate)``
- ``OrthoHydraLinear`` (trainable; ``init`` in ``ortho`` / ``zero`` / ``jitter``) and ``distill``

This package never imports ComfyUI, and is only ever imported as ``ortho_hydra`` (see the pack's
``__init__.py``): a second import identity would duplicate its classes.
"""

if __name__ != "ortho_hydra":
    raise ImportError(f"the Ortho-Hydra core must be imported as 'ortho_hydra', not {__name__!r}: a second import "
                      "identity duplicates its classes. Import the pack folder (it registers the core) or put the "
                      "pack folder on sys.path and `import ortho_hydra`.")

from . import metrics, network  # noqa: F401  (re-exported modules)
from .adapter import Adapter
from .basis import ExpertBasis, disjoint_basis
from .cayley import cayley
from .distill import distill
from .errors import OrthoHydraError
from .moe_format import load, save
from .routing import GateContext, GateOverride, RouterSpec
from .runtime import ExpertLayer, PlainLoRA
from .trainable import OrthoHydraLinear

__all__ = [
    "Adapter",
    "ExpertBasis",
    "ExpertLayer",
    "GateContext",
    "GateOverride",
    "OrthoHydraError",
    "OrthoHydraLinear",
    "PlainLoRA",
    "RouterSpec",
    "cayley",
    "disjoint_basis",
    "distill",
    "load",
    "save",
]
