# Two commands matter: `make demo` and `make test`.  Both set up everything first.
PY := .venv/bin/python
export PYTHONUNBUFFERED := 1
# The slow tiers (pytest markers, pyproject.toml): the browser, the studies' smoke runs, the multi-process torchrun,
# the example graphs end to end
SLOW := browser or study or multiprocess or graphs

.PHONY: setup test test-slow test-all test-host lint unit demo demo-assets bench clean

setup:
	@bash scripts/setup_host.sh

lint: setup
	$(PY) -m ruff check .

# The fast tier: everything but the slow tiers
test: setup lint
	$(PY) -m pytest -q -m "not ($(SLOW))"

test-slow: setup
	$(PY) -m pytest -q -m "$(SLOW)"

test-all: setup lint
	$(PY) -m pytest -q

# The same suite, every tier, against any ComfyUI tree (a folder with main.py, or a .tar.gz of one), in its own venv
# with the torch that host needs: make test-host HOST=/path/to/ComfyUI
test-host:
	@if [ -z "$(HOST)" ]; then echo "usage: make test-host HOST=/path/to/ComfyUI (a folder with main.py, or a .tar.gz of one)"; exit 2; fi
	@dir=$$(OH_HOST="$(HOST)" bash scripts/setup_host.sh | tail -n 1) && \
	  OH_COMFYUI="$$dir/ComfyUI" "$$dir/venv/bin/python" -m pytest -q

unit: setup
	$(PY) -m pytest -q tests/unit

demo: setup
	OH_DEMO_GLYPH=$(GLYPH) $(PY) -m scripts.demo

# The files the toy-world graphs in example_workflows/demo/ load, written into the test host (.host/ComfyUI)
demo-assets: setup
	$(PY) -m scripts.demo_assets

bench: setup
	$(PY) -m bench.core

clean:
	rm -rf .venv .host .hosts .cache demo_out bench/out experiments/*/results/quick
