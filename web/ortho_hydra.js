// Ortho-Hydra front-end: an expert mixer on the router node and live training charts on the trainer.
// Plain ES module on the frontend's own APIs (registerExtension, addWidget, addDOMWidget, api events).
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const MIXER_PREFIX = "mix:";
const SCHEDULE = "schedule (keyframes)";

// The router widgets each mode reads (ortho_hydra/override_settings.py rule_from); the rest stay hidden but keep their values.
const MODE_WIDGETS = {
  live: [], pin: ["expert"], blend: ["weights", "renormalize", "norm_control"], bias: ["weights"],
  temperature: ["temperature"], top_k: ["top_k"], profile: [],
  omcd: ["weights", "keep", "mc_seed"], mc_dropout: ["weights", "keep", "mc_seed"],
};
// Keyframe lines carry their own arguments; only these widgets are read as fallbacks (parse_keyframes).
const KEYFRAME_WIDGETS = { blend: ["renormalize"], omcd: ["keep", "mc_seed"], mc_dropout: ["keep", "mc_seed"] };
const ALWAYS = ["group", "block_start", "block_end", "layer_regex", "side"];
const ROUTER_WIDGETS = new Set([...ALWAYS, "mode", "expert", "weights", "renormalize", "temperature", "top_k",
  "start_percent", "end_percent", "keyframes", "interpolation", "keep", "mc_seed", "norm_control"]);

function widget(node, name) {
  return node.widgets?.find((w) => w.name === name);
}

// Where the router's adapter comes from, following its adapter link upstream through the node's own graph (a subgraph
// has its own links; app.graph would be the root): a loader's file (read by the server route), or the experts that
// any other adapter-making node (bank, trainer, fit, merge, transfer) sent with its last run.
function upstreamSource(node, seen = new Set()) {
  if (!node || seen.has(node.id)) return null;
  seen.add(node.id);
  const lora = widget(node, "lora_name");
  if (lora && node.comfyClass?.startsWith("OrthoHydra")) return { loraName: lora.value };
  if (node.ohAdapterInfo && node.comfyClass !== "OrthoHydraRouter") return { info: node.ohAdapterInfo };
  const slot = node.inputs?.findIndex((i) => i.name === "adapter");
  const graph = node.graph;
  if (slot === undefined || slot < 0 || node.inputs[slot].link == null || !graph) {
    return node.ohAdapterInfo ? { info: node.ohAdapterInfo } : null;
  }
  const links = graph.links;
  const link = links instanceof Map ? links.get(node.inputs[slot].link) : links?.[node.inputs[slot].link];
  const upstream = link ? upstreamSource(graph.getNodeById(link.origin_id), seen) : null;
  return upstream ?? (node.ohAdapterInfo ? { info: node.ohAdapterInfo } : null);
}

