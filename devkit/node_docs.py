"""Write web/docs/<NodeId>.md for every node from its V3 schema plus a short hand-written intro and tip.

    .venv/bin/python -m devkit.node_docs

tests/host/test_node_docs.py checks the committed pages are what this writes, so no page drifts from a default.
"""

from __future__ import annotations

import asyncio

from .host import ROOT, import_pack

TIPS = {
    "OrthoHydraLoader": ("Reads an Ortho-Hydra or HydraLoRA `*_moe.safetensors` (ours or the reference trainer's) "
                         "and summarises it. Reference-trainer ChimeraHydra files (`*_chimera.safetensors`, single-A "
                         "and dual-A) load too: a content pool (per-Linear or cross-attention router) and a frequency "
                         "pool (learned router on FEI and σ, or the FEI itself) on one expert axis, content experts "
                         "first.",
                         "A retrained file is picked up on the next run: the cache is keyed by size and mtime."),
    "OrthoHydraApply": ("Patches a clone of the model so every adapted Linear routes each sample through its experts, "
                        "as in training. Pinned or blended layers are folded into the weights.",
                        "Unpatching restores the model bit for bit; other packs' hooks on the same layers are kept."),
    "OrthoHydraLoadAndApply": ("Load and apply in one node, with a one-line coverage report.",
                               "If nothing matches, the error names both sides, e.g. blocks.N.* vs joint_blocks.N.*."),
    "OrthoHydraRouter": ("Overrides the learned router: pin, blend, bias, temperature, top-k, a style profile, or a "
                         "stochastic blend (omcd, mc_dropout), for a scope of layers and a window of the denoise. "
                         "Chain several; later nodes win.",
                         "The mixer under the widgets has one slider and one pin button per expert, read from the "
                         "selected file's header. Constant overrides cost nothing at sampling time. On a ChimeraHydra "
                         "adapter the experts are one axis of K_c content then K_f frequency experts: pin i runs "
                         "expert i alone in its pool and turns the other pool off; a blend sets each pool's mixture "
                         "(its weights normalised to sum 1 within the pool; all zero: that pool off), so weights on "
                         "both pools pin or mix one expert per pool; norm_control and omcd / mc_dropout are refused "
                         "there. omcd (Orthogonal "
                         "Monte Carlo Dropout, Zhang et al. 2025) gives every output element to at most one expert "
                         "per call, so the experts' contributions are exactly orthogonal and unbiased for the direct "
                         "blend; the paper itself reports that this orthogonality does not improve semantic "
                         "composition, and our toy-world measurement agrees (README). It also costs: every element "
                         "needs its own draw and pick, so sampling runs at about 1.5-1.8x router-live on a CPU "
                         "(README, Stochastic blends); keep probabilities are drawn on a 1/65536 grid and the "
                         "rescale uses the realised one, so the blend stays unbiased. The direct blend stays the "
                         "default; norm_control scales a blend so its strength is its strongest part's, the fix "
                         "for the overdrive of summing several nearly orthogonal styles at full weight."),
    "OrthoHydraMergeSlots": ("Stacks adapters trained on orthogonal slots (OrthoHydraTrain's slots/slot inputs) into "
                             "one adapter whose expert i is adapter i, exactly, and reports their output-subspace "
                             "overlap.",
                             "It refuses shared slots, other slot counts and other base models. On our toy world "
                             "orthogonal slots did not reduce crosstalk in a plain-sum merge (see the README)."),
    "OrthoHydraFitRouter": ("Fits only an adapter's routers from labelled example latents, so live routing picks "
                            "the expert (for an expert bank: the LoRA) whose style the input has.",
                            "The report gives held-out routing accuracy and purity; the experts' weights are not "
                            "touched."),
    "OrthoHydraCacheDataset": ("Encodes a training set once (VAE latents, text conditioning, style labels) into "
                               "safetensors shards and a manifest for the torchrun trainer command.",
                               "Then run `torchrun --nproc-per-node N -m ortho_hydra_train --model <DiT> --dataset "
                               "output/ortho_hydra_datasets/<name> --config train.toml` from the pack's folder "
                               "(README, 'Training beyond one GPU'). Use the VAE of the model you will train: the "
                               "command refuses latents with another channel count."),
    "OrthoHydraTransfer": ("Carries an Ortho-Hydra adapter or a plain LoRA file to another version of its base model "
                           "(same architecture and layer shapes), without data, by LoRA-X subspace projection.",
                           "Read the report before trusting the file: '|dW| kept' is the share of each layer's update "
                           "the projection keeps, and a low share means a changed adapter. Connect a latent and "
                           "conditioning to see how far each router's gates moved. On our toy world LoRA-X never beat "
                           "the naive copy: freely trained adapters keep only 30-50 % of their update under "
                           "'subspace' and lose their style, while 'subspace+null' stays within a few points of the "
                           "copy (README, 'Carrying adapters to a new base version')."),
    "OrthoHydraLoraBank": ("Turns 2 to 8 ordinary LoRA files into one adapter whose expert i is LoRA i, exactly: pin, "
                           "blend, schedule, mix and bake a LoRA folder with the router toolkit.",
                           "Blend with renormalize off to reproduce stacked LoraLoaderModelOnly nodes; the router "
                           "starts uniform."),
    "OrthoHydraRouterTrace": ("A sampler that also records every routed layer's gates per step, per CFG side.",
                              "Saturation is 1 - normalised entropy: grey means the router is undecided."),
    "OrthoHydraCaptureStyle": ("Records each layer's mean gate on a reference latent at a few noise levels: a "
                               "replayable style profile.",
                               "Feed it a VAE-encoded image of the style and its caption; same seed, same profile."),
    "OrthoHydraSaveStyle": ("Saves a style profile to models/ortho_hydra_profiles.",
                            "Profiles are stamped with the adapter's content hash and refuse other adapters."),
    "OrthoHydraLoadStyle": ("Loads a saved style profile.", "Connect it to the router node's profile input."),
    "OrthoHydraBakeLoRA": ("Exports a pinned, blended or profiled adapter as a standard LoRA file.",
                           "The result loads with ComfyUI's own LoRA loader and matches the folded adapter."),
    "OrthoHydraExpertGallery": ("Renders one seed with each expert pinned, plus live routing, as a labelled grid.",
                                "Name the experts here or store names in the file with the save node."),
    "OrthoHydraTrain": ("Fine-tunes an Ortho-Hydra (or HydraLoRA) adapter on this model inside the graph, with "
                        "per-sample routing.",
                        "Connect a style-folders loader to train one expert per style (label guidance). Cancel at "
                        "any time: the adapter is kept in models/loras and its resume file in "
                        "models/ortho_hydra_resume."),
    "OrthoHydraLoadStyleFolders": ("Loads `input/<dataset>/<style>/*.png|jpg|webp` as one image batch with one style "
                                   "label per image: label i is the i-th style folder in sorted order.",
                                   "Connect `styles` to the trainer's styles input and the images to a VAE Encode; "
                                   "the first folder's style guides expert 0."),
    "OrthoHydraSave": ("Saves an adapter as a `_moe` file with λ on the up side (exact under any Hydra runtime).",
                       "Expert names given here appear in the mixer and the gallery."),
    "OrthoHydraPlotTraining": ("Loss curve, mean gate entropy per run, and a layers x experts usage heatmap.",
                               "Connect a HydraLoRA baseline's trace to compare de-uniformisation."),
    "OrthoHydraDemoConditioning": ("Demo helper: seeded random conditioning of the model's context width.",
                                   "For models used without a text encoder; it is not a prompt."),
    "OrthoHydraLatentPreview": ("Demo helper: an approximate RGB image of a latent, without VAE weights.",
                                "Uses the linear map of ComfyUI's live preview; decode with a VAE for real images."),
}


