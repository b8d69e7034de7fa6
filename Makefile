# MemoScope: `make run` starts the app, `make test` runs the whole suite, `make test-fast` the unit tests only
# (no lint, no tests marked slow). All set up .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup run test test-fast lint bench demo screenshots clean

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@echo "installing the pinned requirements into $(VENV) (first run: a few minutes)"
	$(PY) -m pip install --progress-bar on -r requirements.txt
	touch $@

setup: $(VENV)/.installed

# Browser tests drive Debian's Chromium (never `playwright install`, which downloads a browser).
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

run: setup
	$(PY) -m streamlit run app.py --server.address 127.0.0.1 --server.headless true --browser.gatherUsageStats false

lint: setup
	$(PY) -m ruff check core tools tests benchmarks app.py views
	$(PY) -m ruff format --check core tools tests benchmarks app.py views
	$(PY) -m mypy

test: setup lint $(CHROMIUM)
	$(PY) -m pytest -q --durations=10 -m "not compile"

# The quick lane while editing: no lint, no browser, none of the tests marked slow (end-to-end runs, training).
test-fast: setup
	$(PY) -m pytest -q --durations=5 -m "not slow and not compile"

demo: setup
	$(PY) -m tools.demo all --profile full

bench: setup $(CHROMIUM)
	$(PY) -m pytest -q -m compile
	PYTHONPATH=. $(PY) benchmarks/search_and_embed.py --write
	PYTHONPATH=. $(PY) benchmarks/generate_speed.py --device cpu --n 32 --steps 20 --write
	PYTHONPATH=. $(PY) benchmarks/scale.py --images 4000 --database 200000 --queries 5000 --write
	PYTHONPATH=. $(PY) benchmarks/planted_copies.py --write --dims 3 2 --epochs 30 --per-kind 10 --background
	PYTHONPATH=. $(PY) benchmarks/verify_resolution.py --write --dims 2 3 --epochs 30 --per-kind 10
	PYTHONPATH=. $(PY) benchmarks/patient_layouts.py --write --epochs 30 --per-kind 10
	PYTHONPATH=. $(PY) benchmarks/calibration_transfer.py --write --per-kind 5
	PYTHONPATH=. $(PY) benchmarks/ratios.py --write
	$(PY) -m tools.readme_tables

SHOWN = overview.png calibrate.png review-2d.png review-3d.png verdicts.png generate.png presentation-mode.png \
	page-demo-2d-compare-1920x1080.png review-layout-demo-2d-1024x768.png

screenshots: setup $(CHROMIUM)
	$(PY) -m pytest -q tests/e2e && mkdir -p docs/screenshots && cd artifacts/screenshots && cp $(SHOWN) ../../docs/screenshots/

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
