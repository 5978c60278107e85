"""The transfer node: an adapter or a LoRA file carried to another version of its base model (LoRA-X); the work
is :mod:`comfy_glue.transfer`."""

from __future__ import annotations

from comfy_api.v0_0_2 import io

from ortho_hydra.transfer import MODES, TransferOptions

from ..comfy_glue import menus
from ..comfy_glue.lora_bank import NONE, lora_choices
from ..comfy_glue.transfer import transfer_to
from ..comfy_glue.types import OrthoHydraAdapterType, reported


class OrthoHydraTransfer(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OrthoHydraTransfer",
            display_name="Ortho-Hydra Transfer to Another Base",
            category=menus.TOOLS,
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
                io.Combo.Input("mode", options=list(MODES), default="subspace+null",
                               tooltip="subspace+null (default): keep the part in the target's principal subspace "
                                       "and carry the part outside the source's into the target's complement; tied "
                                       "with copy over the 9 measured settings (experiments/transfer). subspace: "
                                       "LoRA-X as published, keeps only the first part; it lost most styles there. "
                                       "copy: no projection, the naive baseline."),
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
        options = TransferOptions(rank=rank, energy=energy, threshold=threshold, mode=mode, seed=seed)
        moved, report, path = transfer_to(source_model, target_model, options, output_name, adapter, lora_name,
                                          latent, conditioning)
        return reported(moved, report, path, text=report)
