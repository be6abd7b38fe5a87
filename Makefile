# `make demo` and `make test` do all the set-up a fresh machine needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Without a CUDA driver, pin the CPU build of torch that pip finds on local disk instead of a multi-GB CUDA build.
TORCH_PIN := $(if $(shell command -v nvidia-smi 2>/dev/null),,torch==2.13.0)
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM = false

.PHONY: install test lint demo bench clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]' $(TORCH_PIN)
	touch $@

lint: install
	$(VENV)/bin/ruff check avtool tests bench

test: install lint
	$(PY) -m pytest -q

demo: install
	bash bash/demo.sh

bench: install
	for script in bench/*.py; do $(PY) $$script || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache outputs/demo
