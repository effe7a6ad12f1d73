# Quick start: `make serve` and `make test` both set up .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: setup serve test lint default-model examples clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints/cpu.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c constraints/cpu.txt torch==2.13.0
	$(PIP) install -q -c constraints/cpu.txt -e '.[dev]'
	touch $(STAMP)

serve: $(STAMP)
	$(VENV)/bin/widthwise serve

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -n 2

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# Regenerates the embedded default checkpoint (see docs/models.md, "Training").
default-model: $(STAMP)
	$(VENV)/bin/widthwise train --arch s_mobilenet_v2_cifar --dataset digits-hard --input-size 16 \
		--epochs 12 --batch-size 64 --lr 0.02 --seed 0 --out models/default/digits_s_mobilenet_v2.safetensors

examples: $(STAMP)
	$(PY) scripts/make_examples.py --out examples

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
