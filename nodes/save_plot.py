"""Save a trained or modified adapter; plot a training run."""

from __future__ import annotations

import numpy as np
import torch
from comfy_api.v0_0_2 import io

from ortho_hydra import OrthoHydraError, save
from ortho_hydra.training import RouterTrace

from .adapter_files import lora_output_path
from .types import OrthoHydraAdapterType, RouterTraceType
from .widgets import figure_to_image, pyplot, split_list


class OrthoHydraSave(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OrthoHydraSave",
            display_name="Save Ortho-Hydra Adapter",
            category="training/ortho_hydra",
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
        return io.NodeOutput(path)


def plot_training(loss: list[float], traces: list[RouterTrace]) -> torch.Tensor:
    """Loss curve, mean normalised gate entropy per run, and a layers x experts usage heatmap, as an IMAGE."""
    fig, axes = pyplot().subplots(1, 3, figsize=(15, 4.2), dpi=100)
    ax = axes[0]
    if loss:
        ax.plot(range(1, len(loss) + 1), loss, lw=0.6, alpha=0.4, label="step loss")
        window = max(1, len(loss) // 20)
        smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
        ax.plot(range(window, len(loss) + 1), smooth, lw=1.8, label=f"{window}-step mean")
        ax.legend()
    ax.set(title="training loss (x0 space)", xlabel="step", ylabel="MSE")
    ax = axes[1]
    for trace in traces:
        ax.plot(trace.steps, trace.mean_entropy, marker=".", label=trace.init or "run")
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set(title="mean normalised gate entropy H/ln E", xlabel="step", ylim=(0, 1.05))
    if traces:
        ax.legend()
    ax = axes[2]
    names, usage = traces[-1].usage_matrix() if traces else ([], torch.zeros(0, 1))
    if len(names):
        im = ax.imshow(usage.numpy(), aspect="auto", cmap="viridis", vmin=0, vmax=1)
        ax.set_yticks(range(len(names)), [n.replace("lora_unet_", "")[-28:] for n in names], fontsize=6)
        ax.set_xticks(range(usage.shape[1]))
        fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set(title="expert usage (argmax share), last run", xlabel="expert")
    fig.tight_layout()
    return figure_to_image(fig)


class OrthoHydraPlotTraining(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OrthoHydraPlotTraining",
            display_name="Plot Ortho-Hydra Training",
            category="training/ortho_hydra",
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