def render(schema) -> str:
    intro, tip = TIPS[schema.node_id]
    lines = [f"# {schema.display_name}", "", intro, "", "## Inputs", ""]
    for item in schema.inputs:
        optional = " (optional)" if getattr(item, "optional", False) else ""
        default = getattr(item, "default", None)
        shown = "" if default is None or default == "" else f" (default `{default}`)"
        lines.append(f"- **{item.id}**{optional}{shown}: {item.tooltip}")
    lines += ["", "## Outputs", ""]
    for out in schema.outputs or []:
        lines.append(f"- **{out.display_name or out.io_type}** ({out.io_type})")
    lines += ["", "## Tip", "", tip, ""]
    return "\n".join(lines)


PAGES = ROOT / "web" / "docs"


def pages() -> dict[str, str]:
    """Every node's help page as this module renders it, by node id."""
    nodes = asyncio.run(asyncio.run(import_pack().comfy_entrypoint()).get_node_list())
    return {schema.node_id: render(schema) for schema in (node.GET_SCHEMA() for node in nodes)}


def main() -> None:
    PAGES.mkdir(parents=True, exist_ok=True)
    written = pages()
    for node_id, text in written.items():
        (PAGES / f"{node_id}.md").write_text(text)
    print(f"wrote {len(written)} pages to {PAGES}")


if __name__ == "__main__":
    main()
