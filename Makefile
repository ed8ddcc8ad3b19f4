# Two commands do everything on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.diffreid-installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export RAY_USAGE_STATS_ENABLED := 0
# local Ray clusters bind to 127.0.0.1 only
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0

.PHONY: demo demo-quick test bench reproduce toy-models install clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

# Re-installs only when pyproject.toml changed (the stamp is older), so a second run is instant.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev]'
	$(BIN)/python -c "import diffreid, torch, timm, diffusers, ray, faiss"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/diffreid demo

demo-quick: $(STAMP)
	$(BIN)/diffreid demo --quick

# the browser test (tests/test_serve_page.py) drives Debian's chromium through chromium-driver (same version);
# installed once when missing and we are root, as on CI; otherwise that test says what to install and skips
CHROMEDRIVER := /usr/bin/chromedriver
$(CHROMEDRIVER):
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing chromium + chromium-driver (apt) for the browser test"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null; \
	else echo "no $(CHROMEDRIVER): apt-get install chromium chromium-driver to run tests/test_serve_page.py"; fi

test: $(STAMP) $(CHROMEDRIVER)
	$(BIN)/python -m pytest -q -ra --durations=30

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

# the miniature reproduction (Tables 2-6 and the VI gain; about 4 h on 2 cores, resumable; without its build variants and VI about 2 h): outputs/reproduce/RESULTS.md
reproduce: $(STAMP)
	$(BIN)/python -m ray_jobs.reproduce --config configs/toy-reproduce.yaml --out outputs/reproduce

# re-train the shipped toy models into diffreid/assets (about an hour on 2 cores; seeded)
toy-models: $(STAMP)
	$(BIN)/python -m ray_jobs.train_toy_base

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
