"""``with recording(model) as gates:``: the one way to listen to a patched model's routers.

Used by style capture, the router trace, tests and benchmarks.  Entries are kept as plain lists while sampling:
hundreds of small tensors kept alive for a run fragment the heap and slowed large-model sampling by ~12%
(bench/trace.py); lists cost nothing measurable.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from ortho_hydra import Adapter, OrthoHydraError
from ortho_hydra.metrics import normalized_entropy
from ortho_hydra.routing import GateContext

from .patcher import applied_adapters


class GateRecording:
    """Per layer, one entry per routed model call: sampler σ, router σ, gate rows and which rows are uncond."""

    def __init__(self, adapter: Adapter) -> None:
        self.adapter = adapter
        self._raw: dict[str, list[dict]] = {}

    def __call__(self, layer: str, gate: torch.Tensor, context: GateContext) -> None:
        uncond = context.extra.get("uncond_rows")
        self._raw.setdefault(layer, []).append({
            "sampler_sigma": context.extra.get("sampler_sigma"),
            "sigma": None if context.sigma is None else context.sigma.detach().float().cpu().reshape(-1).tolist(),
            "gate": gate.detach().float().cpu().tolist(),
            "uncond_rows": None if uncond is None else uncond.cpu().tolist(),
        })

    def records(self) -> dict[str, list[dict]]:
        """The entries with ``gate`` (rows, E), ``sigma`` and ``uncond_rows`` (rows,) as tensors."""
        def tensor(value):
            return None if value is None else torch.tensor(value)

        return {layer: [{**e, "gate": tensor(e["gate"]), "sigma": tensor(e["sigma"]),
                         "uncond_rows": tensor(e["uncond_rows"])} for e in entries]
                for layer, entries in self._raw.items()}


@contextlib.contextmanager
def recording(model, fix: str = "connect the output of Ortho-Hydra Apply Adapter (router-live); pinned or "
                                "blended layers are folded into the weights and have no router to record",
              ) -> Iterator[GateRecording]:
    """Record every gate of the last router-live adapter applied to ``model`` while the block runs."""
    applied = [a for a in applied_adapters(model) if a.hooked]
    if not applied:
        raise OrthoHydraError("this MODEL has no router-live Ortho-Hydra layers to record.", key="model", fix=fix)
    target = applied[-1]
    listener = GateRecording(target.adapter)
    target.state.sinks.append(listener)
    try:
        yield listener
    finally:
        target.state.sinks.remove(listener)


def summarize_records(records: dict, num_experts: int) -> dict:
    """{side: {layer: [(σ, mean gate (E,), normalised entropy)] per model call}} from raw hook records."""
    out: dict[str, dict[str, list]] = {"positive": {}, "negative": {}}
    for layer, entries in records.items():
        for entry in entries:
            gate, uncond = entry["gate"], entry["uncond_rows"]
            sides = {"positive": gate if uncond is None else gate[~uncond],
                     "negative": None if uncond is None else gate[uncond]}
            for side, rows in sides.items():
                if rows is None or rows.shape[0] == 0:
                    continue
                out[side].setdefault(layer, []).append({
                    "sigma": entry["sampler_sigma"], "gate": rows.double().mean(0).tolist(),
                    "entropy": float(normalized_entropy(rows).mean())})
    return out
