"""Pin, blend, bias, sharpen or schedule an adapter's experts (evaluated inside the hooks, no re-patching)."""

from __future__ import annotations

from comfy_api.v0_0_2 import io

from ortho_hydra import Adapter, OrthoHydraError
from ortho_hydra.override_settings import build_override, norm_controlled
from ortho_hydra.overrides import GROUPS, MODES, SIDES
from ortho_hydra.profiles import check_matches

from ..comfy_glue import menus
from ..comfy_glue.types import OrthoHydraAdapterType, StyleProfileType, reported

KEYFRAMES_TIP = ("Optional schedule, one keyframe per line: '<start_percent> <mode> [args]', e.g. '0.0 live' / "
                 "'0.4 pin 2' / '0.7 blend 1,1,0,0' / 'bias 0,2,0,0' / 'temperature 0.5' / 'top_k 2'. "
                 "When set, it replaces mode / start_percent / end_percent.")


class OrthoHydraRouter(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OrthoHydraRouter",
            display_name="Ortho-Hydra Expert Mixer",
            category=menus.MIXER,
            description="Override the learned router: pin one expert, blend experts by hand, bias, sharpen or "
                        "top-k the gates, for a scope of layers and a window of the denoise. Chain several; "
                        "later nodes win where scopes overlap. Constant overrides fold into the weights at zero "
                        "sampling cost.",
            inputs=[
                OrthoHydraAdapterType.Input("adapter", tooltip="The adapter to override (from the loader or "
                                                               "another router node)."),
                io.Combo.Input("mode", options=list(MODES), default="pin",
                               tooltip="live: the learned router; pin: one expert; blend: your weights; bias: "
                                       "live plus logit offsets; temperature: divide logits by T; top_k: keep "
                                       "the k largest gates; profile: a captured style profile; omcd: orthogonal "
                                       "Monte Carlo dropout over the weights (each output element to one expert "
                                       "at most); mc_dropout: independent dropout masks. The last two are "
                                       "stochastic and never folded."),
                io.Int.Input("expert", default=0, min=0, max=255, tooltip="pin: the expert that gets all the "
                                                                          "weight (0-based)."),
                io.String.Input("weights", default="", tooltip="blend: one weight per expert; bias: one logit "
                                                               "offset per expert (comma-separated)."),
                io.Boolean.Input("renormalize", default=True, tooltip="blend: divide the weights by their sum."),
                io.Float.Input("temperature", default=1.0, min=0.0, max=100.0, step=0.01,
                               tooltip="temperature: T < 1 sharpens, T -> 0 is argmax, T > 1 flattens."),
                io.Int.Input("top_k", default=1, min=1, max=255, tooltip="top_k: how many experts stay."),
                io.Combo.Input("group", options=list(GROUPS), default="all",
                               tooltip="Layers to touch: attention / MLP Linears, or the early, middle, late "
                                       "third of the blocks (architecture-neutral, from the block index)."),
                io.Int.Input("block_start", default=-1, min=-1, max=1024, tooltip="First block (inclusive); "
                                                                                   "-1: no lower bound."),
                io.Int.Input("block_end", default=-1, min=-1, max=1024, tooltip="Last block (inclusive); "
                                                                                 "-1: no upper bound."),
                io.String.Input("layer_regex", default="", tooltip="Only layers whose name matches this regex "
                                                                   "(e.g. 'mlp_layer1'); empty: all."),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Where in the denoise the override starts (0 = first step), converted "
                                       "to σ with the model's own sampling."),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Where it stops (back to the learned router)."),
                io.String.Input("keyframes", default="", multiline=True, tooltip=KEYFRAMES_TIP),
                io.Combo.Input("interpolation", options=["step", "linear"], default="step",
                               tooltip="Between keyframes: switch at once, or blend the gates linearly in σ."),
                io.Combo.Input("side", options=list(SIDES), default="both",
                               tooltip="Apply to both CFG sides, only the positive, or only the negative rows."),
                io.String.Input("keep", default="", tooltip="omcd / mc_dropout: each expert's keep probability "
                                                            "q_k (omcd: they sum to at most 1). Every output "
                                                            "element goes to expert k with probability q_k, scaled "
                                                            "by w_k / q_k (w: the weights box)."),
                io.Int.Input("mc_seed", default=0, min=0, max=2**31 - 1,
                             tooltip="omcd / mc_dropout: seeds the masks (with the layer and the step's σ), so "
                                     "the same seed gives the same image."),
                io.Boolean.Input("norm_control", default=False,
                                 tooltip="blend: scale the whole blend (one factor over every layer in scope) so "
                                         "its strength equals its strongest part's. Blending several nearly "
                                         "orthogonal styles at full weight otherwise grows the adapter's energy "
                                         "like the square root of their number (overdrive)."),
                StyleProfileType.Input("profile", optional=True,
                                       tooltip="A style profile (mode 'profile' or keyframe 'profile')."),
            ],
            outputs=[OrthoHydraAdapterType.Output(display_name="adapter"),
                     io.String.Output(display_name="summary")],
        )

    @classmethod
    def execute(cls, adapter: Adapter, mode: str, expert: int, weights: str, renormalize: bool,
                temperature: float, top_k: int, group: str, block_start: int, block_end: int, layer_regex: str,
                start_percent: float, end_percent: float, keyframes: str, interpolation: str, side: str,
                keep: str = "", mc_seed: int = 0, norm_control: bool = False, profile=None) -> io.NodeOutput:
        if profile is not None:
            check_matches(profile, adapter, path=profile.source or profile.name)
        try:
            override = build_override(adapter, mode=mode, expert=expert, weights=weights, renormalize=renormalize,
                                      temperature=temperature, top_k=top_k, group=group, block_start=block_start,
                                      block_end=block_end, layer_regex=layer_regex, start_percent=start_percent,
                                      end_percent=end_percent, keyframes=keyframes, interpolation=interpolation,
                                      side=side, profile=profile, keep=keep, mc_seed=mc_seed)
        except ValueError as exc:
            raise OrthoHydraError(f"{exc}.", path=adapter.path, key="OrthoHydraRouter",
                                  fix="fix the router node's settings") from exc
        note = ""
        if norm_control:
            override, note = norm_controlled(adapter, override)
        routed = adapter.with_override(override)
        stack = routed.override
        constant = sum(stack.constant_gate(n, adapter.num_experts) is not None for n in adapter.layers)
        summary = (f"{stack.describe()}\n{constant} of {len(adapter.layers)} routed layers have a constant gate "
                   "(folded into the weights at apply time)." + note)
        return reported(routed, summary, text=summary)
