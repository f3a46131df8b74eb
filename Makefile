# The two commands a newcomer runs: `make demo` and `make test`. Each sets up .venv when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Re-install only when the package definition or the pinned versions change.
STAMP := $(VENV)/.vf3d-installed
DEMO_DIR ?= demo-output
export RAY_AUTH_MODE := disabled

.PHONY: setup test demo bench clean

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev,assets]"
	@touch $(STAMP)

setup: $(STAMP)

test: setup
	$(BIN)/python -m pytest

demo: setup
	$(BIN)/vf3d demo --out $(DEMO_DIR)

bench: setup
	$(BIN)/python bench/recon.py
	$(BIN)/python bench/render.py
	$(BIN)/python bench/synthesize.py
	$(BIN)/python bench/train_video.py
	$(BIN)/python bench/train_recon.py

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
