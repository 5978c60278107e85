// Ortho-Hydra front-end: an expert mixer on the router node and live training charts on the trainer.
// Plain ES module on the frontend's own APIs (registerExtension, addWidget, addDOMWidget, api events).
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const MIXER_PREFIX = "mix:";

function widget(node, name) {
  return node.widgets?.find((w) => w.name === name);
}

// Follow the adapter link upstream (through other router nodes) to the loader's file name.
function upstreamLoraName(node, seen = new Set()) {
  if (!node || seen.has(node.id)) return null;
  seen.add(node.id);
  const lora = widget(node, "lora_name");
  if (lora) return lora.value;
  const slot = node.inputs?.findIndex((i) => i.name === "adapter");
  if (slot === undefined || slot < 0 || node.inputs[slot].link == null) return null;
  const link = app.graph.links[node.inputs[slot].link];
  return link ? upstreamLoraName(app.graph.getNodeById(link.origin_id), seen) : null;
}

function transient(w) {
  // mixer widgets drive the real widgets; they are not part of the saved workflow or the prompt
  w.serialize = false;
  w.options = { ...(w.options || {}), serialize: false };
  return w;
}

function clearMixer(node) {
  node.widgets = (node.widgets || []).filter((w) => !w.name.startsWith(MIXER_PREFIX));
}

function pushBlend(node) {
  const sliders = node.widgets.filter((w) => w.name.startsWith(`${MIXER_PREFIX} w `));
  widget(node, "mode").value = "blend";
  widget(node, "weights").value = sliders.map((w) => Number(w.value).toFixed(3)).join(",");
  app.graph.setDirtyCanvas(true, true);
}

async function buildMixer(node) {
  // a workflow load fires many connection changes: only the latest build may touch the widgets
  const token = (node.ohBuild = (node.ohBuild || 0) + 1);
  const name = upstreamLoraName(node);
  let info = null;
  if (name) {
    const response = await api.fetchApi(`/ortho_hydra/experts?lora_name=${encodeURIComponent(name)}`);
    info = response.ok ? await response.json() : null;
  }
  if (token !== node.ohBuild) return;
  clearMixer(node);
  node.ohExperts = info;
  if (!info) {
    node.setSize(node.computeSize());
    return;
  }
  const text = (widget(node, "weights")?.value || "").trim();
  const current = text ? text.split(",").map(Number) : [];
  info.expert_names.forEach((label, e) => {
    const start = Number.isFinite(current[e]) ? current[e] : 1 / info.num_experts;
    transient(node.addWidget("slider", `${MIXER_PREFIX} w ${e}: ${label}`, start, () => pushBlend(node),
      { min: 0, max: 1, step: 0.01, precision: 2 }));
  });
  info.expert_names.forEach((label, e) => {
    transient(node.addWidget("button", `${MIXER_PREFIX} pin ${e}: ${label}`, null, () => {
      widget(node, "mode").value = "pin";
      widget(node, "expert").value = e;
      app.graph.setDirtyCanvas(true, true);
    }));
  });
  const renorm = widget(node, "renormalize");
  transient(node.addWidget("toggle", `${MIXER_PREFIX} normalise`, renorm ? renorm.value : true, (v) => {
    if (renorm) renorm.value = v;
  }));
  node.setSize([Math.max(node.size[0], 320), node.computeSize()[1]]);
  app.graph.setDirtyCanvas(true, true);
}

function drawChart(node) {
  const canvas = node.ohChart;
  if (!canvas) return;
  const ctx = canvas.getContext("2d");
  const { width, height } = canvas;
  ctx.fillStyle = "#1c1c1c";
  ctx.fillRect(0, 0, width, height);
  const points = node.ohPoints || [];
  if (!points.length) {
    ctx.fillStyle = "#888";
    ctx.fillText("training chart: waiting for steps", 8, 16);
    return;
  }
  const total = points[points.length - 1].total || points.length;
  const losses = points.map((p) => p.loss);
  const lo = Math.min(...losses), hi = Math.max(...losses);
  const x = (p) => 4 + ((width - 8) * p.step) / total;
  const line = (color, y) => {
    ctx.strokeStyle = color;
    ctx.beginPath();
    points.forEach((p, i) => (i ? ctx.lineTo(x(p), y(p)) : ctx.moveTo(x(p), y(p))));
    ctx.stroke();
  };
  line("#e8a33d", (p) => height - 6 - ((height - 22) * (p.loss - lo)) / Math.max(hi - lo, 1e-9));
  line("#59b3f0", (p) => height - 6 - (height - 22) * p.entropy);
  const last = points[points.length - 1];
  ctx.fillStyle = "#ddd";
  ctx.fillText(`step ${last.step}/${total}  loss ${last.loss.toFixed(4)}  H/lnE ${last.entropy.toFixed(3)}`, 6, 12);
}

app.registerExtension({
  name: "ortho_hydra.ui",
  async nodeCreated(node) {
    const lora = widget(node, "lora_name");
    if (lora && node.comfyClass?.startsWith("OrthoHydra")) {
      const original = lora.callback;
      lora.callback = function (...args) {
        const result = original?.apply(this, args);
        for (const other of app.graph._nodes) {
          if (other.comfyClass === "OrthoHydraRouter") buildMixer(other);
        }
        return result;
      };
    }
    if (node.comfyClass === "OrthoHydraRouter") {
      transient(node.addWidget("button", "refresh experts", null, () => buildMixer(node)));
      const original = node.onConnectionsChange;
      node.onConnectionsChange = function (...args) {
        const result = original?.apply(this, args);
        setTimeout(() => buildMixer(node), 0);
        return result;
      };
      setTimeout(() => buildMixer(node), 50);
    }
    if (node.comfyClass === "OrthoHydraTrain") {
      const canvas = document.createElement("canvas");
      canvas.width = 320;
      canvas.height = 120;
      canvas.className = "ortho-hydra-train-chart";
      node.ohChart = canvas;
      node.ohPoints = [];
      node.addDOMWidget("training_chart", "ortho_hydra_chart", canvas, { serialize: false, getValue() {}, setValue() {} });
      drawChart(node);
    }
  },
  async setup() {
    api.addEventListener("ortho_hydra.train", ({ detail }) => {
      const node = app.graph.getNodeById(Number(detail.node));
      if (!node || !node.ohChart) return;
      if (detail.step <= (node.ohPoints.at(-1)?.step ?? 0)) node.ohPoints = [];
      node.ohPoints.push(detail);
      node.ohChart.dataset.points = String(node.ohPoints.length);
      drawChart(node);
    });
  },
});
