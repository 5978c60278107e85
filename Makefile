# Two commands matter: `make demo` and `make test`.  Both set up everything first.
PY := .venv/bin/python
export PYTHONUNBUFFERED := 1

.PHONY: setup test lint unit demo bench clean

setup:
	@bash scripts/setup_host.sh

lint: setup
	$(PY) -m ruff check .

test: setup lint
	$(PY) -m pytest -q

unit: setup
	$(PY) -m pytest -q tests/unit

demo: setup
	$(PY) scripts/demo.py

bench: setup
	$(PY) bench/core.py

clean:
	rm -rf .venv .host demo_out bench/out
