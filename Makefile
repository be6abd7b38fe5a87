# `make demo` and `make test` do all the set-up a fresh machine needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Without a CUDA driver, pin the CPU build of torch that pip finds on local disk instead of a multi-GB CUDA build.
TORCH_PIN := $(if $(shell command -v nvidia-smi 2>/dev/null),,torch==2.13.0)
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM = false

.PHONY: install test lint demo bench fuzz clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]' $(TORCH_PIN)
	touch $@

lint: install
	$(VENV)/bin/ruff check avtool tests bench

# One intra-op thread: the tiny test models only spin on a second one (test_dance: 167 s -> 139 s on 2 cores).
test: install lint
	OMP_NUM_THREADS=1 $(PY) -m pytest -q

demo: install
	bash bash/demo.sh

bench: install
	for script in bench/*.py; do $(PY) $$script || exit 1; done

# Fuzz probe and the ffmpeg banner parsers for FUZZ_TIME seconds (not part of `test`; tests/test_fuzz_corpus.py
# replays the committed corpus). New inputs go to build/fuzz/corpus, failing ones to build/fuzz/crash-*:
# copy those into tests/data/fuzz_corpus once fixed.
FUZZ_TIME ?= 120
fuzz: install
	$(PY) -c 'import atheris' 2>/dev/null || $(PY) -m pip install -q --disable-pip-version-check -e '.[fuzz]' $(TORCH_PIN)
	mkdir -p build/fuzz/corpus
	$(PY) tests/fuzz/fuzz_probe.py -max_total_time=$(FUZZ_TIME) -timeout=60 -artifact_prefix=build/fuzz/ build/fuzz/corpus tests/data/fuzz_corpus

clean:
	rm -rf $(VENV) .pytest_cache outputs/demo
