# The front door: `make demo` trains a ViT in JAX on the embedded digits; `make test` runs the
# parity suite. Both create .venv and install .[dev] on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint install clean core-check

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m vitjax.cli.train --out runs/demo --overwrite --model vit_tutorial_patch16_32 \
		--img-size 16 --model-args patch_size=4 embed_dim=64 depth=3 num_heads=4 \
		--epochs 30 --batch-size 16 --lr 1e-3 --crop-scale 0.7 1.0 $(DEMO_ARGS)

# Two workers (pytest-xdist): most tests are single-threaded compiles, so both cores stay busy.
PYTEST_WORKERS ?= 2
test: $(STAMP)
	$(PY) -m pytest parity_tests -q -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

# The core install alone (no train/torch extras) in a fresh venv: build, load .safetensors, run.
core-check:
	rm -rf .venv-core && $(PYTHON) -m venv .venv-core
	.venv-core/bin/python -m pip install -q --upgrade pip
	.venv-core/bin/python -m pip install -q .
	cd /tmp && $(CURDIR)/.venv-core/bin/python $(CURDIR)/scripts/core_check.py

lint: $(STAMP)
	$(VENV)/bin/ruff check vitjax vittorch parity_tests scripts

clean:
	rm -rf $(VENV) .venv-core runs .pytest_cache
