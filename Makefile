# The two commands a newcomer runs: `make demo` and `make test`. Each sets up .venv when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Re-install only when the package definition or the pinned versions change.
STAMP := $(VENV)/.vf3d-installed
DEMO_DIR ?= demo-output
export RAY_AUTH_MODE := disabled

.PHONY: setup browser test test-fast test-slow lint format demo bench clean vendor-viewer autoscale-demo

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev,assets]"
	@touch $(STAMP)

setup: $(STAMP)

# The web page's browser test needs Debian's chromium and chromedriver: installed here when we
# are root with apt-get; otherwise that test skips itself.
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing chromium and chromium-driver for the browser test"; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } \
			|| echo "note: could not install chromium; the browser test will be skipped"; \
	else echo "note: /usr/bin/chromium or /usr/bin/chromedriver missing; the browser test will be skipped"; fi

# Two lanes that together are `make test`: test-fast, the unit tests without the `heavy` ones (a few
# minutes on 2 cores), and test-slow, the heavy unit tests plus tests/integration and tests/e2e
# (marked `integration`: local Ray clusters, trainings, Serve, the browser).
#
# Each lane runs on TEST_WORKERS pytest-xdist workers. Most of a Ray test's time is spent waiting
# (process and actor start-up, health-check polls, a killed run being noticed), so two workers
# overlap those waits on 2 cores. A test module, and the modules sharing the `vf3d serve` endpoint,
# stay on one worker (tests/conftest.py), which hands out the longest first. TEST_WORKERS=0 runs
# everything in this process, one test at a time.
TEST_WORKERS ?= 2
PYTEST := $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder

# The full run ends with its 25 slowest setups and calls (pytest --durations), where time goes.
test: setup browser
	$(PYTEST) --durations=25

test-fast: setup
	$(PYTEST) tests/unit -q -m "not heavy"

test-slow: setup browser
	$(PYTEST) -m "heavy or integration"

# ruff (configured in pyproject.toml): lint and formatting, checked by .ci/run before the tests.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

demo: setup
	$(BIN)/vf3d demo --out $(DEMO_DIR)

# A synthesis job on a local autoscaling cluster with cluster/aws.yaml's node types (logical GPUs):
# prints the node count over time as the autoscaler adds and removes GPU nodes.
autoscale-demo: setup
	$(BIN)/python cluster/local_autoscaling.py demo

# `make bench` runs every benchmark (BENCH_ARGS=--quick for the smoke-test sizes) and writes one
# table of their ratios to $(BENCH_DIR)/summary.md.
BENCH_DIR ?= bench-results
BENCH_ARGS ?=
BENCHMARKS := recon render synthesize train_video train_recon checkpoint_upload serve_load release_fidelity scale parquet_footers train_overhead process_imports

bench: setup
	@mkdir -p $(BENCH_DIR)
	@for name in $(BENCHMARKS); do \
		echo "=== bench/$$name.py $(BENCH_ARGS)"; \
		$(BIN)/python bench/$$name.py $(BENCH_ARGS) --json $(BENCH_DIR)/$$name.json || exit 1; \
	done
	$(BIN)/python bench/summary.py $(BENCH_DIR)

clean:
	rm -rf $(DEMO_DIR) $(BENCH_DIR) .pytest_cache

# `make image REGISTRY=...`: the cluster images from cluster/Dockerfile, tagged as cluster/*.yaml
# expect ($(REGISTRY)/vf3d:<ray version>-py311-gpu for GPU nodes, ...-py311 for the head and CPU
# nodes); then `docker push` both. IMAGE_ARGS=--build-arg EFA=1 adds AWS EFA to the GPU image.
REGISTRY ?= your-registry.example.com
IMAGE_TAG := 2.60.0-py311
IMAGE_ARGS ?=
.PHONY: image
image:
	docker build -f cluster/Dockerfile $(IMAGE_ARGS) -t $(REGISTRY)/vf3d:$(IMAGE_TAG)-gpu .
	docker build -f cluster/Dockerfile --build-arg BASE_IMAGE=rayproject/ray:$(IMAGE_TAG) \
		--build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu -t $(REGISTRY)/vf3d:$(IMAGE_TAG) .

# The web page's 3D viewer, vendored (served by the app itself, never from a CDN): re-fetch the
# pinned release from the npm registry and check it against the sha256 recorded beside it.
VIEWER_VERSION := 4.4.0
VIEWER_DIR := platform/vf3d/serving/static/vendor
vendor-viewer:
	@tmp=$$(mktemp -d) && cd $$tmp && npm pack --silent @google/model-viewer@$(VIEWER_VERSION) >/dev/null \
		&& tar xzf google-model-viewer-$(VIEWER_VERSION).tgz && cd - >/dev/null \
		&& cp $$tmp/package/dist/model-viewer.min.js $(VIEWER_DIR)/model-viewer-$(VIEWER_VERSION).min.js \
		&& cp $$tmp/package/LICENSE $(VIEWER_DIR)/LICENSE-model-viewer && rm -rf $$tmp
	@$(PYTHON) -c "import hashlib, json, sys; d = '$(VIEWER_DIR)'; pins = json.load(open(d + '/vendored.json')); \
		bad = [n for n, p in pins.items() if hashlib.sha256(open(d + '/' + n, 'rb').read()).hexdigest() != p['sha256']]; \
		sys.exit('sha256 differs from vendored.json: ' + ', '.join(bad)) if bad else print('vendored viewer matches its pin')"
