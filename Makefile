# Two commands on a fresh machine with only Python and apt: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
HOST   ?= 127.0.0.1
PORT   ?= 8000
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: run test bench bench-scale index screenshot browser clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch==2.13.0 is pinned in pyproject.toml: the CPU build on this machine.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

index/CURRENT: | $(STAMP)
	$(BIN)/assistant reindex

index: $(STAMP)
	$(BIN)/assistant reindex

run: $(STAMP) index/CURRENT
	$(BIN)/assistant serve --host $(HOST) --port $(PORT)

# Debian's Chromium for the browser tests; Playwright never downloads its own browser.
browser:
	@command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || \
	  { SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium; }

test: $(STAMP) browser
	$(BIN)/python -m pytest -q

bench: $(STAMP) index/CURRENT
	$(BIN)/python tests/bench.py
	$(BIN)/python tests/bench_load.py
	$(BIN)/python tests/bench_reindex.py

# Cost against library size (issue 11): builds libraries of 10k and 100k passages in
# $$TMPDIR/assistant-bench-scale (real text, stand-in vectors: see the script), then the plot.
# SCALE_SIZES="10000 100000 1000000" adds the million (a long build: run it with nice).
SCALE_SIZES ?= 10000 100000
bench-scale: $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]'
	for n in $(SCALE_SIZES); do nice -n 10 $(BIN)/python tests/bench_scale.py --passages $$n --json || exit 1; done
	$(BIN)/python tests/bench_scale.py --plot web/scale.png

screenshot: $(STAMP) browser index/CURRENT
	$(BIN)/python tests/screenshot.py web/screenshot.png
	$(BIN)/python tests/screenshot.py --admin web/screenshot-admin.png

clean:
	rm -rf $(VENV) index/*
