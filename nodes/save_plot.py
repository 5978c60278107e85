"""Save a trained or modified adapter; plot a training run."""

from __future__ import annotations

from comfy_api.v0_0_2 import io

from ortho_hydra import OrthoHydraError, save
from ortho_hydra.text_lists import split_list

from ..comfy_glue import menus
from ..comfy_glue.adapter_files import lora_output_path
from ..comfy_glue.images import plot_training
from ..comfy_glue.types import OrthoHydraAdapterType, RouterTraceType, reported


class OrthoHydraSave(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OrthoHydraSave",
            display_name="Ortho-Hydra Save Adapter",
            category=menus.TRAIN,
            description="Writes the adapter as <name>.safetensors in models/loras (atomic; λ on the up side, so the "
                        "file is exact under any Hydra runtime).",
            inputs=[OrthoHydraAdapterType.Input("adapter", tooltip="The adapter to save."),
                    io.String.Input("filename", default="ortho_hydra_adapter", tooltip="File name in models/loras."),
                    io.String.Input("expert_names", default="", tooltip="Optional names, comma-separated, one per "
                                                                        "expert; stored in the file.")],
            outputs=[io.String.Output(display_name="path")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, adapter, filename: str, expert_names: str) -> io.NodeOutput:
        path = lora_output_path(filename, "filename")
        names = split_list(expert_names) or adapter.expert_names
        if names is not None and len(names) != adapter.num_experts:
            raise OrthoHydraError(f"{len(names)} expert names for {adapter.num_experts} experts.", key="expert_names",
                                  fix=f"give exactly {adapter.num_experts} names, or none")
        save(adapter.with_expert_names(names), path)  # never mutate the input: it is often the loader's cache
        return reported(path, text=f"saved {path}")


class OrthoHydraPlotTraining(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OrthoHydraPlotTraining",
            display_name="Ortho-Hydra Plot Training",
            category=menus.TRAIN,
            description="Loss curve, each run's mean normalised gate entropy over steps, and a layers x experts "
                        "usage heatmap.",
            inputs=[io.Custom("LOSS_MAP").Input("loss_map", tooltip="The trainer's loss map."),
                    RouterTraceType.Input("router_trace", tooltip="The trainer's router trace."),
                    RouterTraceType.Input("compare_trace", optional=True,
                                          tooltip="Optional: another run's trace (e.g. a HydraLoRA baseline)."),
                    RouterTraceType.Input("compare_trace_2", optional=True, tooltip="Optional: a third run's trace.")],
            outputs=[io.Image.Output(display_name="image")],
        )

    @classmethod
    def execute(cls, loss_map, router_trace, compare_trace=None, compare_trace_2=None) -> io.NodeOutput:
        traces = [t for t in (compare_trace, compare_trace_2, router_trace) if t is not None]
        return io.NodeOutput(plot_training(list(loss_map.get("loss", [])), traces))
