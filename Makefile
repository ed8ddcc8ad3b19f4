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

.PHONY: demo demo-quick test bench install clean

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

test: $(STAMP)
	$(BIN)/python -m pytest -q -ra --durations=15

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
