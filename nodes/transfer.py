"""Carry an Ortho-Hydra adapter or a LoRA file to another version of its base model (LoRA-X, training-free).

The math is :mod:`ortho_hydra.transfer`; this node finds, per adapter layer, the weight it adds to in each model
(ComfyUI's key map, fused q/k/v slices included), feeds them one layer at a time, writes the result atomically into
models/loras and measures how far the routers' gates moved on the user's own latents.
"""

from __future__ import annotations

import dataclasses
import json
import os

import comfy.model_management
import comfy.utils
import folder_paths
import torch
from comfy_api.v0_0_2 import io

from ortho_hydra import Adapter, OrthoHydraError, PlainLoRA, save
from ortho_hydra.expert_stack import lora_expert
from ortho_hydra.lora_dict import lora_state_dict
from ortho_hydra.safetensors_io import write_safetensors
from ortho_hydra.transfer import MODES, TransferOptions, TransferResult, transfer

from .adapter_files import lora_output_path
from .expert_bank import NONE, lora_choices, lora_pieces, read_lora
from .gate_recording import recording
from .key_space import key_space
from .level_sampling import predict_at_levels
from .patcher import apply_adapter, model_architecture
from .types import OrthoHydraAdapterType
from .weight_storage import is_quantized_tensor, stored_weight


def _weight_of(model, key: str) -> torch.Tensor:
    """The model's own stored weight in fp32, dequantised (patches from other loaders are not applied)."""
    module = comfy.utils.get_attr(model.model, key.rsplit(".", 1)[0])
    values, grid = stored_weight(module)
    if grid.kind == "unknown" and not is_quantized_tensor(module.weight):
        raise OrthoHydraError(f"{key} is stored as {grid.label}; the transfer needs its singular vectors.", key=key,
                              fix="load both base models unquantised (fp16, bf16 or fp32) for the transfer")
    return values.detach().float()


def weight_sources(model, layers: dict, role: str) -> dict:
    """``{layer name: () -> the weight rows it writes}``; layers this model does not have are left out, layers it
    has in another shape are refused (a model of another size)."""
    space = key_space(model)
    sources = {}
    for name, layer in layers.items():
        try:
            layer_plan = space.plan({name: layer})
        except ValueError as exc:
            fix = ("pick the base model this adapter was trained on as the source" if role == "source" else
                   "transfer between versions of one architecture (same layer shapes); other sizes are out of scope")
            raise OrthoHydraError(f"in the {role} model: {exc}.", key=name, fix=fix) from exc
        if name not in layer_plan.matched:
            continue
        legs = sorted(((leg.offset, leg.size, target.module) for target in layer_plan.targets.values()
                       for leg in target.legs), key=lambda item: item[0])

        def fetch(legs=legs) -> torch.Tensor:
            parts = []
            for offset, size, module in legs:
                weight = _weight_of(model, f"{module}.weight")
                parts.append(weight if size is None else weight[offset:offset + size])
            return torch.cat(parts) if len(parts) > 1 else parts[0]

        sources[name] = fetch
    return sources


def lora_file_adapter(model, name: str) -> Adapter:
    """A LoRA file as an adapter of plain layers (scale folded into the up), read by ComfyUI's own LoRA loader."""
    space = key_space(model)
    layers = {}
    for prefix, pieces in lora_pieces(model, name, read_lora(name)).items():
        one = lora_expert(prefix, pieces, *space.shapes[space.key_map[prefix]])  # the bank's own stacking, scale folded
        layers[prefix] = PlainLoRA(prefix, one.down, one.ups[0], alpha=one.alpha)
    return Adapter(layers={}, plain_layers=layers, path=name, metadata={"ss_network_module": "networks.lora"})


def _gates(model, adapter: Adapter, latents: torch.Tensor, positive: list, seed: int) -> dict[str, torch.Tensor]:
    live, _ = apply_adapter(model, adapter, fold=False)
    with recording(live) as rec:
        predict_at_levels(live, latents, positive, seed)
    return {layer: torch.cat([e["gate"] for e in entries]) for layer, entries in rec.records().items()}


def gate_drift(source_model, source: Adapter, target_model, moved: Adapter, latents: torch.Tensor, positive: list,
               seed: int = 0) -> dict[str, float]:
    """Per kept routed layer, KL(source gate ‖ target gate) on the same noised latents (nats, mean over rows)."""
    if not moved.layers:
        return {}
    before = _gates(source_model, source, latents, positive, seed)
    after = _gates(target_model, moved, latents, positive, seed)
    drift = {}
    for layer, p in after.items():
        q = before.get(layer)
        if q is not None and q.shape == p.shape:
            ps, pt = q.double().clamp_min(1e-12), p.double().clamp_min(1e-12)
            drift[layer] = float((ps * (ps.log() - pt.log())).sum(-1).mean())
    return drift


def _output_path(output_name: str, protected: list[str | None]) -> str:
    path = lora_output_path(output_name, "output_name")
    if any(p and os.path.abspath(p) == os.path.abspath(path) for p in protected):
        raise OrthoHydraError(f"'{os.path.basename(path)}' is the adapter being transferred; writing there would "
                              "replace it.",
                              path=path, key="output_name", fix="give the transferred file its own name")
    return path


def write_result(result: TransferResult, path: str, stamp: dict) -> None:
    """Atomically: an Ortho-Hydra file for a routed adapter, a plain kohya LoRA for a LoRA file."""
    adapter = result.adapter
    metadata = {"oh_transfer": json.dumps(stamp)}
    if adapter.layers:
        save(adapter, path, metadata)
    elif adapter.plain_layers:
        factors = {name: layer.factors() for name, layer in adapter.plain_layers.items()}
        write_safetensors(path, lora_state_dict(factors), {"ss_network_module": "networks.lora", **metadata})
    else:
        raise OrthoHydraError("every layer was dropped or skipped; there is nothing to write.", key="threshold",
                              fix="lower τ (threshold), raise R, or check that the target is a version of the "
                                  "source model")


