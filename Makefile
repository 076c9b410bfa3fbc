# Quick start: `make demo` runs the main job, `make test` runs the tests.
# Both create the virtual environment in .venv first when it is missing or stale.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_OUT ?= demo-run

.PHONY: venv demo test lint bench clean browser

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/filter-pool demo --out $(DEMO_OUT)

test: $(STAMP) browser
	$(BIN)/ruff check .
	# the reinforce tests' tiny random CoCa met NaN sampling under some hash seeds: open_clip left its
	# decoder's text_projection uninitialised (now set in curate/models/spec.py); pinned until the
	# suite has run clean under other seeds
	PYTHONHASHSEED=0 $(BIN)/python -m pytest -q

# The report test opens the HTML report in headless Chromium (Debian's chromium package).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the report test"; \
	  ( $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    $(SUDO) apt-get install -y -qq chromium >/dev/null ) || \
	  echo "warning: could not install chromium; the browser test is skipped outside CI"; }

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python benchmarks/score_throughput.py

clean:
	rm -rf $(VENV) $(DEMO_OUT)
