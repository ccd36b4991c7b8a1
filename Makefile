# histopath-tfx — the two commands of the README:
#   make demo   generate the sample data set and run the pipeline on it
#   make test   run the test suite
# Each creates .venv/ from requirements/lock.txt when it is missing or out of date.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO   ?= demo
PYTEST_ARGS ?=

.PHONY: venv demo test system-deps lock lock-gpu bench clean vendor-openseadragon

venv: $(STAMP)

# The lock is installed with --no-deps --ignore-requires-python: TFX 1.16 declares
# Python < 3.11 but every compiled dependency ships cp311 wheels (see README).
$(STAMP): requirements/lock.txt setup.py
	@echo "building $(VENV) from requirements/lock.txt (a few minutes the first time)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --no-deps --ignore-requires-python -r requirements/lock.txt
	@$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $@

system-deps:
	bash scripts/system-deps.sh

# The web app's slide viewer, from the npm registry into the app's static files (committed).
vendor-openseadragon:
	bash scripts/vendor-openseadragon.sh

demo: venv
	@bash scripts/demo.sh $(DEMO)

test: venv system-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: venv
	$(BIN)/python -m bench.run_all

# Re-resolve the lock (about a minute). TFX 1.16 declares Python < 3.11, so the resolver
# runs for 3.10; requirements/overrides.txt documents why each override is needed.
lock:
	test -x $(BIN)/uv || $(BIN)/python -m pip install --quiet uv
	cd requirements && ../$(BIN)/uv pip compile --python-version 3.10 requirements.in \
		-c tfx-constraints.txt --override overrides.txt -o lock.txt

# The CUDA variant (pipeline/docker/pipeline-gpu.Dockerfile): lock.txt plus the nvidia-*-cu12
# wheels of tensorflow[and-cuda]; re-run after every change of lock.txt.
lock-gpu:
	$(BIN)/python scripts/make-gpu-lock.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
