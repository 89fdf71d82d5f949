# Two set-up commands: `make demo` and `make test`. Both create .venv when needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install clean bench viewer-lib

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned, so no dependency resolution can pull a CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# the 3D view's library (Spark + three.js, pinned, from the npm registry) into a git-ignored cache;
# without npm it says so and the report falls back to its static pictures
viewer-lib: $(STAMP)
	$(PY) -m s3dgs.viewer fetch

demo: $(STAMP) viewer-lib
	HF_HUB_OFFLINE=1 $(VENV)/bin/s3dgs demo --out demo_out

test: $(STAMP) viewer-lib
	HF_HUB_OFFLINE=1 $(PY) -m pytest

clean:
	rm -rf $(VENV) demo_out .pytest_cache