class OrthoHydraTransfer(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OrthoHydraTransfer",
            display_name="Transfer Ortho-Hydra / LoRA to Another Base",
            category="loaders/ortho_hydra",
            description="Carries an adapter trained on one version of a base model to another version of the same "
                        "architecture, without data (LoRA-X): each factor is projected onto the target weight's "
                        "principal subspaces, and layers whose source and target subspaces differ too much are "
                        "dropped. Experts and routers are kept. Writes the result into models/loras and reports, "
                        "per layer, the subspace similarity, whether it was kept, and how far the gates moved.",
            inputs=[
                io.Model.Input("source_model", tooltip="The base model the adapter was trained on."),
                io.Model.Input("target_model", tooltip="The new version to carry the adapter to (same "
                                                       "architecture and layer shapes)."),
                OrthoHydraAdapterType.Input("adapter", optional=True,
                                            tooltip="An Ortho-Hydra adapter (from the loader). Leave unconnected to "
                                                    "transfer the LoRA file chosen below instead."),
                io.Combo.Input("lora_name", options=[NONE, *lora_choices()], default=NONE,
                               tooltip="A plain LoRA file in models/loras to transfer when no adapter is connected; "
                                       "the output is a plain LoRA."),
                io.Int.Input("rank", default=0, min=0, max=8192,
                             tooltip="R, the size of the principal subspace per weight. 0 chooses R per layer as "
                                     "the smallest holding 'energy' of the source weight. For Ortho-Hydra, R should "
                                     "be at least experts x rank so every expert's slice fits."),
                io.Float.Input("energy", default=0.9, min=0.01, max=1.0, step=0.01,
                               tooltip="With rank 0: the share of each source weight's squared singular values the "
                                       "subspace must hold."),
                io.Float.Input("threshold", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="τ: a layer whose source/target subspace similarity (1 = same directions) "
                                       "is below this is dropped from the result."),
                io.Combo.Input("mode", options=list(MODES), default="subspace",
                               tooltip="subspace: LoRA-X, keep only the part in the target's principal subspace. "
                                       "subspace+null: also carry the part outside the source's principal subspace "
                                       "into the target's complement (better for ordinary LoRAs). copy: no "
                                       "projection, the naive baseline."),
                io.String.Input("output_name", default="ortho_hydra_transferred",
                                tooltip="File name for the result in models/loras (.safetensors is added)."),
                io.Latent.Input("latent", optional=True,
                                tooltip="Optional example latents: with conditioning, the gate drift (KL between "
                                        "source and target gates on them) is measured per layer."),
                io.Conditioning.Input("conditioning", optional=True,
                                      tooltip="Conditioning for the gate-drift latents (one entry for all, or one "
                                              "per latent)."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1,
                             tooltip="Seeds the randomised SVD and the gate-drift noise, so a transfer is "
                                     "reproducible."),
            ],
            outputs=[OrthoHydraAdapterType.Output(display_name="adapter"),
                     io.String.Output(display_name="report"),
                     io.String.Output(display_name="path")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, source_model, target_model, rank: int, energy: float, threshold: float, mode: str,
                output_name: str, seed: int, adapter=None, lora_name: str = NONE, latent=None,
                conditioning=None) -> io.NodeOutput:
        arch_s, arch_t = model_architecture(source_model), model_architecture(target_model)
        if arch_s != arch_t:
            raise OrthoHydraError(f"the source model is {arch_s} and the target {arch_t}.", key="target_model",
                                  fix="transfer between versions of one architecture (Flux dev -> a Flux "
                                      "fine-tune, Wan 2.1 -> 2.2, ...)")
        if (adapter is None) == (lora_name == NONE):
            raise OrthoHydraError("connect an adapter or pick a LoRA file, not both and not neither.",
                                  key="adapter" if adapter is None else "lora_name",
                                  fix="connect the loader's adapter, or leave it unconnected and choose lora_name")
        source = adapter if adapter is not None else lora_file_adapter(source_model, lora_name)
        protected = [source.path, folder_paths.get_full_path("loras", lora_name) if lora_name != NONE else None]
        path = _output_path(output_name, protected)
        layers = {**source.layers, **source.plain_layers}
        options = TransferOptions(rank=rank, energy=energy, threshold=threshold, mode=mode, seed=seed)
        pbar = comfy.utils.ProgressBar(len(layers))

        def progress(done: int, total: int) -> None:
            comfy.model_management.throw_exception_if_processing_interrupted()
            pbar.update_absolute(done, total)

        result = transfer(source, weight_sources(source_model, layers, "source"),
                          weight_sources(target_model, layers, "target"),
                          options, progress=progress)
        drift = {}
        if latent is not None and conditioning is not None and source.layers:
            drift = gate_drift(source_model, source, target_model, result.adapter, latent["samples"].float(),
                               conditioning, seed)
        stamp = {**json.loads(result.adapter.metadata["oh_transfer"]),
                 "source": os.path.basename(source.path or "adapter"), "source_model": arch_s}
        write_result(result, path, stamp)
        moved = dataclasses.replace(result.adapter, path=path)
        report = result.table(drift)
        if source.reft:
            report += (f"\n{len(source.reft)} ReFT block edits copied unchanged (they edit activations, not a "
                       f"weight)")
        if drift:
            report += f"\nmean gate drift KL {sum(drift.values()) / len(drift):.4f} nats over {len(drift)} layers"
        return io.NodeOutput(moved, report, path, ui={"text": [report]})
