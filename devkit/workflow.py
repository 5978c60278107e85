"""Frontend workflow JSON (what example_workflows/ holds) -> the API prompt that /prompt takes.

Widget values are matched to input names through the server's own /object_info, in the order the
frontend writes them (an INT with ``control_after_generate`` carries one extra value).  Widgets added to a node
after the file was saved take their defaults, as the frontend does.
"""

from __future__ import annotations

import json
from pathlib import Path

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
FRONTEND_ONLY = {"Note", "MarkdownNote"}  # drawn by the front end, never sent to the server


def _ordered_inputs(info: dict) -> list[tuple[str, object, dict]]:
    out = []
    for section in ("required", "optional"):
        for name, spec in info.get("input", {}).get(section, {}).items():
            kind = spec[0]
            options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            out.append((name, kind, options))
    return out


def to_api(workflow: dict, object_info: dict) -> dict:
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        if node.get("mode", 0) in (2, 4) or node["type"] in FRONTEND_ONLY:  # muted / bypassed / a note
            continue
        node_type = node["type"]
        if node_type not in object_info:
            raise KeyError(f"node type {node_type!r} is not registered on this server")
        linked = {}
        for slot in node.get("inputs", []):
            if slot.get("link") is not None:
                _, src, src_slot, *_ = links[slot["link"]]
                linked[slot["name"]] = [str(src), src_slot]
        values = list(node.get("widgets_values", []))
        inputs = {}
        for name, kind, options in _ordered_inputs(object_info[node_type]):
            is_widget = isinstance(kind, list) or kind in WIDGET_TYPES
            if is_widget and values:
                value = values.pop(0)
                if options.get("control_after_generate"):
                    values.pop(0)
                inputs[name] = value
            elif is_widget and "default" in options:  # a widget newer than the file: the frontend's default
                inputs[name] = options["default"]
            if name in linked:
                inputs[name] = linked[name]
        prompt[str(node["id"])] = {"class_type": node_type, "inputs": inputs}
    return prompt


def load(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


class WorkflowGraph:
    """A minimal writer of the frontend's workflow format (what example_workflows/ holds)."""

    def __init__(self) -> None:
        self.nodes: list[dict] = []
        self.links: list[list] = []

    def node(self, node_type: str, widgets: list, inputs: dict | None = None, outputs: list | None = None,
             pos: tuple[int, int] = (0, 0)) -> int:
        node_id = len(self.nodes) + 1
        slots = []
        for slot, (name, (kind, source)) in enumerate((inputs or {}).items()):
            link = None
            if source is not None:
                link = len(self.links) + 1
                self.links.append([link, source[0], source[1], node_id, slot, kind])
                self.nodes[source[0] - 1]["outputs"][source[1]]["links"].append(link)
            slots.append({"name": name, "type": kind, "link": link})
        self.nodes.append({"id": node_id, "type": node_type, "pos": list(pos), "size": [300, 120], "flags": {},
                           "order": node_id - 1, "mode": 0, "inputs": slots,
                           "outputs": [{"name": n, "type": k, "links": [], "slot_index": i}
                                       for i, (n, k) in enumerate(outputs or [])],
                           "properties": {"Node name for S&R": node_type}, "widgets_values": widgets})
        return node_id

    def to_json(self) -> dict:
        return {"last_node_id": len(self.nodes), "last_link_id": len(self.links), "nodes": self.nodes,
                "links": self.links, "groups": [], "config": {}, "extra": {}, "version": 0.4}


def apply_sample_save(g: WorkflowGraph, model: tuple[int, int], adapter: tuple[int, int], positive: int,
                      negative: int, latent: int, prefix: str, y: int) -> None:
    """Apply ``adapter`` to ``model``, sample (KSampler, seed 42, euler 8 steps, cfg 3), preview and save: one row
    of a demo graph."""
    applied = g.node("OrthoHydraApply", [1.0], {"model": ("MODEL", model), "adapter": ("ORTHO_HYDRA", adapter)},
                     [("model", "MODEL")], pos=(760, y))
    sampled = g.node("KSampler", [42, "fixed", 8, 3.0, "euler", "simple", 1.0],
                     {"model": ("MODEL", (applied, 0)), "positive": ("CONDITIONING", (positive, 0)),
                      "negative": ("CONDITIONING", (negative, 0)), "latent_image": ("LATENT", (latent, 0))},
                     [("LATENT", "LATENT")], pos=(1060, y))
    preview = g.node("OrthoHydraLatentPreview", [8], {"model": ("MODEL", (applied, 0)),
                                                      "samples": ("LATENT", (sampled, 0))},
                     [("IMAGE", "IMAGE")], pos=(1360, y))
    g.node("SaveImage", [prefix], {"images": ("IMAGE", (preview, 0))}, pos=(1660, y))


def write_json(path: Path, workflow: dict) -> Path:
    """Write a generated workflow the way example_workflows/ keeps them (indent 1, trailing newline)."""
    path.write_text(json.dumps(workflow, indent=1) + "\n")
    return path
