"""The real frontend in Debian's chromium: the expert mixer and the live training chart.

Screenshots are written to tests/artifacts/ (git-ignored); docs/ holds the committed copies.
"""

import json
from pathlib import Path

import pytest

from devkit import demo_assets
from devkit.host import ROOT
from devkit.server import ComfyServer

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "tests" / "artifacts"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--no-first-run", "--disable-sync", "--disable-quic"]

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (make setup installs it)")
if not CHROMIUM.exists():
    pytest.skip("Debian's chromium is not installed: make setup installs it with apt-get when run as root "
                "(unset OH_SKIP_BROWSER); this machine could not", allow_module_level=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = demo_assets.prepare_base_directory(tmp_path_factory.mktemp("browser_base"))
    settings = base / "user" / "default" / "comfy.settings.json"  # no first-run template browser over the canvas
    settings.parent.mkdir(parents=True)
    settings.write_text(json.dumps({"Comfy.TutorialCompleted": True}))
    srv = ComfyServer(base_dir=base, log_path=base / "comfyui.log").start()
    yield srv, base
    srv.stop()


@pytest.fixture(scope="module")
def page(server):
    srv, _ = server
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=FLAGS)
        context = browser.new_context(viewport={"width": 1600, "height": 1000})  # a fresh profile
        tab = context.new_page()
        tab.goto(srv.url)
        tab.wait_for_function("() => window.app && window.app.graph && window.app.extensionManager", timeout=120_000)
        yield tab
        browser.close()


def _show(page, node_type: str, path: Path) -> None:
    """Centre the canvas on a node, zoomed so its widgets are readable, and take the screenshot."""
    page.evaluate("""t => { const c = window.app.canvas;
        const n = window.app.graph._nodes.find(n => n.comfyClass === t);
        c.ds.scale = 1.3; c.centerOnNode(n); window.app.graph.setDirtyCanvas(true, true); }""", node_type)
    page.wait_for_timeout(800)
    page.screenshot(path=str(path))


def _load(page, name: str) -> None:
    workflow = json.loads((ROOT / "example_workflows" / name).read_text())
    page.evaluate("wf => window.app.loadGraphData(wf)", workflow)


ROUTER = "() => window.app.graph._nodes.find(n => n.comfyClass === 'OrthoHydraRouter')"


def test_mixer_shows_one_slider_per_expert_and_drives_the_prompt(server, page):
    srv, base = server
    _load(page, "02_pin_blend_gallery.json")
    page.wait_for_function(f"() => ({ROUTER})().widgets.filter(w => w.name.startsWith('mix: w ')).length === 2",
                           timeout=30_000)
    page.wait_for_timeout(1000)  # let any late connection-change rebuilds settle
    assert page.evaluate(f"() => ({ROUTER})().widgets.filter(w => w.name.startsWith('mix: w ')).length") == 2
    labels = page.evaluate(f"() => ({ROUTER})().widgets.filter(w => w.name.startsWith('mix: ')).map(w => w.name)")
    assert any(demo_assets.STYLE_NAMES[1] in label for label in labels)
    assert sum(label.startswith("mix: pin ") for label in labels) == 2
    # move the second expert's slider the way the canvas does: set the value, fire the widget callback
    page.evaluate(f"""() => {{
        const node = ({ROUTER})();
        const slider = node.widgets.find(w => w.name.startsWith('mix: w 1'));
        slider.value = 0.8;
        slider.callback(slider.value);
        window.app.graph.setDirtyCanvas(true, true);
    }}""")
    state = page.evaluate(f"() => {{ const n = ({ROUTER})(); return [n.widgets.find(w => w.name === 'mode').value, "
                          "n.widgets.find(w => w.name === 'weights').value]; }")
    assert state[0] == "blend" and state[1].split(",")[1] == "0.800"
    prompt = page.evaluate("async () => (await window.app.graphToPrompt()).output")
    router = next(v for v in prompt.values() if v["class_type"] == "OrthoHydraRouter")
    assert router["inputs"]["mode"] == "blend" and not any(k.startswith("mix:") for k in router["inputs"])
    page.evaluate("() => window.app.queuePrompt(0, 1)")
    done = srv.wait_history(1)
    entry = done[-1]
    assert entry["status"]["status_str"] == "success", entry["status"]
    images = [i for out in entry["outputs"].values() for i in out.get("images", [])]
    assert images and all((base / "output" / i["filename"]).is_file() for i in images)
    _show(page, "OrthoHydraRouter", ARTIFACTS / "mixer.png")


def test_training_chart_receives_points(server, page):
    srv, _ = server
    before = len(srv.get("/history"))
    _load(page, "04_train_then_apply.json")
    page.evaluate("() => window.app.queuePrompt(0, 1)")
    srv.wait_history(before + 1)
    points = page.evaluate("() => Number(window.app.graph._nodes.find(n => n.comfyClass === 'OrthoHydraTrain')"
                           ".ohChart.dataset.points || 0)")
    assert points >= 10
    _show(page, "OrthoHydraTrain", ARTIFACTS / "training_chart.png")


def test_trace_node_previews_its_heatmap(server, page):
    srv, _ = server
    before = len(srv.get("/history"))
    _load(page, "05_router_trace.json")
    page.evaluate("() => window.app.queuePrompt(0, 1)")
    entry = srv.wait_history(before + 1)[-1]
    assert entry["status"]["status_str"] == "success", entry["status"]
    trace_id = next(k for k, v in entry["prompt"][2].items() if v["class_type"] == "OrthoHydraRouterTrace")
    assert entry["outputs"][trace_id]["images"]  # the heatmap preview the node shows
    page.wait_for_function("() => { const n = window.app.graph._nodes.find(n => n.comfyClass === "
                           "'OrthoHydraRouterTrace'); return n && n.imgs && n.imgs.length > 0; }", timeout=30_000)
    _show(page, "OrthoHydraRouterTrace", ARTIFACTS / "trace_heatmap.png")


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "example_workflows").glob("*.json")))
def test_every_example_workflow_loads_with_no_missing_nodes(page, name):
    _load(page, name)
    missing = page.evaluate("() => window.app.graph._nodes.filter(n => !LiteGraph.registered_node_types[n.type])"
                            ".map(n => n.type)")
    assert missing == []
    expected = len(json.loads((ROOT / "example_workflows" / name).read_text())["nodes"])
    assert page.evaluate("() => window.app.graph._nodes.length") == expected
    page.evaluate("() => { const c = window.app.canvas; c.ds.scale = 0.55; c.ds.offset = [40, 60];"
                  " window.app.graph.setDirtyCanvas(true, true); }")
    page.wait_for_timeout(500)
    page.screenshot(path=str(ARTIFACTS / f"workflow_{Path(name).stem}.png"), clip={"x": 60, "y": 80,
                                                                                  "width": 1200, "height": 800})
