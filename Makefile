# Two commands do all the set-up on a fresh machine (see README.md):
#   make demo   set up, then run the main job on the bundled samples
#   make test   set up, then run every test but the real-cluster builds (make test-clusters) and the benchmarks'
#               smallest modes (make test-benchmarks); CI runs all three
#   make lint   ruff: the formatting and lint rules of pyproject.toml (CI runs it before the tests)
#   make lock   regenerate the locks (requirements/*.lock) from pyproject.toml and requirements/label-studio.in,
#               taking the newest versions that resolve; then `make test` is the upgrade path
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
# Only the locks decide versions: every distribution, transitive ones included, pinned with hashes.
MAIN_LOCK := requirements/main.lock
LS_LOCK := requirements/label-studio.lock
# Re-install only when the locks (or the project's declarations) change; otherwise `make test` starts at once.
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml $(MAIN_LOCK) | sha256sum | cut -c1-12)
DEMO_OUT ?= out/demo
# Real NEON aerial tiles read out of the deepforest 2.1.0 wheel (MIT) at set-up; or name your own folder.
DEMO_IMAGERY ?= .demo-data/imagery
# tiny: random-weight models built locally (offline, masks meaningless); default: Florence-2 + GroundingDINO + SAM.
DEMO_MODELS ?= tiny

LS_VENV := .venv-ls
LS_STAMP := $(LS_VENV)/.installed-$(shell cat $(LS_LOCK) | sha256sum | cut -c1-12)
# The platform the locks are resolved for: the machines here, CI, the Docker image and CUDA boxes.
LOCK_FLAGS := --quiet --python-version 3.11 --python-platform x86_64-manylinux_2_28 --generate-hashes --upgrade \
	--custom-compile-command 'make lock'

.PHONY: demo test test-clusters test-benchmarks lint setup lock clean

setup: $(STAMP) $(LS_STAMP)

# Label Studio in a venv of its own: installed beside Prefect it downgrades Prefect's dependencies.
$(LS_STAMP): $(LS_LOCK)
	@test -x $(LS_VENV)/bin/python || $(PYTHON) -m venv $(LS_VENV)
	@echo "Installing Label Studio into $(LS_VENV) (its own venv) from $(LS_LOCK)..."
	$(LS_VENV)/bin/python -m pip --disable-pip-version-check install -q --require-hashes --no-deps -r $(LS_LOCK)
	$(LS_VENV)/bin/python requirements/lockcheck.py $(LS_VENV)/bin/python $(LS_LOCK) --prune
	@rm -f $(LS_VENV)/.installed-*
	@touch $@

# torch 2.14.1 + torchvision 0.29.1 are in the lock like everything else (pip takes them from local disk
# where the machine has them; the hashes are PyPI's). The project itself goes in editable, without deps.
$(STAMP): pyproject.toml $(MAIN_LOCK)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "Installing $(MAIN_LOCK) into $(VENV), then the project..."
	$(PIP) install -q --require-hashes --no-deps -r $(MAIN_LOCK)
	$(PIP) install -q --no-deps --no-build-isolation -e .
	$(PY) requirements/lockcheck.py $(PY) $(MAIN_LOCK) --prune
	@# docker-compose (Debian's 1.29) validates docker-compose.yml in the tests; no engine is needed.
	@command -v docker-compose >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& (apt-get install -y -q docker-compose >/dev/null 2>&1 || (apt-get update -q >/dev/null && apt-get install -y -q docker-compose >/dev/null)) \
		|| echo "note: docker-compose not installed; its validation tests will be skipped"; }
	@# Headless Chromium + its driver (Debian's) for the Label Studio browser test; nothing is downloaded at test time.
	@command -v chromedriver >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& (apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || (apt-get update -q >/dev/null && apt-get install -y -q chromium chromium-driver >/dev/null)) \
		|| echo "note: chromium/chromium-driver not installed; the browser test will be skipped"; }
	@rm -f $(VENV)/.installed-*
	@touch $@

demo: $(STAMP)
	@mkdir -p $(DEMO_OUT)
	$(VENV)/bin/ovrsis categories --taxonomy ovrsis95k --captions demo/captions.jsonl --out $(DEMO_OUT)/categories.jsonl --preview 20
	@if [ "$(DEMO_IMAGERY)" = ".demo-data/imagery" ]; then $(PY) demo/fetch_imagery.py $(DEMO_IMAGERY); fi
	$(VENV)/bin/ovrsis annotate $(DEMO_IMAGERY) --taxonomy ovrsis95k --models $(DEMO_MODELS) \
		--captions demo/imagery_captions.jsonl --tile-size 512 --overlap 64 --out $(DEMO_OUT)/annotate
	@printf 'inputs: ["%s"]\ncaptions: "%s"\nmodels: "%s"\noutput: "%s"\ntiling: {tile_size: 512, overlap: 64}\nselection: {target_tiles: 10}\nshards: {max_samples: 8, val_fraction: 0.25}\n' \
		"$(abspath $(DEMO_IMAGERY))" "$(abspath demo/imagery_captions.jsonl)" "$(DEMO_MODELS)" "$(abspath $(DEMO_OUT))/build" > $(DEMO_OUT)/build.yaml
	PREFECT_HOME=$(CURDIR)/.prefect PREFECT_SERVER_ANALYTICS_ENABLED=false $(VENV)/bin/ovrsis build --config $(DEMO_OUT)/build.yaml
	$(VENV)/bin/ovrsis shards verify $(DEMO_OUT)/build
	$(VENV)/bin/piseg train --shards $(DEMO_OUT)/build --backbone tiny --iters 20 --out $(DEMO_OUT)/piseg
	$(VENV)/bin/piseg predict --checkpoint $(DEMO_OUT)/piseg/checkpoints/final.pt --classes "tree; building; road; grass" \
		--out $(DEMO_OUT)/predictions $$(find $(DEMO_IMAGERY) -maxdepth 1 -type f \( -iname '*.tif' -o -iname '*.tiff' -o -iname '*.png' -o -iname '*.jpg' \) | sort)
	@echo "Demo outputs are in $(DEMO_OUT)/: categories.jsonl; annotate/ (records, masks, overlays, stitched GeoTIFFs);"
	@echo "build/ (the Prefect build: shards, manifest.json, report/balance.md, records, masks);"
	@echo "piseg/ (a tiny Pi-Seg trained on those shards: checkpoints, log.jsonl); predictions/ (its masks and overlays)"

# the real Dask and Ray cluster builds (~4 min) run apart, so `make test` stays near 15 min; CI runs both
test: $(STAMP) $(LS_STAMP)
	$(PY) -m pytest -q -m "not cluster and not bench_smoke"

test-clusters: $(STAMP)
	$(PY) -m pytest -q -m cluster

# every script under benchmarks/ in its smallest mode (--smoke), so none rots when the code moves; CI runs it
test-benchmarks: $(STAMP) $(LS_STAMP)
	$(PY) -m pytest -q -m bench_smoke

# uv (in the dev extra) resolves from PyPI; constraints.txt keeps torch and torchvision where they are.
lock: $(STAMP)
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev --extra ray -c constraints.txt $(LOCK_FLAGS) -o $(MAIN_LOCK)
	$(VENV)/bin/uv pip compile requirements/label-studio.in $(LOCK_FLAGS) -o $(LS_LOCK)
	@echo "Locks written; \`make test\` installs them and runs the tests (the upgrade path)."

lint: $(STAMP)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

clean:
	rm -rf out .pytest_cache