function routersIn(graph) {
  return (graph?._nodes ?? []).filter((n) => n.comfyClass === "OrthoHydraRouter");
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

// After widget changes. The canvas only needs a new size. Nodes 2.0 differs by front end:
// - 1.3x renders a copy of each widget's value and options that its node manager takes when a node is added to the
//   graph, so the node is announced again through the graph's onNodeAdded hook; that hook also re-wraps every widget
//   callback, so the callbacks are put back afterwards instead of nesting one wrapper deeper per change.
// - 1.49 binds each widget to its reactive widget store (the widget then has a widgetId) and re-renders from it when a
//   value changes or a widget is added or removed, reading options.hidden afresh. Announcing the node again there
//   wraps its node.widgets accessor once more per change, so every later read of node.widgets walks one getter
//   deeper (measured: 2000 reads after 600 mode changes took 42 s, 0.07 s without): never re-announce a store-bound node.
function refresh(node) {
  node.setSize([node.size[0], node.computeSize()[1]]);
  const graph = node.graph;
  // while a workflow loads, the manager takes its copy after the graph is configured anyway
  const vue = globalThis.LiteGraph?.vueNodesMode && !app.configuringGraph;
  const storeBound = (node.widgets || []).some((w) => w.widgetId != null);
  if (vue && !storeBound && graph?.onNodeAdded && graph.getNodeById(node.id) === node) {
    const callbacks = (node.widgets || []).map((w) => [w, w.callback]);
    graph.onNodeAdded(node);
    for (const [w, callback] of callbacks) w.callback = callback;
  }
  graph?.setDirtyCanvas(true, true);
}

function keyframeModes(text) {
  const modes = new Set();
  for (const raw of text.split("\n")) {
    const parts = raw.split("#")[0].trim().split(/\s+/).filter(Boolean);
    if (parts.length && Number.isFinite(Number(parts[0]))) parts.shift();
    if (parts.length) modes.add(parts[0]);
  }
  return modes;
}

function scheduling(node) {
  return String(widget(node, "keyframes")?.value ?? "").trim() !== "";
}

// The names of the router widgets that the current settings read (build_override: keyframes replace mode and
// the window; interpolation matters between two frames, so with a window ending before 1 too).
function usedWidgets(node) {
  const value = (name) => widget(node, name)?.value;
  const used = new Set(ALWAYS);
  if (scheduling(node)) {
    used.add("keyframes").add("interpolation");
    for (const mode of keyframeModes(String(value("keyframes")))) (KEYFRAME_WIDGETS[mode] || []).forEach((n) => used.add(n));
  } else {
    used.add("mode").add("start_percent").add("end_percent");
    (MODE_WIDGETS[value("mode")] || []).forEach((n) => used.add(n));
    if (Number(value("end_percent")) < 1) used.add("interpolation");
  }
  if (value("norm_control")) used.add("norm_control"); // when on it refuses all but a plain blend: never hide it
  return used;
}

// The canvas's widget layout (front end 1.32) still gives a hidden widget its row; a computeSize of zero height
// takes it out (it wins over a DOM widget's computeLayoutSize too). The widget's own one comes back on show.
// 1.49 lays out only the widgets its getLayoutWidgets returns (not hidden ones), so there this changes nothing.
const ZERO_SIZE = () => [0, -4];
function collapse(w, hidden) {
  if (hidden && !("ohComputeSize" in w)) {
    w.ohComputeSize = Object.getOwnPropertyDescriptor(w, "computeSize");
    w.computeSize = ZERO_SIZE;
  } else if (!hidden && "ohComputeSize" in w) {
    if (w.ohComputeSize) Object.defineProperty(w, "computeSize", w.ohComputeSize);
    else delete w.computeSize;
    delete w.ohComputeSize;
  }
}

function updateVisibility(node) {
  const used = usedWidgets(node);
  for (const w of node.widgets || []) {
    if (!ROUTER_WIDGETS.has(w.name)) continue;
    const linked = node.inputs?.find((i) => i.widget?.name === w.name)?.link != null;
    const hidden = !used.has(w.name) && !linked;
    w.hidden = hidden; // the canvas (LGraphNode.isWidgetVisible) skips drawing and clicks
    collapse(w, hidden);
    w.options = w.options || {};
    w.options.hidden = hidden; // Nodes 2.0 (NodeWidgets skips options.hidden)
  }
  const toggle = widget(node, SCHEDULE);
  if (toggle) toggle.value = scheduling(node);
  refresh(node);
}

// The current mode and window as keyframe text, so switching to a schedule starts from what the node did.
function asKeyframes(node) {
  const value = (name) => widget(node, name)?.value;
  const mode = value("mode");
  const args = { pin: value("expert"), blend: value("weights"), bias: value("weights"), temperature: value("temperature"),
    top_k: value("top_k"), omcd: value("weights"), mc_dropout: value("weights") }[mode];
  const lines = [`${Number(value("start_percent")).toFixed(2)} ${mode}${args === undefined ? "" : ` ${args}`}`.trim()];
  if (Number(value("end_percent")) < 1) lines.push(`${Number(value("end_percent")).toFixed(2)} live`);
  return lines.join("\n");
}

function setScheduling(node, on) {
  const keyframes = widget(node, "keyframes");
  if (!keyframes || on === scheduling(node)) return updateVisibility(node);
  if (on) {
    keyframes.value = node.ohStashedKeyframes || asKeyframes(node);
  } else {
    node.ohStashedKeyframes = keyframes.value; // hidden text would still replace the mode: clear it, keep a copy
    keyframes.value = "";
  }
  updateVisibility(node);
}

function setupRouter(node) {
  for (const name of ["mode", "end_percent", "keyframes", "norm_control"]) {
    const w = widget(node, name);
    if (!w) continue;
    const original = w.callback;
    w.callback = function (...args) {
      const result = original?.apply(this, args);
      updateVisibility(node);
      return result;
    };
  }
  // appended after the real widgets: widgets_values indexes every widget, so a transient one in between would
  // leave a hole that shifts the values on load
  transient(node.addWidget("toggle", SCHEDULE, scheduling(node), (v) => setScheduling(node, !!v)));
  const configure = node.onConfigure;
  node.onConfigure = function (...args) {
    const result = configure?.apply(this, args);
    updateVisibility(node);
    return result;
  };
  updateVisibility(node);
}

function pushBlend(node) {
  const sliders = node.widgets.filter((w) => w.name.startsWith(`${MIXER_PREFIX} w `));
  setScheduling(node, false); // a schedule would override the mixer's blend
  widget(node, "mode").value = "blend";
  widget(node, "weights").value = sliders.map((w) => Number(w.value).toFixed(3)).join(",");
  updateVisibility(node);
}

// storedValue: front end 1.49 keeps each widget's value in its widget store under graph, node and widget name, and a
// removed widget's entry stays there; a widget added later under the same name takes that old value instead of the
// one given to addWidget. So a rebuilt mixer would show the sliders as they were, not the router's weights: each
// mixer widget gets its value again once added.
async function buildMixer(node) {
  // a workflow load fires many connection changes: only the latest build may touch the widgets
  const token = (node.ohBuild = (node.ohBuild || 0) + 1);
  const source = upstreamSource(node);
  let info = source?.info ?? null;
  if (source?.loraName) {
    const response = await api.fetchApi(`/ortho_hydra/experts?lora_name=${encodeURIComponent(source.loraName)}`);
    info = response.ok ? await response.json() : null;
  }
  if (token !== node.ohBuild) return;
  clearMixer(node);
  node.ohExperts = info;
  if (!info) {
    refresh(node);
    return;
  }
  const text = (widget(node, "weights")?.value || "").trim();
  const current = text ? text.split(",").map(Number) : [];
  info.expert_names.forEach((label, e) => {
    const start = Number.isFinite(current[e]) ? current[e] : 1 / info.num_experts;
    // the callback sets the value too: Nodes 2.0 (1.3x) only writes it back into widgets it saw when the node was added
    const slider = transient(node.addWidget("slider", `${MIXER_PREFIX} w ${e}: ${label}`, start, (v) => {
      slider.value = Number(v);
      pushBlend(node);
    }, { min: 0, max: 1, step: 0.01, precision: 2 }));
    slider.value = start; // see storedValue
  });
  info.expert_names.forEach((label, e) => {
    transient(node.addWidget("button", `${MIXER_PREFIX} pin ${e}: ${label}`, null, () => {
      setScheduling(node, false);
      widget(node, "mode").value = "pin";
      widget(node, "expert").value = e;
      updateVisibility(node);
    }));
  });
  const renorm = widget(node, "renormalize");
  const normalise = transient(node.addWidget("toggle", `${MIXER_PREFIX} normalise`, renorm ? renorm.value : true, (v) => {
    normalise.value = !!v;
    if (renorm) renorm.value = !!v;
    refresh(node);
  }));
  normalise.value = renorm ? renorm.value : true; // see storedValue
  node.setSize([Math.max(node.size[0], 320), node.size[1]]);
  refresh(node);
}

// Builds are requested by the node's creation, every connection change (many while a workflow loads), the loader's
// file and the refresh button; ohMixerPending counts those not yet finished, so anyone (the browser test too) can
// tell when the mixer has settled.
function requestMixer(node, delay = 0) {
  node.ohMixerPending = (node.ohMixerPending || 0) + 1;
  setTimeout(() => buildMixer(node).finally(() => { node.ohMixerPending -= 1; }), delay);
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

// A node's summary or report (its UI text output) shown on the node, in a read-only box that is never saved.
function showReport(node, text) {
  let box = node.ohReport;
  if (!box) {
    box = document.createElement("pre");
    box.className = "ortho-hydra-report";
    box.style.cssText = "margin:0;padding:4px;font-size:10px;white-space:pre-wrap;overflow:auto;max-height:160px;"
      + "color:var(--input-text, #ddd);background:var(--comfy-input-bg, #222);border-radius:4px;";
    node.ohReport = box;
    // its own height range, so a box added beside another DOM widget (the trainer's chart) does not squeeze it
    transient(node.addDOMWidget("report", "ortho_hydra_report", box, { serialize: false, getValue() {}, setValue() {},
      getMinHeight: () => 48, getMaxHeight: () => 160 }));
  }
  box.textContent = text;
  refresh(node);
}

app.registerExtension({
  name: "ortho_hydra.ui",
  async nodeCreated(node) {
    if (node.comfyClass?.startsWith("OrthoHydra")) {
      const executed = node.onExecuted;
      node.onExecuted = function (message) {
        const result = executed?.apply(this, arguments);
        const text = message?.text;
        if (text?.length) showReport(this, Array.isArray(text) ? text.join("\n") : String(text));
        const experts = message?.ortho_hydra_experts?.[0];
        if (experts) {  // a mixer downstream can now name its sliders, whatever made the adapter
          const changed = JSON.stringify(experts) !== JSON.stringify(this.ohAdapterInfo);
          this.ohAdapterInfo = experts;
          if (changed) for (const router of routersIn(this.graph)) if (router !== this) requestMixer(router);
        }
        return result;
      };
    }
    const lora = widget(node, "lora_name");
    if (lora && node.comfyClass?.startsWith("OrthoHydra")) {
      const original = lora.callback;
      lora.callback = function (...args) {
        const result = original?.apply(this, args);
        for (const other of routersIn(node.graph ?? app.graph)) requestMixer(other);
        return result;
      };
    }
    if (node.comfyClass === "OrthoHydraRouter") {
      setupRouter(node);
      transient(node.addWidget("button", "refresh experts", null, () => requestMixer(node)));
      const original = node.onConnectionsChange;
      node.onConnectionsChange = function (...args) {
        const result = original?.apply(this, args);
        requestMixer(node);
        return result;
      };
      requestMixer(node, 50);
    }
    if (node.comfyClass === "OrthoHydraTrain") {
      // a new trainer keeps its seed (a saved graph's own value is applied after this): re-queueing must not retrain
      // a different adapter over the same file
      const control = node.widgets?.find((w) => w.name === "control_after_generate");
      if (control) control.value = "fixed";
      const canvas = document.createElement("canvas");
      canvas.width = 320;
      canvas.height = 120;
      canvas.className = "ortho-hydra-train-chart";
      node.ohChart = canvas;
      node.ohPoints = [];
      // not saved: the front end writes a DOM widget into widgets_values unless the widget itself says no
      transient(node.addDOMWidget("training_chart", "ortho_hydra_chart", canvas,
        { serialize: false, getValue() {}, setValue() {}, getMinHeight: () => 124 }));
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
